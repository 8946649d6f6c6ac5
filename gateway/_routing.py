"""The HTTP routing table of one proxy: VirtualServices and the registry compiled into
per-port virtual hosts of ordered routes, as Istio builds Envoy's RDS for that proxy.

Theory of operation. Istio generates one route configuration per listener port and, in
it, one virtual host per service (pilot ``BuildSidecarVirtualHostWrapper``), so the table
is keyed by destination port, then by domain:

* VirtualServices are picked for the client first (``select_virtual_services``): the
  latest resource of each namespace/name (``kubectl apply``), visible to the client's
  namespace (``exportTo``, default everywhere), bound to one of its gateways (``mesh``
  for sidecars), ordered by creation time, then name, then namespace (pilot
  ``sortConfigByCreationTime``); delegates are spliced into their roots there.
* A VirtualService's hosts are qualified with its namespace (``reviews`` in ``default``
  is ``reviews.default.svc.cluster.local``). A host that is a service in the registry
  answers on that service's HTTP ports under every name a client may write it
  (``generateVirtualHostDomains`` plus ``clusterset.local``); a wildcard host takes the
  services it is the most specific wildcard for; a host outside the registry answers on
  port 80 only (Istio's "gross HACK") unless the VirtualService also names a service.
* Sidecars: the first VirtualService to claim a domain keeps it; later ones for the
  same host are ignored and listed in ``conflicts`` (Istio supports no host merging for
  sidecars, IST0109). Gateways: the routes of every VirtualService for a host are
  concatenated in order (Istio merges VirtualServices bound to gateways).
* Every HTTP service port of the registry not claimed by a VirtualService gets Istio's
  default route: forward to the service itself on the port requested. Gateways get no
  defaults.
* Each ``HTTPMatchRequest`` becomes its own route entry (Istio emits one Envoy route
  per match), so a prefix rewrite knows which prefix it replaces; ``port``,
  ``gateways``, ``sourceLabels`` and ``sourceNamespace`` are decided while compiling,
  as Istio decides them for the proxy it configures; translation of a VirtualService
  stops at its first catch-all rule.

``route(req)`` reads: a dict lookup for the port, one for the domain (then the port-less
host, then wildcards longest suffix first, then ``*``), then the first entry whose
conditions all hold (fused into one call per route). The entry found is returned as
is - no allocation per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from topology._endpoint import Service
from topology._http_route import HTTPMatchRequest, HTTPRoute
from topology._registry import ServiceRegistry
from topology._resource import Resource

from . import GatewayError
from ._actions import (
    DestinationConfig, DirectResponseAction, ForwardAction, RedirectAction, WeightedDestinations, compile_forward,
)
from ._cors import CorsConfig
from ._headerops import NO_STAGE, HeaderOps, HeaderStage
from ._match import CATCH_ALL_PATH, HttpMatchConfig, RouteRequest
from ._vsselect import (
    BoundVirtualService, ClientWorkload, DomainIndex, http_ports, resolve_gateway, select_virtual_services,
    service_domains,
)

if TYPE_CHECKING:
    from topology._duration import Duration
    from topology._http_actions import HTTPMirrorPolicy
    from topology._http_policy import HTTPFaultInjection, HTTPRetry
    from topology._istio_types import Destination

NON_REGISTRY_PORT = 80
"""Port on which VirtualService hosts outside the registry are routed (pilot route.go)."""


class RouteCompileError(GatewayError, ValueError):
    """A routing table that cannot be built from what it was given."""


@dataclass(frozen=True, slots=True, eq=False)
class RouteDecision:
    """One compiled route entry; ``RouteTable.route`` returns the entry that matched."""

    name: str
    """Istio's route name: the rule's name, ``.<match name>`` appended; ``default`` for
    the default route."""
    virtual_host: str
    source: str
    """``<namespace>/<name>`` of the VirtualService, ``""`` for a default route."""
    namespace: str
    """Namespace short host names in ``spec`` resolve in."""
    match: HttpMatchConfig
    action: ForwardAction | RedirectAction | DirectResponseAction
    cors: CorsConfig | None = None
    spec: HTTPRoute | None = field(default=None, repr=False)
    """The rule (delegates merged in): ``timeout``, ``retries``, ``fault``, ``mirror*``
    are read from it by the resilience layer."""
    test: object = field(default=None, init=False, repr=False)
    """``match.test``, held here to save an attribute lookup per route tried."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", self.match.test)

    @property
    def timeout(self) -> Duration | None:
        return self.spec.timeout if self.spec is not None else None

    @property
    def retries(self) -> HTTPRetry | None:
        """None: Istio's mesh-wide default retry policy applies."""
        return self.spec.retries if self.spec is not None else None

    @property
    def fault(self) -> HTTPFaultInjection | None:
        return self.spec.fault if self.spec is not None else None

    @property
    def mirror(self) -> Destination | None:
        """With ``spec.mirror_percentage``/``mirror_percent``; short hosts resolve in ``namespace``."""
        return self.spec.mirror if self.spec is not None else None

    @property
    def mirrors(self) -> tuple[HTTPMirrorPolicy, ...]:
        return self.spec.mirrors if self.spec is not None else ()

    def __repr__(self) -> str:
        return f"<RouteDecision {self.virtual_host} {self.name or '-'} from {self.source or 'default'}: " \
               f"{self.match} -> {self.action.kind}>"


