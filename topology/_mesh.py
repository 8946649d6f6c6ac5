"""meshfed.io/v1alpha1 ``Mesh``: the clusters of a topology and the workloads they run.

This is the one kind meshfed adds to the Istio vocabulary. Istio learns clusters from
kubeconfigs and workloads from Deployments; on one machine there is neither, so a Mesh
says it directly: each cluster is a network, a locality, a trust domain and a loopback
address block (Linux answers on all of 127.0.0.0/8, so a /24 per cluster gives every
workload, sidecar, gateway and control plane its own address, as pods get their own
IPs); each workload is a service's instances with their labels, identity and ports,
running either the user's command or a built-in demo app.

Defaults are filled in when the object is built (``__post_init__``), so consumers read
plain values: a cluster's network is its own name, a workload's service account is its
name, its ``app`` label is its service.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterator

from ._decode import Check, describe, opt
from ._resource import is_dns1123_label, is_dns1123_subdomain

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
CONTROL_PLANE_OFFSET = 1
"""Default control-plane address: the block's first host (``.1``)."""
GATEWAY_OFFSET = 2
"""Default east-west gateway address: ``.2``."""
FIRST_WORKLOAD_OFFSET = 10
"""Workload instances get addresses from ``.10`` up; ``.3``-``.9`` stay free for ingress and tools."""
MAX_PREFIX = 28
"""Smallest block accepted: a /28 leaves 5 workload addresses after the reserved ones."""

# SPIFFE ID spec, section 2.1: trust domain characters.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")


class WorkloadProtocol(enum.Enum):
    """How a workload port speaks; the sidecar picks its codec from it (Istio's protocol selection)."""

    HTTP = "http"
    HTTP2 = "http2"
    """h2c to the app; HTTP/1.1 callers are still accepted by the sidecar."""
    GRPC = "grpc"
    TCP = "tcp"


class DemoApp(enum.Enum):
    """Built-in demo apps ``fedctl up`` runs without any image or command of the user's."""

    ECHO = "echo"
    """Answers with its cluster, locality, version and instance over HTTP/1.1, HTTP/2 and gRPC."""
    PRODUCTPAGE = "productpage"
    DETAILS = "details"
    REVIEWS = "reviews"
    """Versions v1 (no stars), v2 (black stars, calls ratings) and v3 (red stars, calls ratings)."""
    RATINGS = "ratings"
    SLEEP = "sleep"
    """An idle client, as Istio's sleep sample: requests are sent from it (``fedctl curl``)."""


REVIEWS_VERSIONS = ("v1", "v2", "v3")


class RootCa(enum.Enum):
    """Which root a cluster's intermediate CA chains to."""

    SHARED = "shared"
    """The mesh's one shared root (``.meshfed/ca/root-cert.pem``): every cluster trusts it."""
    OWN = "own"
    """A root of the cluster's own: other clusters trust its trust domain only once linked
    (``fedctl link`` / ``link apply`` exchange the bundles), as independent meshes federated."""


@dataclass(frozen=True, slots=True)
class LocalitySpec:
    """Where something runs, as Envoy's ``region/zone/subzone``; unset parts are None."""

    region: str | None = None
    zone: str | None = None
    subzone: str | None = None

    @classmethod
    def parse(cls, text: str) -> "LocalitySpec":
        """``"us-east/us-east-1a"`` -> LocalitySpec("us-east", "us-east-1a"); empty parts are None."""
        parts = (text.split("/") + ["", "", ""])[:3]
        return cls(*(p or None for p in parts))

    def overlay(self, other: "LocalitySpec | None") -> "LocalitySpec":
        """This locality with the parts ``other`` sets replaced (a workload's override)."""
        if other is None:
            return self
        return LocalitySpec(other.region or self.region, other.zone or self.zone, other.subzone or self.subzone)

    def __str__(self) -> str:
        return "/".join(p or "" for p in (self.region, self.zone, self.subzone)).rstrip("/")

    def _check(self, c: Check) -> None:
        for part in ("region", "zone", "subzone"):
            value = getattr(self, part)
            if value is not None and ("/" in value or not value.strip()):
                c.error(part, f"must be a non-empty name without '/'; found {describe(value)}")

    def hierarchy_problem(self) -> tuple[str, str] | None:
        """(part, message) when a zone lacks its region or a subzone its zone, as Envoy requires."""
        if self.zone and not self.region:
            return "zone", f"a zone needs a region; found zone {self.zone!r} without region"
        if self.subzone and not self.zone:
            return "subzone", f"a subzone needs a zone; found subzone {self.subzone!r} without zone"
        return None


