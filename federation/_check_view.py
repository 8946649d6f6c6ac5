"""The client sidecar as ``fedctl check`` and ``fedctl explain`` see it.

Why compile the document again instead of reading the admin's dump: the dump is a
rendering for humans, while the gateway package's compiled objects (route table, clusters,
locality balancer) are what the proxy actually runs. So the document in force - the file
its ``/config_dump`` names, which a sidecar rewrites only after it applied a document - is
compiled here with ``gateway.compile_snapshot``, and only live state (which hosts outlier
detection ejected, the version applied) comes from the admin. Everything here is pure:
documents in, decisions out; the I/O that fetches them lives in ``_check_probe``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway._actions import DestinationConfig
from gateway._clusters import ClusterConfig
from gateway._config import ProxyConfig, load_proxy_config_text
from gateway._locality_lb import LocalityLb, PriorityView
from gateway._match import RouteRequest
from gateway._routing import RouteDecision
from gateway._snapshot import Snapshot, compile_snapshot
from topology._endpoint import Service


class ViewError(ValueError):
    """The client's document cannot be compiled; ``messages`` are the proxy's own diagnostics."""

    def __init__(self, message: str, messages: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.messages = messages


@dataclass(frozen=True, slots=True, eq=False)
class ClientView:
    """One client sidecar: its compiled document and what its admin reports live."""

    snapshot: Snapshot
    clusters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``/clusters?format=json`` by cluster name: ``hosts`` with ``health_flags``, ``priority``."""
    credentials: bool = True
    """Whether the workload's key was readable (the document compiled with its TLS material)."""

    @property
    def config(self) -> ProxyConfig:
        return self.snapshot.config

    @property
    def node(self) -> Any:
        return self.snapshot.config.spec.node

    def health(self, cluster: str) -> dict[str, str]:
        """Host key -> Envoy ``health_flags`` of ``cluster`` (``healthy`` when the admin said nothing)."""
        entry = self.clusters.get(cluster) or {}
        return {h.get("address", ""): h.get("health_flags", "healthy") for h in entry.get("hosts", [])}


def compile_view(text: str, file: str, clusters_json: Mapping[str, Any] | None = None) -> ClientView:
    """The client's document compiled as its proxy compiles it. A key the caller cannot read
    does not stop the view: routing and balancing do not need it, only the trust hop does."""
    config, diagnostics = load_proxy_config_text(text, file)
    if config is None:
        raise ViewError(f"{file}: the document in force does not decode",
                        tuple(str(d) for d in diagnostics if d.is_error))
    snapshot, diagnostics = compile_snapshot(config)
    credentials = True
    if snapshot is None and config.spec.tls is not None and all(d.path.startswith("spec.tls")
                                                                for d in diagnostics if d.is_error):
        spec = config.spec  # compile without the key: an east-west role is the one allowed no TLS
        stripped = dataclasses.replace(spec, tls=None, node=dataclasses.replace(spec.node, role="eastwest"))
        snapshot, diagnostics = compile_snapshot(dataclasses.replace(config, spec=stripped))
        credentials = False
        if snapshot is not None:
            snapshot = dataclasses.replace(snapshot, config=config)
    if snapshot is None:
        raise ViewError(f"{file}: the document in force does not compile",
                        tuple(str(d) for d in diagnostics if d.is_error))
    by_name = {c.get("name", ""): c for c in (clusters_json or {}).get("cluster_statuses", [])}
    return ClientView(snapshot, by_name, credentials)


# -- what a request to SERVICE does --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a request from the client to ``SERVICE[:PORT]`` goes, step by step."""

    service: Service
    fqdn: str
    port: int
    authority: str
    route: RouteDecision | None
    """None: no route matches (Envoy's 404 NR)."""
    destinations: tuple[tuple[DestinationConfig, ClusterConfig | None], ...] = ()
    """Each weighted destination of the route and the cluster it names (None: not configured)."""


def lookup_service(view: ClientView, name: str) -> Service | None:
    """The service ``name`` means to this client (namespace search path, clusterset names)."""
    return view.config.registry.lookup(name, view.node.namespace)


