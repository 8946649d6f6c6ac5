"""What the mesh DNS knows: the records of one registry snapshot, name by name.

Theory of operation. A ``DnsTable`` wraps one immutable ``ServiceRegistry`` and answers
``lookup(qname) -> (node, zone)``: the records at that owner name (a ``Node``, empty for a
name that exists without data) and the zone meshfed is authoritative for, if any. The
table never changes; the server builds a new one per registry snapshot and swaps it with
one assignment. Records are built per service on first use and kept, so a swap costs
nothing and a snapshot of 1,000 services pays only for the names actually asked.

Names, as the Kubernetes DNS spec (kubernetes/dns docs/specification.md) and the MCS DNS
spec (KEP-1645 specification.md) give them; meshfed has no virtual IPs, so every service
is answered like a *headless* one, with its endpoints' addresses:

* ``<svc>.<ns>.svc.cluster.local`` - A/AAAA of every healthy endpoint of every cluster,
  the answering cluster's first (namespace sameness: one service mesh-wide, as Istio
  multi-primary merges it); SRV of every named port. ``<svc>.<ns>.svc.clusterset.local``
  names the same service.
* ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` - SRV per healthy endpoint: priority 0,
  weight the endpoint's share of the port's weight in percent, the endpoint's port, and
  as target the endpoint's *hostname* below the service, its address in the additional
  section. The spec requires that a hostname "identify a specific endpoint in the context
  of a Service": it is the instance (pod) name when that names one address in the
  service, else the address with dashes (``127-1-1-12``, as CoreDNS does). In
  clusterset.local the hostname sits under the cluster id, as MCS prescribes:
  ``<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local``. Unnamed ports have no SRV.
* ``<instance>.<svc>.<ns>.svc.cluster.local`` - every healthy endpoint with that instance
  name (instance names are unique per cluster only), the answering cluster's first.
* ``<svc>.<ns>.`` and ``<svc>.<ns>.svc.`` - the service again, as Istio's DNS proxy
  answers these short names (pkg/dns/client/dns.go ``generateAltHosts``). A one-label
  name needs the client's namespace, which a per-cluster server cannot know: the client's
  search path (``<ns>.svc.cluster.local svc.cluster.local cluster.local``) expands it, and
  every wrong expansion gets NXDOMAIN so that the resolver moves on.
* ``dns-version.<zone>`` TXT ``"1.0.0"``, the apex SOA, the empty non-terminals
  ``svc.<zone>``, ``<ns>.svc.<zone>``, ``_<proto>.<svc>...`` and (MCS) ``<cluster>.<svc>...``.
* PTR for the addresses of healthy endpoints (in-addr.arpa / ip6.arpa).
* A ServiceEntry host outside these zones with IP endpoints, as Istio's DNS proxy does.

A known name without healthy endpoints exists: NOERROR with no data (the spec: "a query
for them will have an empty result rather than NXDOMAIN, since the Service exists").
Anything else in the zones is NXDOMAIN; anything else outside them is not meshfed's to
answer (``zone`` None, no node): meshfed is not a recursive resolver.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from topology import Endpoint, Service, ServiceRegistry
from topology._hostname import CLUSTERSET_DOMAIN, split_service_fqdn

DEFAULT_TTL = 5
"""Seconds clients may cache an answer; short, because endpoints come and go. Defaults to 5."""
SCHEMA_VERSION = b"1.0.0"
"""Kubernetes DNS schema version (``dns-version.<zone>. IN TXT``)."""
# CoreDNS kubernetes plugin's SOA timers (plugin/kubernetes/kubernetes.go).
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400

IN = dns.rdataclass.IN
_LABEL = re.compile(rb"[a-z0-9_*-]{1,63}")
_HOST_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REVERSE = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))

Rdatas = tuple[dns.rdata.Rdata, ...]
Glue = tuple[tuple[dns.name.Name, int, Rdatas], ...]


@dataclass(frozen=True, slots=True)
class Node:
    """The records at one owner name, by type; no records means the name exists without data."""

    records: Mapping[int, Rdatas] = field(default_factory=dict)
    glue: Glue = ()
    """Addresses of SRV targets, for the additional section."""


EMPTY = Node()


@dataclass(frozen=True, slots=True)
class _View:
    """One service's names in one zone: the service node and the nodes below it."""

    node: Node
    below: dict[tuple[str, ...], Node]
    """Nodes by the labels in front of the service name (``("_http", "_tcp")``, ``("reviews-v1-0",)``)."""
    hosts: dict[dns.name.Name, list[Endpoint]]
    """Each endpoint's hostname (SRV target, PTR name) and the endpoints it names."""


def _text_labels(labels: Iterable[bytes]) -> tuple[str, ...] | None:
    """Lowercase labels as text, or None if one is not a plain DNS label (a dot, a byte > 127...)."""
    out = []
    for label in labels:
        low = label.lower()
        if not _LABEL.fullmatch(low):
            return None
        out.append(low.decode("ascii"))
    return tuple(out)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None  # a DNS-resolved endpoint (ServiceEntry resolution DNS): no address to give