@dataclass(frozen=True, slots=True)
class Cluster:
    """One cluster: its own control plane, network, locality, trust domain and address block."""

    name: str = opt(required=True)
    """A DNS-1123 label, unique in the mesh (``east-a``)."""
    address_block: str = opt(required=True)
    """A loopback network such as ``127.1.1.0/24`` (inside 127.0.0.0/8, at most /28); no two clusters may overlap."""
    network: str | None = None
    """Clusters on one network reach each other's endpoints directly; others go through the
    east-west gateway. Defaults to the cluster's name (a network of its own)."""
    locality: LocalitySpec | None = None
    """Region/zone/subzone of every workload of the cluster unless a workload overrides it."""
    trust_domain: str | None = None
    """SPIFFE trust domain of the cluster's workloads, unique in the mesh (one per cluster under
    one shared root). Defaults to ``<name>.meshfed.local``."""
    control_plane_address: str | None = None
    """Where the control plane listens (:15012, :15014, :15053). Defaults to the block's ``.1``."""
    gateway_address: str | None = None
    """Where the east-west gateway listens (:15443). Defaults to the block's ``.2``."""
    root_ca: RootCa = opt(RootCa.SHARED, key="rootCA")
    """``shared`` (the mesh's one root) or ``own`` (an independent root). Defaults to shared."""

    def __post_init__(self) -> None:
        if self.network is None and self.name:
            object.__setattr__(self, "network", self.name)
        if self.trust_domain is None and self.name:
            object.__setattr__(self, "trust_domain", f"{self.name}.meshfed.local")
        block = self.block
        if block is not None and block.num_addresses > GATEWAY_OFFSET + 1:
            if self.control_plane_address is None:
                object.__setattr__(self, "control_plane_address", str(block[CONTROL_PLANE_OFFSET]))
            if self.gateway_address is None:
                object.__setattr__(self, "gateway_address", str(block[GATEWAY_OFFSET]))

    @property
    def block(self) -> ipaddress.IPv4Network | None:
        """The address block parsed, or None when it is not a valid IPv4 network."""
        try:
            net = ipaddress.ip_network(self.address_block, strict=True)
        except (ValueError, TypeError):
            return None
        return net if isinstance(net, ipaddress.IPv4Network) else None

    def workload_hosts(self) -> Iterator[ipaddress.IPv4Address]:
        """Addresses workload instances may take, in order, from ``.10`` to the last host."""
        block = self.block
        if block is None:
            return iter(())
        return (block[i] for i in range(FIRST_WORKLOAD_OFFSET, block.num_addresses - 1))

    def _check(self, c: Check) -> None:
        if not is_dns1123_label(self.name):
            c.error("name", f"must be a lowercase DNS-1123 label (a-z, 0-9, '-'); found {describe(self.name)}")
        if self.network is not None and not self.network.strip():
            c.error("network", f"must not be empty; found {describe(self.network)}")
        td = self.trust_domain or ""
        if "://" in td or not _TRUST_DOMAIN.match(td) or len(td) > 255:
            c.error("trustDomain", "must be a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'; "
                                   f"no scheme); found {describe(td)}")
        problem = self.locality.hierarchy_problem() if self.locality is not None else None
        if problem is not None:
            c.error(f"locality.{problem[0]}", problem[1])
        self._check_block(c)

    def _check_block(self, c: Check) -> None:
        try:
            net = ipaddress.ip_network(self.address_block, strict=False)
        except ValueError:
            c.error("addressBlock", f"must be an IPv4 network such as 127.1.1.0/24; found {describe(self.address_block)}")
            return
        if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(LOOPBACK):
            c.error("addressBlock", f"must lie inside the loopback range 127.0.0.0/8; found {describe(self.address_block)}")
            return
        if str(net) != self.address_block.strip():
            c.error("addressBlock", f"has host bits set: the network is {net}; found {describe(self.address_block)}")
            return
        if net.prefixlen > MAX_PREFIX:
            c.error("addressBlock", f"is too small: use a /{MAX_PREFIX} or larger (a /24 is usual); "
                                    f"found {describe(self.address_block)}")
            return
        if ipaddress.IPv4Address("127.0.0.1") in net:
            c.warning("addressBlock", "contains 127.0.0.1, where local services usually listen; prefer a block "
                                      f"such as 127.1.1.0/24; found {describe(self.address_block)}")
        seen: dict[str, str] = {}
        for key, value in (("controlPlaneAddress", self.control_plane_address), ("gatewayAddress", self.gateway_address)):
            if value is None:
                continue
            try:
                addr = ipaddress.IPv4Address(value)
            except ValueError:
                c.error(key, f"must be an IPv4 address; found {describe(value)}")
                continue
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                c.error(key, f"must be a host address inside addressBlock {net}; found {describe(value)}")
            elif value in seen:
                c.error(key, f"must differ from {seen[value]}; found {describe(value)}")
            seen[value] = key


