"""Retry policy: which failed attempts are tried again, how often, after what pause,
and on which host - Envoy's router retry semantics as Istio configures them.

Theory of operation. ``retryOn`` is parsed once into a frozen set of conditions and a
frozen set of retriable status codes. After each attempt the caller describes what
happened (``AttemptResult``) and asks ``should_retry``; the answer is a ``RetryDecision``:
retry after a drawn backoff, or stop - because the attempt succeeded or failed in a way
not listed (the result goes downstream as is), because the retries are used up (flag
``URX``), because the cluster's retry circuit breaker is full (flag ``UO``), or because
the request body outgrew the replay buffer. ``RetryPolicy`` is the pure rule;
``RetryState`` (``_retry_state``) is the per-request bookkeeping around it.

Untrusted callers cannot steer retries: ``x-envoy-retry-on``, ``x-envoy-retry-grpc-on``,
``x-envoy-max-retries``, ``x-envoy-retriable-status-codes`` and
``x-envoy-retriable-header-names`` are never read (``IGNORED_REQUEST_HEADERS``) - any
workload could otherwise multiply the load on a shared upstream. Only the
VirtualService says how a route retries.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import GatewayError
from ._flags import ResponseFlag

if TYPE_CHECKING:
    from topology._http_policy import HTTPFaultInjection, HTTPRetry

IGNORED_REQUEST_HEADERS = ("x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
                           "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names")
"""Envoy retry-steering request headers meshfed never honours (and strips)."""
DEFAULT_BACKOFF_BASE = 0.025  # Envoy router: default base interval 25 ms
BACKOFF_MAX_FACTOR = 10  # Envoy BackoffStrategy: max_interval "default is 10 times the base_interval"
DEFAULT_BUFFER_LIMIT = 1024 * 1024
"""Replay buffer per request: Envoy's ``per_request_buffer_limit_bytes`` falls back to the
listener's ``per_connection_buffer_limit_bytes``, 1 MiB by default."""
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5  # Istio retry.DefaultPolicy HostSelectionRetryMaxAttempts


class RetryCondition(enum.Enum):
    """An Envoy ``retry_on`` / ``x-envoy-retry-grpc-on`` condition, by its config spelling."""

    FIVE_XX = "5xx"
    GATEWAY_ERROR = "gateway-error"
    RESET = "reset"
    RESET_BEFORE_REQUEST = "reset-before-request"
    CONNECT_FAILURE = "connect-failure"
    RETRIABLE_4XX = "retriable-4xx"
    REFUSED_STREAM = "refused-stream"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"
    RETRIABLE_HEADERS = "retriable-headers"
    ENVOY_RATELIMITED = "envoy-ratelimited"
    HTTP3_POST_CONNECT_FAILURE = "http3-post-connect-failure"  # accepted; meshfed has no HTTP/3
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    INTERNAL = "internal"
    RESOURCE_EXHAUSTED = "resource-exhausted"
    UNAVAILABLE = "unavailable"


GRPC_CONDITIONS = {RetryCondition.CANCELLED: 1, RetryCondition.DEADLINE_EXCEEDED: 4,
                   RetryCondition.RESOURCE_EXHAUSTED: 8, RetryCondition.INTERNAL: 13,
                   RetryCondition.UNAVAILABLE: 14}
"""gRPC conditions and the ``grpc-status`` code each one matches."""
_RESET_CONDITIONS = (RetryCondition.FIVE_XX, RetryCondition.GATEWAY_ERROR, RetryCondition.RESET)
ISTIO_DEFAULT_RETRY_ON = frozenset({RetryCondition.CONNECT_FAILURE, RetryCondition.REFUSED_STREAM,
                                    RetryCondition.UNAVAILABLE, RetryCondition.CANCELLED,
                                    RetryCondition.RETRIABLE_STATUS_CODES})
"""Istio ``retry.DefaultPolicy``: ``connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes``."""


class RetryOnError(GatewayError, ValueError):
    """A ``retryOn`` entry that is neither a condition nor an HTTP status code."""

    def __init__(self, text: str, entry: str) -> None:
        self.text = text
        self.entry = entry
        super().__init__(f"unknown retryOn condition {entry!r} in {text!r}")


def parse_retry_on(text: str) -> tuple[frozenset[RetryCondition], frozenset[int]]:
    """Conditions and status codes of a ``retryOn`` string, as Istio's ``parseRetryOn``:
    entries are trimmed, numbers are status codes, and status codes imply the
    ``retriable-status-codes`` condition."""
    conditions: set[RetryCondition] = set()
    codes: set[int] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.isdigit() and 100 <= int(entry) <= 599:
            codes.add(int(entry))
            continue
        try:
            conditions.add(RetryCondition(entry))
        except ValueError:
            raise RetryOnError(text, entry) from None
    if codes:
        conditions.add(RetryCondition.RETRIABLE_STATUS_CODES)
    return frozenset(conditions), frozenset(codes)


