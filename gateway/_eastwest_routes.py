"""The east-west gateway's routing table: an SNI in, the local endpoints it may reach out.

Theory of operation. A gateway never decrypts: the only thing it learns of a connection
is the server name of the ClientHello, which a client sidecar sets to Istio's
AUTO_PASSTHROUGH name ``outbound_.<port>_.<subset>_.<fqdn>``. ``EastWestTable.compile``
turns a gateway's document (its own cluster's services, their local endpoints and the
DestinationRules that define subsets) into one entry per exported (service, port,
subset), each with a round-robin balancer over the healthy endpoints' sidecar inbound
ports; ``route(server_name)`` is then one parse and one dict lookup, and returns either
an ``EastWestRoute`` or a ``Refusal`` saying why the connection must be closed (with the
Envoy response flag the access log and ``istio_tcp_*`` carry). Endpoints reached through
another gateway are never targets, so gateways cannot forward in a loop. Nothing here
does I/O; the listener (``_eastwest``) is the thin trio part.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from topology._destinationrule import DestinationRule
from topology._endpoint import Labels

from ._actions import qualify_host
from ._balancer import NO_CONTEXT, Balancer, Host, PickContext, RoundRobinBalancer, subset_hosts
from ._clusters import destination_rule_for
from ._config import EndpointSpec, ProxyConfig
from ._metrics_labels import RequestLabels, Service, Workload
from ._sni import NotMeshSni, parse_mesh_sni


class Refusal(enum.Enum):
    """Why the gateway closed a connection without splicing it: the ``reason`` label of
    ``meshfed_eastwest_refused_total``. ``flag`` is the Envoy response flag logged."""

    NOT_TLS = ("not_tls", "DPE")
    """The first bytes are not a TLS handshake record."""
    MALFORMED_HELLO = ("malformed_hello", "DPE")
    """TLS records that do not carry a valid ClientHello within ``maxHelloBytes``."""
    HELLO_TIMEOUT = ("hello_timeout", "SI")
    """No complete ClientHello within ``helloTimeout``."""
    CLIENT_CLOSED = ("client_closed", "DC")
    """The client closed before its ClientHello was complete."""
    NO_SNI = ("no_sni", "NR")
    """A ClientHello without a server name."""
    UNKNOWN_SNI = ("unknown_sni", "NR")
    """A server name that is not ``outbound_.<port>_.<subset>_.<fqdn>``."""
    UNKNOWN_SERVICE = ("unknown_service", "NR")
    """No service of that name in this cluster."""
    NOT_EXPORTED = ("not_exported", "NR")
    """The service exists here but is not exported to other clusters."""
    UNKNOWN_PORT = ("unknown_port", "NR")
    """The service has no such port."""
    UNKNOWN_SUBSET = ("unknown_subset", "NR")
    """No DestinationRule of the service defines that subset."""
    NO_HEALTHY_ENDPOINT = ("no_healthy_endpoint", "UH")
    """The service, port and subset exist, but no healthy local endpoint serves them."""
    CONNECT_FAILED = ("connect_failed", "UF")
    """Every endpoint tried refused the connection or timed out."""
    OVERFLOW = ("overflow", "UO")
    """``maxConnections`` connections were already open."""

    def __init__(self, reason: str, flag: str) -> None:
        self.reason = reason
        self.flag = flag


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    """One local endpoint as the gateway reaches it: its sidecar's inbound listener."""

    address: str
    port: int
    """The sidecar inbound port (``proxyPort``), where mTLS from the client ends."""
    endpoint: EndpointSpec = field(repr=False)
    labels: RequestLabels = field(repr=False)
    """``istio_tcp_*`` labels of connections spliced to this endpoint (gateway reports as source)."""

    @property
    def authority(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True, eq=False)
class EastWestRoute:
    """An exported (service, port, subset): where connections with its SNI go."""

    sni: str
    fqdn: str
    port: int
    subset: str
    cluster_name: str
    """Envoy's ``outbound|<port>|<subset>|<fqdn>``, for the access log's upstream_cluster."""
    balancer: Balancer[Host] = field(repr=False)
    """Round robin over the healthy backends (``Host.endpoint`` is the ``Backend``)."""

    def pick(self, exclude: frozenset[str] = frozenset()) -> Backend | None:
        """The next backend in the rotation, skipping ``exclude`` (authorities already tried)."""
        host = self.balancer.pick(PickContext(exclude=exclude) if exclude else NO_CONTEXT)
        return host.endpoint if host is not None else None

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(h.endpoint for h in self.balancer.hosts)


