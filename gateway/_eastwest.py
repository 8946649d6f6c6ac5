"""The east-west gateway's passthrough listener (:15443): SNI in, bytes spliced, no key held.

Theory of operation. Per connection: read the ClientHello (``ClientHelloParser``, under
``helloTimeout`` and ``maxHelloBytes``) without answering it; ask the snapshot's
``EastWestTable`` where its server name goes; connect to the chosen endpoint's sidecar
inbound port (round robin, the next endpoint on a connect failure, up to
``connectAttempts``); replay the bytes read so far and splice both ways until both ends
close or ``idleTimeout`` passes. The TLS session is the client sidecar's with the server
sidecar: the gateway sees only ciphertext, so mTLS and the peer identity stay end to end.

Anything else closes the connection at once and is counted: ``istio_tcp_connections_*``
with the Envoy response flag (``NR`` no route, ``UH`` no healthy endpoint, ``UF`` connect
failure, ``UO`` over ``maxConnections``, ``DPE`` not TLS or a malformed hello, ``SI`` hello
timeout, ``DC`` client gone), ``meshfed_eastwest_refused_total{reason}`` with the precise
reason, and an access log line whose ``connection_termination_details`` says it. The
table is compiled once per snapshot, at the first connection that sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ._accesslog import AccessLogEntry
from ._eastwest_routes import Backend, EastWestRoute, EastWestTable, Refusal
from ._fastio import FastSocketStream, connect
from ._sni import NEED_DATA, ClientHelloInfo, ClientHelloParser, MalformedHello, NotTls
from ._tcpsplice import SpliceResult, splice

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ._config import EastWestSpec
    from ._proxy import Proxy
    from ._snapshot import Snapshot

log = logging.getLogger("meshfed.gateway.eastwest")
_RECV = 16 * 1024


async def read_hello(stream: trio.abc.ReceiveStream, timeout: float,
                     max_size: int) -> tuple[bytes, ClientHelloInfo] | Refusal:
    """The bytes read and the ClientHello they carry, or why there is none."""
    parser = ClientHelloParser(max_size)
    seen = bytearray()
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await stream.receive_some(_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return Refusal.CLIENT_CLOSED
            if not data:
                return Refusal.CLIENT_CLOSED
            seen += data
            try:
                got = parser.receive_data(bytes(data))
            except NotTls:
                return Refusal.NOT_TLS
            except MalformedHello:
                return Refusal.MALFORMED_HELLO
            if got is not NEED_DATA:
                assert isinstance(got, ClientHelloInfo)
                return bytes(seen), got
    return Refusal.HELLO_TIMEOUT


@dataclass(slots=True)
class _Conn:
    """What one downstream connection's report needs."""

    started: float
    wall: float
    remote: str | None
    local: str | None
    sni: str | None = None


