"""Durations as Istio accepts them in YAML: ``"5s"``, ``"0.5s"``, ``"1m"``, ``"1h30m"``, ``"100ms"``.

Istio's CRDs take protobuf Durations written Go-style (``time.ParseDuration``); a bare
number is not a duration and is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DurationSyntaxError(ValueError):
    pass


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A non-negative span of time, held in nanoseconds to stay exact."""

    nanos: int

    @classmethod
    def parse(cls, text: str) -> "Duration":
        s = text.strip()
        if not s:
            raise DurationSyntaxError("empty duration")
        if s == "0":
            return cls(0)
        if s.startswith("-"):
            raise DurationSyntaxError("must not be negative")
        pos, total = 0, 0.0
        exact = 0
        while pos < len(s):
            m = _PART.match(s, pos)
            if m is None:
                raise DurationSyntaxError(
                    "expected a number followed by a unit (h, m, s, ms, us, ns), as in '5s' or '1m30s'")
            number, unit = m.group(1), m.group(2)
            if "." in number:
                total += float(number) * _UNITS_NS[unit]
            else:
                exact += int(number) * _UNITS_NS[unit]
            pos = m.end()
        nanos = exact + round(total)
        if nanos > 315_576_000_000 * 1_000_000_000:  # protobuf Duration's upper bound
            raise DurationSyntaxError("longer than 10,000 years")
        return cls(nanos)

    @classmethod
    def of_seconds(cls, seconds: float) -> "Duration":
        return cls(round(seconds * 1_000_000_000))

    @property
    def seconds(self) -> float:
        return self.nanos / 1_000_000_000

    def __str__(self) -> str:
        n = self.nanos
        for unit, size in (("h", _UNITS_NS["h"]), ("m", _UNITS_NS["m"]), ("s", _UNITS_NS["s"]),
                           ("ms", _UNITS_NS["ms"]), ("us", _UNITS_NS["us"])):
            if n and n % size == 0:
                return f"{n // size}{unit}"
        if n % 1_000_000 == 0 or n > _UNITS_NS["s"]:
            return f"{n / 1_000_000_000:g}s"
        return f"{n}ns"
