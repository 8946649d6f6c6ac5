"""What the proxy reports per request and per TCP connection: Istio's standard metrics.

The label sets (``RequestLabels``) depend on who talks to whom, which is known only
once the upstream endpoint is picked and its certificate seen (outbound) or the caller's
certificate verified (inbound). They are built on first use per (cluster, endpoint,
peer) or (peer, app port) and cached, so a request costs one tuple, one dict lookup and
one ``record`` into ``_metrics``' plain-int cells. The cache is dropped when a new config
is applied (the local workload or the services may have changed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ._accesslog import AccessLogEntry
from ._metrics import HttpSeries, ProxyMetrics, TcpSeries
from ._metrics_labels import UNKNOWN, RequestLabels, Service, Workload

if TYPE_CHECKING:
    from ._outbound_request import OutboundRequest
    from ._snapshot import ClusterConfig, Snapshot
    from ._tcpsplice import SpliceResult
    from ._telemetry import Telemetry


def _workload_name(instance: str) -> str:
    """Deployment name from a pod name (``reviews-v1-0`` -> ``reviews-v1``), as near as we can."""
    return instance.rsplit("-", 1)[0] if "-" in instance else instance or UNKNOWN


class Reporting:
    """Istio metrics of one proxy, keyed and cached as the module docstring says; with a
    ``Telemetry``, also its access log lines and trace spans."""

    def __init__(self, metrics: ProxyMetrics, telemetry: Telemetry | None = None) -> None:
        self.metrics = metrics
        self.telemetry = telemetry
        self.now: Callable[[], float] = trio.current_time
        """``trio.current_time`` (the proxy's faster ``run_clock`` while it runs)."""
        self._local = Workload()
        self._snap: Snapshot | None = None
        self._out: dict[tuple, HttpSeries | TcpSeries] = {}
        self._in: dict[tuple, HttpSeries | TcpSeries] = {}

    def configure(self, snap: Snapshot) -> None:
        node = snap.config.spec.node
        own = str(snap.tls.svid.spiffe_id) if snap.tls is not None else UNKNOWN
        self._local = Workload.from_labels(node.workload, node.namespace, node.labels, principal=own,
                                           cluster=node.cluster)
        self._snap = snap
        self._out.clear()
        self._in.clear()

    # -- outbound -------------------------------------------------------------------

    def _outbound_series(self, cluster: ClusterConfig | None, target: Any, peer: str, tcp: bool) -> Any:
        key = (cluster.name if cluster is not None else "", target.pool_key if target is not None else None,
               peer, tcp)
        series = self._out.get(key)
        if series is None:
            ep = target.endpoint if target is not None else None
            service = Service.from_host(cluster.fqdn) if cluster is not None else Service()
            if ep is not None:
                dest = Workload.from_labels(_workload_name(ep.instance) if ep.instance else ep.labels.get("app", ""),
                                            service.namespace, ep.labels, principal=peer, cluster=ep.cluster)
            else:
                dest = Workload.from_principal(peer) if peer else Workload()
            labels = RequestLabels.outbound(self._local, dest, service)
            series = self._out[key] = self.metrics.tcp(labels) if tcp else self.metrics.http(labels)
        return series

    def outbound_http(self, cluster: ClusterConfig | None, target: Any, peer: str, status: int, flags: str,
                      started: float, request_bytes: int = 0, response_bytes: int = 0,
                      grpc_status: int | None = None) -> None:
        self._outbound_series(cluster, target, peer, False).record(
            code=status, duration_ms=(self.now() - started) * 1000.0, request_bytes=request_bytes,
            response_bytes=response_bytes, flags=flags, grpc_status=grpc_status)

    def outbound_request(self, x: OutboundRequest) -> None:
        """One finished outbound HTTP request: its metrics, access log line and span."""
        state = x.state
        flags = x.flag_string
        self.outbound_http(x.cluster, x.target, state.peer, state.status, flags, x.started, state.bytes_in,
                           state.bytes_out, state.grpc_status)
        telemetry = self.telemetry
        if telemetry is None:
            return
        if telemetry.access_log.enabled:
            telemetry.access_log.log(access_log_entry(x, flags))
        hop = x.hop
        if hop is not None and hop.sampled:
            hop.finish(status=state.status, method=x.req.method.decode("latin-1"),
                       url=f"http://{x.authority.decode('latin-1')}{x.path_q.decode('latin-1')}", protocol=x.down.protocol,
                       flags=flags, upstream_cluster=x.cluster.name if x.cluster is not None else "",
                       peer=x.target.authority if x.target is not None else "", request_size=state.bytes_in,
                       response_size=state.bytes_out)

    def outbound_tcp(self, cluster: ClusterConfig | None, target: Any, peer: str, flags: str,
                     result: SpliceResult | None = None) -> None:
        series: TcpSeries = self._outbound_series(cluster, target, peer, True)
        series.opened(flags)
        if result is not None:
            series.transferred(sent=result.received, received=result.sent, flags=flags)
        series.closed(flags)

    # -- inbound --------------------------------------------------------------------

    def _inbound_series(self, peer: str | None, port: int, tcp: bool) -> Any:
        key = (peer, port, tcp)
        series = self._in.get(key)
        if series is None:
            service = Service()
            snap = self._snap
            if snap is not None:
                for (fqdn, _), target in snap.inbound.service_ports.items():
                    if target == port:
                        service = Service.from_host(fqdn)
                        break
            source = Workload.from_principal(peer) if peer else Workload()
            labels = RequestLabels.inbound(self._local, source, service, mutual_tls=peer is not None)
            series = self._in[key] = self.metrics.tcp(labels) if tcp else self.metrics.http(labels)
        return series

    def inbound_http(self, peer: str | None, port: int, status: int, flags: str, started: float,
                     request_bytes: int = 0, response_bytes: int = 0, grpc_status: int | None = None) -> None:
        self._inbound_series(peer, port, False).record(
            code=status, duration_ms=(self.now() - started) * 1000.0, request_bytes=request_bytes,
            response_bytes=response_bytes, flags=flags, grpc_status=grpc_status)

    def inbound_tcp(self, peer: str | None, port: int, flags: str, result: SpliceResult | None = None) -> None:
        series: TcpSeries = self._inbound_series(peer, port, True)
        series.opened(flags)
        if result is not None:
            series.transferred(sent=result.received, received=result.sent, flags=flags)
        series.closed(flags)


def access_log_entry(x: OutboundRequest, flags: str) -> AccessLogEntry:
    """The access log line of one outbound request (Istio's JSON keys, Envoy's values)."""
    state = x.state
    user_agent = forwarded = None
    for name, value in x.req.headers:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            forwarded = value.decode("latin-1")
    request_id = x.hop.request_id.decode("latin-1") if x.hop is not None else None
    details = x.details or ("via_upstream" if state.head_sent else None)
    return AccessLogEntry(
        start_time=x.wall_start, route_name=x.route.name if x.route is not None else None,
        method=x.req.method.decode("latin-1"), path=x.path_q.decode("latin-1") or None, protocol=x.down.protocol,
        response_code=state.status, response_flags=flags, response_code_details=details,
        bytes_received=state.bytes_in, bytes_sent=state.bytes_out,
        duration=int((x.proxy.now() - x.started) * 1000), x_forwarded_for=forwarded, user_agent=user_agent,
        request_id=request_id, authority=x.authority.decode("latin-1") or None,
        upstream_host=x.target.authority if x.target is not None else None,
        upstream_cluster=x.cluster.name if x.cluster is not None else None,
        downstream_remote_address=f"{x.down.remote_ip}:{x.down.remote_port}" if x.down.remote_ip else None,
        upstream_peer_uri_san=state.peer or None)
