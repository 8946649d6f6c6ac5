"""The ServiceEntry and WorkloadEntry kinds: services and endpoints added to the registry
by hand (external APIs, VMs, or services of another cluster).

How endpoints are found depends on ``resolution``: listed IPs (STATIC), DNS names
resolved by the proxy (DNS, DNS_ROUND_ROBIN), or none at all (NONE: the original
destination address is used). Checks are istioctl's ``ValidateServiceEntry`` and
``validateWorkloadEntry``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import (
    HTTP_PROTOCOLS, TLS_PROTOCOLS, check_export_to, check_labels, check_port, check_subnet,
    dns_label_problem, fqdn_problem, is_ip, protocol_of, wildcard_domain_problem,
)
from ._istio_types import Port, WorkloadSelector

UNIX_PREFIX = "unix://"


class Location(enum.Enum):
    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


class Resolution(enum.Enum):
    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """One endpoint: a VM, a bare-metal host or a pod of another mesh."""

    address: str | None = None
    """IP, DNS name (DNS resolution only) or unix:// socket. Required unless ``network``
    is set (then the endpoint is reached through that network's gateway)."""
    ports: dict[str, int] = opt(factory=dict)
    """Port name of the service -> port number on this endpoint. Defaults to the
    service's port numbers."""
    labels: dict[str, str] = opt(factory=dict)
    """Labels of the endpoint (subsets select on them)."""
    network: str | None = None
    """Network the endpoint is on; endpoints on other networks go through its gateway."""
    locality: str | None = None
    """``region/zone/subzone`` of the endpoint, for locality load balancing."""
    weight: int | None = None
    """Load-balancing weight relative to the other endpoints. Defaults to 1."""
    service_account: str | None = None
    """Service account of the workload (its SPIFFE identity)."""

    def _check(self, c: Check) -> None:
        addr = self.address or ""
        if not addr:
            if not self.network:
                c.error("", "missing required field 'address' (or a network to reach it through)")
            else:
                c.warning("", f"address is unset; the endpoint is reached through network {self.network!r}")
        elif addr.startswith(UNIX_PREFIX):
            path = addr[len(UNIX_PREFIX):]
            if not path.startswith("@") and (not path.startswith("/") or path.endswith("/")):
                c.error("address", f"a unix address must be an absolute file path; found {describe(addr)}")
            if self.ports:
                c.error("ports", f"a unix endpoint must not have ports; found {len(self.ports)}")
        elif not is_ip(addr) and fqdn_problem(addr):
            c.error("address", f"must be an IP address or a DNS name; found {describe(addr)}")
        for name, number in self.ports.items():
            if dns_label_problem(name):
                c.error(f"ports.{name}", f"invalid port name {name!r} (a DNS-1123 label)")
            check_port(c, f"ports.{name}", number)
        check_labels(c, "labels", self.labels)
        if self.weight is not None and not 0 <= self.weight <= 2**32 - 1:
            c.error("weight", f"must be a non-negative 32-bit integer; found {describe(self.weight)}")
        if self.locality is not None and (len(self.locality.split("/")) > 3 or "" in self.locality.split("/")):
            c.error("locality", f"must be region[/zone[/subzone]]; found {describe(self.locality)}")


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """A service added to the registry, with its ports and (optionally) endpoints."""

    hosts: tuple[str, ...] = ()
    """Hosts of the service (wildcard prefix allowed, ``*`` not). At least one is required."""
    addresses: tuple[str, ...] = ()
    """Virtual IPs or CIDR blocks of the service (CIDRs need NONE or STATIC resolution)."""
    ports: tuple[Port, ...] = ()
    """Ports of the service; names and numbers must be unique."""
    location: Location = Location.MESH_EXTERNAL
    """Whether the service is part of the mesh (mTLS, metrics as internal). Defaults to
    MESH_EXTERNAL."""
    resolution: Resolution = Resolution.NONE
    """How endpoints are found: NONE, STATIC, DNS or DNS_ROUND_ROBIN. Defaults to NONE."""
    endpoints: tuple[WorkloadEntry, ...] = ()
    """Endpoints of the service (not with workloadSelector)."""
    workload_selector: WorkloadSelector | None = None
    """Selects WorkloadEntries and pods as endpoints (MESH_INTERNAL); not with endpoints."""
    export_to: tuple[str, ...] = ()
    """Namespaces that see the service (``.``, ``*``, ``~`` none, or names). Defaults to all."""
    subject_alt_names: tuple[str, ...] = ()
    """SANs expected in the endpoints' certificates."""

    def _check(self, c: Check) -> None:
        if self.workload_selector is not None and self.endpoints:
            c.error("workloadSelector", "only one of workloadSelector and endpoints may be set")
        if not self.hosts:
            c.error("hosts", "a ServiceEntry needs at least one host")
        for i, host in enumerate(self.hosts):
            problem = "'*' would match every host" if host == "*" else wildcard_domain_problem(host)
            if problem:
                c.error(f"hosts[{i}]", f"invalid host {host!r}: {problem}")
            elif "*" in host and not host.startswith("*."):
                c.warning(f"hosts[{i}]", f"partial wildcard {host!r} is not supported; use '*.' as prefix")
        for i, address in enumerate(self.addresses):
            check_subnet(c, f"addresses[{i}]", address)
            if "/" in address and self.resolution not in (Resolution.NONE, Resolution.STATIC):
                c.error(f"addresses[{i}]", f"CIDR addresses need NONE or STATIC resolution; found "
                                           f"{self.resolution.value} with {address!r}")
        names = self._check_ports(c)
        self._check_endpoints(c, names)
        if self.resolution is not Resolution.NONE and len(self.hosts) > 1:
            opaque = [p for p in self.ports if (protocol_of(p.protocol) or "TCP") not in HTTP_PROTOCOLS | TLS_PROTOCOLS]
            if opaque:
                c.error("hosts", f"several hosts with {self.resolution.value} resolution need HTTP or TLS ports "
                                 f"to tell them apart; port {opaque[0].number} is "
                                 f"{opaque[0].protocol or 'unset (TCP)'}")
        check_export_to(c, "exportTo", self.export_to, service_entry=True)

    def _check_ports(self, c: Check) -> set[str]:
        names: set[str] = set()
        numbers: set[int] = set()
        for i, port in enumerate(self.ports):
            where = f"ports[{i}]"
            if port.name is None or dns_label_problem(port.name):
                c.error(f"{where}.name" if port.name is not None else where,
                        f"a port needs a name that is a DNS-1123 label; found {describe(port.name)}")
            elif port.name in names:
                c.error(f"{where}.name", f"duplicate port name {port.name!r}")
            if port.number is None:
                c.error(where, "missing required field 'number'")
            elif port.number in numbers:
                c.error(f"{where}.number", f"duplicate port number {port.number}")
            else:
                check_port(c, f"{where}.number", port.number)
            if port.protocol and protocol_of(port.protocol) is None:
                c.error(f"{where}.protocol", f"unsupported protocol; found {describe(port.protocol)}")
            if port.target_port is not None:
                check_port(c, f"{where}.targetPort", port.target_port)
            names.add(port.name or "")
            numbers.add(port.number or 0)
        return names

    def _check_endpoints(self, c: Check, port_names: set[str]) -> None:
        res = self.resolution
        if res is Resolution.NONE:
            if self.endpoints:
                c.error("endpoints", "NONE resolution takes no endpoints; use STATIC or DNS resolution")
            if self.workload_selector is not None:
                c.warning("workloadSelector", "has no effect with NONE resolution")
            return
        if res in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not self.endpoints:
            for i, host in enumerate(self.hosts):
                if fqdn_problem(host):
                    c.error(f"hosts[{i}]", f"{res.value} resolution without endpoints needs fully qualified "
                                           f"hosts; found {host!r}")
        if res is Resolution.DNS_ROUND_ROBIN and len(self.endpoints) > 1:
            c.error("endpoints", f"DNS_ROUND_ROBIN takes at most one endpoint; found {len(self.endpoints)}")
        unix = False
        for i, ep in enumerate(self.endpoints):
            addr = ep.address or ""
            unix = unix or addr.startswith(UNIX_PREFIX)
            if res is Resolution.STATIC and addr and not addr.startswith(UNIX_PREFIX) and not is_ip(addr):
                c.error(f"endpoints[{i}].address", f"STATIC resolution needs IP addresses; found {describe(addr)}")
            for name in ep.ports:
                if name not in port_names:
                    c.error(f"endpoints[{i}].ports.{name}", f"port {name!r} is not a port of the ServiceEntry")
        if unix and len(self.ports) != 1:
            c.error("ports", f"unix endpoints need exactly one service port; found {len(self.ports)}")
