"""The Proxy: one config applied, its listeners served, its upstream pool kept.

    proxy = Proxy(config)                    # refuses an invalid document (ProxyConfigError)
    addresses = await nursery.start(proxy.run)   # listeners bound, /ready says LIVE
    diagnostics = proxy.apply(new_config)    # compile + swap; refused documents change nothing
    proxy.stop()

Everything the proxy runs is a task in the nursery of ``run``: the pool's reaper and one
``serve_listeners`` per listener, each under its own cancel scope so that a reload can
close a listener whose address left the config and open the ones that appeared. A
connection handler that fails is logged and its connection closed; it never takes the
listener down.

``apply`` compiles the whole document into a Snapshot first and only then assigns it
(one reference, read once by every request and connection at its start), so a request
in flight finishes on the config it began with. New mTLS contexts are built only when
the certificate files changed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from topology import Diagnostic
from trustdomain import TrustDomainError

from . import GatewayError
from ._admin import AdminServer
from ._clock import run_clock
from ._metrics import ProxyMetrics
from ._reporting import Reporting
from ._config import ProxyConfig, parse_hostport
from ._downstream import IdleWatch
from ._eastwest import EastWestListener
from ._fastio import FastSocketStream, listen, serve_socket
from ._h2pool import H2Pool
from ._hostpick import sweep_outliers
from ._inbound import InboundListener
from ._mirror import Mirrors
from ._outbound import OutboundHttp
from ._telemetry import Telemetry
from ._tunnel import open_to_cluster, serve_tcp_listener
from ._snapshot import H1_ALPN, ClusterConfig, Snapshot, StatsStore, compile_snapshot
from ._upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from trustdomain import MtlsContexts

log = logging.getLogger("meshfed.gateway.proxy")

ListenerKey = tuple[str, str, str, int]
"""(kind, host:port, tcp target host, tcp target port); kind is outbound, inbound, admin or tcp."""


class ProxyConfigError(GatewayError):
    """A document the proxy refuses; ``diagnostics`` say where and why."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        errors = [d for d in diagnostics if d.is_error]
        super().__init__("config refused:\n" + "\n".join(f"  {d}" for d in errors))
        self.diagnostics = diagnostics


