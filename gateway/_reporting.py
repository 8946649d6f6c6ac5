"""What the proxy reports per request and per TCP connection: Istio's standard metrics.

The label sets (``RequestLabels``) depend on who talks to whom, which is known only
once the upstream endpoint is picked and its certificate seen (outbound) or the caller's
certificate verified (inbound). They are built on first use per (cluster, endpoint,
peer) or (peer, app port) and cached, so a request costs one tuple, one dict lookup and
one ``record`` into ``_metrics``' plain-int cells. The cache is dropped when a new config
is applied (the local workload or the services may have changed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._metrics import HttpSeries, ProxyMetrics, TcpSeries
from ._metrics_labels import UNKNOWN, RequestLabels, Service, Workload

if TYPE_CHECKING:
    from ._snapshot import ClusterConfig, Snapshot
    from ._tcpsplice import SpliceResult


def _workload_name(instance: str) -> str:
    """Deployment name from a pod name (``reviews-v1-0`` -> ``reviews-v1``), as near as we can."""
    return instance.rsplit("-", 1)[0] if "-" in instance else instance or UNKNOWN


class Reporting:
    """Istio metrics of one proxy, keyed and cached as the module docstring says."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
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
                      started: float, request_bytes: int = 0, response_bytes: int = 0) -> None:
        self._outbound_series(cluster, target, peer, False).record(
            code=status, duration_ms=(trio.current_time() - started) * 1000.0, request_bytes=request_bytes,
            response_bytes=response_bytes, flags=flags)

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
                     request_bytes: int = 0, response_bytes: int = 0) -> None:
        self._inbound_series(peer, port, False).record(
            code=status, duration_ms=(trio.current_time() - started) * 1000.0, request_bytes=request_bytes,
            response_bytes=response_bytes, flags=flags)

    def inbound_tcp(self, peer: str | None, port: int, flags: str, result: SpliceResult | None = None) -> None:
        series: TcpSeries = self._inbound_series(peer, port, True)
        series.opened(flags)
        if result is not None:
            series.transferred(sent=result.received, received=result.sent, flags=flags)
        series.closed(flags)
