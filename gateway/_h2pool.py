"""Pooled HTTP/2 connections: many concurrent streams on one connection per upstream.

Theory of operation. Between sidecars, and from the inbound side to an h2c app, an
HTTP/2 connection carries every concurrent request of a key as its own stream - a full
mTLS handshake (~1.2 ms of CPU here) is paid once, not once per concurrent request as
with HTTP/1.1. Keys are those of ``_upstream`` - ``(address, port, SNI, "h2")`` for
mTLS, ``(address, port, "", "h2c")`` in plaintext - so a sidecar reached under two SNIs
(two service ports) gets two connections, as Envoy keeps one pool per cluster.

``open_stream(key)`` returns a stream on the first connection of the key that has room
(fewer open streams than the peer's SETTINGS_MAX_CONCURRENT_STREAMS and our own
``max_concurrent_streams``), else opens one more connection - one connect at a time per
key: requests that arrive meanwhile wait for it rather than each opening their own. A
connection leaves the pool when the peer sends GOAWAY (its open streams may finish),
when it breaks, and when it has had no stream for the idle timeout (``expire``, run by the
reaper task ``run``). Every session runs in the pool's nursery; stopping the pool ends
them all.

A cluster's DestinationRule ``connectionPool`` applies as to HTTP/1.1 (``_conngate``,
passed as ``gate``): a new connection needs a ``tcp.maxConnections`` permit, held until
the connection ends - without one the request waits as one of
``http1MaxPendingRequests`` (or overflows, 503 ``UO``) until a connection ends or a
stream finishes; ``http.maxRequestsPerConnection`` and ``tcp.maxConnectionDuration``
drain a connection (no new stream; GOAWAY once its streams are done); ``tcpKeepalive``
is set on the socket; the cluster's ``idleTimeout`` replaces the pool's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from . import GatewayError
from ._events import Role
from ._h2session import H2Session, H2Stream, upstream_gone
from ._limits import DEFAULT_LIMITS, HttpLimits
from ._rescue import UpstreamConnectError, UpstreamResetError
from ._upstream import PoolKey, UpstreamConnection, open_gated

if TYPE_CHECKING:
    from ._breaker import Permit
    from ._conngate import ConnectionGate

if TYPE_CHECKING:
    from trustdomain import MtlsContexts

log = logging.getLogger("meshfed.gateway.h2pool")

H2_ALPN = "h2"
UNSET = -1.0
"""``open_stream``'s idle timeout when the caller gives none: the pool's own."""


@dataclass
class H2KeyStats:
    """Counters of one key, for ``/clusters`` and tests."""

    cx_total: int = 0
    cx_active: int = 0
    cx_connect_fail: int = 0
    cx_goaway: int = 0
    rq_total: int = 0
    max_streams: int = 0
    """Most streams ever open at once on one connection of the key (the multiplexing seen)."""


class H2Pool:
    """HTTP/2 sessions by key; see the module docstring."""

    def __init__(self, mtls: Callable[[], MtlsContexts | None], *, limits: HttpLimits = DEFAULT_LIMITS,
                 idle_timeout: float = 60.0, clock: Callable[[], float] = trio.current_time) -> None:
        self._mtls = mtls
        self._h2_mtls: tuple[object, int, MtlsContexts] | None = None
        self.limits = limits
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._sessions: dict[PoolKey, list[H2Session]] = {}
        self._connecting: dict[PoolKey, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.stats: dict[PoolKey, H2KeyStats] = {}

    def _stats(self, key: PoolKey) -> H2KeyStats:
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = H2KeyStats()
        return found

    def h2_contexts(self) -> MtlsContexts | None:
        """The proxy's client contexts offering ALPN ``h2`` only (built once per certificate)."""
        base = self._mtls()
        if base is None:
            return None
        cached = self._h2_mtls
        if cached is None or cached[0] is not base or cached[1] != base.generation:
            from trustdomain import MtlsContexts  # cryptography: loaded only for mTLS

            cached = self._h2_mtls = (base, base.generation, MtlsContexts(base.svid, base.bundles, alpn=(H2_ALPN,)))
        return cached[2]

    def sessions(self, key: PoolKey) -> list[H2Session]:
        return list(self._sessions.get(key, ()))

    def counts(self, key: PoolKey) -> tuple[int, int, int]:
        """(open connections, connections ever opened, streams open now) of ``key``, for ``/clusters``."""
        stats = self.stats.get(key)
        if stats is None:
            return 0, 0, 0
        return stats.cx_active, stats.cx_total, sum(s.active for s in self._sessions.get(key, ()))

    async def open_stream(self, key: PoolKey, connect_timeout: float, gate: ConnectionGate | None = None,
                          idle_timeout: float | None = UNSET) -> H2Stream:
        """A new stream to ``key``; ``UpstreamConnectError`` if no connection can be made,
        ``UpstreamOverflowError`` when ``gate`` allows no connection and no pending request."""
        connected = False
        while True:
            sessions = self._sessions.get(key)
            if sessions:
                now = self._clock()
                for session in tuple(sessions):
                    if session.drain_at <= now:
                        self._drain(key, session)
                    elif session.has_capacity():
                        return self._open(key, session)
            waiting = self._connecting.get(key)
            if waiting is not None:
                await waiting.wait()
                continue
            if connected:  # our own new connection has no room: the peer allows no stream
                raise UpstreamResetError(f"{key[0]}:{key[1]}", "the peer allows no concurrent stream")
            permit = None
            if gate is not None and gate.limited:
                permit = gate.try_connect(self, key)  # type: ignore[arg-type]
                if permit is None:
                    await gate.wait_pending()
                    continue
            await self._connect(key, connect_timeout, gate, permit, idle_timeout)
            connected = True

    def _open(self, key: PoolKey, session: H2Session) -> H2Stream:
        stream = session.open_stream()
        stats = self._stats(key)
        stats.rq_total += 1
        if session.active > stats.max_streams:
            stats.max_streams = session.active
        if session.max_opened and session.opened >= session.max_opened:
            self._drain(key, session)  # maxRequestsPerConnection: this was its last stream
        return stream

    def _drain(self, key: PoolKey, session: H2Session) -> None:
        """No new stream on ``session``; it ends (GOAWAY) once its streams are done."""
        self._drop(key, session)
        session.close()

    def evict_idle(self, keys: set[PoolKey]) -> bool:
        """Close one connection of ``keys`` with no open stream; whether there was one
        (``ConnectionGate.try_connect`` makes room for another host this way)."""
        for key in keys:
            for session in self._sessions.get(key, ()):
                if not session.active:
                    self._drain(key, session)
                    return True
        return False

    async def _connect(self, key: PoolKey, timeout: float, gate: ConnectionGate | None = None,
                       permit: Permit | None = None, idle_timeout: float | None = UNSET) -> None:
        if self._nursery is None:
            if permit is not None:
                permit.release()
            raise GatewayError("the HTTP/2 pool is not running")
        done = self._connecting[key] = trio.Event()
        stats = self._stats(key)
        try:
            conn = await open_gated(key, self.h2_contexts() if key[2] else None, timeout, None, self.limits, gate,
                                    permit, stats)
            conn.gate = gate  # closing the connection gives the permit back and wakes the gate
            if key[2]:
                alpn = getattr(conn.stream, "selected_alpn_protocol", lambda: None)()
                if alpn != H2_ALPN:
                    conn.close()
                    stats.cx_connect_fail += 1
                    raise UpstreamConnectError(conn.address, f"the peer did not agree to HTTP/2 (ALPN {alpn!r})")
            session = H2Session(conn.stream, Role.CLIENT, self.limits, gone=upstream_gone(conn.address),
                                name=conn.address, peer=conn.peer)
            session.on_goaway = lambda s: self._goaway(key, s)
            session.drain_at = conn.drain_at
            session.pool_idle_timeout = self.idle_timeout if idle_timeout == UNSET else idle_timeout
            if gate is not None:
                session.max_opened = gate.breaker.config.max_requests_per_connection
                if gate.limited:
                    session.on_stream_done = gate.wake
            await self._nursery.start(self._run, key, session, conn)
            self._sessions.setdefault(key, []).append(session)
        finally:
            del self._connecting[key]
            done.set()

    async def _run(self, key: PoolKey, session: H2Session, conn: UpstreamConnection, *,
                   task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        stats = self._stats(key)
        stats.cx_total += 1
        stats.cx_active += 1
        try:
            await session.run(task_status=task_status)
        finally:
            self._drop(key, session)
            stats.cx_active -= 1
            conn.close()

    def _goaway(self, key: PoolKey, session: H2Session) -> None:
        self._stats(key).cx_goaway += 1
        self._drop(key, session)

    def _drop(self, key: PoolKey, session: H2Session) -> None:
        sessions = self._sessions.get(key)
        if sessions and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._sessions[key]

    def expire(self, now: float) -> int:
        """Close connections with no stream for their idle timeout, and drain those past
        their ``maxConnectionDuration``; how many."""
        closed = 0
        for key in list(self._sessions):
            for session in list(self._sessions.get(key, ())):
                idle = session.pool_idle_timeout
                if session.drain_at <= now or (not session.active and idle is not None
                                               and session.last_active + idle <= now):
                    self._drain(key, session)
                    closed += 1
        return closed

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' nursery and expire idle ones until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(min(1.0, max(self.idle_timeout / 4, 0.05)))
                    self.expire(self._clock())
        finally:
            self._nursery = None
            self._sessions.clear()

    def __repr__(self) -> str:
        sessions = sum(len(s) for s in self._sessions.values())
        streams = sum(s.active for ss in self._sessions.values() for s in ss)
        return f"<H2Pool {len(self.stats)} keys [{sessions} connections, {streams} streams]>"