@dataclass(frozen=True, slots=True)
class WorkloadPort:
    """A port the workload's app listens on, and the service port callers use."""

    port: int = opt(required=True)
    """Service port callers use (``reviews.bookinfo:9080``)."""
    name: str | None = None
    """Unique in the workload. Defaults to the protocol's name (``http``)."""
    protocol: WorkloadProtocol | None = None
    """Defaults to the protocol the name's prefix says, as Istio's ``<protocol>[-<suffix>]``
    port naming, else http."""
    target_port: int | None = None
    """Port the app itself listens on at its own address. Defaults to ``port``."""

    def __post_init__(self) -> None:
        protocol = self.protocol
        if protocol is None:
            head = (self.name or "").split("-", 1)[0].lower()
            protocol = next((p for p in WorkloadProtocol if p.value == head), WorkloadProtocol.HTTP)
            object.__setattr__(self, "protocol", protocol)
        if self.name is None:
            object.__setattr__(self, "name", protocol.value)
        if self.target_port is None:
            object.__setattr__(self, "target_port", self.port)

    def _check(self, c: Check) -> None:
        for key, value in (("port", self.port), ("targetPort", self.target_port)):
            if value is not None and not 1 <= value <= 65535:
                c.error(key, f"must be a port number 1..65535; found {describe(value)}")
        if self.name is not None and not is_dns1123_label(self.name):
            c.error("name", f"must be a lowercase DNS-1123 label; found {describe(self.name)}")


