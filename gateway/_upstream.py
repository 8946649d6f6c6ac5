"""Pooled upstream connections: to other sidecars over mTLS, and to the local app in plain.

Theory of operation. A full mTLS handshake costs ~1.2 ms of CPU here, a TLS record ~6
µs, so connections between sidecars are opened once and reused. The pool keys them by
``(address, port, SNI, ALPN)`` - two clusters reaching one sidecar with different SNIs
never share a connection, since the SNI told that sidecar which app port is meant.

``acquire(key)`` hands out an idle connection (most recently used first, so the others
can age out) or opens a new one; the caller owns it until ``release(conn, reusable)``.
A connection goes back only after a complete request *and* response on it, with the
codec ready for the next cycle (``reusable=True``); anything else closes it. An idle
connection the peer closed (or sent anything to - an HTTP/1.1 server never speaks
first) is found by a zero-timeout poll of its socket before reuse and discarded. Idle
connections expire after their idle timeout (the pool's, or the cluster's from a
DestinationRule); ``run`` is the reaper, a task in the proxy's nursery. At most
``max_idle_per_key`` wait per key; a release beyond that closes the connection.

Closing is synchronous (the socket is closed, no TLS close_notify is sent, as Envoy
resets pooled connections), so ``release`` never blocks a request's task.

A cluster's DestinationRule ``connectionPool`` reaches the pool as ``UpstreamOptions`` on
its ``ConnectionGate``: ``tcp.tcpKeepalive`` is set on each new socket (SO_KEEPALIVE,
TCP_KEEPIDLE/INTVL/CNT), and a connection older than ``tcp.maxConnectionDuration`` takes
no new request (Envoy drains it: the request on it finishes, then it is closed).
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from trustdomain import TrustDomainError

from ._events import Role
from ._fastio import FastSocketStream, FastTlsStream, connect
from ._http1 import Http1Connection
from ._limits import DEFAULT_LIMITS, HttpLimits
from ._rescue import UpstreamConnectError

if TYPE_CHECKING:
    from trustdomain import MtlsContexts

    from ._breaker import Permit
    from ._conngate import ConnectionGate

log = logging.getLogger("meshfed.gateway.upstream")

PoolKey = tuple[str, int, str, str]
"""(address, port, SNI, ALPN); SNI and ALPN empty for plaintext."""


@dataclass(frozen=True, slots=True)
class TcpKeepaliveOptions:
    """``tcp.tcpKeepalive``: SO_KEEPALIVE with these; None leaves the OS's value."""

    time: float | None = None
    interval: float | None = None
    probes: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """How a cluster's upstream connections are made and aged (DestinationRule connectionPool)."""

    keepalive: TcpKeepaliveOptions | None = None
    """``tcp.tcpKeepalive``; None: no SO_KEEPALIVE, Envoy's default."""
    max_connection_duration: float | None = None
    """``tcp.maxConnectionDuration`` in seconds: older connections take no new request."""
    h2_upgrade: bool = False
    """``http.h2UpgradePolicy: UPGRADE``: HTTP/1.1 requests go to the peer sidecar over HTTP/2."""

    @classmethod
    def from_istio(cls, pool: Any) -> UpstreamOptions:
        """From an Istio ``ConnectionPoolSettings`` (or None)."""
        tcp = pool.tcp if pool is not None else None
        http = pool.http if pool is not None else None
        keepalive = None
        if tcp is not None and tcp.tcp_keepalive is not None:
            k = tcp.tcp_keepalive
            keepalive = TcpKeepaliveOptions(k.time.seconds if k.time is not None else None,
                                            k.interval.seconds if k.interval is not None else None, k.probes)
        duration = tcp.max_connection_duration.seconds if tcp is not None and tcp.max_connection_duration else None
        upgrade = http is not None and getattr(http.h2_upgrade_policy, "value", None) == "UPGRADE"
        return cls(keepalive, duration, upgrade)


DEFAULT_OPTIONS = UpstreamOptions()


