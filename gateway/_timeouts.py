"""Timeouts of a request: which deadline applies next and what its expiry means.

Theory of operation. A request has up to three clocks: the route ``timeout`` (all
attempts together, retries and backoffs included), the ``perTryTimeout`` of the
current attempt, and the connect timeout while an upstream connection is being opened.
``TimeoutPolicy`` is the compiled per-route config; ``policy.start(now, headers)``
fixes the request's deadlines (absolute, on the monotonic clock the caller passes) and
returns a ``RequestTimer`` that answers "what is the next deadline" and "has one
passed, and with what status and flag". Nothing here sleeps: the trio layer wraps the
attempt in ``move_on_at(timer.next_deadline(...).at)``.

Envoy's rules kept here (router ``FilterUtility::finalTimeout``):
- ``x-envoy-upstream-rq-timeout-ms`` replaces the route timeout; ``0`` means none; a
  value that is not a whole number is ignored. The per-try header
  ``x-envoy-upstream-rq-per-try-timeout-ms`` likewise replaces ``perTryTimeout``. The
  I/O layer passes these headers only for trusted callers (a sidecar's own workload)
  and strips them otherwise.
- A per-try timeout not shorter than the route timeout is ignored.
- Route and per-try expiry both answer 504 with flag UT; a connect timeout is a
  connection failure: 503 with flag UF (retriable under ``connect-failure``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._flags import ResponseFlag

if TYPE_CHECKING:
    from topology._http_route import HTTPRoute
    from topology._traffic_policy import ConnectionPoolSettings

DEFAULT_CONNECT_TIMEOUT = 10.0  # Istio MeshConfig connectTimeout default 10s
DEFAULT_IDLE_TIMEOUT = 3600.0  # Envoy common_http_protocol_options.idle_timeout default 1h
TIMEOUT_HEADER = "x-envoy-upstream-rq-timeout-ms"
PER_TRY_TIMEOUT_HEADER = "x-envoy-upstream-rq-per-try-timeout-ms"
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"


class TimeoutKind(enum.Enum):
    """Which clock expired, with the status and response flag it answers with."""

    ROUTE = ("route timeout", 504, ResponseFlag.UT)
    PER_TRY = ("per-try timeout", 504, ResponseFlag.UT)
    CONNECT = ("connect timeout", 503, ResponseFlag.UF)

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def flag(self) -> ResponseFlag:
        return self.value[2]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute monotonic time and the clock it belongs to."""

    at: float
    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class TimeoutExpired:
    """A deadline passed: answer ``status`` (504/503) with ``flag`` (UT/UF)."""

    kind: TimeoutKind

    @property
    def status(self) -> int:
        return self.kind.status

    @property
    def flag(self) -> ResponseFlag:
        return self.kind.flag


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """Timeouts of one route towards one cluster. Defaults are Istio's."""

    route_timeout: float | None = None
    """Seconds for the whole request, retries included (VirtualService ``timeout``).
    Defaults to none: Istio disables Envoy's 15 s route timeout."""
    per_try_timeout: float | None = None
    """Seconds per attempt (``retries.perTryTimeout``). Defaults to none."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    """Seconds to open an upstream connection (``connectionPool.tcp.connectTimeout``). Defaults to 10."""
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    """Seconds a pooled upstream connection may sit unused (``connectionPool.http.idleTimeout``,
    else ``tcp.idleTimeout``); None disables. Defaults to 3600."""

    @classmethod
    def from_istio(cls, route: "HTTPRoute | None" = None,
                   pool: "ConnectionPoolSettings | None" = None) -> "TimeoutPolicy":
        """Route timeout and per-try timeout from the VirtualService rule (both dropped when
        the rule injects faults, as Istio documents), connect and idle timeouts from the
        DestinationRule's connection pool (a zero idle timeout disables it)."""
        route_timeout = per_try = None
        if route is not None and route.fault is None:
            if route.timeout is not None and route.timeout.nanos > 0:
                route_timeout = route.timeout.seconds
            retries = route.retries
            if retries is not None and retries.attempts > 0 and retries.per_try_timeout is not None:
                per_try = retries.per_try_timeout.seconds
        connect, idle = DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT
        tcp = pool.tcp if pool is not None else None
        http = pool.http if pool is not None else None
        if tcp is not None and tcp.connect_timeout is not None:
            connect = tcp.connect_timeout.seconds
        idle_spec = (http.idle_timeout if http is not None else None) or (tcp.idle_timeout if tcp else None)
        idle_value: float | None = idle
        if idle_spec is not None:
            idle_value = idle_spec.seconds or None
        return cls(route_timeout, per_try, connect, idle_value)

    def start(self, now: float, headers: Mapping[str, str] | None = None) -> "RequestTimer":
        """Fix the deadlines of a request received at ``now``. ``headers`` are the trusted
        request headers (lower-case names) that may override the timeouts."""
        route_timeout, per_try = self.route_timeout, self.per_try_timeout
        if headers:
            override = _header_seconds(headers.get(TIMEOUT_HEADER))
            if override is not None:
                route_timeout = override or None
            override = _header_seconds(headers.get(PER_TRY_TIMEOUT_HEADER))
            if override is not None:
                per_try = override or None
        if per_try is not None and route_timeout is not None and per_try >= route_timeout:
            per_try = None  # Envoy: "If it's >= global we just ignore it."
        return RequestTimer(self, now, route_timeout, per_try)