@dataclass(frozen=True, slots=True)
class Workload:
    """The instances of one version of one service, in one or several clusters.

    Exactly one of ``command`` (the user's own app) and ``app`` (a built-in demo) says what runs.
    """

    name: str = opt(required=True)
    """A DNS-1123 label, unique per namespace per cluster (``reviews-v2``)."""
    namespace: str = "default"
    """Defaults to ``default``."""
    service: str | None = None
    """Service the instances back (``reviews``). Defaults to the ``app`` label, else the name."""
    service_account: str | None = None
    """Identity ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``. Defaults to the name."""
    version: str | None = None
    """The ``version`` label (subsets select on it). Defaults to v1 for built-in apps, unset otherwise."""
    labels: dict[str, str] = opt(factory=dict)
    """Pod labels. ``app`` defaults to the service and ``version`` to ``version``."""
    ports: tuple[WorkloadPort, ...] = ()
    replicas: int = 1
    """Instances per cluster; 0 or more. Defaults to 1."""
    cluster: str | None = None
    """The cluster that runs it; or list several in ``clusters``."""
    clusters: tuple[str, ...] = ()
    locality: LocalitySpec | None = None
    """Overrides parts of the cluster's locality (e.g. another zone)."""
    command: tuple[str, ...] | None = None
    """Argv of the user's app. It must listen on its address (``$MESHFED_ADDRESS``) at each targetPort."""
    app: DemoApp | None = None
    env: dict[str, str] = opt(factory=dict)
    """Extra environment for the app (``HTTP_PROXY`` is set by meshfed)."""

    def __post_init__(self) -> None:
        labels = dict(self.labels)
        service = self.service or labels.get("app") or self.name
        version = self.version or labels.get("version") or ("v1" if self.app is not None else None)
        if service:
            labels.setdefault("app", service)
        if version:
            labels.setdefault("version", version)
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "labels", labels)
        if self.service_account is None and self.name:
            object.__setattr__(self, "service_account", self.name)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        """The clusters it runs in, from ``cluster`` or ``clusters``."""
        if self.clusters:
            return self.clusters
        return (self.cluster,) if self.cluster else ()

    def _check(self, c: Check) -> None:
        for key in ("name", "namespace", "service"):
            value = getattr(self, key)
            if key == "service" and value == self.name:
                continue  # defaulted from the name: reported once, as the name
            if value is not None and not is_dns1123_label(value):
                c.error(key, f"must be a lowercase DNS-1123 label (a-z, 0-9, '-'); found {describe(value)}")
        if self.service_account not in (None, self.name) and not is_dns1123_subdomain(self.service_account):
            c.error("serviceAccount", f"must be a lowercase DNS-1123 name; found {describe(self.service_account)}")
        if self.replicas < 0:
            c.error("replicas", f"must be 0 or more; found {describe(self.replicas)}")
        if self.command is not None and self.app is not None:
            c.error("app", "set either command (your own app) or app (a built-in demo), not both")
        elif self.command is None and self.app is None:
            c.error("", "a workload needs either command (your own app) or app (a built-in demo: "
                        + ", ".join(a.value for a in DemoApp) + "); found neither")
        elif self.command is not None and (not self.command or not self.command[0]):
            c.error("command", "must name a program to run; found an empty command")
        if self.app is DemoApp.REVIEWS and self.version not in REVIEWS_VERSIONS:
            c.error("version", f"the reviews demo app comes in versions {', '.join(REVIEWS_VERSIONS)}; "
                               f"found {describe(self.version)}")
        if self.version and self.labels.get("version") != self.version:
            c.error("labels.version", f"differs from version {self.version!r}; found {describe(self.labels.get('version'))}")
        if self.service and self.labels.get("app") != self.service:
            c.error("labels.app", f"differs from service {self.service!r}; found {describe(self.labels.get('app'))}")
        if self.cluster is not None and self.clusters:
            c.error("clusters", "set either cluster or clusters, not both")
        elif not self.cluster_names:
            c.error("", "say where the workload runs: cluster: NAME or clusters: [NAME, ...]; found neither")
        seen_clusters: dict[str, int] = {}
        for i, name in enumerate(self.clusters):
            if name in seen_clusters:
                c.error(f"clusters[{i}]", f"duplicate cluster {name!r} (also clusters[{seen_clusters[name]}])")
            seen_clusters.setdefault(name, i)
        numbers: dict[int, int] = {}
        names: dict[str, int] = {}
        for i, p in enumerate(self.ports):
            if p.port in numbers:
                c.error(f"ports[{i}].port", f"duplicate port {p.port} (also ports[{numbers[p.port]}])")
            numbers.setdefault(p.port, i)
            if p.name in names:
                c.error(f"ports[{i}].name", f"duplicate port name {p.name!r} (also ports[{names[p.name]}])")
            if p.name is not None:
                names.setdefault(p.name, i)