def service_port(service: Service, port: int | None) -> int | None:
    """``port`` if the service has it, else the only (or first HTTP) port when none is given."""
    if port is not None:
        return port if any(p.port == port for p in service.ports) else None
    http = [p for p in service.ports if p.protocol.upper() in ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")]
    chosen = http or list(service.ports)
    return chosen[0].port if chosen else None


def resolve(view: ClientView, name: str, service: Service, port: int, path: str = "/") -> Resolution:
    """The route a GET of ``http://name:port/path`` takes, and the clusters it names."""
    fqdn = service.hostname.name
    authority = f"{name}:{port}"
    route = view.snapshot.routes.route(RouteRequest("GET", "http", authority, path, "", {}, port))
    if route is None and authority != f"{fqdn}:{port}":  # a name the client cannot use: try the FQDN
        authority = f"{fqdn}:{port}"
        route = view.snapshot.routes.route(RouteRequest("GET", "http", authority, path, "", {}, port))
    dests: list[tuple[DestinationConfig, ClusterConfig | None]] = []
    if route is not None and route.action.kind == "forward":
        for d in route.action.destinations.destinations:  # type: ignore[union-attr]
            dests.append((d, view.snapshot.clusters.get((d.host, d.subset or "", d.port_for(port)))))
    return Resolution(service, fqdn, port, authority, route, tuple(dests))


def heaviest(res: Resolution) -> tuple[DestinationConfig, ClusterConfig | None] | None:
    """The destination most requests take (the first of equal weights)."""
    return max(res.destinations, key=lambda d: d[0].weight) if res.destinations else None


# -- locality priorities -------------------------------------------------------------------


def priorities(view: ClientView, cluster: ClusterConfig) -> tuple[PriorityView, ...]:
    """The cluster's priorities as its picker ranks them from the client's locality, under the
    health the admin reports (outlier ejections included). A cluster that balances without
    locality (no rule turning it on, or one locality only) is shown as one priority."""
    health = view.health(cluster.name)
    healthy = {key: flags == "healthy" for key, flags in health.items()}
    locality = cluster.picker.locality
    if locality is not None:
        return locality.priorities(healthy)
    hosts = [h for h in cluster.hosts if h.endpoint.endpoint.healthy]
    if not hosts:
        return ()
    try:
        flat = LocalityLb.compile(None, view.node.locality or "", hosts, False)
    except ValueError:
        return ()
    reason = flat_reason(view, cluster)
    return tuple(dataclasses.replace(p, reason=reason) for p in flat.priorities(healthy))


def flat_reason(view: ClientView, cluster: ClusterConfig) -> str:
    """Why a cluster balances without locality priorities, as Istio decides it (``_clusters._picker``)."""
    from gateway._balancer import load_balancer_for
    from gateway._clusters import _at_port
    if not cluster.destination_rule:
        return "one priority: no DestinationRule, so no locality failover"
    rule = next((r.spec for r in view.config.resources if r.kind == "DestinationRule"
                 and f"{r.namespace}/{r.name}" == cluster.destination_rule), None)
    policy = rule.traffic_policy if rule is not None else None
    subset = next((s.traffic_policy for s in rule.subsets if s.name == cluster.subset), None) if rule else None
    lb = load_balancer_for(policy, cluster.port, subset)
    setting = lb.locality_lb_setting if lb is not None else None
    if setting is not None and setting.enabled is False:
        return "one priority: localityLbSetting enabled: false"
    if _at_port(policy, subset, cluster.port, "outlier_detection") is None and not (setting and setting.distribute):
        return "one priority: no outlierDetection, so Istio sets no failover priorities"
    return "one priority: every endpoint is in one locality"


def chosen_priority(views: tuple[PriorityView, ...]) -> PriorityView | None:
    """The priority that takes most requests now (the lowest of equal loads)."""
    loaded = [v for v in views if v.load > 0]
    return max(loaded, key=lambda v: (v.load, -v.priority)) if loaded else None


def hosts_at(cluster: ClusterConfig, view: PriorityView | None) -> list[Any]:
    """The hosts of ``cluster`` in the localities of one priority (all hosts without one)."""
    if view is None:
        return list(cluster.hosts)
    localities = {s.locality for s in view.localities}
    locality = cluster.picker.locality
    if locality is not None:
        return [h for h in cluster.hosts if locality.priority_of(h.key) == view.priority]
    return [h for h in cluster.hosts if h.locality in localities or not localities]
