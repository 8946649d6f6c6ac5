"""What the mesh DNS knows: the records of one registry snapshot, name by name.

Theory of operation. A ``DnsTable`` wraps one immutable ``ServiceRegistry`` and answers
``lookup(qname) -> (node, zone)``: the records at that owner name (a ``Node``, empty for a
name that exists without data) and the zone meshfed is authoritative for, if any. The
table never changes; the server builds a new one per registry snapshot and swaps it with
one assignment. Records are built per service on first use and kept (``_dns_records``),
so a swap costs nothing and a snapshot of 1,000 services pays only for the names asked.

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
from typing import Iterable

import dns.exception
import dns.name
import dns.rdatatype
import dns.reversename
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT

from topology import Service, ServiceRegistry
from topology._hostname import CLUSTERSET_DOMAIN, split_service_fqdn

from ._dns_records import DEFAULT_TTL, EMPTY, IN, Key, Node, View, address_record, by_type

SCHEMA_VERSION = b"1.0.0"
"""Kubernetes DNS schema version (``dns-version.<zone>. IN TXT``)."""
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400
"""The SOA timers CoreDNS's kubernetes plugin gives its zones."""

_LABEL = re.compile(rb"[a-z0-9_*-]{1,63}")
_REVERSE = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))


def _text_labels(labels: Iterable[bytes]) -> Key | None:
    """Lowercase labels as text, or None if one is not a plain DNS label (a dot, a byte > 127...)."""
    out = []
    for label in labels:
        low = label.lower()
        if not _LABEL.fullmatch(low):
            return None
        out.append(low.decode("ascii"))
    return tuple(out)


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
        self._views: dict[tuple[str, bool], View] = {}
        self._namespaces: frozenset[str] | None = None
        self._reverse: dict[str, Node] | None = None

    def __repr__(self) -> str:
        return (f"<DnsTable {self.zone.to_text(True)} cluster={self.cluster or '-'} ttl={self.ttl}s "
                f"serial={self.serial} {self.registry!r}>")

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
                return self._view(svc, False).node(()), None
        svc = self._service(".".join(labels))
        if svc is not None and any(address_record(e.address) for e in svc.endpoints):
            return self._plain(svc), None  # a ServiceEntry host, as Istio's DNS proxy answers it
        return None, None

    def _in_zone(self, rel: tuple[bytes, ...], zone: dns.name.Name) -> Node | None:
        labels = _text_labels(rel)
        if labels is None:
            return None
        if not labels:
            return Node({dns.rdatatype.SOA: (self.soa(zone),)}, self.ttl)
        if labels == ("dns-version",):
            return Node({dns.rdatatype.TXT: (TXT(IN, dns.rdatatype.TXT, [SCHEMA_VERSION]),)}, self.ttl)
        clusterset = zone == self.clusterset_zone
        if len(labels) >= 3 and labels[-1] == "svc":
            svc = self._service(f"{labels[-3]}.{labels[-2]}.svc.{self.registry.domain}")
            if svc is not None:
                return self._view(svc, clusterset).node(labels[:-3])
        if labels == ("svc",):
            return EMPTY if self.namespaces else None
        if len(labels) == 2 and labels[1] == "svc":
            return EMPTY if labels[0] in self.namespaces else None
        if not clusterset:
            svc = self._service(".".join(labels) + "." + self.registry.domain)
            if svc is not None:
                return self._plain(svc)
        return None

    def _service(self, host: str) -> Service | None:
        if host not in self.registry:
            return None
        svc = self.registry.get(host)
        return None if svc.hostname.is_wildcard else svc

    def _view(self, svc: Service, clusterset: bool) -> View:
        key = (svc.hostname.name, clusterset)
        view = self._views.get(key)
        if view is None:
            zone = self.clusterset_zone if clusterset else self.zone
            view = self._views[key] = View(svc, zone, clusterset, self.cluster, self.registry.domain, self.ttl)
        return view

    def _plain(self, svc: Service) -> Node:
        """A service not named ``<svc>.<ns>.svc.<domain>``: its addresses, no SRV names."""
        eps = [e for e in svc.endpoints if e.healthy]
        if self.cluster:
            eps.sort(key=lambda e: e.cluster != self.cluster)
        return Node(by_type(e.address for e in eps), self.ttl)

    @property
    def namespaces(self) -> frozenset[str]:
        """Namespaces with at least one Kubernetes-named service (``<svc>.<ns>.svc.<domain>``)."""
        if self._namespaces is None:
            found = (split_service_fqdn(s.hostname, self.registry.domain) for s in self.registry)
            self._namespaces = frozenset(pair[1] for pair in found if pair is not None)
        return self._namespaces

    def _pointer(self, qname: dns.name.Name) -> Node | None:
        try:
            ip = str(ipaddress.ip_address(dns.reversename.to_address(qname)))
        except (dns.exception.DNSException, ValueError):
            return None
        if self._reverse is None:
            names: dict[str, dict[dns.name.Name, None]] = {}
            for svc in self.registry:
                if not svc.hostname.is_wildcard and split_service_fqdn(svc.hostname, self.registry.domain):
                    for name, e in self._view(svc, False).hosts():
                        names.setdefault(str(ipaddress.ip_address(e.address)), {})[name] = None
            self._reverse = {a: Node({dns.rdatatype.PTR: tuple(PTR(IN, dns.rdatatype.PTR, n) for n in ns)}, self.ttl)
                             for a, ns in names.items()}
        return self._reverse.get(ip)

