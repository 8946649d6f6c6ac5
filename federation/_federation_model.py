"""What linked control planes exchange, and how an importer merges it: pure, no sockets, no clock.

An exporting control plane publishes an ``ExportSet``: its cluster, network, locality,
trust domain and east-west gateway, and every service it exports (a ``ServiceExport``
in its config names ``<namespace>/<name>``) with the declaration (ports) and *its own*
endpoints - real addresses, labels, locality, health. The importer never dials those
addresses: its proxy documents put every endpoint of another network behind that
network's gateway, grouped by locality and label set (``gateway_groups``). Keeping the
real endpoints in the registry, rather than one pseudo-endpoint per cluster, is what
lets a client weigh a locality by its healthy endpoint count and lets subsets resolve
at the client (istio#52435).

``merge_imports`` applies namespace sameness: ``echo.demo`` exported by west and
declared in east-a is one service whose endpoints are the union. An import can only add
endpoints of the exporting cluster: endpoints it claims for any other cluster - above
all the importer's own - are dropped, so a misconfigured or hostile peer cannot shadow
local endpoints. ``revision`` is a digest of the content, so an unchanged export costs
the watcher nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from topology import Endpoint, Labels, Service, ServiceRegistry
from topology._endpoint import Locality, ServicePort

CLUSTER_LABEL = "topology.istio.io/cluster"
NETWORK_LABEL = "topology.istio.io/network"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


def topology_labels(e: Endpoint) -> dict[str, str]:
    """The labels Istio puts on every endpoint, so that subsets can select by cluster or region;
    a label the workload sets itself wins."""
    loc = e.locality
    found = {CLUSTER_LABEL: e.cluster, NETWORK_LABEL: e.network, REGION_LABEL: loc.region,
             ZONE_LABEL: loc.zone, SUBZONE_LABEL: loc.subzone}
    out = {k: v for k, v in found.items() if v}
    out.update(e.labels)
    return out


def gateway_groups(endpoints: Iterable[Endpoint], gateway_of: Mapping[str, str]) -> list[dict[str, Any]]:
    """Endpoints of other networks as seen by a client: one entry per (cluster, locality,
    label set, service port, service account) behind the cluster's gateway, ``weight`` the
    number of healthy endpoints in it. Unhealthy endpoints count for nothing and a group
    without a healthy endpoint is not emitted; a cluster without a known gateway is
    unreachable and left out. ``gateway_of``: cluster -> ``host:port``."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for e in endpoints:
        gateway = gateway_of.get(e.cluster)
        if gateway is None or not e.healthy:
            continue
        labels = topology_labels(e)
        key = (e.cluster, str(e.locality), tuple(sorted(labels.items())), e.service_port, e.service_account, gateway)
        found = groups.get(key)
        if found is None:
            groups[key] = [e, labels, 1]
        else:
            found[2] += 1
    out = []
    for (cluster, locality, _, service_port, account, gateway), (e, labels, count) in groups.items():
        host, _, port = gateway.rpartition(":")
        entry: dict[str, Any] = {"address": host, "port": int(port), "gateway": gateway, "cluster": cluster,
                                 "network": e.network, "locality": locality, "labels": labels, "weight": count}
        if service_port:
            entry["servicePort"] = service_port
        if account:
            entry["serviceAccount"] = account
        out.append({k: v for k, v in entry.items() if v or k == "weight"})
    return out


# -- exports -------------------------------------------------------------------------------


def _endpoint_json(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"address": e.address, "port": e.port}
    out.update((k, v) for k, v in (
        ("labels", dict(e.labels)), ("locality", str(e.locality)), ("network", e.network),
        ("serviceAccount", e.service_account), ("instance", e.instance), ("servicePort", e.service_port),
        ("weight", e.weight if e.weight != 1 else 0)) if v)
    if not e.healthy:
        out["healthy"] = False
    return out


def _endpoint_of(doc: Mapping[str, Any], cluster: str) -> Endpoint:
    return Endpoint(str(doc["address"]), int(doc["port"]), Labels(dict(doc.get("labels") or {})),
                    Locality.parse(str(doc.get("locality") or "")), cluster, str(doc.get("network") or ""),
                    int(doc.get("weight") or 1), bool(doc.get("healthy", True)), str(doc.get("serviceAccount") or ""),
                    str(doc.get("instance") or ""), int(doc.get("servicePort") or 0))


