"""The admin listener (:15000): ``/ready``, ``/config_dump``, ``/clusters``, ``/metrics``.

Shapes follow Envoy's admin so that habits carry over: ``/ready`` answers ``LIVE`` (200)
once the listeners are bound and a config is applied, ``PRE_INITIALIZING`` (503) before;
``/clusters`` prints ``<cluster>::<host>::<stat>::<value>`` lines (``?format=json`` for
JSON); ``/config_dump`` is the compiled snapshot as JSON - file names of certificates
and keys, the SPIFFE ID and expiry, never key material; ``/metrics`` is the
prometheus-client registry of the proxy in the text format.

Istio's metrics themselves are kept by ``_metrics.ProxyMetrics`` and fed by ``_reporting``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ._events import Request
from ._downstream import Downstream, serve_http1
from ._h2relay import H2_PROTOCOLS, h2_key
from ._metrics import CONTENT_TYPE

if TYPE_CHECKING:
    import trio

    from ._proxy import Proxy
    from ._snapshot import ClusterConfig

# -- dumps ----------------------------------------------------------------------------

def config_dump(proxy: Proxy) -> dict[str, Any]:
    snap = proxy.snapshot
    spec = snap.config.spec
    tls: dict[str, Any] | None = None
    if spec.tls is not None:
        tls = {"cert": spec.tls.cert, "key": spec.tls.key, "chain": spec.tls.chain,
               "bundles": dict(spec.tls.bundles), "private_key": "[redacted]"}
        if snap.tls is not None:
            tls["spiffe_id"] = str(snap.tls.svid.spiffe_id)
            tls["not_after"] = snap.tls.svid.not_after.isoformat()
            tls["trust_domains"] = [td.name for td in snap.tls.bundles.trust_domains]
    routes = {}
    for port in snap.routes.ports:
        routes[str(port)] = [
            {"name": vh.name, "domains": list(vh.domains),
             "routes": [{"name": r.name, "source": r.source, "match": str(r.match), "action": _action(r.action),
                         **_policy(snap.route_config(r))} for r in vh.routes]}
            for vh in snap.routes.virtual_hosts(port)]
    inbound = snap.inbound
    return {
        "version": snap.version,
        "file": snap.config.file,
        "node": {"cluster": spec.node.cluster, "namespace": spec.node.namespace, "workload": spec.node.workload,
                 "labels": dict(spec.node.labels), "trust_domain": spec.node.trust_domain},
        "listeners": {k: f"{h}:{p}" for k, (h, p) in proxy.addresses.items()},
        "tls": tls,
        "routes": routes,
        "clusters": [_cluster(c) for c in snap.clusters.values()],
        "inbound": {
            "app": {"address": inbound.app_address, "ports": {str(p): v for p, v in inbound.app_ports.items()}},
            "peer_authentication": {"default": inbound.peer_auth.default.why,
                                    "ports": {str(p): d.why for p, d in inbound.peer_auth.ports.items()}},
            "authorization_policies": list(inbound.authorizer.policies),
        },
        "warnings": list(snap.warnings),
        "applied": proxy.applied,
        "refused": proxy.refused,
    }


def _policy(rc: Any) -> dict[str, Any]:
    """The resilience policies of a route, as compiled (``_route_policy``)."""
    retry = rc.retry
    return {"retries": {"attempts": retry.attempts, "retry_on": sorted(c.value for c in retry.retry_on),
                        "per_try_timeout": retry.per_try_timeout},
            "timeout": rc.timeouts.route_timeout, "fault": repr(rc.fault) if rc.fault is not None else None,
            "mirrors": [f"{m.host}|{m.subset}|{m.port} {m.per_million / 10000:g}%" for m in rc.mirrors]}


def _action(action: Any) -> Any:
    if action.kind == "forward":
        return {"forward": [{"cluster": d.cluster, "weight": d.weight} for d in action.destinations.destinations]}
    if action.kind == "redirect":
        return {"redirect": action.status}
    return {"direct_response": action.status}


def _cluster(c: ClusterConfig) -> dict[str, Any]:
    cfg = c.breaker.config
    return {
        "name": c.name, "protocol": c.protocol, "sni": c.sni, "destination_rule": c.destination_rule,
        "load_balancer": repr(c.balancer) if c.balancer is not None else None,
        "circuit_breaker": {"max_connections": cfg.max_connections, "max_pending_requests": cfg.max_pending_requests,
                            "max_requests": cfg.max_requests, "max_retries": cfg.max_retries},
        "max_requests_per_connection": cfg.max_requests_per_connection,
        "outlier_detection": repr(c.outlier.config) if c.outlier is not None else None,
        "locality_lb": repr(c.picker.locality) if c.picker.locality is not None else None,
        "connect_timeout": c.timeouts.connect_timeout, "idle_timeout": c.timeouts.idle_timeout,
        "endpoints": [{"address": h.key, "via": h.endpoint.authority, "tls": h.endpoint.tls, "weight": h.weight,
                       "locality": h.locality, "priority": c.priority_of(h.key),
                       "gateway": h.endpoint.endpoint.gateway, "healthy": h.endpoint.endpoint.healthy}
                      for h in c.hosts],
    }


def connection_stats(proxy: Proxy, c: ClusterConfig, target: Any) -> dict[str, int]:
    """A host's upstream connections, both pools together as Envoy counts ``cx_active``; for
    a cluster spoken in HTTP/2 also its HTTP/2 pool's part and the streams open on it."""
    pool = proxy.pool.stats.get(target.pool_key)
    cx_active, cx_total = (pool.cx_active, pool.cx_total) if pool else (0, 0)
    if c.protocol not in H2_PROTOCOLS:
        return {"cx_active": cx_active, "cx_total": cx_total}
    h2_active, h2_total, streams = proxy.h2pool.counts(
        h2_key(target.address, target.port, target.sni if target.tls else ""))
    return {"cx_active": cx_active + h2_active, "cx_total": cx_total + h2_total, "h2_cx_active": h2_active,
            "h2_cx_total": h2_total, "h2_streams_active": streams}


