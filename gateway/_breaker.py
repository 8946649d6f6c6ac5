"""Circuit breakers: Envoy's per-cluster resource limits, configured from a
DestinationRule's ``connectionPool``.

Theory of operation. Envoy's "circuit breakers" are not open/closed/half-open
machines but four counting semaphores per cluster (connections, pending requests,
active requests, active retries). A caller asks for one unit *before* it opens a
connection, queues for one, sends a request or starts a retry; if the count is at its
limit the answer is an immediate ``Overflow`` - the caller answers 503 with response
flag ``UO`` (or, for a retry, gives up on retrying). There is never a queue that grows:
the pending-request limit *is* the bound on the queue. A granted ``Permit`` is a small
state machine that must be released exactly once; releasing twice is a bug, and the
table says so.

With a retry budget, the retry limit follows the load instead of a constant:
``max(min_retry_concurrency, budget_percent% of (active + pending requests))``
(Envoy ``RetryBudgetImpl::max``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._flags import ResponseFlag
from ._transitions import IllegalTransitionError, step

if TYPE_CHECKING:
    from topology._traffic_policy import ConnectionPoolSettings

UINT32_MAX = 2**32 - 1
"""Istio's value for every threshold it does not set (pilot ``getDefaultCircuitBreakerThresholds``)."""
ENVOY_DEFAULT_LIMIT = 1024  # Envoy: max_connections / max_pending_requests / max_requests default
ENVOY_DEFAULT_MAX_RETRIES = 3  # Envoy: max_retries default


class Resource(enum.Enum):
    """A counted resource and the Envoy names of its counters."""

    CONNECTIONS = ("cx", "upstream_cx_overflow")
    PENDING_REQUESTS = ("pending", "upstream_rq_pending_overflow")
    REQUESTS = ("rq", "upstream_rq_pending_overflow")  # Envoy counts both request limits here
    RETRIES = ("retries", "upstream_rq_retry_overflow")

    @property
    def short(self) -> str:
        return self.value[0]


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retry limit proportional to the load (Envoy ``CircuitBreakers.Thresholds.RetryBudget``)."""

    budget_percent: float = 20.0
    """Share of active plus pending requests that may be retries, in percent. Defaults to 20."""
    min_retry_concurrency: int = 3
    """Retries always allowed whatever the load. Defaults to 3."""


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Limits of one upstream cluster. Defaults are Istio's (every limit 2^32-1, i.e. off),
    which are what a DestinationRule without ``connectionPool`` gets; ``envoy_defaults()``
    gives Envoy's own."""

    max_connections: int = UINT32_MAX
    """Connections open to the cluster at once (``tcp.maxConnections``). Defaults to 2^32-1."""
    max_pending_requests: int = UINT32_MAX
    """Requests waiting for a connection (``http.http1MaxPendingRequests``). Defaults to 2^32-1."""
    max_requests: int = UINT32_MAX
    """Requests in flight, HTTP/1.1 and HTTP/2 alike (``http.http2MaxRequests``). Defaults to 2^32-1."""
    max_retries: int = UINT32_MAX
    """Retries in flight to the cluster (``http.maxRetries``). Defaults to 2^32-1."""
    max_requests_per_connection: int = 0
    """Requests served on one upstream connection before it is closed; 0 means no limit
    (``http.maxRequestsPerConnection``). Defaults to 0."""
    retry_budget: RetryBudget | None = None
    """When set, replaces ``max_retries`` with a load-proportional limit. Defaults to none."""

    @classmethod
    def envoy_defaults(cls) -> "CircuitBreakerConfig":
        """Envoy's defaults when nothing configures the cluster: 1024/1024/1024 and 3 retries."""
        return cls(ENVOY_DEFAULT_LIMIT, ENVOY_DEFAULT_LIMIT, ENVOY_DEFAULT_LIMIT, ENVOY_DEFAULT_MAX_RETRIES)

    @classmethod
    def from_istio(cls, pool: "ConnectionPoolSettings | None") -> "CircuitBreakerConfig":
        """Istio's translation (pilot ``applyConnectionPool``): a field that is unset or 0
        keeps the 2^32-1 default - Istio cannot tell 0 from unset."""
        tcp = pool.tcp if pool is not None else None
        http = pool.http if pool is not None else None

        def pick(value: int | None) -> int:
            return value if value else UINT32_MAX

        return cls(
            max_connections=pick(tcp.max_connections if tcp else None),
            max_pending_requests=pick(http.http1_max_pending_requests if http else None),
            max_requests=pick(http.http2_max_requests if http else None),
            max_retries=pick(http.max_retries if http else None),
            max_requests_per_connection=(http.max_requests_per_connection or 0) if http else 0,
        )


