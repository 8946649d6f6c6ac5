"""``fedctl explain SERVICE --from WORKLOAD``: the effective merged policy as one client sees it.

Why from the client's compiled document: Istio's policy is merged per client (exportTo,
sidecar namespace precedence, subset over rule over port level, defaults where nothing is
set), and users get it wrong by reading YAML. Everything printed here comes from the
objects the client's proxy runs - the route table's virtual host, each route's compiled
retry and timeout policy, each cluster's balancer, breaker, outlier detector and
locality priorities - with the source of every value said: the resource that set it, or
"Istio default". Health comes from the sidecar's ``/clusters`` (outlier ejections).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from gateway._balancer import load_balancer_for
from gateway._breaker import UINT32_MAX
from gateway._clusters import _at_port
from topology._traffic_policy import ClientTLSMode

from ._check_view import ClientView, flat_reason, lookup_service, priorities, resolve, service_port
from ._errors import FederationError

ISTIO_DEFAULT = "Istio default"


def _plain(value: Any) -> Any:
    """Dataclasses, enums and durations as JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) not in (None, (), {})}
    if isinstance(value, enum.Enum):
        return value.name if not isinstance(value.value, str) else value.value
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_plain(v) for v in value]
        return sorted(items) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def explain(view: ClientView, name: str, port: int | None, source: str) -> dict[str, Any]:
    svc = lookup_service(view, name)
    if svc is None:
        raise FederationError(f"unknown service {name!r} seen from {source}: no service of that name in its document "
                              f"(namespace {view.node.namespace!r}); link the cluster that runs it and export it")
    chosen = service_port(svc, port)
    if chosen is None:
        raise FederationError(f"{svc.hostname.name} has no port {port}; its ports: "
                              + ", ".join(str(p.port) for p in svc.ports))
    res = resolve(view, name, svc, chosen)
    vhost = view.snapshot.routes.virtual_host(res.authority, chosen)
    routes = [_route(view, r, chosen) for r in (vhost.routes if vhost is not None else ())]
    names: list[tuple[str, str, int]] = []
    for r in vhost.routes if vhost is not None else ():
        if r.action.kind == "forward":
            for d in r.action.destinations.destinations:  # type: ignore[union-attr]
                key = (d.host, d.subset or "", d.port_for(chosen))
                if key not in names:
                    names.append(key)
    clusters = [_cluster(view, view.snapshot.clusters[k]) if k in view.snapshot.clusters else
                {"name": f"outbound|{k[2]}|{k[1]}|{k[0]}", "missing": True} for k in names]
    node = view.node
    return {"service": name, "hostname": res.fqdn, "port": chosen, "from": source,
            "client": {"cluster": node.cluster, "namespace": node.namespace, "locality": node.locality,
                       "network": node.network, "configVersion": view.config.version},
            "virtualHost": vhost.name if vhost is not None else None, "routes": routes, "clusters": clusters}


def _route(view: ClientView, r: Any, port: int) -> dict[str, Any]:
    rc = view.snapshot.route_config(r)
    retry = rc.retry
    out: dict[str, Any] = {"virtualService": r.source or None, "name": r.name, "match": str(r.match),
                           "action": r.action.kind}
    if r.action.kind == "forward":
        out["destinations"] = [{"cluster": d.cluster, "host": d.host, "subset": d.subset or "",
                                "port": d.port_for(port), "weight": d.weight}
                               for d in r.action.destinations.destinations]
    else:
        out["status"] = r.action.status
    out["retries"] = {"attempts": retry.attempts, "retryOn": sorted(c.value for c in retry.retry_on),
                      "retriableStatusCodes": sorted(retry.retriable_status_codes),
                      "perTryTimeout": retry.per_try_timeout, "retryRemoteLocalities": retry.retry_remote_localities,
                      "source": r.source if r.retries is not None else ISTIO_DEFAULT}
    if r.fault is not None and r.retries is not None:
        out["retries"]["source"] = "off: the route injects faults"
    out["timeout"] = {"seconds": rc.timeouts.route_timeout,
                      "source": r.source if r.timeout is not None else f"{ISTIO_DEFAULT} (no route timeout)"}
    out["fault"] = repr(rc.fault) if rc.fault is not None else None
    out["mirrors"] = [f"{m.host}|{m.subset}|{m.port} {m.per_million / 10000:g}%" for m in rc.mirrors]
    return out


def _rule(view: ClientView, key: str) -> Any:
    return next((r for r in view.config.resources if r.kind == "DestinationRule" and f"{r.namespace}/{r.name}" == key),
                None)