@dataclass(frozen=True, slots=True, eq=False)
class EastWestTable:
    """Every SNI a gateway serves, and what it knows of the ones it refuses."""

    routes: Mapping[str, EastWestRoute]
    """SNI -> route, for every exported (service, port, subset) with a healthy endpoint."""
    known: Mapping[str, tuple[bool, frozenset[int], frozenset[str]]]
    """FQDN -> (exported, ports, subsets) of every service of the document, for the reason
    of a refusal."""
    domain: str
    local: Workload
    refused_labels: Mapping[str, RequestLabels] = field(repr=False)
    """FQDN (``""`` for none) -> labels of refused connections naming that service."""

    @classmethod
    def compile(cls, config: ProxyConfig, rng: random.Random | None = None) -> EastWestTable:
        rng = rng or random.Random()
        spec = config.spec
        node = spec.node
        domain = config.registry.domain
        drs = [r for r in config.resources if r.kind == "DestinationRule"]
        local = Workload.from_labels(node.workload, node.namespace, node.labels, cluster=node.cluster)
        routes: dict[str, EastWestRoute] = {}
        known: dict[str, tuple[bool, frozenset[int], frozenset[str]]] = {}
        refused: dict[str, RequestLabels] = {"": RequestLabels.outbound(local, Workload(), Service())}
        for svc in spec.services:
            fqdn = qualify_host(svc.hostname, svc.namespace, domain)
            service = Service.from_host(fqdn)
            refused[fqdn] = RequestLabels.outbound(local, Workload(), service)
            dr_res = destination_rule_for(drs, fqdn, svc.namespace, svc.namespace, {}, node.root_namespace, domain)
            dr: DestinationRule | None = dr_res.spec if dr_res is not None else None
            subsets: list[tuple[str, Mapping[str, str]]] = [("", {})]
            if dr is not None:
                subsets += [(s.name, s.labels) for s in dr.subsets]
            known[fqdn] = (svc.exported, frozenset(p.port for p in svc.ports), frozenset(n for n, _ in subsets))
            if not svc.exported:
                continue
            for p in svc.ports:
                target_port = p.target_port or p.port
                hosts = []
                for e in svc.endpoints:
                    serves = e.service_port == p.port if e.service_port else e.port == target_port
                    if not serves or not e.healthy or e.gateway is not None or not e.proxy_port:
                        continue  # only local endpoints behind a sidecar: never a gateway loop
                    name = e.instance.rsplit("-", 1)[0] if "-" in e.instance else e.instance or e.labels.get("app", "")
                    dest = Workload.from_labels(name, svc.namespace, e.labels, cluster=e.cluster or node.cluster)
                    backend = Backend(e.address, e.proxy_port, e, RequestLabels.outbound(local, dest, service))
                    hosts.append(Host(backend.authority, 1, e.locality, Labels(e.labels), backend))
                for subset, labels in subsets:
                    chosen = subset_hosts(_distinct(hosts), labels) if subset else _distinct(hosts)
                    if not chosen:
                        continue
                    sni = f"outbound_.{p.port}_.{subset}_.{fqdn}"
                    routes[sni] = EastWestRoute(sni, fqdn, p.port, subset, f"outbound|{p.port}|{subset}|{fqdn}",
                                                RoundRobinBalancer(chosen, rng))
        return cls(routes, known, domain, local, refused)

    def route(self, server_name: str | None) -> EastWestRoute | Refusal:
        """Where a connection whose ClientHello names ``server_name`` goes, or why it may not."""
        if not server_name:
            return Refusal.NO_SNI
        found = self.routes.get(server_name)
        if found is not None:
            return found
        try:
            sni = parse_mesh_sni(server_name)
        except NotMeshSni:
            return Refusal.UNKNOWN_SNI
        fqdn = qualify_host(sni.fqdn, "default", self.domain)  # folds clusterset.local into the domain
        canonical = f"outbound_.{sni.port}_.{sni.subset}_.{fqdn}"
        if canonical != server_name and canonical in self.routes:
            return self.routes[canonical]
        info = self.known.get(fqdn)
        if info is None:
            return Refusal.UNKNOWN_SERVICE
        exported, ports, subsets = info
        if not exported:
            return Refusal.NOT_EXPORTED
        if sni.port not in ports:
            return Refusal.UNKNOWN_PORT
        if sni.subset not in subsets:
            return Refusal.UNKNOWN_SUBSET
        return Refusal.NO_HEALTHY_ENDPOINT

    def refused_labels_for(self, server_name: str | None) -> RequestLabels:
        """``istio_tcp_*`` labels of a refused connection: the service its SNI names, if known."""
        fqdn = ""
        if server_name:
            try:
                fqdn = qualify_host(parse_mesh_sni(server_name).fqdn, "default", self.domain)
            except NotMeshSni:
                pass
        return self.refused_labels.get(fqdn) or self.refused_labels[""]

    def __repr__(self) -> str:
        exported = sum(1 for e, _, _ in self.known.values() if e)
        return f"<EastWestTable {len(self.routes)} routes, {exported} of {len(self.known)} services exported>"


def _distinct(hosts: list[Host]) -> tuple[Host, ...]:
    """One host per sidecar address (two service ports may list an endpoint twice)."""
    seen: dict[str, Host] = {}
    for h in hosts:
        seen.setdefault(h.key, h)
    return tuple(seen.values())
