"""The records of one service, built when first asked for: Kubernetes DNS names for meshfed.

A ``View`` is one service seen from one zone (cluster.local or clusterset.local) by one
cluster. Constructing it only sorts endpoints into names - string work; the A/AAAA and
SRV record sets of a name are made the first time that name is asked for and kept, so a
service of 10,000 endpoints pays for its records once per registry snapshot, and a
snapshot swap costs nothing until queries come. ``_dns_table`` maps query names to these
views; the naming rules themselves are described there.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable, Iterator, Mapping

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from topology import Endpoint, Service, ServicePort

DEFAULT_TTL = 5
"""Seconds clients may cache an answer; short, because endpoints come and go. Defaults to 5."""

IN = dns.rdataclass.IN
HOST_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)

Rdatas = tuple[dns.rdata.Rdata, ...]
Key = tuple[str, ...]
"""Labels in front of a service name: ``()`` the service, ``("_http", "_tcp")``, ``("reviews-v1-0",)``."""


@functools.lru_cache(maxsize=65536)
def address_record(address: str) -> dns.rdata.Rdata | None:
    """The A or AAAA record of an endpoint address; None for a DNS name (ServiceEntry
    resolution DNS), which has no address to give. Immutable, so shared by every snapshot."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return A(IN, dns.rdatatype.A, str(ip)) if ip.version == 4 else AAAA(IN, dns.rdatatype.AAAA, str(ip))


def make_rrset(name: dns.name.Name, ttl: int, rdatas: Rdatas) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdatas[0].rdclass, rdatas[0].rdtype)
    rrset.update_ttl(ttl)
    for rd in rdatas:
        rrset.add(rd)
    return rrset


def by_type(addresses: Iterable[str]) -> dict[int, Rdatas]:
    out: dict[int, list[dns.rdata.Rdata]] = {}
    for address in dict.fromkeys(addresses):
        rd = address_record(address)
        if rd is not None:
            out.setdefault(rd.rdtype, []).append(rd)
    return {t: tuple(rds) for t, rds in out.items()}