def _cluster(view: ClientView, c: Any) -> dict[str, Any]:
    res = _rule(view, c.destination_rule) if c.destination_rule else None
    dr = res.spec if res is not None else None
    rule = dr.traffic_policy if dr is not None else None
    subset = next((s.traffic_policy for s in dr.subsets if s.name == c.subset), None) if dr is not None else None
    src = c.destination_rule or ""
    lb = load_balancer_for(rule, c.port, subset)
    pool = _at_port(rule, subset, c.port, "connection_pool")
    od = _at_port(rule, subset, c.port, "outlier_detection")
    tls = _at_port(rule, subset, c.port, "tls")
    cfg = c.breaker.config
    setting = lb.locality_lb_setting if lb is not None else None
    locality = c.picker.locality
    mesh_tls = any(h.endpoint.tls for h in c.hosts) or not c.hosts
    policy = {
        "loadBalancer": {"value": _lb_name(lb), "compiled": repr(c.balancer) if c.balancer is not None else None,
                         "source": src if lb is not None and (lb.simple or lb.consistent_hash) else
                         f"{ISTIO_DEFAULT} (LEAST_REQUEST)"},
        "connectionPool": {"maxConnections": cfg.max_connections, "http1MaxPendingRequests": cfg.max_pending_requests,
                           "http2MaxRequests": cfg.max_requests, "maxRetries": cfg.max_retries,
                           "maxRequestsPerConnection": cfg.max_requests_per_connection,
                           "connectTimeout": c.timeouts.connect_timeout, "idleTimeout": c.timeouts.idle_timeout,
                           "source": src if pool is not None else f"{ISTIO_DEFAULT} (no limits: 2^32-1)"},
        "outlierDetection": ({**_outlier(c.outlier.config), "source": src} if c.outlier is not None else
                             {"source": f"{ISTIO_DEFAULT} (off)" if od is None else src}),
        "tls": {"mode": tls.mode.value if tls is not None else ("ISTIO_MUTUAL" if mesh_tls else "DISABLE"),
                "source": src if tls is not None else f"{ISTIO_DEFAULT} (auto mTLS to endpoints with a sidecar)"},
        "localityLbSetting": {"setting": _plain(setting) if setting is not None else {"enabled": True},
                              "mode": locality.mode.value if locality is not None else flat_reason(view, c),
                              "source": src if setting is not None else f"{ISTIO_DEFAULT} (enabled)"},
    }
    if tls is not None and tls.mode is ClientTLSMode.DISABLE and mesh_tls:
        policy["tls"]["mode"] = "DISABLE"
    health = view.health(c.name)
    rows = []
    for p in priorities(view, c):
        at = [h for h in c.hosts if h.endpoint.endpoint.healthy
              and (locality.priority_of(h.key) == p.priority if locality is not None else True)]
        localities = []
        for s in p.localities:
            localities.append({"locality": s.locality, "share": round(s.share, 2), "weight": s.weight,
                               "endpoints": s.hosts, "healthy": s.healthy,
                               "hosts": [_host(h, health) for h in at if h.locality == s.locality]})
        rows.append({"priority": p.priority, "reason": p.reason, "load": p.load, "health": p.health,
                     "panic": p.panic, "localities": localities})
    down = [_host(h, health) for h in c.hosts if not h.endpoint.endpoint.healthy]
    return {"name": c.name, "subset": c.subset, "destinationRule": c.destination_rule or None, "sni": c.sni,
            "trafficPolicy": policy, "priorities": rows, "unhealthyInRegistry": down}


def _outlier(cfg: Any) -> dict[str, Any]:
    """The compiled detector's settings under Istio's names (``OutlierConfig.from_istio`` in reverse)."""
    return {"consecutive5xxErrors": cfg.consecutive_5xx if cfg.enforcing_consecutive_5xx else 0,
            "consecutiveGatewayErrors": cfg.consecutive_gateway_failure if cfg.enforcing_consecutive_gateway_failure
            else 0,
            "consecutiveLocalOriginFailures": cfg.consecutive_local_origin_failure,
            "splitExternalLocalOriginErrors": cfg.split_external_local_origin_errors,
            "interval": _secs(cfg.interval), "baseEjectionTime": _secs(cfg.base_ejection_time),
            "maxEjectionPercent": cfg.max_ejection_percent, "healthyPanicThreshold": cfg.healthy_panic_threshold}


def _lb_name(lb: Any) -> str:
    if lb is None or (lb.simple is None and lb.consistent_hash is None):
        return "LEAST_REQUEST"
    if lb.consistent_hash is not None:
        return f"consistentHash {_plain(lb.consistent_hash)}"
    return lb.simple.value if isinstance(lb.simple.value, str) else lb.simple.name