def _address_rdata(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dns.rdata.Rdata:
    if ip.version == 4:
        return A(IN, dns.rdatatype.A, str(ip))
    return AAAA(IN, dns.rdatatype.AAAA, str(ip))


def _address_node(ips: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> dict[int, Rdatas]:
    records: dict[int, list[dns.rdata.Rdata]] = {}
    for ip in dict.fromkeys(ips):
        records.setdefault(dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA, []).append(_address_rdata(ip))
    return {t: tuple(r) for t, r in records.items()}


class DnsTable:
    """The DNS view of one registry snapshot from one cluster; immutable, records built lazily."""

    __slots__ = ("registry", "cluster", "ttl", "serial", "zone", "clusterset_zone", "_views", "_namespaces",
                 "_reverse")

    def __init__(self, registry: ServiceRegistry, *, cluster: str = "", ttl: int = DEFAULT_TTL,
                 serial: int = 1) -> None:
        """``cluster`` is the answering cluster, whose endpoints come first; ``serial`` the
        SOA serial, which the server raises with every snapshot."""
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 2**31 - 1:
            raise ValueError(f"DNS TTL must be 0..2147483647 seconds; found {ttl!r}")
        self.registry = registry
        self.cluster = cluster
        self.ttl = ttl
        self.serial = serial % 2**32
        self.zone = dns.name.from_text(registry.domain)
        self.clusterset_zone = dns.name.from_text(CLUSTERSET_DOMAIN)
        self._views: dict[tuple[str, bool], _View] = {}
        self._namespaces: frozenset[str] | None = None
        self._reverse: dict[str, Node] | None = None

    def __repr__(self) -> str:
        return (f"<DnsTable {self.zone.to_text(True)} cluster={self.cluster or '-'} ttl={self.ttl}s "
                f"serial={self.serial} {self.registry!r}>")

    # -- lookups ---------------------------------------------------------------------

    def soa(self, zone: dns.name.Name) -> SOA:
        return SOA(IN, dns.rdatatype.SOA, dns.name.from_text("ns.dns", zone), dns.name.from_text("hostmaster", zone),
                   self.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl)

    def lookup(self, qname: dns.name.Name) -> tuple[Node | None, dns.name.Name | None]:
        """The node at ``qname`` (None: no such name) and the zone it falls in (None: not ours)."""
        for zone in (self.zone, self.clusterset_zone):
            if qname.is_subdomain(zone):
                return self._in_zone(qname.relativize(zone).labels, zone), zone
        if qname.is_subdomain(_REVERSE[0]) or qname.is_subdomain(_REVERSE[1]):
            return self._pointer(qname), None
        labels = _text_labels(qname.labels[:-1])
        if labels is None:
            return None, None
        if len(labels) == 2 or (len(labels) == 3 and labels[2] == "svc"):  # Istio's short-name aliases
            svc = self._service(f"{labels[0]}.{labels[1]}.svc.{self.registry.domain}")
            if svc is not None:
                return self._view(svc, False).node, None
        svc = self._service(".".join(labels))
        if svc is not None:
            node = self._plain_node(svc)
            if node.records or any(_ip(e.address) for e in svc.endpoints):
                return node, None
        return None, None

    def _in_zone(self, rel: tuple[bytes, ...], zone: dns.name.Name) -> Node | None:
        labels = _text_labels(rel)
        if labels is None:
            return None
        if not labels:
            return Node({dns.rdatatype.SOA: (self.soa(zone),)})
        if labels == ("dns-version",):
            return Node({dns.rdatatype.TXT: (TXT(IN, dns.rdatatype.TXT, [SCHEMA_VERSION]),)})
        clusterset = zone == self.clusterset_zone
        if len(labels) >= 3 and labels[-1] == "svc":
            svc = self._service(f"{labels[-3]}.{labels[-2]}.svc.{self.registry.domain}")
            if svc is not None:
                view = self._view(svc, clusterset)
                return view.node if len(labels) == 3 else view.below.get(labels[:-3])
        if labels == ("svc",):
            return EMPTY if self.namespaces else None
        if len(labels) == 2 and labels[1] == "svc":
            return EMPTY if labels[0] in self.namespaces else None
        if not clusterset:
            svc = self._service(".".join(labels) + "." + self.registry.domain)
            if svc is not None:
                return self._plain_node(svc)
        return None

    def _service(self, host: str) -> Service | None:
        registry = self.registry
        if host not in registry:
            return None
        svc = registry.get(host)
        return None if svc.hostname.is_wildcard else svc

    @property
    def namespaces(self) -> frozenset[str]:
        """Namespaces with at least one Kubernetes-named service (``<svc>.<ns>.svc.<domain>``)."""
        if self._namespaces is None:
            found = (split_service_fqdn(s.hostname, self.registry.domain) for s in self.registry)
            self._namespaces = frozenset(pair[1] for pair in found if pair is not None)
        return self._namespaces

    def _pointer(self, qname: dns.name.Name) -> Node | None:
        if self._reverse is None:
            self._reverse = self._build_reverse()
        try:
            ip = ipaddress.ip_address(dns.reversename.to_address(qname))
        except (dns.exception.DNSException, ValueError):
            return None
        return self._reverse.get(str(ip))

    def _build_reverse(self) -> dict[str, Node]:
        names: dict[str, list[dns.rdata.Rdata]] = {}
        for svc in self.registry:
            if svc.hostname.is_wildcard or split_service_fqdn(svc.hostname, self.registry.domain) is None:
                continue
            for name, eps in self._view(svc, False).hosts.items():
                for e in self._ordered(eps):
                    names.setdefault(str(_ip(e.address)), []).append(PTR(IN, dns.rdatatype.PTR, name))
        return {ip: Node({dns.rdatatype.PTR: tuple(dict.fromkeys(rds))}) for ip, rds in names.items()}

    # -- building one service's records ------------------------------------------------

    def _ordered(self, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
        """Healthy endpoints with an IP address, the answering cluster's first (stable)."""
        eps = [e for e in endpoints if e.healthy and _ip(e.address) is not None]
        return sorted(eps, key=lambda e: e.cluster != self.cluster) if self.cluster else eps

    def _plain_node(self, svc: Service) -> Node:
        """A/AAAA only: a service whose name is not ``<svc>.<ns>.svc.<domain>`` has no SRV names."""
        key = (str(svc.hostname), False)
        view = self._views.get(key)
        if view is None:
            ips = [_ip(e.address) for e in self._ordered(svc.endpoints)]
            view = self._views[key] = _View(Node(_address_node(ip for ip in ips if ip is not None)), {}, {})
        return view.node

    def _view(self, svc: Service, clusterset: bool) -> _View:
        key = (str(svc.hostname), clusterset)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._build_view(svc, clusterset)
        return view

    def _build_view(self, svc: Service, clusterset: bool) -> _View:
        zone = self.clusterset_zone if clusterset else self.zone
        service_name = dns.name.from_text(svc.hostname.name.removesuffix("." + self.registry.domain), zone)
        all_eps = [e for e in svc.endpoints if _ip(e.address) is not None]
        # A hostname must identify one address in the service (per cluster in clusterset.local).
        addresses_of: dict[tuple[str, str], set[str]] = {}
        for e in all_eps:
            if _HOST_LABEL.fullmatch(e.instance.lower()):
                addresses_of.setdefault((e.instance.lower(), e.cluster if clusterset else ""), set()).add(e.address)

        def host_key(e: Endpoint) -> tuple[str, ...]:
            name = e.instance.lower()
            if len(addresses_of.get((name, e.cluster if clusterset else ""), ())) != 1:
                name = str(_ip(e.address)).replace(".", "-").replace(":", "-")
            return (name, e.cluster) if clusterset and e.cluster else (name,)

        below: dict[tuple[str, ...], list[Endpoint]] = {}
        hosts: dict[dns.name.Name, list[Endpoint]] = {}
        for e in all_eps:
            key = host_key(e)
            hosts.setdefault(dns.name.from_text(".".join(key), service_name), []).append(e)
            below.setdefault(key, []).append(e)
            if not clusterset and (e.instance.lower(),) != key and (e.instance.lower(), "") in addresses_of:
                below.setdefault((e.instance.lower(),), []).append(e)  # an instance name of several clusters
        nodes = {k: Node(self._addresses(eps)) for k, eps in below.items()}
        for k in below:
            if len(k) == 2:
                nodes[(k[1],)] = EMPTY  # <cluster>.<svc>.<ns>.svc.clusterset.local
        healthy = self._ordered(all_eps)
        every_port: list[dns.rdata.Rdata] = []
        for port in svc.ports:
            if not _HOST_LABEL.fullmatch(port.name.lower()):
                continue  # "Unnamed ports do not have an SRV record."
            proto = "_udp" if port.protocol == "UDP" else "_tcp"
            nodes.setdefault((proto,), EMPTY)
            serving = list({(e.address, e.port): e for e in healthy if e.serves(port)}.values())
            total = sum(e.weight for e in serving)
            records = [SRV(IN, dns.rdatatype.SRV, 0, max(1, min(65535, round(100 * e.weight / total))), e.port,
                           dns.name.from_text(".".join(host_key(e)), service_name)) for e in serving]
            nodes[("_" + port.name.lower(), proto)] = Node({dns.rdatatype.SRV: tuple(records)} if records else {},
                                                           self._glue(hosts, records))
            every_port.extend(records)
        here = self._addresses(healthy)
        if every_port:
            here[dns.rdatatype.SRV] = tuple(every_port)
        return _View(Node(here, self._glue(hosts, every_port)), nodes, hosts)

    def _addresses(self, endpoints: Iterable[Endpoint]) -> dict[int, Rdatas]:
        return _address_node(_ip(e.address) for e in self._ordered(endpoints))  # type: ignore[misc]

    def _glue(self, hosts: Mapping[dns.name.Name, list[Endpoint]], records: Iterable[dns.rdata.Rdata]) -> Glue:
        return tuple((t, rdtype, rdatas) for t in dict.fromkeys(r.target for r in records)  # type: ignore[attr-defined]
                     for rdtype, rdatas in self._addresses(hosts[t]).items())