@dataclass(frozen=True, slots=True)
class Mesh:
    """A topology: clusters, and the workloads each one runs.

    Services are the workloads' ``service`` names per namespace, merged across clusters
    (``<service>.<namespace>.svc.cluster.local``), as Istio multi-primary merges them.
    """

    clusters: tuple[Cluster, ...] = opt(required=True)
    workloads: tuple[Workload, ...] = ()
    trust_domain_aliases: tuple[str, ...] = ()
    """Trust domains treated as one for authorization, as Istio's meshConfig.trustDomainAliases:
    each cluster's proxies get the others as aliases of their own trust domain, so a policy
    naming ``cluster.local/ns/x/sa/y`` (or any member) matches that identity in every member."""

    def aliases_of(self, cluster: str) -> tuple[str, ...]:
        """The trust domain aliases of ``cluster``'s proxies: the mesh's list without its own domain."""
        found = self.cluster_named(cluster)
        own = found.trust_domain if found is not None else None
        return tuple(a for a in dict.fromkeys(self.trust_domain_aliases) if a != own)

    def cluster_named(self, name: str) -> Cluster | None:
        return next((c for c in self.clusters if c.name == name), None)

    def workloads_in(self, cluster: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if cluster in w.cluster_names)

    def locality_of(self, workload: Workload, cluster: str) -> LocalitySpec:
        """The locality of ``workload``'s instances in ``cluster``: the cluster's, overlaid."""
        found = self.cluster_named(cluster)
        base = found.locality if found is not None and found.locality is not None else LocalitySpec()
        return base.overlay(workload.locality)

    def _check(self, c: Check) -> None:
        if not self.clusters:
            c.error("clusters", "a mesh needs at least one cluster; found none")
        self._check_clusters(c)
        self._check_workloads(c)
        for i, td in enumerate(self.trust_domain_aliases):
            if "://" in td or not _TRUST_DOMAIN.match(td) or len(td) > 255:
                c.error(f"trustDomainAliases[{i}]", "must be a SPIFFE trust domain (lowercase letters, digits, "
                                                    f"'.', '-', '_'; no scheme); found {describe(td)}")

    def _check_clusters(self, c: Check) -> None:
        names: dict[str, int] = {}
        domains: dict[str, int] = {}
        blocks: list[tuple[int, ipaddress.IPv4Network]] = []
        for i, cl in enumerate(self.clusters):
            if cl.name in names:
                c.error(f"clusters[{i}].name", f"duplicate cluster name {cl.name!r} (also clusters[{names[cl.name]}])")
            names.setdefault(cl.name, i)
            if cl.trust_domain in domains:
                c.error(f"clusters[{i}].trustDomain", f"trust domain {cl.trust_domain!r} is already clusters"
                                                      f"[{domains[cl.trust_domain]}]'s: each cluster needs its own")
            if cl.trust_domain is not None:
                domains.setdefault(cl.trust_domain, i)
            block = cl.block
            if block is None:
                continue
            for j, other in blocks:
                if block.overlaps(other):
                    c.error(f"clusters[{i}].addressBlock", f"{block} overlaps clusters[{j}]'s {other} "
                                                           f"({self.clusters[j].name})")
            blocks.append((i, block))

    def _check_workloads(self, c: Check) -> None:
        names = {cl.name for cl in self.clusters}
        known = ", ".join(cl.name for cl in self.clusters if cl.name)
        placed: dict[tuple[str, str, str], int] = {}
        protocols: dict[tuple[str, str, int], tuple[WorkloadProtocol | None, int]] = {}
        for i, w in enumerate(self.workloads):
            for k, cname in enumerate(w.cluster_names):
                if cname in w.cluster_names[:k]:
                    continue  # a repeat is the workload's own error
                where = f"workloads[{i}].clusters[{k}]" if w.clusters else f"workloads[{i}].cluster"
                if cname not in names:
                    c.error(where, f"unknown cluster {cname!r}; the clusters are: {known}")
                key = (cname, w.namespace, w.name)
                if key in placed:
                    c.error(f"workloads[{i}].name", f"duplicate workload {w.namespace}/{w.name} in cluster "
                                                    f"{cname!r} (also workloads[{placed[key]}])")
                placed.setdefault(key, i)
            if w.locality is not None:
                for cname in w.cluster_names:
                    problem = self.locality_of(w, cname).hierarchy_problem() if cname in names else None
                    if problem is not None:
                        c.error(f"workloads[{i}].locality.{problem[0]}", f"in cluster {cname!r}: {problem[1]}")
                        break
            for k, p in enumerate(w.ports):
                pkey = (w.namespace, w.service or "", p.port)
                first = protocols.setdefault(pkey, (p.protocol, i))
                if first[0] is not p.protocol:
                    c.error(f"workloads[{i}].ports[{k}].protocol",
                            f"service {w.namespace}/{w.service} port {p.port} is {first[0].value if first[0] else None} "
                            f"in workloads[{first[1]}]; found {p.protocol.value if p.protocol else None}")
