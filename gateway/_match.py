"""Compiled request matchers: Istio's ``HTTPMatchRequest`` evaluated the way Envoy does.

Theory of operation. Istio turns every ``HTTPMatchRequest`` into one Envoy ``RouteMatch``
(pilot ``route.TranslateRouteMatch``): the ``uri`` becomes the path specifier (``path``,
``prefix`` or ``safe_regex``; no ``uri`` means ``prefix: /``), ``method``, ``authority`` and
``scheme`` become matchers on the ``:method``, ``:authority`` and ``:scheme`` pseudo-headers,
``headers`` and ``withoutHeaders`` become (inverted) header matchers and ``queryParams``
query-parameter matchers. Envoy requires all of them (AND). Here each condition is
compiled once into a closure ``request -> bool``; matching a request is a loop over a
tuple of closures with no parsing, no regex compilation and no allocation beyond what
the closures do themselves. ``port``, ``sourceLabels``, ``sourceNamespace`` and
``gateways`` are not request conditions in Istio: the control plane decides them for the
proxy it generates config for, so ``_routing`` decides them at compile time too (see
``source_conditions`` for the one exception).

Envoy details kept here, each where it applies: regexes are RE2 with full-match
semantics (``safe_regex``); ``ignoreUriCase`` (``case_sensitive: false``) applies to
exact and prefix paths and, as Envoy documents, not to regexes; a header sent several
times is matched as its values joined with ``,``; query parameters are matched on the
first value, percent-decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping
from urllib.parse import unquote_plus

from topology._http_route import HTTPMatchRequest
from topology._istio_types import StringMatch

from ._regex import MatchCompileError, regex_fullmatch  # noqa: F401 - the error compile raises


class _EmptyMap(Mapping[str, str]):
    """An immutable, hashable empty mapping: a default that costs nothing per request."""

    __slots__ = ()

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


EMPTY_MAP: Mapping[str, str] = _EmptyMap()


def join_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header pairs as one map: names lowercased, repeated values joined with ``,`` as
    Envoy's ``getAllOfHeaderAsString`` does before matching."""
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        old = out.get(name)
        out[name] = value if old is None else f"{old},{value}"
    return out


def parse_query(query: str) -> dict[str, str]:
    """Envoy's ``parseAndDecodeQueryString``: ``&``-separated, decoded, first value wins,
    a name without ``=`` has the empty value."""
    out: dict[str, str] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote_plus(name)
        if name not in out:
            out[name] = unquote_plus(value)
    return out


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing reads of one HTTP request; built once per request by the codec layer.

    ``headers`` maps lowercase names to values, a repeated header's values joined by
    ``,``; (name, value) pairs are accepted too and joined that way on construction.
    """

    method: str = "GET"
    scheme: str = "http"
    authority: str = ""
    """Host and optional port, as in ``:authority``/``Host``."""
    path: str = "/"
    """The path, without the query string."""
    query: str = ""
    """The raw query string, without ``?``."""
    headers: Mapping[str, str] = EMPTY_MAP
    port: int = 80
    """Destination port: the port the client addressed."""
    source_namespace: str = ""
    source_labels: Mapping[str, str] = EMPTY_MAP
    _query_params: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        h = self.headers
        if type(h) is not dict and not isinstance(h, Mapping):
            object.__setattr__(self, "headers", join_headers(h))

    @property
    def query_params(self) -> Mapping[str, str]:
        """Decoded query parameters (first value of each), parsed on first use."""
        qp = self._query_params
        if qp is None:
            qp = parse_query(self.query)
            object.__setattr__(self, "_query_params", qp)
        return qp

    @property
    def target(self) -> str:
        """The request target as sent upstream: path plus ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path


Condition = Callable[[RouteRequest], object]
"""A compiled condition: truthy when the request meets it."""


_RouteRequestB = type("_RouteRequestBuilder", (), {"__slots__": RouteRequest.__slots__})


