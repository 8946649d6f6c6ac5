"""RE2 regexes for matching: compiled once, tested cheaply (Envoy's ``safe_regex``).

Envoy matches regexes with RE2's full-match semantics; so does this module, through
google-re2. Its Python wrapper spends ~2 us per call mapping str offsets to bytes, which
a routing table that tries several regexes per request cannot afford; a yes/no test
calls the RE2 object underneath on UTF-8 bytes (~1 us) and, before that, checks the
regex's literal prefix with ``startswith`` (~0.1 us), which settles most input that does
not match without RE2.

google-re2 (with abseil, ~2.7 MB resident) is imported on the first regex: most sidecars'
configs have none, and the idle footprint is a target.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from . import GatewayError

if TYPE_CHECKING:
    import re2
_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_:=@~%!,;'\"&<>`# ")
_QUANTIFIERS = frozenset("*+?{")


class MatchCompileError(GatewayError, ValueError):
    """A matcher that cannot be compiled (an invalid RE2 regex that validation let through)."""

    def __init__(self, message: str, pattern: str) -> None:
        super().__init__(message)
        self.pattern = pattern


@functools.cache
def _options(test: bool) -> Any:
    import re2
    options = re2.Options()
    options.log_errors = False  # errors become MatchCompileError, not stderr noise
    options.never_capture = test  # a yes/no test needs no submatches
    return options


def compile_regex(pattern: str, test: bool = False) -> re2._Regexp:
    import re2
    try:
        return re2.compile(pattern, options=_options(test))
    except re2.error as e:
        detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise MatchCompileError(f"invalid RE2 regex {pattern!r}: {detail}", pattern) from None


def literal_prefix(pattern: str) -> str:
    """A prefix every full match of ``pattern`` starts with ("" when unsure): checked
    with ``startswith`` before RE2 is asked, so most misses never reach the regex."""
    if "|" in pattern:
        return ""
    out: list[str] = []
    i = 1 if pattern.startswith("^") else 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            lit, step = pattern[i + 1], 2
        elif ch in _LITERAL:
            lit, step = ch, 1
        else:
            break
        if i + step < len(pattern) and pattern[i + step] in _QUANTIFIERS:
            break  # the character is quantified: it may be absent or repeated
        out.append(lit)
        i += step
    return "".join(out)


def regex_fullmatch(pattern: str) -> Callable[[str], bool]:
    """A full-match test (Envoy's ``safe_regex``) for one RE2 pattern."""
    import re2
    low = getattr(compile_regex(pattern, test=True), "_regexp", None)
    anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    if low is not None and anchor is not None:
        match, both = low.Match, anchor.ANCHOR_BOTH

        def test(s: str) -> bool:
            b = s.encode("utf-8", "surrogatepass")
            return match(both, b, 0, len(b))[0][0] >= 0
    else:  # pragma: no cover - another google-re2 layout
        rx = compile_regex(pattern)

        def test(s: str) -> bool:
            return rx.fullmatch(s) is not None
    prefix = literal_prefix(pattern)
    if prefix:
        return lambda s: s.startswith(prefix) and test(s)
    return test
