"""Local rate limiting: Envoy's token bucket (``envoy.filters.http.local_ratelimit``).

Theory of operation. A bucket holds at most ``max_tokens`` and starts full. Every
``fill_interval`` it gains ``tokens_per_fill`` (never above ``max_tokens``); fills
happen at whole intervals counted from the bucket's creation, so with a fake clock
the number of tokens at any instant is exact. A request takes one token or is refused
with 429 and response flag ``RL``. Time is kept in integer nanoseconds internally:
``0.1 + 0.2`` seconds of float drift must never lose or invent a token.

Answers carry the draft-03 headers Envoy sends with ``enable_x_ratelimit_headers``:
``x-ratelimit-limit`` (the bucket size), ``x-ratelimit-remaining`` (tokens left) and
``x-ratelimit-reset`` (seconds to the next fill, rounded up, so a client that waits
that long finds a token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import GatewayError
from ._flags import ResponseFlag

_NS = 1_000_000_000
LIMIT_HEADER = "x-ratelimit-limit"
REMAINING_HEADER = "x-ratelimit-remaining"
RESET_HEADER = "x-ratelimit-reset"


class RateLimitConfigError(GatewayError, ValueError):
    """A token bucket whose numbers cannot work; quotes the field and value."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}: {rule}; found {value!r}")


@dataclass(frozen=True, slots=True)
class TokenBucketConfig:
    """Envoy ``type.v3.TokenBucket``."""

    max_tokens: int
    """Bucket size: the burst allowed, and the tokens at start. Required, at least 1."""
    fill_interval: float
    """Seconds between fills. Required, above 0 (Envoy requires at least 50 ms)."""
    tokens_per_fill: int = 1
    """Tokens added per fill. Defaults to 1."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise RateLimitConfigError("maxTokens", self.max_tokens, "must be at least 1")
        if self.tokens_per_fill < 1:
            raise RateLimitConfigError("tokensPerFill", self.tokens_per_fill, "must be at least 1")
        if not self.fill_interval > 0:
            raise RateLimitConfigError("fillInterval", self.fill_interval, "must be above 0")

    @classmethod
    def from_spec(cls, spec: Any) -> "TokenBucketConfig":
        """From a decoded spec object with ``max_tokens``, ``tokens_per_fill`` (optional) and
        ``fill_interval`` (a topology ``Duration``) - meshfed's RateLimit resource."""
        per_fill = getattr(spec, "tokens_per_fill", None)
        return cls(spec.max_tokens, spec.fill_interval.seconds, per_fill if per_fill is not None else 1)


@dataclass(frozen=True, slots=True)
class Allowed:
    """The request took a token."""

    limit: int
    remaining: int
    reset: float
    """Seconds until the next fill."""

    @property
    def headers(self) -> dict[str, str]:
        return _headers(self.limit, self.remaining, self.reset)

    @property
    def wire_headers(self) -> list[tuple[bytes, bytes]]:
        return _encoded(self.headers)


@dataclass(frozen=True, slots=True)
class Limited:
    """No token: answer 429 with flag RL; a token appears after ``retry_after`` seconds."""

    limit: int
    retry_after: float
    status: int = 429
    flag: ResponseFlag = ResponseFlag.RL

    @property
    def headers(self) -> dict[str, str]:
        return _headers(self.limit, 0, self.retry_after)

    @property
    def wire_headers(self) -> list[tuple[bytes, bytes]]:
        return _encoded(self.headers)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in headers.items()]


def _headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {LIMIT_HEADER: str(limit), REMAINING_HEADER: str(remaining),
            RESET_HEADER: str(math.ceil(round(reset, 9)))}


class TokenBucket:
    """One bucket (per route or per destination); fed ``now`` on every call."""

    __slots__ = ("config", "_tokens", "_anchor_ns", "_interval_ns")

    def __init__(self, config: TokenBucketConfig, now: float) -> None:
        self.config = config
        self._tokens = config.max_tokens
        self._anchor_ns = _ns(now)
        self._interval_ns = max(_ns(config.fill_interval), 1)

    def _refill(self, now: float) -> int:
        """Apply the fills due by ``now``; returns ``now`` in nanoseconds."""
        now_ns = _ns(now)
        fills = (now_ns - self._anchor_ns) // self._interval_ns
        if fills > 0:
            self._anchor_ns += fills * self._interval_ns
            self._tokens = min(self.config.max_tokens, self._tokens + fills * self.config.tokens_per_fill)
        return now_ns

    def _until_fill(self, now_ns: int) -> float:
        return (self._anchor_ns + self._interval_ns - now_ns) / _NS

    def tokens(self, now: float) -> int:
        """Tokens in the bucket at ``now``."""
        self._refill(now)
        return self._tokens

    def next_fill(self, now: float) -> float:
        """Absolute time of the next fill after ``now``."""
        now_ns = self._refill(now)
        return now + self._until_fill(now_ns)

    def try_take(self, now: float) -> Allowed | Limited:
        """Take one token, or say when one will be there."""
        now_ns = self._refill(now)
        until = self._until_fill(now_ns)
        if self._tokens == 0:
            return Limited(self.config.max_tokens, until)
        self._tokens -= 1
        return Allowed(self.config.max_tokens, self._tokens, until)

    def __repr__(self) -> str:
        c = self.config
        return f"<TokenBucket {self._tokens}/{c.max_tokens} +{c.tokens_per_fill} per {c.fill_interval:g}s>"


def _ns(seconds: float) -> int:
    return round(seconds * _NS)