class AttemptOutcome(enum.Enum):
    """How one upstream attempt ended."""

    RESPONSE = "response"  # response headers arrived (status, maybe grpc-status)
    CONNECT_FAILURE = "connect failure"  # refused, connect timeout, TLS handshake failure
    RESET = "reset"  # connection or stream reset after connecting
    REFUSED_STREAM = "refused stream"  # HTTP/2 REFUSED_STREAM: the upstream never saw it
    PER_TRY_TIMEOUT = "per-try timeout"  # perTryTimeout fired before a response
    OVERFLOW = "overflow"  # the local pool refused; Envoy never retries an overflow


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt produced, as the router observed it."""

    outcome: AttemptOutcome
    status: int | None = None
    """Response status, for ``RESPONSE``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers (and trailers of a trailers-only reply), names in lower case."""
    grpc_status: int | None = None
    """gRPC status from headers or trailers; read from ``headers`` when not given."""
    host: str | None = None
    """The upstream host the attempt went to."""
    request_sent: bool = True
    """Whether any of the request reached the upstream (``reset-before-request``)."""

    @classmethod
    def response(cls, status: int, headers: Mapping[str, str] | None = None, *,
                 grpc_status: int | None = None, host: str | None = None) -> "AttemptResult":
        return cls(AttemptOutcome.RESPONSE, status, dict(headers or {}), grpc_status, host)

    @classmethod
    def failure(cls, outcome: AttemptOutcome, *, host: str | None = None,
                request_sent: bool = True) -> "AttemptResult":
        return cls(outcome, host=host, request_sent=request_sent)

    @property
    def effective_grpc_status(self) -> int | None:
        if self.grpc_status is not None:
            return self.grpc_status
        value = self.headers.get("grpc-status", "").strip()
        return int(value) if value.isdigit() else None


class RetryVerdict(enum.Enum):
    RETRY = "retry"
    DONE = "done"  # success, or a failure retryOn does not list: send it downstream
    LIMIT_EXCEEDED = "retry limit exceeded"  # flag URX
    OVERFLOW = "retry overflow"  # retry circuit breaker full; flag UO
    NOT_REPLAYABLE = "body not replayable"  # body outgrew the replay buffer


@dataclass(frozen=True, slots=True)
class RetryDecision:
    verdict: RetryVerdict
    condition: RetryCondition | None = None
    """The retryOn condition the attempt matched, if any."""
    backoff: float = 0.0
    """Seconds to wait before the retry (``RETRY`` only)."""
    flag: ResponseFlag | None = None
    """Response flag for the access log: URX or UO."""

    @property
    def retry(self) -> bool:
        return self.verdict is RetryVerdict.RETRY


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry rule. Defaults are Istio's implicit policy for a route without
    ``retries``; ``attempts=0`` turns retries off."""

    attempts: int = 2
    """Retries allowed after the first try (Envoy ``num_retries``). Defaults to 2."""
    per_try_timeout: float | None = None
    """Seconds each try may take, the first included. Defaults to none (the route timeout)."""
    retry_on: frozenset[RetryCondition] = ISTIO_DEFAULT_RETRY_ON
    """Conditions that make an attempt retriable. Defaults to Istio's five."""
    retriable_status_codes: frozenset[int] = frozenset({503})
    """Codes matched by ``retriable-status-codes``. Defaults to {503}."""
    retriable_headers: tuple[str, ...] = ()
    """Response header names matched (by presence) by ``retriable-headers``. Defaults to none."""
    backoff_base: float = DEFAULT_BACKOFF_BASE
    """Base interval of the jittered exponential backoff, seconds. Defaults to 0.025."""
    backoff_max: float | None = None
    """Largest backoff, seconds. Defaults to 10 x ``backoff_base``."""
    retry_ignore_previous_hosts: bool = True
    """Retries avoid hosts already tried. Defaults to true."""
    retry_remote_localities: bool = False
    """Retries may leave the localities already tried for others. Defaults to false."""
    host_selection_retry_max_attempts: int = HOST_SELECTION_RETRY_MAX_ATTEMPTS
    """Times the balancer re-picks to avoid a tried host before it accepts one. Defaults to 5."""
    per_request_buffer_limit: int = DEFAULT_BUFFER_LIMIT
    """Bytes of request body kept for replay; a bigger body is not retried. Defaults to 1 MiB."""

    @classmethod
    def disabled(cls) -> "RetryPolicy":
        return cls(attempts=0)

    @classmethod
    def from_istio(cls, retries: "HTTPRetry | None", *,
                   fault: "HTTPFaultInjection | None" = None) -> "RetryPolicy":
        """Istio ``retry.ConvertPolicy``: no block -> the default policy; ``attempts: 0``
        -> off; ``retryOn`` replaces the conditions *and* the default 503. A client-side
        fault on the route turns retries off (Istio: "timeouts or retries will not be
        enabled when faults are enabled on the client side")."""
        if fault is not None:
            return cls.disabled()
        if retries is None:
            return cls()
        if retries.attempts <= 0:
            return cls.disabled()
        kwargs: dict[str, object] = {"attempts": retries.attempts}
        if retries.retry_on:
            kwargs["retry_on"], kwargs["retriable_status_codes"] = parse_retry_on(retries.retry_on)
        if retries.per_try_timeout is not None:
            kwargs["per_try_timeout"] = retries.per_try_timeout.seconds
        if retries.retry_remote_localities is not None:
            kwargs["retry_remote_localities"] = retries.retry_remote_localities
        if retries.retry_ignore_previous_hosts is not None:
            kwargs["retry_ignore_previous_hosts"] = retries.retry_ignore_previous_hosts
        if retries.backoff is not None:
            kwargs["backoff_base"] = retries.backoff.seconds
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def max_backoff(self) -> float:
        return self.backoff_max if self.backoff_max is not None else BACKOFF_MAX_FACTOR * self.backoff_base

    def classify(self, result: AttemptResult) -> RetryCondition | None:
        """The condition under which ``result`` is retriable, or None (Envoy
        ``wouldRetryFromHeaders`` / ``wouldRetryFromReset``)."""
        on = self.retry_on
        outcome = result.outcome
        if outcome is AttemptOutcome.OVERFLOW:
            return None  # Envoy: "we never retry if the reset reason is overflow"
        if outcome is AttemptOutcome.RESPONSE:
            return self._classify_response(result)
        if outcome is AttemptOutcome.CONNECT_FAILURE and RetryCondition.CONNECT_FAILURE in on:
            return RetryCondition.CONNECT_FAILURE
        sent = result.request_sent and outcome is not AttemptOutcome.CONNECT_FAILURE
        if not sent and RetryCondition.RESET_BEFORE_REQUEST in on:
            return RetryCondition.RESET_BEFORE_REQUEST
        # "5xx ... or does not respond at all (disconnect/reset/read timeout)"
        for cond in _RESET_CONDITIONS:
            if cond in on:
                return cond
        if outcome is AttemptOutcome.REFUSED_STREAM and RetryCondition.REFUSED_STREAM in on:
            return RetryCondition.REFUSED_STREAM
        return None

    def _classify_response(self, result: AttemptResult) -> RetryCondition | None:
        on = self.retry_on
        status = result.status or 0
        if "x-envoy-ratelimited" in result.headers:
            # Envoy: an upstream Envoy's rate-limit reply is retried only under envoy-ratelimited
            return RetryCondition.ENVOY_RATELIMITED if RetryCondition.ENVOY_RATELIMITED in on else None
        if RetryCondition.FIVE_XX in on and 500 <= status <= 599:
            return RetryCondition.FIVE_XX
        if RetryCondition.GATEWAY_ERROR in on and status in (502, 503, 504):
            return RetryCondition.GATEWAY_ERROR
        if RetryCondition.RETRIABLE_4XX in on and status == 409:
            return RetryCondition.RETRIABLE_4XX
        if RetryCondition.RETRIABLE_STATUS_CODES in on and status in self.retriable_status_codes:
            return RetryCondition.RETRIABLE_STATUS_CODES
        if RetryCondition.RETRIABLE_HEADERS in on and any(h in result.headers for h in self.retriable_headers):
            return RetryCondition.RETRIABLE_HEADERS
        grpc = result.effective_grpc_status
        if grpc is not None:
            for cond, code in GRPC_CONDITIONS.items():
                if cond in on and grpc == code:
                    return cond
        return None

    def should_retry(self, result: AttemptResult, attempt_no: int, *, replayable: bool = True) -> RetryDecision:
        """Whether attempt number ``attempt_no`` (1 = the first try) is followed by another.
        Pure: no backoff is drawn and no breaker consulted (``RetryState`` does both)."""
        if attempt_no < 1:
            raise ValueError(f"attempt_no counts from 1; found {attempt_no!r}")
        if self.attempts <= 0:
            return RetryDecision(RetryVerdict.DONE)
        cond = self.classify(result)
        if cond is None:
            return RetryDecision(RetryVerdict.DONE)
        if not replayable:
            return RetryDecision(RetryVerdict.NOT_REPLAYABLE, cond)
        if attempt_no > self.attempts:
            return RetryDecision(RetryVerdict.LIMIT_EXCEEDED, cond, flag=ResponseFlag.URX)
        return RetryDecision(RetryVerdict.RETRY, cond)

    def backoff_bound(self, retry_index: int) -> float:
        """Upper bound (exclusive) of the pause before retry ``retry_index`` (0 = first retry):
        ``min(max, base * 2**n)`` - Envoy ``JitteredExponentialBackOffStrategy`` doubles its
        interval per retry up to ``max_interval`` and draws uniformly below it."""
        return min(self.max_backoff, self.backoff_base * (2 ** retry_index))

    def draw_backoff(self, rng: random.Random, retry_index: int) -> float:
        """A "full jitter" pause: uniform in whole milliseconds over ``[0, bound)``, as Envoy
        draws ``random() % interval_ms``."""
        bound_ms = max(1, round(self.backoff_bound(retry_index) * 1000))
        return rng.randrange(bound_ms) / 1000.0
