"""Turning loaded config into a ``ServiceRegistry``: where each instance runs, what it serves.

Theory of operation. ``placements`` decides, once and deterministically, every workload
instance of the topology: its cluster, network, locality, labels, identity and its own
loopback address. Mesh workloads come first, in the order the Mesh lists them, then the
Kubernetes Deployments and StatefulSets in load order; each cluster hands out addresses
from its block's ``.10`` upward. ``fedctl up`` starts apps on the same placements the
registry advertises, so the two can never disagree.

``build_registry`` then declares services and their endpoints:

* a Mesh workload with ports declares ``<service>.<namespace>.svc.cluster.local`` in each
  of its clusters, one endpoint per instance and port;
* a Kubernetes Service declares itself in the cluster Kubernetes objects belong to, its
  endpoints the Deployment/StatefulSet instances of its namespace whose labels its
  selector selects (a Service without a selector has none, as in Kubernetes);
* a ServiceEntry declares each of its hosts mesh-wide (see ``_serviceentry_services``).

Same-named services of several clusters merge into one (``RegistryBuilder``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterator

from ._endpoint import Endpoint, Labels, Locality, Resolution, Service, ServicePort
from ._errors import RegistryError
from ._hostname import service_fqdn
from ._istio_checks import protocol_of
from ._loader import LoadResult
from ._mesh import FIRST_WORKLOAD_OFFSET, Mesh
from ._registry import RegistryBuilder, ServiceRegistry
from ._resource import Resource

DEFAULT_CLUSTER = "Kubernetes"
"""Cluster of Kubernetes objects when no Mesh says otherwise (Istio's default cluster ID)."""
DEFAULT_BLOCK = "127.254.0.0/16"
"""Addresses of that default cluster's instances: meshfed's choice, clear of 127.0.0.1."""
FIRST_HOST = FIRST_WORKLOAD_OFFSET
"""Instances take addresses from a block's ``.10`` up, as ``_mesh.Cluster.workload_hosts``."""


class AddressBlockFullError(RegistryError):
    """More instances placed in a cluster than its address block holds."""

    def __init__(self, message: str, cluster: str, block: str) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.block = block


@dataclass(frozen=True, slots=True)
class Placement:
    """One running instance of a workload: where it is and who it is."""

    cluster: str
    network: str
    locality: Locality
    namespace: str
    workload: str
    """Mesh workload, Deployment or StatefulSet name."""
    index: int
    address: str
    labels: Labels
    service_account: str
    source: Any
    """The Mesh ``Workload`` or the Kubernetes ``Resource`` it comes from."""

    @property
    def instance(self) -> str:
        """Instance (pod) name, unique in its cluster: ``<workload>-<index>``."""
        return f"{self.workload}-{self.index}"


@dataclass(frozen=True, slots=True)
class _Site:
    name: str
    network: str
    locality: Locality
    block: str


def _registry_locality(loc: Any) -> Locality:
    """The registry's Locality from a Mesh locality (whose unset tiers are None)."""
    if loc is None:
        return Locality()
    return Locality(loc.region or "", loc.zone or "", loc.subzone or "")


def _sites(mesh: Mesh | None) -> dict[str, _Site]:
    if mesh is None:
        return {DEFAULT_CLUSTER: _Site(DEFAULT_CLUSTER, "", Locality(), DEFAULT_BLOCK)}
    return {c.name: _Site(c.name, c.network or c.name, _registry_locality(c.locality), c.address_block)
            for c in mesh.clusters}


class _Allocator:
    """Hands out each cluster's addresses in order, from ``.10`` to the last host."""

    def __init__(self, sites: dict[str, _Site]) -> None:
        self._sites = sites
        self._hosts: dict[str, Iterator[str]] = {}

    def next(self, cluster: str) -> str:
        hosts = self._hosts.get(cluster)
        if hosts is None:
            net = ipaddress.ip_network(self._sites[cluster].block)
            hosts = self._hosts[cluster] = (str(net[i]) for i in range(FIRST_HOST, net.num_addresses - 1))
        address = next(hosts, None)
        if address is None:
            block = self._sites[cluster].block
            raise AddressBlockFullError(f"cluster {cluster!r}: address block {block} has no address left for "
                                        f"another instance (instances start at .{FIRST_HOST})", cluster, block)
        return address


def find_mesh(load_result: LoadResult) -> Mesh | None:
    """The spec of the one Mesh resource loaded, or None; two Meshes are an error."""
    meshes = load_result.of_kind("Mesh")
    if len(meshes) > 1:
        where = ", ".join(f"{r.file}:{r.line}" for r in meshes)
        raise RegistryError(f"found {len(meshes)} Mesh resources ({where}); a topology has exactly one")
    return meshes[0].spec if meshes else None


def _kube_workloads(load_result: LoadResult) -> list[Any]:
    return [r for r in load_result.resources if r.kind in ("Deployment", "StatefulSet")]


def kube_cluster_of(load_result: LoadResult, mesh: Mesh | None, kube_cluster: str | None) -> str:
    """The cluster Kubernetes objects are applied in: as given, the Mesh's only cluster, or
    Istio's default cluster ID when there is no Mesh."""
    if mesh is None:
        return kube_cluster or DEFAULT_CLUSTER
    names = [c.name for c in mesh.clusters]
    if kube_cluster is not None:
        if kube_cluster not in names:
            raise RegistryError(f"kube_cluster {kube_cluster!r} is not a cluster of the mesh ({', '.join(names)})")
        return kube_cluster
    if len(names) == 1:
        return names[0]
    if _kube_workloads(load_result) or load_result.of_kind("Service"):
        raise RegistryError(f"Kubernetes Services or Deployments were loaded beside a mesh of {len(names)} clusters "
                            f"({', '.join(names)}); say which cluster they belong to (kube_cluster)")
    return names[0]


def placements(load_result: LoadResult, mesh: Mesh | None = None, *,
               kube_cluster: str | None = None) -> tuple[Placement, ...]:
    """Every instance of the topology, each with its own address (see the module docstring)."""
    mesh = mesh if mesh is not None else find_mesh(load_result)
    sites = _sites(mesh)
    alloc = _Allocator(sites)
    out: list[Placement] = []
    if mesh is not None:
        for w in mesh.workloads:
            labels = Labels(w.labels)
            for cname in w.cluster_names:
                if cname not in sites:
                    raise RegistryError(f"workload {w.namespace}/{w.name} names unknown cluster {cname!r}")
                site = sites[cname]
                locality = _registry_locality(mesh.locality_of(w, cname))
                for i in range(w.replicas):
                    out.append(Placement(cname, site.network, locality, w.namespace, w.name, i, alloc.next(cname),
                                         labels, w.service_account or w.name, w))
    kubes = _kube_workloads(load_result)
    if kubes:
        cname = kube_cluster_of(load_result, mesh, kube_cluster)
        if cname not in sites:  # a kube_cluster named without a mesh
            sites[cname] = _Site(cname, "", Locality(), DEFAULT_BLOCK)
        site = sites[cname]
        for r in kubes:
            labels = Labels(r.spec.pod_labels)
            for i in range(r.spec.replicas):
                out.append(Placement(cname, site.network, site.locality, r.namespace, r.name, i, alloc.next(cname),
                                     labels, r.spec.service_account, r))
    return tuple(out)


def _protocol(name: str) -> str:
    """Istio's protocol name; ``auto`` (sniffed) and anything unknown are UNSUPPORTED."""
    return protocol_of(name) or "UNSUPPORTED"


def _endpoint(p: Placement, port: int, service_port: int) -> Endpoint:
    return Endpoint(p.address, port, p.labels, p.locality, p.cluster, p.network,
                    service_account=p.service_account, instance=p.instance, service_port=service_port)


def _mesh_services(b: RegistryBuilder, mesh: Mesh, placed: tuple[Placement, ...]) -> None:
    by_workload: dict[int, list[Placement]] = {}
    for p in placed:
        by_workload.setdefault(id(p.source), []).append(p)
    for w in mesh.workloads:
        if not w.ports:
            continue  # a client only (such as `sleep`): it runs, but serves nothing
        ports = tuple(ServicePort(p.name or "", p.port, _protocol(p.protocol.value), p.target_port or p.port)
                      for p in w.ports)
        host = service_fqdn(w.service or w.name, w.namespace)
        for cname in w.cluster_names:
            b.add_service(Service(host, w.namespace, w.service or w.name, ports, declared_in=(cname,)))
        for p in by_workload.get(id(w), ()):
            b.add_endpoints(host, p.cluster, [_endpoint(p, sp.target_port, sp.port) for sp in ports])


def _container_port(resource: Any, name: str) -> int | None:
    template = resource.spec.template
    for container in (template.spec.containers if template and template.spec else ()):
        for cp in container.ports:
            if cp.name == name:
                return int(cp.container_port)
    return None


def _kube_services(b: RegistryBuilder, load_result: LoadResult, placed: tuple[Placement, ...], cluster: str) -> None:
    pods: dict[str, list[Placement]] = {}
    for p in placed:
        if not isinstance(p.source, Resource):
            continue  # Mesh workloads declare their own services
        pods.setdefault(p.namespace, []).append(p)
    for r in load_result.of_kind("Service"):
        spec = r.spec
        ports = tuple(ServicePort(p.name or "", p.port, _protocol(p.mesh_protocol),
                                  p.target_port if isinstance(p.target_port, int) else 0) for p in spec.ports)
        host = service_fqdn(r.name, r.namespace)
        b.add_service(Service(host, r.namespace, r.name, ports, declared_in=(cluster,)))
        if not spec.selector:
            continue  # Kubernetes manages no endpoints for a Service without a selector
        for p in pods.get(r.namespace, ()):
            if not p.labels.selects(spec.selector):
                continue
            eps = []
            for kp, sp in zip(spec.ports, ports):
                target = kp.effective_target_port
                number = target if isinstance(target, int) else _container_port(p.source, target)
                if number is not None:  # a named port the pod lacks: no endpoint, as Kubernetes
                    eps.append(_endpoint(p, number, sp.port))
            b.add_endpoints(host, p.cluster, eps)


def _entry_endpoint(we: Any, sp: ServicePort, networks: dict[str, str]) -> Endpoint | None:
    """A WorkloadEntry's endpoint for one ServiceEntry port; None when it has no address."""
    if not we.address:
        return None  # reached through its network's gateway: not modelled yet
    if we.address.startswith("unix://"):
        port = 0  # Istio ignores ports for unix domain sockets
    else:
        # Istio: the endpoint's port map by port name, else the port's targetPort, else its number.
        port = we.ports.get(sp.name, sp.target_port)
    network = we.network or ""
    return Endpoint(we.address, port, Labels(we.labels), Locality.parse(we.locality or ""),
                    networks.get(network, ""), network, we.weight or 1,  # Istio treats weight 0 as unset
                    service_account=we.service_account or "", service_port=sp.port)


def _serviceentry_services(b: RegistryBuilder, load_result: LoadResult, mesh: Mesh | None,
                           placed: tuple[Placement, ...]) -> None:
    """Each host of each ServiceEntry is a mesh-wide service (``declared_in=()``).

    Endpoints: the listed WorkloadEntries; else, with a workloadSelector, the instances
    and WorkloadEntry resources of the entry's namespace it selects; else, for DNS
    resolution, the host itself (the proxy resolves it); NONE resolution has none. An
    endpoint's cluster is the one cluster of the mesh on its network, if there is one.
    """
    networks: dict[str, str] = {}
    if mesh is not None:
        counts: dict[str, list[str]] = {}
        for c in mesh.clusters:
            counts.setdefault(c.network or c.name, []).append(c.name)
        networks = {net: names[0] for net, names in counts.items() if len(names) == 1}
    entries = load_result.of_kind("WorkloadEntry")
    for r in load_result.of_kind("ServiceEntry"):
        se = r.spec
        ports = tuple(ServicePort(p.name or "", p.number, _protocol(p.protocol or "auto"), p.target_port or 0)
                      for p in se.ports if p.number is not None)
        resolution = se.resolution
        external = se.location.value == "MESH_EXTERNAL"
        for host in se.hosts:
            svc = b.add_service(Service(host, r.namespace, host.lower(), ports, resolution, external))
            eps: list[Endpoint] = []
            if se.endpoints:
                for we in se.endpoints:
                    eps.extend(e for sp in ports if (e := _entry_endpoint(we, sp, networks)) is not None)
            elif se.workload_selector is not None and resolution is not Resolution.NONE:
                selector = se.workload_selector.labels
                for p in placed:
                    if p.namespace == r.namespace and p.labels.selects(selector):
                        eps.extend(_endpoint(p, sp.target_port, sp.port) for sp in ports)
                for w in entries:
                    if w.namespace == r.namespace and Labels(w.spec.labels).selects(selector):
                        eps.extend(e for sp in ports if (e := _entry_endpoint(w.spec, sp, networks)) is not None)
            elif resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN) and not svc.hostname.is_wildcard:
                eps.extend(Endpoint(str(svc.hostname), sp.target_port, service_port=sp.port) for sp in ports)
            for cluster in dict.fromkeys(e.cluster for e in eps):  # in config order
                b.add_endpoints(svc.hostname, cluster, [e for e in eps if e.cluster == cluster])


def build_registry(load_result: LoadResult, mesh: Mesh | None = None, *,
                   kube_cluster: str | None = None) -> ServiceRegistry:
    """The service registry of a loaded topology (Mesh, Kubernetes objects, ServiceEntries).

    ``mesh`` defaults to the one Mesh resource loaded; ``kube_cluster`` names the cluster
    Kubernetes objects belong to when the mesh has several.
    """
    mesh = mesh if mesh is not None else find_mesh(load_result)
    placed = placements(load_result, mesh, kube_cluster=kube_cluster)
    b = RegistryBuilder()
    if mesh is not None:
        _mesh_services(b, mesh, placed)
    if load_result.of_kind("Service"):
        _kube_services(b, load_result, placed, kube_cluster_of(load_result, mesh, kube_cluster))
    _serviceentry_services(b, load_result, mesh, placed)
    return b.build()