@dataclass(frozen=True, slots=True, eq=False)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteDecision, ...]

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name} [{len(self.domains)} domains, {len(self.routes)} routes]>"


class RouteTable:
    """Immutable per-port routing for one client; build with ``RouteTable.compile``."""

    __slots__ = ("client", "_ports", "warnings", "conflicts")

    def __init__(self, client: ClientWorkload, ports: dict[int, DomainIndex[VirtualHost]],
                 warnings: tuple[str, ...], conflicts: tuple[str, ...]) -> None:
        self.client = client
        self._ports = ports
        self.warnings = warnings
        self.conflicts = conflicts

    @classmethod
    def compile(cls, virtual_services: Iterable[Resource], registry: ServiceRegistry, client: ClientWorkload,
                *, ports: Iterable[int] | None = None) -> RouteTable:
        """Compile the table. ``ports``: the listener ports to configure; a sidecar
        defaults to every HTTP port in the registry (plus 80 for hosts outside it), a
        gateway must name its servers' ports."""
        warnings: list[str] = []
        conflicts: dict[str, None] = {}
        bound = select_virtual_services(virtual_services, client, registry, warnings)
        if ports is None:
            if not client.is_sidecar:
                raise RouteCompileError(f"a routing table for gateways {list(client.gateways)} needs the "
                                        "ports its servers listen on")
            ports = _sidecar_ports(bound, registry)
        compiled: dict[int, DomainIndex[VirtualHost]] = {}
        for port in sorted(set(ports)):
            if client.is_sidecar:
                compiled[port] = _sidecar_port(bound, port, client, registry, warnings, conflicts)
            else:
                compiled[port] = _gateway_port(bound, port, client, registry, warnings)
        return cls(client, compiled, tuple(dict.fromkeys(warnings)), tuple(conflicts))

    def route(self, req: RouteRequest) -> RouteDecision | None:
        """The first route of the request's virtual host that matches it; None when no
        virtual host or no route matches (Envoy's 404 ``NR``)."""
        index = self._ports.get(req.port)
        if index is None:
            return None
        vh = index.find(req.authority)
        if vh is None:
            return None
        for entry in vh.routes:
            test = entry.test
            if test is None or test(req):
                return entry
        return None

    def virtual_host(self, authority: str, port: int) -> VirtualHost | None:
        index = self._ports.get(port)
        return index.find(authority) if index is not None else None

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self._ports)

    def virtual_hosts(self, port: int) -> tuple[VirtualHost, ...]:
        index = self._ports.get(port)
        return tuple(index.values()) if index is not None else ()

    def __repr__(self) -> str:
        vhs = [vh for p in self._ports for vh in self.virtual_hosts(p)]
        return (f"<RouteTable {','.join(self.client.gateways)} in {self.client.namespace}: {len(self._ports)} ports, "
                f"{len(vhs)} virtual hosts, {sum(len(v.routes) for v in vhs)} routes>")


# -- compiling -------------------------------------------------------------------------

def _source_check(m: HTTPMatchRequest | None, vs_namespace: str, client: ClientWorkload) -> bool | None:
    """Istio's ``sourceMatchHTTP`` for ``client``: True/False, or None when it is left to
    the request (a table compiled without labels)."""
    if m is None:
        return True
    if m.gateways:
        return any(resolve_gateway(g, vs_namespace) in client.gateways for g in m.gateways)
    if client.labels is None:
        return None
    if any(client.labels.get(k) != v for k, v in m.source_labels.items()):
        return False
    return not m.source_namespace or m.source_namespace == client.namespace


def translate_routes(bvs: BoundVirtualService, port: int, vhost: str, client: ClientWorkload,
                     registry: ServiceRegistry, warnings: list[str]) -> list[RouteDecision]:
    """Istio's ``BuildHTTPRoutesForVirtualService`` for one listener port."""
    out: list[RouteDecision] = []
    vs_ns = bvs.resource.namespace
    for i, (rule, ns) in enumerate(bvs.http):
        catch_all = not rule.match
        for m in rule.match or (None,):
            if m is not None and m.port and m.port != port:
                continue
            ok = _source_check(m, vs_ns, client)
            if ok is False:
                continue
            entry = _entry(bvs, i, rule, m, ns, port, vhost, ok is None, registry, warnings)
            if entry is None:
                continue
            out.append(entry)
            if entry.match.is_catch_all:
                catch_all = True
                break
        if catch_all:
            break
    return out


