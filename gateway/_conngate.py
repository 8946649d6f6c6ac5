"""A cluster's connection circuit breaker: ``tcp.maxConnections`` and
``http.http1MaxPendingRequests``, enforced where upstream connections are opened.

Theory of operation (Envoy's HTTP/1.1 connection pool). A request that finds no idle
connection opens one if the cluster is below ``maxConnections``; otherwise it becomes a
*pending* request - if the pending count is below ``http1MaxPendingRequests`` - and
waits until a connection of the cluster is released or closed; beyond that it is
refused at once with 503 ``UO``. The pending limit is the bound on the queue: there is
no queue that grows without bound, and a waiter that is cancelled (timeout, client gone)
gives its place back. A connection holds its ``CONNECTIONS`` permit from the moment it is
opened until it is closed, idle time included, as Envoy counts ``upstream_cx_active``.

An idle connection to another host of the same cluster counts against the limit too; a
waiter that finds one closes it to make room rather than waiting for the idle timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ._breaker import UINT32_MAX, CircuitBreaker, Overflow, Permit, Resource
from ._rescue import UpstreamOverflowError
from ._upstream import DEFAULT_OPTIONS, UpstreamOptions

if TYPE_CHECKING:
    from ._upstream import PoolKey, UpstreamPool


class ConnectionGate:
    """Connections and pending requests of one cluster (see the module docstring)."""

    __slots__ = ("breaker", "name", "keys", "on_overflow", "options", "_lot")

    def __init__(self, breaker: CircuitBreaker, name: str = "",
                 on_overflow: Callable[[str, Overflow], None] | None = None,
                 options: UpstreamOptions | None = None) -> None:
        self.breaker = breaker
        self.name = name
        self.options = options if options is not None else DEFAULT_OPTIONS
        """How the cluster's connections are made and aged (keepalive, maxConnectionDuration)."""
        self.keys: set[PoolKey] = set()
        """Pool keys of the connections opened through this gate."""
        self.on_overflow = on_overflow
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def limited(self) -> bool:
        """Only a cluster with ``maxConnections`` set needs the gate on its path."""
        return self.breaker.config.max_connections < UINT32_MAX

    def try_connect(self, pool: UpstreamPool, key: PoolKey) -> Permit | None:
        """A permit to open one more connection, making room by closing an idle
        connection to another host of the cluster if that is what stands in the way."""
        got = self.breaker.try_acquire(Resource.CONNECTIONS)
        if isinstance(got, Overflow) and pool.evict_idle(self.keys - {key}):
            got = self.breaker.try_acquire(Resource.CONNECTIONS)
        if isinstance(got, Overflow):
            return None
        self.keys.add(key)
        return got

    async def wait_pending(self) -> None:
        """Wait, as one pending request, until a connection is released or closed;
        ``UpstreamOverflowError`` at once when the pending queue is full."""
        pending = self.breaker.try_acquire(Resource.PENDING_REQUESTS)
        if isinstance(pending, Overflow):
            if self.on_overflow is not None:
                self.on_overflow(self.name, pending)
            raise UpstreamOverflowError(self.name, "pending requests")
        try:
            await self._lot.park()
        finally:
            pending.release()

    def wake(self) -> None:
        """A connection of the cluster was released to the pool or closed: one waiter may go on."""
        if self._lot:
            self._lot.unpark()

    @property
    def waiting(self) -> int:
        return len(self._lot)

    def __repr__(self) -> str:
        b = self.breaker
        return (f"<ConnectionGate {self.name or '-'} cx {b.active(Resource.CONNECTIONS)}/"
                f"{b.limit(Resource.CONNECTIONS)} pending {self.waiting}/{b.limit(Resource.PENDING_REQUESTS)}>")
