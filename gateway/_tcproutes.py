"""TLS and TCP routes: VirtualService ``tls`` and ``tcp`` rules compiled for one proxy.

Theory of operation. A connection is routed by the host it was opened for (the
``CONNECT`` authority or the service of a per-port listener; the SNI when that is all
there is, as on a gateway): the host picks the VirtualService the same way HTTP picks a
virtual host (``DomainIndex``, first VirtualService per host for sidecars, all of them
concatenated for gateways). Then, first match wins: for a TLS connection its ``tls``
rules (SNI within ``sniHosts``), then its ``tcp`` rules, as Istio builds the filter
chains of a TLS port with the TCP chain as fallback; for plain TCP the ``tcp`` rules.
A sidecar with no rule left forwards to the service itself on the port requested.

Conditions follow pilot ``matchTCP``/``matchTLS``: ``port`` is the destination port,
``destinationSubnets`` the destination address (IP or CIDR), ``sniHosts`` exact or
wildcard names (``*.example.com`` covers every name under it, ``*`` all);
``gateways``, ``sourceLabels`` and ``sourceNamespace`` must all hold for the client and
are decided while compiling unless the table was compiled without labels.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from random import Random
from typing import Callable, Iterable, Mapping

from topology._registry import ServiceRegistry
from topology._resource import Resource
from topology._virtualservice import L4MatchAttributes, RouteDestination, TLSMatchAttributes

from ._actions import DestinationConfig, WeightedDestinations, resolve_destination, weighted
from ._match import EMPTY_MAP
from ._vsselect import (
    BoundVirtualService, ClientWorkload, DomainIndex, resolve_gateway, select_virtual_services, service_names,
)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What L4 routing reads of one connection."""

    port: int
    """Destination port."""
    host: str = ""
    """Host the connection is for (CONNECT authority without port, or the listener's
    service); empty when only the SNI is known."""
    destination_ip: str = ""
    sni: str | None = None
    """Server name of a TLS ClientHello; None for plain TCP."""
    source_namespace: str = ""
    source_labels: Mapping[str, str] = EMPTY_MAP


L4Condition = Callable[[ConnectionInfo], object]


@dataclass(frozen=True, slots=True, eq=False)
class L4RouteDecision:
    """One compiled TLS/TCP rule match (or a default route)."""

    kind: str
    """``tls``, ``tcp`` or ``default``."""
    name: str
    """``tls[i]``/``tcp[i]`` of the VirtualService, or ``default``."""
    source: str
    destinations: WeightedDestinations
    conditions: tuple[L4Condition, ...] = field(default=(), repr=False)
    descriptions: tuple[str, ...] = ()

    def pick(self, rng: Random) -> DestinationConfig:
        return self.destinations.pick(rng)

    def matches(self, conn: ConnectionInfo) -> bool:
        return all(c(conn) for c in self.conditions)

    def __repr__(self) -> str:
        return f"<L4RouteDecision {self.source or 'default'} {self.name}: " \
               f"{' and '.join(self.descriptions) or 'any'} -> {self.destinations!r}>"


@dataclass(frozen=True, slots=True, eq=False)
class L4Host:
    name: str
    tls: tuple[L4RouteDecision, ...] = ()
    tcp: tuple[L4RouteDecision, ...] = ()
    default: L4RouteDecision | None = None


def _sni_condition(sni_hosts: tuple[str, ...]) -> L4Condition:
    exact = frozenset(h.lower() for h in sni_hosts if not h.startswith("*"))
    suffixes = tuple(h[1:].lower() for h in sni_hosts if h.startswith("*"))
    if "" in suffixes:  # `*`
        return lambda c: c.sni is not None
    return lambda c: c.sni is not None and (c.sni.lower() in exact or any(
        c.sni.lower().endswith(s) and len(c.sni) > len(s) for s in suffixes))


def _subnet_condition(subnets: tuple[str, ...]) -> L4Condition:
    nets = tuple(ipaddress.ip_network(s, strict=False) for s in subnets)

    def cond(c: ConnectionInfo) -> bool:
        try:
            ip = ipaddress.ip_address(c.destination_ip)
        except ValueError:
            return False
        return any(ip in n for n in nets)
    return cond


def _l4_conditions(m: L4MatchAttributes | TLSMatchAttributes, vs_namespace: str,
                   client: ClientWorkload) -> tuple[list[L4Condition], list[str]] | None:
    """Compiled conditions of one match; None when the client can never meet them."""
    if m.gateways and not any(resolve_gateway(g, vs_namespace) in client.gateways for g in m.gateways):
        return None
    conds: list[L4Condition] = []
    what: list[str] = []
    if client.labels is not None:
        if any(client.labels.get(k) != v for k, v in m.source_labels.items()):
            return None
        if m.source_namespace and m.source_namespace != client.namespace:
            return None
    else:
        if m.source_labels:
            items = tuple(m.source_labels.items())
            conds.append(lambda c: all(c.source_labels.get(k) == v for k, v in items))
            what.append(f"source labels {dict(items)}")
        if m.source_namespace:
            ns = m.source_namespace
            conds.append(lambda c: c.source_namespace == ns)
            what.append(f"source namespace {ns!r}")
    if m.port:
        port = m.port
        conds.append(lambda c: c.port == port)
        what.append(f"port {port}")
    if m.destination_subnets:
        conds.append(_subnet_condition(m.destination_subnets))
        what.append(f"destination in {list(m.destination_subnets)}")
    if isinstance(m, TLSMatchAttributes) and m.sni_hosts:
        conds.insert(0, _sni_condition(m.sni_hosts))
        what.insert(0, f"sni in {list(m.sni_hosts)}")
    return conds, what