def clusters_json(proxy: Proxy) -> dict[str, Any]:
    out = []
    for c in proxy.snapshot.clusters.values():
        hosts = []
        for h in c.hosts:
            t = h.endpoint
            hosts.append({"address": h.key, "via": t.authority, "healthy": t.endpoint.healthy, "weight": h.weight,
                          "locality": h.locality, "priority": c.priority_of(h.key), "gateway": t.endpoint.gateway,
                          "health_flags": health_flags(c, h),
                          "stats": {**t.stats.as_dict(), **connection_stats(proxy, c, t)}})
        entry: dict[str, Any] = {"name": c.name, "hosts": hosts, "circuit_breakers": c.breaker.stats}
        if c.outlier is not None:
            entry["outlier_detection"] = c.outlier.stats
        out.append(entry)
    return {"cluster_statuses": out}


def health_flags(c: ClusterConfig, h: Any) -> str:
    """Envoy's ``health_flags``: ``/failed_eds_health`` (registry), ``/failed_outlier_check``
    (ejected by outlier detection), else ``healthy``."""
    if not h.endpoint.endpoint.healthy:
        return "/failed_eds_health"
    return c.picker.health_flags(h.key) or "healthy"


def clusters_text(proxy: Proxy) -> str:
    lines = []
    for c in proxy.snapshot.clusters.values():
        cfg = c.breaker.config
        for key, value in (("max_connections", cfg.max_connections), ("max_pending_requests",
                           cfg.max_pending_requests), ("max_requests", cfg.max_requests),
                           ("max_retries", cfg.max_retries)):
            lines.append(f"{c.name}::default_priority::{key}::{value}")
        for h in c.hosts:
            t = h.endpoint
            stats = {**connection_stats(proxy, c, t), **t.stats.as_dict()}
            for key, value in stats.items():
                lines.append(f"{c.name}::{h.key}::{key}::{value}")
            lines.append(f"{c.name}::{h.key}::weight::{h.weight}")
            lines.append(f"{c.name}::{h.key}::locality::{h.locality}")
            lines.append(f"{c.name}::{h.key}::priority::{c.priority_of(h.key)}")
            if t.endpoint.gateway is not None:
                lines.append(f"{c.name}::{h.key}::gateway::{t.endpoint.gateway}")
            lines.append(f"{c.name}::{h.key}::health_flags::{health_flags(c, h)}")
        if c.outlier is not None:
            for key, value in c.outlier.stats.items():
                lines.append(f"{c.name}::outlier::{key}::{value}")
    return "\n".join(lines) + "\n"


class AdminServer:
    """The admin listener's connection handler."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        down = Downstream(stream, self.proxy.snapshot.limits)
        await serve_http1(down, self.handle, self.proxy.idle)

    async def handle(self, down: Downstream, req: Request) -> bool:
        path, _, query = req.target.partition(b"?")
        proxy = self.proxy
        close = not down.request_complete()
        if req.method not in (b"GET", b"HEAD"):
            await down.reply(405, b"method not allowed\n", close=close)
            return True
        if path == b"/ready":
            if proxy.ready:
                await down.reply(200, b"LIVE\n", close=close)
            else:
                await down.reply(503, b"PRE_INITIALIZING\n", close=close)
        elif path == b"/config_dump":
            body = json.dumps(config_dump(proxy), indent=2, sort_keys=False).encode() + b"\n"
            await down.reply(200, body, [(b"content-type", b"application/json")], close=close)
        elif path == b"/clusters":
            if b"format=json" in query:
                body = json.dumps(clusters_json(proxy), indent=2).encode() + b"\n"
                await down.reply(200, body, [(b"content-type", b"application/json")], close=close)
            else:
                await down.reply(200, clusters_text(proxy).encode(), close=close)
        elif path in (b"/metrics", b"/stats/prometheus"):
            await down.reply(200, proxy.metrics.render(), [(b"content-type", CONTENT_TYPE.encode())], close=close)
        else:
            await down.reply(404, b"not found: try /ready, /config_dump, /clusters, /metrics\n", close=close)
        return True
