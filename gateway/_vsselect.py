"""Which VirtualServices configure a proxy, and delegation spliced in, as Istio decides.

Selection (pilot ``PushContext.initVirtualServices`` / ``SelectVirtualServices``): the
latest resource of each namespace/name (``kubectl apply`` replaces), visible in the
client's namespace (``exportTo``; none means everywhere), bound to one of the client's
gateways (``mesh`` when ``gateways`` is empty), sorted by creation time, then name, then
namespace (``sortConfigByCreationTime``). Hosts are qualified with the VirtualService's
namespace (``ResolveShortnameToFQDN``).
Delegates are spliced into their roots by ``_delegate``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable, Mapping

from topology._http_route import HTTPRoute
from topology._resource import Resource
from topology._virtualservice import MESH_GATEWAY

from ._actions import qualify_host
from ._delegate import is_exported_to, merge_delegates
from ._match import EMPTY_MAP


def resolve_gateway(name: str, namespace: str) -> str:
    """A gateway reference as ``<namespace>/<name>`` (Istio ``resolveGatewayName``)."""
    if name == MESH_GATEWAY:
        return name
    ns, slash, gw = name.partition("/")
    if slash:
        return f"{namespace if ns == '.' else ns}/{gw}"
    if "." in name:  # legacy <name>.<namespace>[.svc.cluster.local]
        parts = name.split(".")
        return f"{parts[1]}/{parts[0]}"
    return f"{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class ClientWorkload:
    """The proxy a table is compiled for: its namespace, labels and gateways.

    ``labels=None`` compiles a table shared by several workloads: ``sourceLabels`` and
    ``sourceNamespace`` are then checked per request against the request's source.
    """

    namespace: str
    labels: Mapping[str, str] | None = EMPTY_MAP
    gateways: tuple[str, ...] = (MESH_GATEWAY,)
    """``mesh`` for a sidecar; ``<namespace>/<name>`` (or a name in ``namespace``) of each
    Gateway resource a gateway proxy serves."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gateways", tuple(resolve_gateway(g, self.namespace) for g in self.gateways))

    @property
    def is_sidecar(self) -> bool:
        return MESH_GATEWAY in self.gateways


def _created(r: Resource) -> float:
    ts = r.metadata.creation_timestamp
    if isinstance(ts, datetime.datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=datetime.timezone.utc)).timestamp()
    if isinstance(ts, str):
        try:
            return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return float("-inf")  # Go's zero time: before everything


@dataclass(frozen=True, slots=True)
class BoundVirtualService:
    """A VirtualService selected for a client: qualified hosts, delegates spliced in."""

    resource: Resource
    hosts: tuple[str, ...]
    http: tuple[tuple[HTTPRoute, str], ...]
    """Rules with the namespace their short host names resolve in (a delegate's own)."""

    @property
    def key(self) -> str:
        return f"{self.resource.namespace}/{self.resource.name}"


def select_virtual_services(resources: Iterable[Resource], client: ClientWorkload, domain: str,
                            warnings: list[str]) -> list[BoundVirtualService]:
    """The VirtualServices that configure ``client``, in Istio's order."""
    latest: dict[tuple[str, str], Resource] = {}
    for r in resources:
        if r.kind == "VirtualService":
            latest[(r.namespace, r.name)] = r
    delegates = {k: r for k, r in latest.items() if not r.spec.hosts}
    roots = [r for r in latest.values() if r.spec.hosts and is_exported_to(r.spec.export_to, r.namespace,
                                                                             client.namespace)]
    roots.sort(key=lambda r: (_created(r), r.name, r.namespace))
    out = []
    for r in roots:
        gateways = {resolve_gateway(g, r.namespace) for g in r.spec.gateways} or {MESH_GATEWAY}
        if not gateways & set(client.gateways):
            continue
        hosts = tuple(dict.fromkeys(qualify_host(h, r.namespace, domain) for h in r.spec.hosts))
        http = merge_delegates(r, delegates, warnings)
        out.append(BoundVirtualService(r, hosts, http))
    return out
