"""``fedctl check SERVICE --from CLUSTER/WORKLOAD``: walk a request's hops, name the first that fails.

Theory of operation. The walk follows the request as the client's sidecar will carry it:
the sidecar and the document it applied; the service that name resolves to in that
document; the route, the cluster and the locality priority the compiled objects choose
(``_check_view``); the endpoint and the SNI; then, off the machine's own state, the remote
gateway, the endpoint's sidecar, a real TLS handshake and a real request
(``_check_remote``). Each step becomes a ``Hop`` with its evidence; the walk stops at the
first failure, whose hint says what to do. All I/O goes through ``probes`` (``LiveProbes``
in use, canned answers in tests), so the walk itself is a function of what it was told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from ._check_probe import Answer, Handshake
from ._check_remote import remote_hops
from ._check_report import CheckReport, Hop, fail, ok, warn
from ._check_view import (ClientView, ViewError, chosen_priority, compile_view, heaviest, hosts_at, lookup_service,
                          priorities, resolve, service_port)


class Probes(Protocol):
    def admin(self, hostport: str, path: str) -> Answer: ...
    def connect(self, hostport: str) -> str | None: ...
    def handshake(self, hostport: str, sni: str, svid: Any | None) -> Handshake: ...
    def request(self, outbound: str, url: str) -> Answer: ...
    def read_text(self, path: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Client:
    """Where the client workload's sidecar is, and what the mesh says about the clusters."""

    source: str
    """``cluster/namespace/workload (instance)``, for the report."""
    admin: str
    outbound: str
    trust_domains: Mapping[str, str] = field(default_factory=dict)
    """Cluster -> trust domain, for the SPIFFE ID an endpoint of that cluster must present."""


def check(client: Client, service: str, port: int | None, probes: Probes, path: str = "/") -> CheckReport:
    hops: list[Hop] = []
    for hop in _walk(client, service, port, probes, path):
        hops.append(hop)
        if not hop.ok:
            break
    return CheckReport(service, port, client.source, tuple(hops))


def load_client_view(client: Client, probes: Probes) -> tuple[ClientView | None, Hop, dict[str, Any]]:
    """The client's view and the ``sidecar`` hop; the view is None when the hop fails."""
    name = "sidecar"
    ready = probes.admin(client.admin, "/ready")
    if ready.status is None:
        what = "hangs" if ready.hung else "is not reachable"
        return None, fail(name, f"admin {client.admin} {what}: {ready.error}",
                          "the sidecar is not running or stuck: see 'fedctl status' and its log"), {}
    if ready.status != 200:
        return None, fail(name, f"admin {client.admin} answers /ready with {ready.status} "
                                f"{ready.body.decode('utf-8', 'replace').strip()}",
                          "the sidecar has no config yet: check that its control plane runs ('fedctl status')"), {}
    dump_answer = probes.admin(client.admin, "/config_dump")
    try:
        dump = json.loads(dump_answer.body) if dump_answer.ok else None
    except ValueError:
        dump = None
    if not isinstance(dump, dict):
        return None, fail(name, f"admin {client.admin} /config_dump: {dump_answer.error or dump_answer.status}",
                          "the sidecar's admin does not describe its config: see its log"), {}
    file = str(dump.get("file") or "")
    text = probes.read_text(file) if file else None
    if text is None:
        return None, fail(name, f"ready, config v{dump.get('version')}, but its document {file or '(none)'} "
                                "cannot be read", "run fedctl check as the user that ran 'fedctl up'"), dump
    clusters = probes.admin(client.admin, "/clusters?format=json")
    try:
        clusters_json = json.loads(clusters.body) if clusters.ok else None
    except ValueError:
        clusters_json = None
    try:
        view = compile_view(text, file, clusters_json)
    except ViewError as exc:
        return None, fail(name, f"{exc}: {'; '.join(exc.messages[:3])}",
                          "the document on disk differs from the one applied: run check again"), dump
    node = view.node
    tls = dump.get("tls") or {}
    evidence = (f"{client.admin} ready, config v{dump.get('version')} (applied {dump.get('applied')}, refused "
                f"{dump.get('refused')}), {tls.get('spiffe_id') or node.spiffe_id}, locality {node.locality or '-'}, "
                f"network {node.network or '-'}")
    data = {"admin": client.admin, "version": dump.get("version"), "file": file, "spiffeId": tls.get("spiffe_id"),
            "locality": node.locality, "network": node.network}
    if str(dump.get("version")) != view.config.version:
        return view, warn(name, evidence + f"; the document on disk is v{view.config.version}",
                          "a new document is being applied: run check again", **data), dump
    if dump.get("refused"):
        return view, warn(name, evidence, "the sidecar refused a later document and keeps this one: "
                                          "see 'fedctl status' (lastNack)", **data), dump
    if clusters_json is None:
        return view, warn(name, evidence, "its /clusters page did not answer: outlier ejections are not known",
                          **data), dump
    return view, ok(name, evidence, **data), dump