class EastWestListener:
    """The :15443 connection handler of a proxy whose ``node.role`` is eastwest."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.active = 0
        """Connections being sniffed or spliced now."""
        self.spliced = 0
        self.connect_failures = 0
        self.refused: dict[Refusal, int] = {}
        self._compiled: tuple[Snapshot, EastWestTable] | None = None
        proxy.metrics.register(_Collector(self))

    def table(self, snap: Snapshot | None = None) -> EastWestTable:
        """The routing table of ``snap`` (the current snapshot by default), compiled once."""
        snap = snap if snap is not None else self.proxy.snapshot
        compiled = self._compiled
        if compiled is None or compiled[0] is not snap:
            compiled = self._compiled = (snap, EastWestTable.compile(snap.config))
        return compiled[1]

    async def handle_connection(self, stream: FastSocketStream) -> None:
        snap = self.proxy.snapshot
        table = self.table(snap)
        limits = snap.config.spec.eastwest
        conn = _Conn(trio.current_time(), time.time(), *_names(stream))
        if self.active >= limits.max_connections:
            self._refuse(table, conn, Refusal.OVERFLOW)
            return
        self.active += 1
        try:
            await self._serve(stream, table, limits, conn)
        finally:
            self.active -= 1

    async def _serve(self, stream: FastSocketStream, table: EastWestTable, limits: EastWestSpec, conn: _Conn) -> None:
        hello = await read_hello(stream, limits.hello_timeout.seconds, limits.max_hello_bytes)
        if isinstance(hello, Refusal):
            self._refuse(table, conn, hello)
            return
        data, info = hello
        conn.sni = info.server_name
        route = table.route(info.server_name)
        if isinstance(route, Refusal):
            self._refuse(table, conn, route)
            return
        connected = await self._connect(route, limits)
        if connected is None:
            self._refuse(table, conn, Refusal.CONNECT_FAILED, route)
            return
        upstream, backend = connected
        series = self.proxy.metrics.tcp(backend.labels)
        series.opened()  # now: a pooled client connection may stay open for an hour
        try:
            result = await splice(stream, upstream, a_prefix=data, idle_timeout=limits.idle_timeout.seconds)
        finally:
            upstream.close()
        self.spliced += 1
        series.transferred(sent=result.received, received=result.sent)
        series.closed()
        access_log = self.proxy.telemetry.access_log
        if access_log.enabled:
            access_log.log(self._entry(conn, "-", result.reason, route, backend, result))

    async def _connect(self, route: EastWestRoute, limits: EastWestSpec) -> tuple[FastSocketStream, Backend] | None:
        tried: frozenset[str] = frozenset()
        for _ in range(min(limits.connect_attempts, len(route.balancer.hosts))):
            backend = route.pick(tried)
            if backend is None or backend.authority in tried:
                break
            try:
                with trio.fail_after(limits.connect_timeout.seconds):
                    return await connect(backend.address, backend.port), backend
            except (OSError, trio.TooSlowError) as exc:
                self.connect_failures += 1
                log.info("east-west %s: endpoint %s: %s", route.sni, backend.authority, exc)
                tried |= {backend.authority}
        return None

    # -- reporting ----------------------------------------------------------------------

    def _refuse(self, table: EastWestTable, conn: _Conn, why: Refusal, route: EastWestRoute | None = None) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1
        log.debug("east-west connection from %s closed: %s (SNI %r)", conn.remote, why.reason, conn.sni)
        series = self.proxy.metrics.tcp(table.refused_labels_for(conn.sni))
        series.opened(why.flag)
        series.closed(why.flag)
        access_log = self.proxy.telemetry.access_log
        if access_log.enabled:
            access_log.log(self._entry(conn, why.flag, why.reason, route, None, None))

    def _entry(self, conn: _Conn, flags: str, details: str, route: EastWestRoute | None, backend: Backend | None,
               result: SpliceResult | None) -> AccessLogEntry:
        return AccessLogEntry(
            start_time=conn.wall, response_flags=flags, connection_termination_details=details,
            bytes_received=result.sent if result is not None else 0,
            bytes_sent=result.received if result is not None else 0,
            duration=int((trio.current_time() - conn.started) * 1000),
            upstream_host=backend.authority if backend is not None else None,
            upstream_cluster=route.cluster_name if route is not None else None,
            downstream_local_address=conn.local, downstream_remote_address=conn.remote,
            requested_server_name=conn.sni)

    def __repr__(self) -> str:
        refused = sum(self.refused.values())
        return f"<EastWestListener {self.active} active, {self.spliced} spliced, {refused} refused>"


def _names(stream: FastSocketStream) -> tuple[str | None, str | None]:
    try:
        remote = stream.socket.getpeername()
        local = stream.socket.getsockname()
    except OSError:
        return None, None
    return f"{remote[0]}:{remote[1]}", f"{local[0]}:{local[1]}"


class _Collector:
    """``meshfed_eastwest_*`` at scrape time, from the listener's plain counters; nothing
    for a proxy that is not a gateway."""

    def __init__(self, listener: EastWestListener) -> None:
        self.listener = listener

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        lst = self.listener
        snap: Any = lst.proxy._snapshot  # noqa: SLF001 - None while the first config is being applied
        if snap is None or snap.config.spec.node.role != "eastwest":
            return
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # at scrape time only

        refused = CounterMetricFamily("meshfed_eastwest_refused", "East-west connections closed without "
                                      "being spliced, by reason.", labels=("reason",))
        for why in Refusal:
            refused.add_metric((why.reason,), float(lst.refused.get(why, 0)))
        yield refused
        spliced = CounterMetricFamily("meshfed_eastwest_spliced", "East-west connections spliced to an endpoint.")
        spliced.add_metric((), float(lst.spliced))
        yield spliced
        failures = CounterMetricFamily("meshfed_eastwest_connect_failures",
                                       "Connections to local endpoints that failed (another endpoint is tried).")
        failures.add_metric((), float(lst.connect_failures))
        yield failures
        active = GaugeMetricFamily("meshfed_eastwest_connections_active", "East-west connections open now.")
        active.add_metric((), float(lst.active))
        yield active