@dataclass(frozen=True, slots=True)
class ExportedService:
    hostname: str
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "namespace": self.namespace, "name": self.name,
                "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": p.target_port}
                          for p in self.ports],
                "endpoints": [_endpoint_json(e) for e in self.endpoints]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], cluster: str) -> "ExportedService":
        ports = tuple(ServicePort(str(p.get("name") or ""), int(p["port"]), str(p.get("protocol") or "TCP"),
                                  int(p.get("targetPort") or p["port"])) for p in doc.get("ports") or ())
        return cls(str(doc["hostname"]), str(doc["namespace"]), str(doc["name"]), ports,
                   tuple(_endpoint_of(e, cluster) for e in doc.get("endpoints") or ()))

    @property
    def healthy(self) -> int:
        return sum(1 for e in self.endpoints if e.healthy)


@dataclass(frozen=True, slots=True)
class ExportSet:
    """Everything one cluster exports to its linked peers, as of one revision."""

    cluster: str
    network: str
    locality: str
    trust_domain: str
    gateway: str
    """East-west gateway ``host:port`` the importer's proxies send this cluster's traffic to."""
    services: tuple[ExportedService, ...] = ()
    revision: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "network": self.network, "locality": self.locality,
                "trustDomain": self.trust_domain, "gateway": self.gateway, "revision": self.revision,
                "services": [s.to_json() for s in self.services]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ExportSet":
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on a malformed document."""
        cluster = str(doc["cluster"])
        if not cluster:
            raise ValueError("an export set names no cluster")
        services = tuple(ExportedService.from_json(s, cluster) for s in doc.get("services") or ())
        return cls(cluster, str(doc.get("network") or ""), str(doc.get("locality") or ""),
                   str(doc.get("trustDomain") or ""), str(doc.get("gateway") or ""), services,
                   str(doc.get("revision") or ""))


def _revision(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def build_export(registry: ServiceRegistry, cluster: str, exports: Iterable[tuple[str, str]], *, network: str,
                 locality: str, trust_domain: str, gateway: str) -> ExportSet:
    """``cluster``'s export set: each exported (namespace, name) that its registry declares,
    with the endpoints of ``cluster`` only (possibly none: scaled to zero is news too)."""
    wanted = set(exports)
    services = []
    for s in registry.services:
        if (s.namespace, s.name) not in wanted or s.is_external:
            continue
        if s.declared_in and cluster not in s.declared_in and cluster not in s.clusters:
            continue
        eps = tuple(e for e in s.endpoints if e.cluster == cluster)
        services.append(ExportedService(s.hostname.name, s.namespace, s.name, s.ports, eps))
    export = ExportSet(cluster, network, locality, trust_domain, gateway, tuple(services))
    body = export.to_json()
    body.pop("revision")
    return replace(export, revision=_revision(body))


def merge_imports(local: ServiceRegistry, own_cluster: str, imports: Iterable[ExportSet]) -> ServiceRegistry:
    """``local`` with every import's endpoints merged in by namespace sameness (module docstring)."""
    table = {s.hostname.name: s for s in local.services}
    for export in imports:
        peer = export.cluster
        if peer == own_cluster:
            continue
        for imp in export.services:
            eps = tuple(e for e in imp.endpoints if e.cluster == peer)
            have = table.get(imp.hostname)
            if have is None:
                svc = Service(imp.hostname, imp.namespace, imp.name, imp.ports, declared_in=(peer,))
                ports = svc.ports
            else:
                known = {p.port for p in have.ports}
                ports = (*have.ports, *(p for p in imp.ports if p.port not in known))
                svc = replace(have, ports=ports, declared_in=tuple({*have.declared_in, peer})
                              if have.declared_in else ())
            targets = {p.target_port or p.port for p in ports}
            numbers = {p.port for p in ports}
            eps = tuple(e for e in eps if (e.service_port in numbers if e.service_port else e.port in targets))
            kept = tuple(e for e in svc.endpoints if e.cluster != peer)
            table[imp.hostname] = replace(svc, endpoints=(*kept, *eps))
    return ServiceRegistry(table.values(), domain=local.domain)


def import_counts(export: ExportSet) -> tuple[int, int]:
    """(services, healthy endpoints) of an export set, for ``fedctl link list``."""
    return len(export.services), sum(s.healthy for s in export.services)


class FederatedRegistry(ServiceRegistry):
    """A registry with imports merged in, and the gateway each linked peer announced
    (cluster -> ``host:port``), which proxy documents put remote endpoints behind."""

    __slots__ = ("gateways",)

    def __init__(self, services: Iterable[Service] = (), *, domain: str, gateways: Mapping[str, str]) -> None:
        super().__init__(services, domain=domain)
        self.gateways = dict(gateways)


def federated_view(local: ServiceRegistry, own_cluster: str, imports: Iterable[ExportSet]) -> FederatedRegistry:
    imports = [x for x in imports if x.cluster != own_cluster]
    merged = merge_imports(local, own_cluster, imports)
    return FederatedRegistry(merged.services, domain=merged.domain,
                             gateways={x.cluster: x.gateway for x in imports if x.gateway})