def _walk(client: Client, service: str, port: int | None, probes: Probes, path: str) -> Iterator[Hop]:
    view, hop, dump = load_client_view(client, probes)
    yield hop
    if view is None:
        return
    svc = lookup_service(view, service)
    if svc is None:
        yield fail("service", f"unknown service {service!r}: no service of that name in the client's document "
                              f"(resolved from namespace {view.node.namespace!r}; "
                              f"{len(view.config.spec.services)} services known)",
                   "check the name (NAME.NAMESPACE); a service of another cluster appears here once the clusters "
                   "are linked ('fedctl link A B') and that cluster exports it (ServiceExport)")
        return
    chosen_port = service_port(svc, port)
    ports = ", ".join(f"{p.port} ({p.protocol})" for p in svc.ports) or "none"
    if chosen_port is None:
        yield fail("service", f"{service} is {svc.hostname.name}, which has no port {port}; its ports: {ports}",
                   "give one of its ports with --port")
        return
    proto = next((p.protocol for p in svc.ports if p.port == chosen_port), "")
    where = ", ".join(sorted({e.cluster for e in svc.endpoints if e.cluster})) or "none"
    yield ok("service", f"{service} -> {svc.hostname.name}:{chosen_port} ({proto}); endpoints in clusters: {where}",
             hostname=svc.hostname.name, port=chosen_port, protocol=proto)
    res = resolve(view, service, svc, chosen_port, path)
    route = res.route
    if route is None:
        yield fail("route", f"no route for {res.authority}{path} on port {chosen_port} (Envoy 404, flag NR)",
                   "is the port an HTTP port? does a VirtualService match this path?")
        return
    source = f"VirtualService {route.source}" if route.source else "default route (no VirtualService)"
    name = f" route {route.name!r}" if route.name and route.source else ""
    if route.action.kind != "forward":
        yield ok("route", f"{source}{name} ({route.match}): {route.action.kind} {route.action.status}")  # type: ignore[union-attr]
        yield from remote_hops(client, view, res, None, None, probes, path, dump)
        return
    split = ", ".join(f"{d.cluster} {d.weight}%" for d, _ in res.destinations)
    dest, cluster = heaviest(res)  # type: ignore[misc]
    yield ok("route", f"{source}{name} ({route.match}) -> {split}", virtualService=route.source or None,
             route=route.name, subset=dest.subset or "", destinations={d.cluster: d.weight for d, _ in res.destinations})
    if cluster is None:
        yield fail("cluster", f"the route names {dest.cluster}, which is not configured (Envoy 503, flag NC)",
                   f"define subset {dest.subset!r} in a DestinationRule for {dest.host}" if dest.subset else
                   f"{dest.host} port {dest.port_for(chosen_port)} is not a service port")
        return
    hop, host = _cluster_hop(view, cluster)
    yield hop
    if host is None:
        return
    target = host.endpoint
    e = target.endpoint
    if e.gateway is not None:
        via = (f"through the east-west gateway {e.gateway} of cluster {e.cluster or '?'} (network "
               f"{e.network or '?'}, {host.members} endpoint(s) behind it, weight {host.weight})")
    else:
        via = f"directly at its sidecar {target.authority}" if target.tls else f"directly at {target.authority} (no sidecar)"
    sni = f", SNI {target.sni}" if target.tls else ", plaintext"
    yield ok("endpoint", f"{host.key} {via}{sni}", address=host.key, via=target.authority, gateway=e.gateway,
             cluster=e.cluster, sni=target.sni if target.tls else None, tls=target.tls)
    yield from remote_hops(client, view, res, cluster, host, probes, path, dump)


def _cluster_hop(view: ClientView, cluster: Any) -> tuple[Hop, Any]:
    name = "cluster"
    rule = f"DestinationRule {cluster.destination_rule}" if cluster.destination_rule else "no DestinationRule"
    subset = f" (subset {cluster.subset})" if cluster.subset else ""
    if not cluster.hosts:
        return fail(name, f"{cluster.name}: no endpoints{subset}; {rule}",
                    "no instance of the service runs in this cluster and no linked cluster exports it: scale it "
                    "up, or link the cluster that runs it ('fedctl link') and export it there (ServiceExport)"
                    + (f"; or no endpoint carries the labels of subset {cluster.subset!r}" if cluster.subset else ""),
                    cluster=cluster.name), None
    health = view.health(cluster.name)
    ejected = [h.key for h in cluster.hosts if health.get(h.key, "healthy") == "/failed_outlier_check"]
    down = [h.key for h in cluster.hosts if not h.endpoint.endpoint.healthy]
    healthy = [h for h in cluster.hosts if h.endpoint.endpoint.healthy and health.get(h.key, "healthy") == "healthy"]
    if not healthy:
        parts = [f"{len(ejected)} ejected by outlier detection" if ejected else "",
                 f"{len(down)} unhealthy in the registry" if down else ""]
        return fail(name, f"{cluster.name}: no healthy endpoint of {len(cluster.hosts)} "
                          f"({', '.join(p for p in parts if p)}); {rule}",
                    "ejected endpoints return after baseEjectionTime; find why they failed: "
                    "'fedctl check' with --port, the server's log, 'fedctl status'", cluster=cluster.name,
                    ejected=ejected, unhealthy=down), None
    views = priorities(view, cluster)
    chosen = chosen_priority(views)
    candidates = [h for h in hosts_at(cluster, chosen) if h in healthy] or healthy
    host = max(candidates, key=lambda h: h.weight)  # the first of equal weights
    if chosen is not None:
        places = ", ".join(f"{s.locality} ({s.healthy}/{s.hosts} healthy)" for s in chosen.localities)
        where = (f"priority {chosen.priority} of {len(views)} ({chosen.reason}): {places}, "
                 f"{chosen.load}% of requests")
    else:
        where = "no priority takes traffic"
    evidence = f"{cluster.name}; {rule}; {where}"
    data = {"cluster": cluster.name, "destinationRule": cluster.destination_rule or None,
            "priority": chosen.priority if chosen else None, "healthy": len(healthy), "endpoints": len(cluster.hosts)}
    if ejected or down:
        return warn(name, evidence + f"; {len(ejected) + len(down)} of {len(cluster.hosts)} endpoint(s) out",
                    "some endpoints are ejected or unhealthy; the others take their traffic", **data), host
    return ok(name, evidence, **data), host