@dataclass(frozen=True, slots=True)
class Overflow:
    """The limit for ``resource`` is reached: answer 503 with flag UO at once."""

    resource: Resource
    status: int = 503
    flag: ResponseFlag = ResponseFlag.UO


class PermitState(enum.Enum):
    HELD = "held"
    RELEASED = "released"
    ERROR = "error"


class PermitInput(enum.Enum):
    RELEASE = "release"


PERMIT_TRANSITIONS: dict[tuple[PermitState, PermitInput], PermitState] = {
    (PermitState.HELD, PermitInput.RELEASE): PermitState.RELEASED,
}


class Permit:
    """One unit of a resource; give it back with ``release()`` (or a ``with`` block) exactly once."""

    __slots__ = ("resource", "state", "_breaker")

    def __init__(self, breaker: "CircuitBreaker", resource: Resource) -> None:
        self.resource = resource
        self.state = PermitState.HELD
        self._breaker = breaker

    def release(self) -> None:
        try:
            self.state = step("Permit", PERMIT_TRANSITIONS, self.state, PermitInput.RELEASE)
        except IllegalTransitionError:
            self.state = PermitState.ERROR
            raise
        self._breaker._active[self.resource] -= 1

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.state is PermitState.HELD:
            self.release()

    def __repr__(self) -> str:
        return f"<Permit {self.resource.short} {self.state.value}>"


class CircuitBreaker:
    """The four resource counters of one cluster, with Envoy's overflow counters."""

    def __init__(self, config: CircuitBreakerConfig | None = None, name: str = "") -> None:
        self.config = config or CircuitBreakerConfig()
        self.name = name
        self._active = {r: 0 for r in Resource}
        self._overflows = {r: 0 for r in Resource}

    def limit(self, resource: Resource) -> int:
        """The current limit; for retries under a budget it moves with the load."""
        cfg = self.config
        if resource is Resource.CONNECTIONS:
            return cfg.max_connections
        if resource is Resource.PENDING_REQUESTS:
            return cfg.max_pending_requests
        if resource is Resource.REQUESTS:
            return cfg.max_requests
        budget = cfg.retry_budget
        if budget is None:
            return cfg.max_retries
        load = self._active[Resource.REQUESTS] + self._active[Resource.PENDING_REQUESTS]
        # Envoy: "the retry concurrency is never allowed to go below the min_retry_concurrency"
        return max(int(budget.budget_percent / 100.0 * load), budget.min_retry_concurrency)

    def try_acquire(self, resource: Resource) -> Permit | Overflow:
        """A permit, or ``Overflow`` when the resource is at its limit (Envoy ``canCreate``)."""
        if self._active[resource] >= self.limit(resource):
            self._overflows[resource] += 1
            return Overflow(resource)
        self._active[resource] += 1
        return Permit(self, resource)

    def active(self, resource: Resource) -> int:
        return self._active[resource]

    def remaining(self, resource: Resource) -> int:
        """Envoy's ``remaining_*`` gauge: units left before overflow."""
        return max(self.limit(resource) - self._active[resource], 0)

    def overflows(self, resource: Resource) -> int:
        """How many times ``resource`` refused a unit."""
        return self._overflows[resource]

    def is_open(self, resource: Resource) -> bool:
        """Envoy's ``*_open`` gauge: the next request for ``resource`` would overflow."""
        return self.remaining(resource) == 0

    def should_close_connection(self, requests_served: int) -> bool:
        """Whether a connection that has served this many requests is done (maxRequestsPerConnection)."""
        limit = self.config.max_requests_per_connection
        return limit > 0 and requests_served >= limit

    @property
    def stats(self) -> dict[str, int]:
        """Counters and gauges by Envoy's names (``upstream_cx_overflow``, ``remaining_rq``, ...)."""
        out: dict[str, int] = {}
        for r in Resource:
            name = r.value[1]
            out[name] = out.get(name, 0) + self._overflows[r]
            out[f"remaining_{r.short}"] = self.remaining(r)
            out[f"{r.short}_open"] = int(self.is_open(r))
        return out

    def __repr__(self) -> str:
        parts = " ".join(f"{r.short} {self._active[r]}/{self.limit(r)}" for r in Resource)
        return f"<CircuitBreaker {self.name or '-'} {parts}>"