def fast_route_request(method: str, scheme: str, authority: str, path: str, query: str,
                       headers: Mapping[str, str], port: int) -> RouteRequest:
    """``RouteRequest(...)`` for the per-request path, ``headers`` already a Mapping: built
    as ``_events`` builds events (plain stores on a twin of the same slots, then the
    frozen class), without the frozen ``__init__``'s ``object.__setattr__`` per field."""
    r = _RouteRequestB()
    r.method, r.scheme, r.authority, r.path, r.query = method, scheme, authority, path, query  # type: ignore[attr-defined]
    r.headers, r.port, r.source_namespace, r.source_labels = headers, port, "", EMPTY_MAP  # type: ignore[attr-defined]
    r._query_params = None  # type: ignore[attr-defined]
    r.__class__ = RouteRequest
    return r  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """A compiled ``StringMatch``. ``test(value)`` is the hot-path entry point."""

    kind: str
    """``exact``, ``prefix``, ``regex`` or ``present`` (an empty match, or regex ``*``)."""
    value: str
    ignore_case: bool
    test: Callable[[str], object] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, sm: StringMatch | None, *, ignore_case: bool = False) -> StringMatcher:
        # Istio's canBeConvertedToPresentMatch: nothing set, or the non-RE2 regex `*`.
        if sm is None or sm.kind is None or sm.regex == "*":
            return cls("present", "", False, _always)
        if sm.exact is not None:
            v = sm.exact
            if ignore_case:
                low = v.lower()
                return cls("exact", v, True, lambda s: s.lower() == low)
            return cls("exact", v, False, v.__eq__)
        if sm.prefix is not None:
            v = sm.prefix
            if ignore_case:
                low, n = v.lower(), len(v)
                return cls("prefix", v, True, lambda s: s[:n].lower() == low)
            return cls("prefix", v, False, lambda s: s.startswith(v))
        # Envoy: case_sensitive "has no effect for safe_regex".
        return cls("regex", sm.regex or "", False, regex_fullmatch(sm.regex or ""))

    def __call__(self, value: str) -> bool:
        return bool(self.test(value))

    def __str__(self) -> str:
        if self.kind == "present":
            return "present"
        return f"{self.kind}{' (ignore case)' if self.ignore_case else ''} {self.value!r}"


def _always(_: object) -> bool:
    return True


# Pseudo-headers Envoy's header matchers read from the request line.
_PSEUDO: dict[str, Callable[[RouteRequest], str]] = {
    ":method": lambda r: r.method,
    ":authority": lambda r: r.authority,
    ":scheme": lambda r: r.scheme,
    ":path": lambda r: r.target,
}
JWT_CLAIM_PREFIX = "@request.auth.claims"


def header_condition(name: str, sm: StringMatch | None, *, invert: bool = False) -> tuple[Condition, str]:
    """Envoy's ``HeaderMatcher`` as Istio configures it, with a description."""
    if not name.startswith(JWT_CLAIM_PREFIX):
        name = name.lower()  # Envoy header names are case-insensitive, stored lowercase
    m = StringMatcher.compile(sm)
    what = f"{'without ' if invert else ''}header {name} {m}"
    if name.startswith(JWT_CLAIM_PREFIX):
        # Istio matches claims through JWT metadata; no request carries verified claims
        # here yet, so a claim is absent: a positive match fails, an inverted one holds.
        return ((lambda r: True) if invert else (lambda r: False)), what
    getter = _PSEUDO.get(name)
    if getter is not None:  # always present
        if m.kind == "present":
            return ((lambda r: False) if invert else (lambda r: True)), what
        test = m.test
        if invert:
            return (lambda r: not test(getter(r))), what
        return (lambda r: test(getter(r))), what
    if m.kind == "present":
        if invert:
            return (lambda r: name not in r.headers), what
        return (lambda r: name in r.headers), what
    if m.kind == "exact":  # the common case, without a call to the matcher
        value = m.value
        if invert:
            return (lambda r: r.headers.get(name, "") != value), what
        return (lambda r: r.headers.get(name) == value), what
    test = m.test
    if invert:
        # Istio sets treat_missing_header_as_empty on inverted string matchers.
        return (lambda r: not test(r.headers.get(name, ""))), what

    def cond(r: RouteRequest) -> object:
        v = r.headers.get(name)
        return v is not None and test(v)
    return cond, what


def query_condition(name: str, sm: StringMatch | None) -> tuple[Condition, str]:
    """Envoy's ``QueryParameterMatcher``: a missing parameter never matches."""
    m = StringMatcher.compile(sm)
    what = f"query {name} {m}"
    if m.kind == "present":
        return (lambda r: name in r.query_params), what
    test = m.test

    def cond(r: RouteRequest) -> object:
        v = r.query_params.get(name)
        return v is not None and test(v)
    return cond, what


