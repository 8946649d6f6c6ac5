"""Which VirtualServices configure a proxy and under which domains, as Istio decides.

Selection (pilot ``PushContext.initVirtualServices`` / ``SelectVirtualServices``): the
latest resource of each namespace/name (``kubectl apply`` replaces), visible in the
client's namespace (``exportTo``; none means everywhere), bound to one of the client's
gateways (``mesh`` when ``gateways`` is empty), sorted by creation time, then name, then
namespace (``sortConfigByCreationTime``). Hosts are qualified with the VirtualService's
namespace (``ResolveShortnameToFQDN``); delegates are spliced in by ``_delegate``.

Coverage (pilot ``separateVSHostsAndServices``, sidecars only): a host that is a service
in the registry covers that service; a wildcard host covers the services it is the most
specific wildcard for, among those no VirtualService names exactly
(``mostSpecificWildcardVsIndex``), and stands for itself only when it matches no service
at all; any other host is outside the registry.

Domains (``generateVirtualHostDomains``): a Kubernetes service answers to its FQDN,
``<svc>.<ns>``, ``<svc>.<ns>.svc``, ``<svc>.<ns>.svc.clusterset.local`` (meshfed merges
the MCS name into the service) and, from its own namespace, ``<svc>``; each also with
``:<port>``. ``DomainIndex`` then picks a virtual host as Envoy does.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Generic, Iterable, Iterator, Mapping, TypeVar

from topology._endpoint import Service
from topology._hostname import host_matches, split_service_fqdn
from topology._http_route import HTTPRoute
from topology._registry import ServiceRegistry
from topology._resource import Resource
from topology._virtualservice import MESH_GATEWAY

from ._actions import qualify_host
from ._delegate import is_exported_to, merge_delegates
from ._match import EMPTY_MAP

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY", "UNSUPPORTED"})
"""Istio's ``IsHTTPOrSniffed``: service ports that get HTTP route configurations."""

V = TypeVar("V")