def _header_seconds(value: str | None) -> float | None:
    """Milliseconds in a timeout header as seconds; None when absent or not a whole number."""
    if value is None:
        return None
    value = value.strip()
    return int(value) / 1000.0 if value.isdigit() else None


class RequestTimer:
    """The deadlines of one request; pure queries on ``now``."""

    __slots__ = ("policy", "started", "route_timeout", "per_try_timeout")

    def __init__(self, policy: TimeoutPolicy, started: float, route_timeout: float | None,
                 per_try_timeout: float | None) -> None:
        self.policy = policy
        self.started = started
        self.route_timeout = route_timeout
        self.per_try_timeout = per_try_timeout

    @property
    def route_deadline(self) -> float | None:
        return None if self.route_timeout is None else self.started + self.route_timeout

    @property
    def expected_timeout_ms(self) -> int | None:
        """Value of ``x-envoy-expected-rq-timeout-ms`` sent upstream: the per-try timeout
        if any, else the route timeout."""
        t = self.per_try_timeout if self.per_try_timeout is not None else self.route_timeout
        return None if t is None else round(t * 1000)

    def next_deadline(self, *, attempt_started: float | None = None,
                      connect_started: float | None = None) -> Deadline | None:
        """The earliest deadline that applies: the route's, the current attempt's (when
        ``attempt_started``), the connection's (when ``connect_started``)."""
        candidates: list[Deadline] = []
        if self.route_deadline is not None:
            candidates.append(Deadline(self.route_deadline, TimeoutKind.ROUTE))
        if attempt_started is not None and self.per_try_timeout is not None:
            candidates.append(Deadline(attempt_started + self.per_try_timeout, TimeoutKind.PER_TRY))
        if connect_started is not None:
            candidates.append(Deadline(connect_started + self.policy.connect_timeout, TimeoutKind.CONNECT))
        # On a tie the route deadline wins: it ends the request, not only the attempt.
        return min(candidates, key=lambda d: d.at) if candidates else None

    def expired(self, now: float, *, attempt_started: float | None = None,
                connect_started: float | None = None) -> TimeoutExpired | None:
        """The timeout that has passed at ``now``, if any (a deadline is reached at ``now >= at``)."""
        deadline = self.next_deadline(attempt_started=attempt_started, connect_started=connect_started)
        if deadline is None or now < deadline.at:
            return None
        return TimeoutExpired(deadline.kind)

    def remaining(self, now: float) -> float | None:
        """Seconds left of the route timeout (never negative); None without one."""
        d = self.route_deadline
        return None if d is None else max(d - now, 0.0)

    def __repr__(self) -> str:
        return (f"<RequestTimer started={self.started:g} route={self.route_timeout} "
                f"per_try={self.per_try_timeout}>")


def idle_expiry(policy: TimeoutPolicy, last_active: float) -> float | None:
    """When a pooled connection last used at ``last_active`` should be closed; None if never."""
    return None if policy.idle_timeout is None else last_active + policy.idle_timeout
