"""The registry as the mesh DNS answers it: endpoints of other networks behind their gateway.

meshfed answers every service like a headless one, with its endpoints' addresses
(``_dns_table``). For an endpoint on the answering cluster's network that address is
reachable. For one on another network - what a linked peer exports - it is not (in a
real deployment it is a pod IP of another network; on one machine dialling it would go
around the gateway and the end-to-end mTLS): Istio's DNS proxy leaves such endpoints out
of its headless answers (pkg/dns/server/name_table.go, "cross network routing would
break"), so a service that only a linked cluster runs would not resolve at all.

meshfed answers such endpoints with the address traffic to them really takes: their
cluster's east-west gateway, once per cluster and service port (``weight`` the healthy
endpoints behind it, so SRV weights keep the shares), as proxy documents group them
(``_federation_model.gateway_groups``). A name of a service that exists only in a linked
cluster thus resolves while the link keeps its imports, to an address of the network the
calls go through; the app's own sidecar (``HTTP_PROXY``) carries the call over mTLS
through that gateway. Per-instance names are not published for other networks, as in
Istio. Unlinked or expired, the imports leave the registry and the name is NXDOMAIN again.

Only endpoints whose cluster has a known gateway move: by default the gateways linked
peers announced (``FederatedRegistry.gateways``), so a registry of one topology served
whole (``scope="mesh"``, tests) answers as before. Endpoints without a network, of this
cluster, or of this network are kept as they are.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from topology import Endpoint, Service, ServiceRegistry


def network_of(registry: ServiceRegistry, cluster: str) -> str:
    """The network of ``cluster``'s own endpoints ('' when it has none with a network)."""
    for svc in registry.services:
        for e in svc.endpoints:
            if e.cluster == cluster and e.network:
                return e.network
    return ""


def _behind_gateways(svc: Service, cluster: str, network: str, gateways: Mapping[str, str]) -> Service | None:
    """``svc`` with other networks' endpoints replaced; None when nothing changes."""
    kept: list[Endpoint] = []
    groups: dict[tuple[str, int, int], list[Endpoint]] = {}
    changed = False
    for e in svc.endpoints:
        if not e.network or e.network == network or e.cluster == cluster or e.cluster not in gateways:
            kept.append(e)
            continue
        changed = True
        groups.setdefault((e.cluster, e.port, e.service_port), []).append(e)
    if not changed:
        return None
    for (peer, port, service_port), eps in groups.items():
        host = gateways[peer].rpartition(":")[0].strip("[]")
        healthy = [e for e in eps if e.healthy]
        first = eps[0]
        kept.append(Endpoint(host, port, locality=first.locality, cluster=peer, network=first.network,
                             weight=max(1, len(healthy)), healthy=bool(healthy), service_port=service_port))
    return replace(svc, endpoints=tuple(kept))


def reachable_view(registry: ServiceRegistry, cluster: str, network: str,
                   gateways: Mapping[str, str] | None = None) -> ServiceRegistry:
    """``registry`` with every endpoint of a network other than ``network`` answered by its
    cluster's gateway (module docstring). ``gateways``: cluster -> ``host:port``, by default
    what linked peers announced (``FederatedRegistry.gateways``). Unchanged when nothing is
    on another network (the same object)."""
    if gateways is None:
        gateways = getattr(registry, "gateways", None) or {}
    if not network:
        return registry
    out = []
    changed = False
    for svc in registry.services:
        moved = _behind_gateways(svc, cluster, network, gateways)
        changed = changed or moved is not None
        out.append(moved if moved is not None else svc)
    return ServiceRegistry(out, domain=registry.domain) if changed else registry