class Proxy:
    """One sidecar (outbound, inbound and admin listeners) driven by a ProxyConfig."""

    def __init__(self, config: ProxyConfig) -> None:
        self.stats = StatsStore()
        self.metrics = ProxyMetrics()
        self.telemetry = Telemetry(self.metrics)
        self.report = Reporting(self.metrics, self.telemetry)
        self.server_mtls: MtlsContexts | None = None
        self.client_mtls: MtlsContexts | None = None
        self._tls_fingerprint: bytes | None = None
        self._snapshot: Snapshot | None = None
        self.applied = 0
        self.refused = 0
        self.ready = False
        self.addresses: dict[str, tuple[str, int]] = {}
        self._listeners: dict[ListenerKey, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.pool = UpstreamPool(lambda: self.client_mtls)
        self.h2pool = H2Pool(lambda: self.client_mtls)
        self.idle = IdleWatch(self._idle_timeout)
        self.now: Callable[[], float] = trio.current_time
        """``trio.current_time`` of the run serving this proxy (``_clock.run_clock`` once running)."""
        self.mirrors = Mirrors(self)
        diagnostics = self.apply(config)
        if self._snapshot is None:
            raise ProxyConfigError(diagnostics)
        self.outbound = OutboundHttp(self)
        self.inbound = InboundListener(self)
        self.admin = AdminServer(self)
        self.eastwest = EastWestListener(self)

    @property
    def registry(self) -> CollectorRegistry:
        """The proxy's own prometheus_client registry (made at the first scrape)."""
        return self.metrics.registry

    # -- config ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        assert snap is not None
        return snap

    def _idle_timeout(self) -> float | None:
        timeout = self.snapshot.limits.idle_timeout
        return timeout.seconds if timeout is not None else None

    @property
    def app_connect_timeout(self) -> float:
        return self.snapshot.config.spec.pool.connect_timeout.seconds

    def apply(self, config: ProxyConfig) -> list[Diagnostic]:
        """Compile ``config`` and make it current; on any error keep the current one.
        Returns every diagnostic (warnings included)."""
        snap, diagnostics = compile_snapshot(config, stats=self.stats, outlier_sink=self.telemetry, adopt=False)
        if snap is not None and snap.tls is not None and snap.tls.fingerprint != self._tls_fingerprint:
            from trustdomain import MtlsContexts  # cryptography: only for a proxy with a certificate

            try:
                server = MtlsContexts(snap.tls.svid, snap.tls.bundles)
                client = MtlsContexts(snap.tls.svid, snap.tls.bundles, alpn=(H1_ALPN,))
            except (TrustDomainError, ValueError, OSError) as exc:  # ssl.SSLError: key and certificate differ
                diagnostics.append(Diagnostic(config.file, config.lines.get("spec.tls", 0), "spec.tls",
                                              f"cannot build TLS contexts: {exc}"))
                snap = None
            else:
                self.server_mtls, self.client_mtls = server, client
                self._tls_fingerprint = snap.tls.fingerprint
        self.stats.adopt(snap is not None)
        if snap is None:
            self.refused += 1
            self.metrics.record_config(applied=False)
            for d in diagnostics:
                if d.is_error:
                    log.error("config refused: %s", d)
            return diagnostics
        if snap.tls is None:
            self.server_mtls = self.client_mtls = None
            self._tls_fingerprint = None
        pool = snap.config.spec.pool
        self.pool.max_idle_per_key = pool.max_idle_per_key
        self.pool.idle_timeout = pool.idle_timeout.seconds
        self.pool.limits = snap.limits
        self.h2pool.limits = snap.limits
        self._snapshot = snap
        self.report.configure(snap)
        self.telemetry.configure(snap)
        self.metrics.record_config(applied=True)
        self.applied += 1
        log.info("config version %s applied (%d clusters)", snap.version, len(snap.clusters))
        if self._nursery is not None:
            self._reconcile()
        return diagnostics

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (or ``stop``); ``task_status.started`` gets the bound addresses."""
        self.now = now = run_clock()
        self.pool.use_clock(now)
        self.idle.now = self.report.now = now
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pool.run)
                await nursery.start(self.h2pool.run)
                await nursery.start(self.idle.run)
                await nursery.start(self.telemetry.run)
                await nursery.start(sweep_outliers, lambda: self.snapshot.outlier_clusters)
                for key in self._wanted():
                    await nursery.start(self._listen, key, True)
                self._nursery = nursery
                self.ready = True
                task_status.started(dict(self.addresses))
        finally:
            self.ready = False
            self._nursery = None
            self._listeners.clear()

    def stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def nursery(self) -> trio.Nursery | None:
        """The nursery of ``run`` (None when not running): background work such as mirror copies."""
        return self._nursery

    def _wanted(self) -> list[ListenerKey]:
        ls = self.snapshot.config.spec.listeners
        keys: list[ListenerKey] = [(kind, addr, "", 0) for kind, addr in
                                   (("admin", ls.admin), ("inbound", ls.inbound), ("outbound", ls.outbound),
                                    ("eastwest", ls.eastwest)) if addr]
        keys += [("tcp", t.address, t.host, t.port) for t in ls.tcp]
        return keys

    def _reconcile(self) -> None:
        wanted = set(self._wanted())
        for key in list(self._listeners):
            if key not in wanted:
                self._listeners.pop(key).cancel()
                self.addresses.pop(_name(key), None)
        assert self._nursery is not None
        for key in wanted - set(self._listeners):
            self._nursery.start_soon(self._listen, key, False)

    async def _listen(self, key: ListenerKey, initial: bool, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        kind, address, target_host, target_port = key
        host, port = parse_hostport(address)
        with trio.CancelScope() as scope:
            self._listeners[key] = scope
            try:
                listener = listen(host, port)
            except OSError as exc:
                self._listeners.pop(key, None)
                if initial:
                    raise GatewayError(f"cannot listen on {address} ({kind}): {exc.strerror or exc}") from None
                log.error("cannot listen on %s (%s): %s", address, kind, exc)
                task_status.started()
                return
            bound = listener.getsockname()
            self.addresses[_name(key)] = (bound[0], bound[1])
            handler = self._handler(kind, target_host, target_port)
            task_status.started()
            log.info("%s listener on %s:%d", kind, bound[0], bound[1])
            try:
                await serve_socket(listener, handler)
            finally:
                if self._listeners.get(key) is scope:
                    del self._listeners[key]

    def _handler(self, kind: str, target_host: str, target_port: int) -> Callable[[FastSocketStream], Awaitable[None]]:
        if kind == "outbound":
            serve = self.outbound.handle_connection
        elif kind == "inbound":
            serve = self.inbound.handle_connection
        elif kind == "admin":
            serve = self.admin.handle_connection
        elif kind == "eastwest":
            serve = self.eastwest.handle_connection
        else:
            async def serve(stream: FastSocketStream) -> None:
                await serve_tcp_listener(self, stream, target_host, target_port)

        async def guarded(stream: FastSocketStream) -> None:
            try:
                await serve(stream)
            except Exception:  # noqa: BLE001 - one bad connection never takes the listener down
                log.exception("%s connection failed", kind)
            finally:
                stream.close()
        return guarded

    async def connect_cluster(self, cluster: ClusterConfig) -> UpstreamConnection:
        """A fresh, unpooled connection to a host of ``cluster`` (CONNECT and TCP splices)."""
        return await open_to_cluster(self, cluster)

    def __repr__(self) -> str:
        state = "ready" if self.ready else "stopped"
        return (f"<Proxy {self.snapshot.config.spec.node.workload} version={self.snapshot.version!r} {state} "
                f"listeners={sorted(self.addresses)}>")


def _name(key: ListenerKey) -> str:
    kind, address, host, port = key
    return f"tcp:{host}:{port}" if kind == "tcp" else kind