def source_conditions(labels: Mapping[str, str], namespace: str | None) -> list[tuple[Condition, str]]:
    """``sourceLabels``/``sourceNamespace`` checked per request. Only for a table compiled
    without the client's labels (one table shared by several workloads); otherwise they
    are decided at compile time as Istio decides them for the proxy."""
    out: list[tuple[Condition, str]] = []
    if labels:
        items = tuple(labels.items())
        out.append((lambda r: all(r.source_labels.get(k) == v for k, v in items),
                    f"source labels {dict(items)}"))
    if namespace:
        out.append((lambda r: r.source_namespace == namespace, f"source namespace {namespace!r}"))
    return out


@dataclass(frozen=True, slots=True)
class PathMatch:
    """The path specifier of a compiled match; rewrites need to know what it consumed."""

    kind: str
    """``exact``, ``prefix`` or ``regex``."""
    value: str
    ignore_case: bool = False

    @property
    def matched_length(self) -> int | None:
        """Characters of the path a prefix rewrite replaces: the prefix for a prefix match,
        None (the whole path) for exact and regex matches, as Envoy's ``prefix_rewrite``."""
        return len(self.value) if self.kind == "prefix" else None

    def condition(self) -> Condition | None:
        v = self.value
        if self.kind == "prefix" and v == "/":
            return None  # every origin-form path starts with "/": nothing to test
        if self.kind == "regex":
            full = regex_fullmatch(v)
            return lambda r: full(r.path)
        if self.ignore_case:
            low, n = v.lower(), len(v)
            if self.kind == "exact":
                return lambda r: r.path.lower() == low
            return lambda r: r.path[:n].lower() == low
        if self.kind == "exact":
            return lambda r: r.path == v
        return lambda r: r.path.startswith(v)

    def __str__(self) -> str:
        return f"path {self.kind}{' (ignore case)' if self.ignore_case else ''} {self.value!r}"


CATCH_ALL_PATH = PathMatch("prefix", "/")


@dataclass(frozen=True, slots=True)
class HttpMatchConfig:
    """One compiled ``HTTPMatchRequest``: every condition must hold."""

    name: str | None
    path: PathMatch
    conditions: tuple[Condition, ...] = field(repr=False, compare=False)
    """Closures in evaluation order: path first (cheapest and most selective)."""
    descriptions: tuple[str, ...] = ()
    test: Condition | None = field(init=False, repr=False, compare=False)
    """All conditions fused into one call; None for a catch-all."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", fuse(self.conditions))

    @classmethod
    def compile(cls, m: HTTPMatchRequest | None, *,
                runtime_source: bool = False) -> HttpMatchConfig:
        """Compile ``m`` (None: match everything, Istio's ``prefix: /``)."""
        if m is None:
            return cls(None, CATCH_ALL_PATH, (), (str(CATCH_ALL_PATH),))
        path = CATCH_ALL_PATH
        if m.uri is not None and m.uri.kind is not None:
            value = m.uri.exact if m.uri.exact is not None else m.uri.prefix if m.uri.prefix is not None \
                else m.uri.regex or ""
            path = PathMatch(m.uri.kind, value, m.ignore_uri_case and m.uri.kind != "regex")
        parts: list[tuple[Condition, str]] = []
        cond = path.condition()
        if cond is not None:
            parts.append((cond, str(path)))
        for key, sm in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
            if sm is not None:
                parts.append(header_condition(key, sm))
        for name in sorted(m.headers):  # Istio sorts header matchers by name
            parts.append(header_condition(name, m.headers[name]))
        for name in sorted(m.without_headers):
            parts.append(header_condition(name, m.without_headers[name], invert=True))
        for name in sorted(m.query_params):
            parts.append(query_condition(name, m.query_params[name]))
        if runtime_source:
            parts.extend(source_conditions(m.source_labels, m.source_namespace))
        descriptions = tuple(d for _, d in parts) if parts else (str(path),)
        return cls(m.name, path, tuple(c for c, _ in parts), descriptions)

    @property
    def is_catch_all(self) -> bool:
        """Matches every request (Istio stops translating rules after one of these)."""
        return not self.conditions

    def matches(self, req: RouteRequest) -> bool:
        return self.test is None or bool(self.test(req))

    def __str__(self) -> str:
        return " and ".join(self.descriptions)


def fuse(conds: tuple[Condition, ...]) -> Condition | None:
    """One callable for a conjunction: a route costs one call, not a loop, to reject."""
    if not conds:
        return None
    if len(conds) == 1:
        return conds[0]
    if len(conds) == 2:
        a, b = conds
        return lambda r: a(r) and b(r)
    if len(conds) == 3:
        a, b, c = conds
        return lambda r: a(r) and b(r) and c(r)

    def all_of(r: RouteRequest) -> bool:
        for c in conds:
            if not c(r):
                return False
        return True
    return all_of