def set_keepalive(sock: socket.socket, keepalive: TcpKeepaliveOptions) -> None:
    """SO_KEEPALIVE on ``sock``, with the probe timing ``keepalive`` gives (whole seconds, at least 1)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in ((socket.TCP_KEEPIDLE, keepalive.time), (socket.TCP_KEEPINTVL, keepalive.interval),
                          (socket.TCP_KEEPCNT, keepalive.probes)):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, math.ceil(value)))


class UpstreamConnection:
    """One open upstream connection and its HTTP/1.1 client codec."""

    __slots__ = ("key", "stream", "codec", "served", "expires", "closed", "peer", "gate", "permit", "drain_at",
                 "_raw", "_pool", "_poller", "_polled_fd")

    def __init__(self, key: PoolKey, stream: trio.abc.Stream, raw: FastSocketStream,
                 pool: UpstreamPool | None, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.key = key
        self.stream = stream
        """The stream to speak HTTP on: ``raw`` itself, or TLS over it."""
        self.codec = Http1Connection(Role.CLIENT, limits)
        self.served = 0
        """Requests completed on this connection."""
        self.expires = 0.0
        self.closed = False
        self.peer = ""
        """The verified SPIFFE ID of the server, for mTLS connections."""
        self.gate: ConnectionGate | None = None
        """The cluster connection breaker this connection counts against, if any."""
        self.permit: Permit | None = None
        self.drain_at = math.inf
        """When this connection stops taking requests (``maxConnectionDuration``)."""
        self._raw = raw
        self._pool = pool
        self._poller: Any = None
        """``select.poll`` with the socket registered, kept for ``is_stale`` (one per connection)."""
        self._polled_fd = -1

    @property
    def address(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    def is_stale(self) -> bool:
        """The peer closed the idle connection or sent something unasked: do not reuse it."""
        if self.closed:
            return True
        try:
            fd = self._raw.socket.fileno()
            poller = self._poller
            if poller is None or fd != self._polled_fd:
                poller = self._poller = select.poll()
                poller.register(fd, select.POLLIN)
                self._polled_fd = fd
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        """Close now, without blocking: the socket goes, tasks waiting on it are woken."""
        if self.closed:
            return
        self.closed = True
        if self._pool is not None:
            self._pool._closed(self)
        self._raw.close()
        if self.permit is not None:
            self.permit.release()
            self.permit = None
        if self.gate is not None:
            self.gate.wake()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        sni = f" {self.key[2]}" if self.key[2] else ""
        return f"<UpstreamConnection {self.address}{sni} {state} served={self.served}>"


@dataclass
class KeyStats:
    """Connection counters of one pool key, for ``/clusters``."""

    cx_total: int = 0
    cx_active: int = 0
    cx_connect_fail: int = 0


async def open_connection(key: PoolKey, mtls: MtlsContexts | None, timeout: float,
                          pool: UpstreamPool | None = None,
                          limits: HttpLimits = DEFAULT_LIMITS,
                          options: UpstreamOptions = DEFAULT_OPTIONS) -> UpstreamConnection:
    """Connect to ``key`` (TCP, then the mTLS handshake with SNI when ``key`` names one);
    ``UpstreamConnectError`` naming the address and why on any failure."""
    address, port, sni, _ = key
    where = f"{address}:{port}"
    raw: FastSocketStream | None = None
    try:
        with trio.fail_after(timeout):
            raw = await connect(address, port)
            if options.keepalive is not None:
                set_keepalive(raw.socket, options.keepalive)
            stream: trio.abc.Stream = raw
            peer = ""
            if sni:
                if mtls is None:
                    raise UpstreamConnectError(where, "mTLS needed but the proxy has no certificate")
                handshaken, identity = await mtls.connect(raw, server_name=sni)
                stream = FastTlsStream.take_over(handshaken)
                peer = str(identity.spiffe_id)
    except BaseException as exc:
        if raw is not None:
            raw.close()
        if isinstance(exc, trio.TooSlowError):
            raise UpstreamConnectError(where, f"connect timeout after {timeout:g}s") from None
        if isinstance(exc, OSError):
            raise UpstreamConnectError(where, os.strerror(exc.errno) if exc.errno else str(exc)) from None
        if isinstance(exc, TrustDomainError):  # PeerRefused: not who the bundle vouches for
            raise UpstreamConnectError(where, f"TLS peer refused: {exc}") from None
        if isinstance(exc, trio.BrokenResourceError):
            raise UpstreamConnectError(where, f"TLS handshake failed: {exc.__cause__ or exc}") from None
        raise
    conn = UpstreamConnection(key, stream, raw, pool, limits)
    conn.peer = peer
    if options.max_connection_duration is not None:
        conn.drain_at = trio.current_time() + options.max_connection_duration
    return conn


async def open_gated(key: PoolKey, contexts: MtlsContexts | None, timeout: float, pool: UpstreamPool | None, limits: HttpLimits,
                     gate: ConnectionGate | None, permit: Permit | None, stats: KeyStats) -> UpstreamConnection:
    """``open_connection`` under a circuit-breaker permit (HTTP/1.1 and HTTP/2 pools alike): a
    failure counts ``cx_connect_fail`` (connect errors) and gives the permit back, waking a
    pending request; an open connection holds the permit until it closes."""
    try:
        conn = await open_connection(key, contexts, timeout, pool, limits,
                                     gate.options if gate is not None else DEFAULT_OPTIONS)
    except BaseException as exc:
        if isinstance(exc, UpstreamConnectError):
            stats.cx_connect_fail += 1
        if permit is not None:
            permit.release()
            gate.wake()  # type: ignore[union-attr]
        raise
    if permit is not None:
        conn.gate, conn.permit = gate, permit
    return conn


class UpstreamPool:
    """Idle upstream connections by key; see the module docstring."""

    def __init__(self, mtls: Callable[[], MtlsContexts | None], *, max_idle_per_key: int = 64,
                 idle_timeout: float = 60.0, limits: HttpLimits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._mtls = mtls
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self.limits = limits
        self._clock = clock
        self._run_clock = clock is trio.current_time
        """The clock is trio's: ``use_clock`` may swap in the run's faster equivalent."""
        self._idle: dict[PoolKey, deque[UpstreamConnection]] = {}
        self.stats: dict[PoolKey, KeyStats] = {}

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Read ``clock``, equal to ``trio.current_time`` in this run (``_clock.run_clock``),
        unless the pool was given a clock of its own."""
        if self._run_clock:
            self._clock = clock

    def _stats(self, key: PoolKey) -> KeyStats:
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = KeyStats()
        return found

    async def acquire(self, key: PoolKey, connect_timeout: float,
                      gate: ConnectionGate | None = None) -> tuple[UpstreamConnection, bool]:
        """A connection to ``key`` and whether it was reused (a reused one may turn out dead).
        With a ``gate`` (a cluster's maxConnections), a new connection needs its permit:
        without one the request waits as pending, or overflows (``_conngate``)."""
        permit = None
        while True:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if not conn.is_stale() and conn.drain_at > self._clock():
                    return conn, True
                conn.close()
            if gate is None or not gate.limited:
                break
            permit = gate.try_connect(self, key)
            if permit is not None:
                break
            await gate.wait_pending()
        stats = self._stats(key)
        conn = await open_gated(key, self._mtls() if key[2] else None, connect_timeout, self, self.limits, gate,
                                permit, stats)
        stats.cx_total += 1
        stats.cx_active += 1
        return conn, False

    def evict_idle(self, keys: set[PoolKey]) -> bool:
        """Close one idle connection of ``keys`` (the oldest); whether there was one."""
        for key in keys:
            idle = self._idle.get(key)
            if idle:
                idle.popleft().close()
                if not idle:
                    del self._idle[key]
                return True
        return False

    def release(self, conn: UpstreamConnection, reusable: bool, idle_timeout: float | None = None) -> None:
        """Give ``conn`` back: pooled when ``reusable`` and there is room, closed otherwise."""
        if conn.closed:
            return
        if reusable and conn.drain_at > self._clock():
            idle = self._idle.get(conn.key)
            if idle is None:
                idle = self._idle[conn.key] = deque()
            if len(idle) < self.max_idle_per_key:
                timeout = self.idle_timeout if idle_timeout is None else idle_timeout
                conn.expires = self._clock() + timeout
                idle.append(conn)
                if conn.gate is not None:
                    conn.gate.wake()
                return
        conn.close()

    def _closed(self, conn: UpstreamConnection) -> None:
        stats = self.stats.get(conn.key)
        if stats is not None:
            stats.cx_active -= 1

    def idle_count(self, key: PoolKey | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(d) for d in self._idle.values())

    def expire(self, now: float) -> int:
        """Close idle connections whose idle time or ``maxConnectionDuration`` is up; how many."""
        closed = 0
        for key in list(self._idle):
            idle = self._idle[key]
            keep = deque(c for c in idle if c.expires > now and c.drain_at > now and not c.closed)
            for c in idle:
                if c.expires <= now or c.drain_at <= now:
                    c.close()
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The reaper: expires idle connections until cancelled, then closes every idle one."""
        task_status.started()
        try:
            while True:
                await trio.sleep(min(1.0, max(self.idle_timeout / 4, 0.05)))
                self.expire(self._clock())
        finally:
            self.close_all()

    def __repr__(self) -> str:
        active = sum(s.cx_active for s in self.stats.values())
        return f"<UpstreamPool {len(self.stats)} keys [{active} open, {self.idle_count()} idle]>"