def resolve_gateway(name: str, namespace: str) -> str:
    """A gateway reference as ``<namespace>/<name>`` (Istio ``resolveGatewayName``)."""
    if name == MESH_GATEWAY:
        return name
    ns, slash, gw = name.partition("/")
    if slash:
        return f"{namespace if ns == '.' else ns}/{gw}"
    if "." in name:  # legacy <name>.<namespace>[.svc.cluster.local]
        parts = name.split(".")
        return f"{parts[1]}/{parts[0]}"
    return f"{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class ClientWorkload:
    """The proxy a table is compiled for: its namespace, labels and gateways.

    ``labels=None`` compiles a table shared by several workloads: ``sourceLabels`` and
    ``sourceNamespace`` are then checked per request against the request's source.
    """

    namespace: str
    labels: Mapping[str, str] | None = EMPTY_MAP
    gateways: tuple[str, ...] = (MESH_GATEWAY,)
    """``mesh`` for a sidecar; ``<namespace>/<name>`` (or a name in ``namespace``) of each
    Gateway resource a gateway proxy serves."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gateways", tuple(resolve_gateway(g, self.namespace) for g in self.gateways))

    @property
    def is_sidecar(self) -> bool:
        return MESH_GATEWAY in self.gateways


def _created(r: Resource) -> float:
    ts = r.metadata.creation_timestamp
    if isinstance(ts, datetime.datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=datetime.timezone.utc)).timestamp()
    if isinstance(ts, str):
        try:
            return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return float("-inf")  # Go's zero time: before everything


@dataclass(frozen=True, slots=True)
class BoundVirtualService:
    """A VirtualService selected for a client: qualified hosts, delegates spliced in."""

    resource: Resource
    hosts: tuple[str, ...]
    http: tuple[tuple[HTTPRoute, str], ...]
    """Rules with the namespace their short host names resolve in (a delegate's own)."""
    services: tuple[Service, ...] = ()
    """Registry services the hosts cover (sidecars only)."""
    other_hosts: tuple[str, ...] = ()
    """Hosts that stand for themselves: outside the registry, or every host of a gateway's."""

    @property
    def key(self) -> str:
        return f"{self.resource.namespace}/{self.resource.name}"

    @property
    def spec(self):  # noqa: ANN201 - VirtualService
        return self.resource.spec


def select_virtual_services(resources: Iterable[Resource], client: ClientWorkload, registry: ServiceRegistry,
                            warnings: list[str]) -> list[BoundVirtualService]:
    """The VirtualServices that configure ``client``, in Istio's order."""
    latest: dict[tuple[str, str], Resource] = {}
    for r in resources:
        if r.kind == "VirtualService":
            latest[(r.namespace, r.name)] = r
    delegates = {k: r for k, r in latest.items() if not r.spec.hosts}
    roots = [r for r in latest.values() if r.spec.hosts and is_exported_to(r.spec.export_to, r.namespace,
                                                                             client.namespace)]
    roots.sort(key=lambda r: (_created(r), r.name, r.namespace))
    out = []
    for r in roots:
        gateways = {resolve_gateway(g, r.namespace) for g in r.spec.gateways} or {MESH_GATEWAY}
        if not gateways & set(client.gateways):
            continue
        hosts = tuple(dict.fromkeys(qualify_host(h, r.namespace, registry.domain) for h in r.spec.hosts))
        http = merge_delegates(r, delegates, warnings) if r.spec.http else ()
        out.append(BoundVirtualService(r, hosts, http, (), hosts))
    return _cover(out, registry) if client.is_sidecar else out


def _cover(bound: list[BoundVirtualService], registry: ServiceRegistry) -> list[BoundVirtualService]:
    services = registry.services
    exact = {h for b in bound for h in b.hosts if not h.startswith("*")}
    owner: dict[str, tuple[str, str]] = {}
    for b in bound:
        for h in b.hosts:
            if h.startswith("*"):
                for s in services:
                    name = s.hostname.name
                    if name not in exact and host_matches(h, name) and (
                            name not in owner or len(h) > len(owner[name][1])):
                        owner[name] = (b.key, h)
    out = []
    for b in bound:
        found: list[Service] = []
        others: list[str] = []
        for h in b.hosts:
            if not h.startswith("*"):
                if h in registry:
                    found.append(registry.get(h))
                else:
                    others.append(h)
                continue
            matched = [s for s in services if host_matches(h, s.hostname.name)]
            found += [s for s in matched if owner.get(s.hostname.name) == (b.key, h)]
            if not matched:
                others.append(h)
        out.append(BoundVirtualService(b.resource, b.hosts, b.http, tuple(found), tuple(others)))
    return out


def http_ports(svc: Service) -> tuple[int, ...]:
    return tuple(p.port for p in svc.ports if p.protocol in HTTP_PROTOCOLS)


def service_names(svc: Service, client_namespace: str, domain: str) -> list[str]:
    """Every name a client in ``client_namespace`` may use for ``svc``."""
    fqdn = svc.hostname.name
    names = [fqdn]
    split = split_service_fqdn(fqdn, domain)
    if split is not None:
        name, ns = split
        names += [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.clusterset.local"]
        if ns == client_namespace:
            names.append(name)
    return names


def service_domains(svc: Service, port: int, client_namespace: str, domain: str) -> list[str]:
    """``service_names``, each also with ``:<port>``."""
    return [d for n in service_names(svc, client_namespace, domain) for d in (n, f"{n}:{port}")]


class DomainIndex(Generic[V]):
    """Envoy's virtual-host selection: exact domains, then wildcard suffixes longest
    first, then ``*``. Ports are ignored (Istio sets ``ignore_port_in_host_matching``);
    ``host:port`` domains are kept as exact keys so the common case is one lookup."""

    __slots__ = ("_exact", "_wild", "_by_len", "_star")

    def __init__(self) -> None:
        self._exact: dict[str, V] = {}
        self._wild: dict[str, V] = {}
        self._by_len: tuple[tuple[int, dict[str, V]], ...] = ()
        self._star: V | None = None

    def __contains__(self, domain: str) -> bool:
        return domain in self._exact or domain in self._wild or (domain == "*" and self._star is not None)

    def add(self, domain: str, value: V) -> bool:
        """Claim ``domain`` for ``value``; False if it is already taken (first one wins)."""
        if domain in self:
            return False
        if domain == "*":
            self._star = value
        elif domain.startswith("*"):
            if ":" not in domain:  # `*.foo.com:80`: ports are ignored anyway
                self._wild[domain] = value
                groups: dict[int, dict[str, V]] = dict(self._by_len)
                groups.setdefault(len(domain) - 1, {})[domain[1:]] = value
                self._by_len = tuple(sorted(groups.items(), reverse=True))
        else:
            self._exact[domain] = value
        return True

    def get(self, domain: str) -> V | None:
        """The value that claimed exactly ``domain``."""
        if domain == "*":
            return self._star
        found = self._exact.get(domain)
        return found if found is not None else self._wild.get(domain)

    def find(self, authority: str) -> V | None:
        """The value for a request's ``:authority`` (or a bare host)."""
        found = self._exact.get(authority)
        if found is not None:
            return found
        host = authority.lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.partition(":")[0]
        found = self._exact.get(host)
        if found is not None:
            return found
        n_host = len(host)
        for n, table in self._by_len:
            if n < n_host:  # a wildcard stands for at least one character
                found = table.get(host[-n:])
                if found is not None:
                    return found
        return self._star

    def values(self) -> Iterator[V]:
        """Each distinct value once, in the order it first claimed a domain."""
        seen: set[int] = set()
        star = (self._star,) if self._star is not None else ()
        for v in (*self._exact.values(), *self._wild.values(), *star):
            if id(v) not in seen:
                seen.add(id(v))
                yield v