def _host(h: Any, health: dict[str, str]) -> dict[str, Any]:
    e = h.endpoint.endpoint
    return {"address": h.key, "via": h.endpoint.authority, "cluster": e.cluster or None, "gateway": e.gateway,
            "weight": h.weight, "endpointsBehind": h.members if e.gateway else None,
            "health": "/failed_eds_health" if not e.healthy else health.get(h.key, "healthy")}


# -- text ----------------------------------------------------------------------------------


def _secs(v: float | None) -> str:
    return "none" if v is None else f"{v:g}s"


def _limit(v: int) -> str:
    return "unlimited" if v >= UINT32_MAX else str(v)


def explain_text(doc: dict[str, Any]) -> str:
    cl = doc["client"]
    out = [f"{doc['service']} -> {doc['hostname']}:{doc['port']}, as {doc['from']} sees it",
           f"client: cluster {cl['cluster']}, locality {cl['locality'] or '-'}, network {cl['network'] or '-'}, "
           f"config v{cl['configVersion']}", "", f"routes (virtual host {doc['virtualHost']}):"]
    for i, r in enumerate(doc["routes"], 1):
        out.append(f"  {i}. {('VirtualService ' + r['virtualService']) if r['virtualService'] else 'default route'}"
                   f"{' ' + repr(r['name']) if r['name'] and r['virtualService'] else ''}, match {r['match']}")
        for d in r.get("destinations", []):
            out.append(f"       -> {d['cluster']}  weight {d['weight']}")
        if "status" in r:
            out.append(f"       -> {r['action']} {r['status']}")
        rt = r["retries"]
        out.append(f"       retries: {rt['attempts']} attempts, retryOn {','.join(rt['retryOn'])}, perTryTimeout "
                   f"{_secs(rt['perTryTimeout'])}{', retryRemoteLocalities' if rt['retryRemoteLocalities'] else ''}"
                   f" [{rt['source']}]")
        out.append(f"       timeout: {_secs(r['timeout']['seconds'])} [{r['timeout']['source']}]")
        if r["fault"]:
            out.append(f"       fault: {r['fault']}")
    for c in doc["clusters"]:
        out.append("")
        if c.get("missing"):
            out.append(f"cluster {c['name']}: NOT CONFIGURED (requests get 503 NC)")
            continue
        tp = c["trafficPolicy"]
        out.append(f"cluster {c['name']} (DestinationRule {c['destinationRule'] or 'none'}), SNI {c['sni']}")
        out.append(f"  loadBalancer: {tp['loadBalancer']['value']} [{tp['loadBalancer']['source']}]")
        cp = tp["connectionPool"]
        out.append(f"  connectionPool: maxConnections {_limit(cp['maxConnections'])}, http1MaxPendingRequests "
                   f"{_limit(cp['http1MaxPendingRequests'])}, http2MaxRequests {_limit(cp['http2MaxRequests'])}, "
                   f"maxRetries {_limit(cp['maxRetries'])}, connectTimeout {_secs(cp['connectTimeout'])}, "
                   f"idleTimeout {_secs(cp['idleTimeout'])} [{cp['source']}]")
        od = {k: v for k, v in tp["outlierDetection"].items() if k != "source"}
        out.append(f"  outlierDetection: {', '.join(f'{k} {v}' for k, v in od.items()) or 'off'} "
                   f"[{tp['outlierDetection']['source']}]")
        out.append(f"  tls: {tp['tls']['mode']} [{tp['tls']['source']}]")
        ll = tp["localityLbSetting"]
        setting = ", ".join(f"{k}: {v}" for k, v in ll["setting"].items())
        out.append(f"  localityLbSetting: {setting} -> {ll['mode']} [{ll['source']}]")
        out.append(f"  priorities from {cl['locality'] or '(no locality)'}:")
        for p in c["priorities"]:
            out.append(f"    P{p['priority']} {p['reason']}: load {p['load']}%, health {p['health']}%"
                       f"{', PANIC' if p['panic'] else ''}")
            for loc in p["localities"]:
                hosts = "; ".join(_host_text(h) for h in loc["hosts"]) or "-"
                out.append(f"       {loc['locality'] or '(none)'} {loc['share']:g}% ({loc['healthy']}/{loc['endpoints']}"
                           f" healthy, weight {loc['weight']}): {hosts}")
        if not c["priorities"]:
            out.append("    (none: no healthy endpoint)")
        for h in c["unhealthyInRegistry"]:
            out.append(f"    not in any priority (unhealthy in the registry): {_host_text(h)}")
    return "\n".join(out)


def _host_text(h: dict[str, Any]) -> str:
    where = (f"gateway {h['gateway']} ({h['cluster']}, {h['endpointsBehind']} endpoint(s))" if h["gateway"] else
             f"{h['address']} ({h['cluster']})")
    return f"{where} weight {h['weight']} {h['health']}"
