"""Per-route HTTP policies of a VirtualService: retries, fault injection, CORS.

Field names, oneofs and defaults are istio/api ``networking/v1`` (``HTTPRetry``,
``HTTPFaultInjection``, ``CorsPolicy``); the checks are istioctl's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe
from ._duration import Duration
from ._istio_checks import check_duration, check_header_name, check_oneof, check_percent_int
from ._istio_types import Percent, StringMatch

# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on values, as istioctl accepts them.
RETRY_ON_CONDITIONS = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})
# istioctl also takes a bare status code when Go's http.StatusText knows it.
KNOWN_STATUS_CODES = frozenset(
    [100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308, *range(400, 419),
     *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511])
GRPC_STATUS_NAMES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})


def check_fault_percentage(c: Check, rel: str, p: Percent | None) -> None:
    """istioctl: a fault percentage is 0 or in [0.0001, 100] (Envoy's million-based fraction)."""
    if p is not None and 0.0 < p.value < 0.0001:
        c.error(f"{rel}.value", f"must be 0 or between 0.0001 and 100; found {describe(p.value)}")


@dataclass(frozen=True, slots=True)
class HTTPRetry:
    """How a failed request is retried."""

    attempts: int = 0
    """Number of retries for a request (so at most attempts + 1 requests); 0 disables
    retries. Without a ``retries`` block Istio's default policy retries twice."""
    per_try_timeout: Duration | None = None
    """Timeout per attempt, initial call included; at least 1ms. Defaults to the route's
    timeout, which means no per-try timeout."""
    retry_on: str | None = None
    """Comma-separated Envoy retry conditions (x-envoy-retry-on / x-envoy-retry-grpc-on) or
    status codes. Defaults to ``connect-failure,refused-stream,unavailable,cancelled,
    retriable-status-codes`` (with 503 retriable)."""
    retry_remote_localities: bool | None = None
    """Whether retries may go to other localities. Defaults to false."""
    retry_ignore_previous_hosts: bool | None = None
    """Whether retries avoid hosts already tried. Defaults to true."""
    backoff: Duration | None = None
    """Base interval of the exponential backoff between retries. Defaults to 25ms."""

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.retry_on.split(",")) if self.retry_on else ()

    def _check(self, c: Check) -> None:
        if self.attempts < 0:
            c.error("attempts", f"must not be negative; found {describe(self.attempts)}")
        elif self.attempts == 0 and (self.per_try_timeout is not None or self.retry_on
                                     or self.retry_remote_localities is not None):
            c.error("attempts", "retry policy configured while attempts is 0 (retries disabled); "
                                "set attempts or remove the other retry fields")
        check_duration(c, "perTryTimeout", self.per_try_timeout)
        check_duration(c, "backoff", self.backoff)
        for cond in self.conditions:
            if cond in RETRY_ON_CONDITIONS or (cond.isdigit() and int(cond) in KNOWN_STATUS_CODES):
                continue
            hint = " (remove the spaces around ',')" if cond.strip() in RETRY_ON_CONDITIONS else ""
            c.error("retryOn", f"unknown retryOn condition {cond!r}{hint}; expected a comma-separated "
                               "list of Envoy retry conditions (5xx, gateway-error, reset, connect-failure, "
                               "retriable-4xx, refused-stream, unavailable, ...) or HTTP status codes")


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Latency injected before the request is forwarded."""

    fixed_delay: Duration | None = None
    """The delay to add; at least 1ms. Required (the only supported delay type)."""
    exponential_delay: Duration | None = None
    """Not supported by Istio yet; rejected."""
    percentage: Percent | None = None
    """Share of requests delayed, 0..100. If unspecified, no request is delayed."""
    percent: int | None = None
    """Deprecated integer form of ``percentage``."""

    def _check(self, c: Check) -> None:
        if check_oneof(c, self, ("fixed_delay", "exponential_delay")):
            return
        check_oneof(c, self, ("percentage", "percent"))
        check_fault_percentage(c, "percentage", self.percentage)
        if self.percent is not None:
            check_percent_int(c, "percent", self.percent)
            c.warning("percent", "'percent' is deprecated; use 'percentage: {value: ...}'")
        if self.exponential_delay is not None:
            c.error("exponentialDelay", "exponentialDelay is not supported; use fixedDelay")
        elif self.fixed_delay is None:
            c.error("", "a delay needs fixedDelay")
        else:
            check_duration(c, "fixedDelay", self.fixed_delay)


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """Requests answered with an error instead of being forwarded."""

    http_status: int | None = None
    """HTTP status code returned, 200..599."""
    grpc_status: str | None = None
    """gRPC status name returned (``UNAVAILABLE``, ``NOT_FOUND``, ...)."""
    http2_error: str | None = None
    """Not supported by Istio yet; rejected."""
    percentage: Percent | None = None
    """Share of requests aborted, 0..100. If unspecified, no request is aborted."""

    def _check(self, c: Check) -> None:
        check_oneof(c, self, ("http_status", "grpc_status", "http2_error"))
        check_fault_percentage(c, "percentage", self.percentage)
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            c.error("httpStatus", f"HTTP status must be in the range 200..599; found {describe(self.http_status)}")
        if self.grpc_status is not None and self.grpc_status not in GRPC_STATUS_NAMES:
            c.error("grpcStatus", f"unknown gRPC status {self.grpc_status!r}; expected a name such as "
                                  "'UNAVAILABLE' or 'NOT_FOUND'")
        if self.http2_error is not None:
            c.error("http2Error", "HTTP/2 abort fault injection is not supported; use httpStatus or grpcStatus")
        if self.http_status is None and self.grpc_status is None and self.http2_error is None:
            c.warning("", "abort configured without httpStatus or grpcStatus; nothing will be aborted")


@dataclass(frozen=True, slots=True)
class HTTPFaultInjection:
    """Faults injected on the client side of this route (never with retries applied)."""

    delay: FaultDelay | None = None
    """Delay requests before forwarding them."""
    abort: FaultAbort | None = None
    """Abort requests with an error code."""

    def _check(self, c: Check) -> None:
        if self.delay is None and self.abort is None:
            c.error("", "a fault needs an abort, a delay or both")


class UnmatchedPreflights(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    FORWARD = "FORWARD"
    IGNORE = "IGNORE"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Cross-origin resource sharing answered by the proxy."""

    allow_origins: tuple[StringMatch, ...] = ()
    """Origins allowed to make requests; a match on the Origin header."""
    allow_origin: tuple[str, ...] = ()
    """Deprecated exact-origin list; use allowOrigins."""
    allow_methods: tuple[str, ...] = ()
    """Methods allowed (Access-Control-Allow-Methods)."""
    allow_headers: tuple[str, ...] = ()
    """Request headers allowed (Access-Control-Allow-Headers)."""
    expose_headers: tuple[str, ...] = ()
    """Response headers browsers may read (Access-Control-Expose-Headers)."""
    max_age: Duration | None = None
    """How long a preflight result may be cached; whole seconds."""
    allow_credentials: bool | None = None
    """Whether credentials may be sent (Access-Control-Allow-Credentials). Defaults to false."""
    unmatched_preflights: UnmatchedPreflights | None = None
    """What to do with preflights from origins not allowed. Defaults to forwarding them upstream."""

    def _check(self, c: Check) -> None:
        for i, origin in enumerate(self.allow_origins):
            if origin.kind is None or (origin.exact or origin.prefix or origin.regex) == "":
                c.error(f"allowOrigins[{i}]", "an origin match needs a non-empty exact, prefix or regex")
        for i, method in enumerate(self.allow_methods):
            if method not in CORS_METHODS:
                c.error(f"allowMethods[{i}]", f"unsupported HTTP method {method!r}; expected one of "
                                              "GET, HEAD, POST, PUT, PATCH, DELETE, CONNECT, OPTIONS, TRACE, *")
        for i, name in enumerate(self.allow_headers):
            check_header_name(c, f"allowHeaders[{i}]", name, allow_star=True)
        for i, name in enumerate(self.expose_headers):
            check_header_name(c, f"exposeHeaders[{i}]", name, allow_star=True)
        check_duration(c, "maxAge", self.max_age, seconds=True)
        if self.allow_origin:
            c.warning("allowOrigin", "'allowOrigin' is deprecated; use 'allowOrigins' with exact matches")