class Node:
    """The records at one owner name; a name with none exists without data (NODATA)."""

    __slots__ = ("_records", "_ttl")

    def __init__(self, records: Mapping[int, Rdatas] | None = None, ttl: int = DEFAULT_TTL) -> None:
        self._records = dict(records or {})
        self._ttl = ttl

    def types(self) -> tuple[int, ...]:
        """Record types present, for ANY."""
        return tuple(self._records)

    def rrset(self, owner: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        """The records of ``rdtype`` named ``owner`` (the name as asked), or None."""
        rdatas = self._records.get(rdtype)
        return make_rrset(owner, self._ttl, rdatas) if rdatas else None

    def glue(self) -> tuple[dns.rrset.RRset, ...]:
        """Addresses of the SRV targets, for the additional section."""
        return ()


EMPTY = Node()


class _ServiceNode(Node):
    """A name of a service's view; its records are built on first use and kept by the view."""

    __slots__ = ("_view", "_key")

    def __init__(self, view: View, key: Key) -> None:
        self._view = view
        self._key = key

    def types(self) -> tuple[int, ...]:
        found = tuple(self._view.addresses(self._key))
        return found + (dns.rdatatype.SRV,) if self._view.srv(self._key)[0] else found

    def rrset(self, owner: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        return self._view.rrset(self._key, owner, rdtype)

    def glue(self) -> tuple[dns.rrset.RRset, ...]:
        return self._view.srv(self._key)[1]


class View:
    """One service's names in one zone (cluster.local or clusterset.local).

    Construction only sorts endpoints into names (string work); records are made when a
    name is first asked for, so a service of 10,000 endpoints costs its records once.
    """

    __slots__ = ("service", "ordered", "_cluster", "_ttl", "_name", "_below", "_ports", "_empty", "_key_of",
                 "_addresses", "_srv", "_rrsets")

    def __init__(self, service: Service, zone: dns.name.Name, clusterset: bool, cluster: str, domain: str,
                 ttl: int) -> None:
        self.service = service
        self._ttl = ttl
        self._name = dns.name.from_text(service.hostname.name.removesuffix("." + domain), zone)
        eps = [e for e in service.endpoints if address_record(e.address) is not None]
        # A hostname must identify one address in the service (per cluster in clusterset.local).
        addresses_of: dict[tuple[str, str], set[str]] = {}
        for e in eps:
            if HOST_LABEL.fullmatch(e.instance.lower()):
                addresses_of.setdefault((e.instance.lower(), e.cluster if clusterset else ""), set()).add(e.address)
        self._key_of: dict[tuple[str, str, str], Key] = {}
        self._below: dict[Key, list[Endpoint]] = {}
        self._empty: set[Key] = set()
        for e in eps:
            name = e.instance.lower()
            if len(addresses_of.get((name, e.cluster if clusterset else ""), ())) != 1:
                name = e.address.replace(".", "-").replace(":", "-")  # CoreDNS's endpoint name
            key = (name, e.cluster) if clusterset and e.cluster else (name,)
            self._key_of[(e.address, e.cluster, e.instance)] = key
            self._below.setdefault(key, []).append(e)
            if len(key) == 2:
                self._empty.add((e.cluster,))  # <cluster>.<svc>.<ns>.svc.clusterset.local
            elif (e.instance.lower(),) != key and (e.instance.lower(), "") in addresses_of:
                self._below.setdefault((e.instance.lower(),), []).append(e)  # an instance name of several clusters
        self._ports: dict[Key, ServicePort] = {}
        for p in service.ports:
            if HOST_LABEL.fullmatch(p.name.lower()):  # "Unnamed ports do not have an SRV record."
                proto = "_udp" if p.protocol == "UDP" else "_tcp"
                self._ports[("_" + p.name.lower(), proto)] = p
                self._empty.add((proto,))
        self._cluster = cluster
        self.ordered = self._order(eps)
        """Healthy endpoints with an address, the answering cluster's first."""
        self._addresses: dict[Key, dict[int, Rdatas]] = {}
        self._srv: dict[Key, tuple[Rdatas, tuple[dns.rrset.RRset, ...]]] = {}
        self._rrsets: dict[tuple[Key, dns.name.Name, int], dns.rrset.RRset | None] = {}

    def _order(self, eps: Iterable[Endpoint]) -> list[Endpoint]:
        healthy = [e for e in eps if e.healthy]
        return sorted(healthy, key=lambda e: e.cluster != self._cluster) if self._cluster else healthy

    def node(self, key: Key) -> Node | None:
        if not key or key in self._below or key in self._ports:
            return _ServiceNode(self, key)
        return EMPTY if key in self._empty else None

    def target(self, e: Endpoint) -> dns.name.Name:
        """The endpoint's hostname: SRV target and PTR name."""
        return dns.name.Name(self._key_of[(e.address, e.cluster, e.instance)] + self._name.labels)

    def hosts(self) -> Iterator[tuple[dns.name.Name, Endpoint]]:
        for e in self.ordered:
            yield self.target(e), e

    def addresses(self, key: Key) -> dict[int, Rdatas]:
        found = self._addresses.get(key)
        if found is None:
            eps = self.ordered if not key else self._order(self._below.get(key, ()))
            found = self._addresses[key] = by_type(e.address for e in eps)
        return found

    def rrset(self, key: Key, owner: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        """Kept, because building a set of thousands of records costs more than sending it."""
        cache_key = (key, owner, rdtype)
        if cache_key not in self._rrsets:
            if rdtype in _ADDRESS_TYPES:
                rdatas = self.addresses(key).get(rdtype, ())
            else:
                rdatas = self.srv(key)[0] if rdtype == dns.rdatatype.SRV else ()
            self._rrsets[cache_key] = make_rrset(owner, self._ttl, rdatas) if rdatas else None
        return self._rrsets[cache_key]

    def srv(self, key: Key) -> tuple[Rdatas, tuple[dns.rrset.RRset, ...]]:
        found = self._srv.get(key)
        if found is None:
            ports = list(self._ports.values()) if not key else [self._ports[key]] if key in self._ports else []
            records: list[dns.rdata.Rdata] = []
            glue: dict[dns.name.Name, list[str]] = {}
            for p in ports:
                serving = list({(e.address, e.port): e for e in self.ordered if e.serves(p)}.values())
                total = sum(e.weight for e in serving)
                for e in serving:
                    target = self.target(e)
                    weight = max(1, min(65535, round(100 * e.weight / total)))  # the endpoint's share, in percent
                    records.append(SRV(IN, dns.rdatatype.SRV, 0, weight, e.port, target))
                    glue.setdefault(target, []).append(e.address)
            glue_sets = tuple(make_rrset(t, self._ttl, rds) for t, addresses in glue.items()
                              for rds in by_type(addresses).values())
            found = self._srv[key] = (tuple(records), glue_sets)
        return found