def _destinations(route: Iterable[RouteDestination], namespace: str,
                  registry: ServiceRegistry) -> WeightedDestinations | None:
    out = []
    for d in route:
        if d.destination is not None:
            host, port = resolve_destination(d.destination, namespace, None, registry)
            out.append(DestinationConfig(host, d.destination.subset, port, d.weight or 0))
    return weighted(out) if out else None


def _rules(b: BoundVirtualService, kind: str, client: ClientWorkload,
           registry: ServiceRegistry) -> list[L4RouteDecision]:
    out: list[L4RouteDecision] = []
    ns = b.resource.namespace
    for i, rule in enumerate(getattr(b.spec, kind)):
        dests = _destinations(rule.route, ns, registry)
        if dests is None:
            continue
        for m in rule.match or (None,):
            if m is None:
                compiled: tuple[list[L4Condition], list[str]] | None = ([], [])
            else:
                compiled = _l4_conditions(m, ns, client)
            if compiled is None:
                continue
            conds, what = compiled
            out.append(L4RouteDecision(kind, f"{kind}[{i}]", b.key, dests, tuple(conds), tuple(what)))
            if not conds:
                return out  # catch-all: later rules are unreachable
    return out


class TcpRouteTable:
    """Immutable TLS/TCP routing for one client; build with ``TcpRouteTable.compile``."""

    __slots__ = ("client", "_index")

    def __init__(self, client: ClientWorkload, index: DomainIndex[L4Host]) -> None:
        self.client = client
        self._index = index

    @classmethod
    def compile(cls, virtual_services: Iterable[Resource], registry: ServiceRegistry,
                client: ClientWorkload) -> TcpRouteTable:
        warnings: list[str] = []
        bound = [b for b in select_virtual_services(virtual_services, client, registry, warnings)
                 if b.spec.tls or b.spec.tcp]
        index: DomainIndex[L4Host] = DomainIndex()
        if client.is_sidecar:
            for b in bound:
                host = L4Host(b.hosts[0], tuple(_rules(b, "tls", client, registry)),
                              tuple(_rules(b, "tcp", client, registry)))
                for s in b.services:
                    default = _default(s.hostname.name, "")
                    per_service = L4Host(s.hostname.name, host.tls, host.tcp, default)
                    for d in service_names(s, client.namespace, registry.domain):
                        index.add(d, per_service)
                for h in b.other_hosts:
                    index.add(h, host)
            for s in registry.services:
                names = [d for d in service_names(s, client.namespace, registry.domain) if d not in index]
                if s.hostname.name in names:  # a service some VirtualService covers gets no default
                    plain = L4Host(s.hostname.name, default=_default(s.hostname.name, ""))
                    for d in names:
                        index.add(d, plain)
        else:
            merged: dict[str, tuple[list[L4RouteDecision], list[L4RouteDecision]]] = {}
            for b in bound:
                for h in b.hosts:
                    tls, tcp = merged.setdefault(h, ([], []))
                    tls += _rules(b, "tls", client, registry)
                    tcp += _rules(b, "tcp", client, registry)
            for h, (tls, tcp) in merged.items():
                index.add(h, L4Host(h, tuple(tls), tuple(tcp)))
        return cls(client, index)

    def route(self, conn: ConnectionInfo) -> L4RouteDecision | None:
        """The first rule that matches the connection, the default route, or None."""
        host = self._index.find(conn.host or conn.sni or "")
        if host is None:
            return None
        if conn.sni is not None:
            for r in host.tls:
                if all(c(conn) for c in r.conditions):
                    return r
        for r in host.tcp:
            if all(c(conn) for c in r.conditions):
                return r
        return host.default

    def __repr__(self) -> str:
        hosts = list(self._index.values())
        return (f"<TcpRouteTable {','.join(self.client.gateways)} in {self.client.namespace}: {len(hosts)} hosts, "
                f"{sum(len(h.tls) + len(h.tcp) for h in hosts)} rules>")


def _default(fqdn: str, source: str) -> L4RouteDecision:
    """Forward to the service itself, on the port the connection was opened to."""
    return L4RouteDecision("default", "default", source,
                           WeightedDestinations((DestinationConfig(fqdn, None, None),)))
