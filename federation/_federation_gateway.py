"""The east-west gateway of each cluster, as the control plane sees it: a placement and a document.

The gateway runs as a proxy of its own (``spec.node.role: eastwest``) at the cluster's
gateway address (the block's ``.2``), with the identity
``spiffe://<trust domain>/ns/istio-system/sa/istio-eastwestgateway``; it subscribes to
its control plane as a sidecar does, so the discovery server finds it among the
placements of the version (``gateway_placements``). Its document differs from a
sidecar's: listeners ``eastwest`` (:15443) and ``admin`` only; as services, every
service of its own cluster with that cluster's endpoints only (a gateway never forwards
to another network), each marked ``exported`` when a ``ServiceExport`` names it - the
gateway closes connections for the rest; as resources, the DestinationRules, whose
subsets it resolves from the SNI ``outbound_.<port>_.<subset>_.<fqdn>``.
"""

from __future__ import annotations

from typing import Any, Iterable

from topology import Labels, Placement, Resource, ServiceRegistry
from topology._mesh import Mesh
from topology._registry_build import _registry_locality

GATEWAY_NAMESPACE = "istio-system"
GATEWAY_WORKLOAD = "istio-eastwestgateway"
GATEWAY_SERVICE_ACCOUNT = "istio-eastwestgateway"
GATEWAY_PORT, GATEWAY_ADMIN_PORT = 15443, 15000


class _EastWest:
    """Marks a placement as a cluster's east-west gateway (``Placement.source``)."""

    def __repr__(self) -> str:
        return "<east-west gateway>"


EASTWEST = _EastWest()


def is_gateway(p: Placement) -> bool:
    return p.source is EASTWEST


def gateway_placements(mesh: Mesh | None) -> tuple[Placement, ...]:
    """One per cluster that has a gateway address."""
    out = []
    for c in mesh.clusters if mesh is not None else ():
        if not c.gateway_address:
            continue
        network = c.network or c.name
        labels = Labels({"app": GATEWAY_WORKLOAD, "istio": "eastwestgateway", "topology.istio.io/network": network})
        locality = _registry_locality(c.locality) if c.locality is not None else _registry_locality(None)
        out.append(Placement(c.name, network, locality, GATEWAY_NAMESPACE, GATEWAY_WORKLOAD, 0, c.gateway_address,
                             labels, GATEWAY_SERVICE_ACCOUNT, EASTWEST))
    return tuple(out)


def gateway_of(mesh: Mesh | None, cluster: str) -> Placement | None:
    return next((p for p in gateway_placements(mesh) if p.cluster == cluster), None)


def exported_names(resources: Iterable[Resource]) -> frozenset[tuple[str, str]]:
    """(namespace, name) of every service a ``ServiceExport`` exports."""
    return frozenset((r.namespace, r.name) for r in resources if r.kind == "ServiceExport")


def gateway_listeners(p: Placement) -> dict[str, str]:
    return {"eastwest": f"{p.address}:{GATEWAY_PORT}", "admin": f"{p.address}:{GATEWAY_ADMIN_PORT}"}


def local_services(registry: ServiceRegistry, cluster: str) -> list[Any]:
    """(service, its endpoints in ``cluster``) for every service the cluster declares or runs."""
    out = []
    for s in registry.services:
        if s.is_external:
            continue
        eps = tuple(e for e in s.endpoints if e.cluster == cluster)
        if eps or cluster in s.declared_in:
            out.append((s, eps))
    return out