def _entry(bvs: BoundVirtualService, i: int, rule: HTTPRoute, m: HTTPMatchRequest | None, ns: str, port: int,
           vhost: str, runtime_source: bool, registry: ServiceRegistry, warnings: list[str]) -> RouteDecision | None:
    match = HttpMatchConfig.compile(m, runtime_source=runtime_source)
    name = rule.name or ""
    if m is not None and m.name:
        name = f"{name}.{m.name}"
    resp_stage = HeaderStage.of(rule.headers.response)[0] if rule.headers is not None else NO_STAGE
    action: ForwardAction | RedirectAction | DirectResponseAction | None
    if rule.redirect is not None:
        action = RedirectAction.compile(rule.redirect, port, response_headers=HeaderOps.of(resp_stage))
        if action is None:
            warnings.append(f"{bvs.key}: http[{i}]: redirect code {rule.redirect.redirect_code} is not supported "
                            "(301, 302, 303, 307, 308); rule ignored")
    elif rule.direct_response is not None:
        action = DirectResponseAction.compile(rule.direct_response, HeaderOps.of(resp_stage))
    else:
        action = compile_forward(rule.route, ns, port, registry, rule.headers, rule.rewrite,
                                 match.path.matched_length)
        if action is None:
            warnings.append(f"{bvs.key}: http[{i}]: rule has no route, redirect or directResponse; ignored")
    if action is None:
        return None
    cors = CorsConfig.compile(rule.cors_policy) if rule.cors_policy is not None else None
    return RouteDecision(name, vhost, bvs.key, ns, match, action, cors, rule)


def default_route(svc: Service, port: int) -> RouteDecision:
    """Istio's ``BuildDefaultHTTPOutboundRoute``: everything to the service on this port."""
    fqdn = svc.hostname.name
    dest = WeightedDestinations((DestinationConfig(fqdn, None, port),))
    return RouteDecision("default", f"{fqdn}:{port}", "", svc.namespace,
                         HttpMatchConfig(None, CATCH_ALL_PATH, (), (str(CATCH_ALL_PATH),)), ForwardAction(dest))


def _sidecar_ports(bound: list[BoundVirtualService], registry: ServiceRegistry) -> set[int]:
    out = {p for s in registry.services for p in http_ports(s)}
    if any(b.http and b.other_hosts and not any(http_ports(s) for s in b.services) for b in bound):
        out.add(NON_REGISTRY_PORT)
    return out


def _sidecar_port(bound: list[BoundVirtualService], port: int, client: ClientWorkload, registry: ServiceRegistry,
                  warnings: list[str], conflicts: dict[str, None]) -> DomainIndex[VirtualHost]:
    """Sidecars: a virtual host per VirtualService (the first claim of a domain wins),
    then the default route of every service left unclaimed on this port."""
    index: DomainIndex[VirtualHost] = DomainIndex()
    for b in bound:
        if any(http_ports(s) for s in b.services):
            on_port = [s for s in b.services if port in http_ports(s)]
            if not on_port:
                continue
        elif port != NON_REGISTRY_PORT or not b.other_hosts:
            continue
        else:
            on_port = []
        domains = [d for s in on_port for d in service_domains(s, port, client.namespace, registry.domain)]
        domains += [d for h in b.other_hosts for d in (h, f"{h}:{port}")]
        name = f"{(on_port[0].hostname.name if on_port else b.other_hosts[0])}:{port}"
        routes = translate_routes(b, port, name, client, registry, warnings)
        if not routes:
            continue
        kept = []
        for d in dict.fromkeys(domains):
            if d not in index:
                kept.append(d)
            elif ":" not in d:
                other = index.get(d)
                owner = other.routes[0].source if other is not None and other.routes else "?"
                conflicts[f"{b.key}: host {d!r} is already routed by {owner}; for sidecars the oldest "
                          "VirtualService wins (IST0109)"] = None
        if kept:
            vh = VirtualHost(name, tuple(kept), tuple(routes))
            for d in kept:
                index.add(d, vh)
    for s in registry.services:
        if port not in http_ports(s):
            continue
        kept = [d for d in service_domains(s, port, client.namespace, registry.domain) if d not in index]
        if s.hostname.name in kept:  # a service some VirtualService covers gets no default
            vh = VirtualHost(f"{s.hostname.name}:{port}", tuple(kept), (default_route(s, port),))
            for d in kept:
                index.add(d, vh)
    return index


def _gateway_port(bound: list[BoundVirtualService], port: int, client: ClientWorkload,
                  registry: ServiceRegistry, warnings: list[str]) -> DomainIndex[VirtualHost]:
    """Gateways: one virtual host per host, the routes of every VirtualService naming it
    concatenated in order (pilot ``buildGatewayHTTPRouteConfig``)."""
    merged: dict[str, list[RouteDecision]] = {}
    for b in bound:
        for h in b.hosts:
            routes = translate_routes(b, port, f"{h}:{port}", client, registry, warnings)
            if routes:
                merged.setdefault(h, []).extend(routes)
    index: DomainIndex[VirtualHost] = DomainIndex()
    for h, routes in merged.items():
        domains = ("*",) if h == "*" else (h, f"{h}:{port}")
        vh = VirtualHost(f"{h}:{port}", domains, tuple(routes))
        for d in domains:
            index.add(d, vh)
    return index
