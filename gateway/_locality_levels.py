"""Istio's half of locality load balancing: ranking a destination's hosts into priority
levels of locality groups, as istiod writes them into Envoy's ClusterLoadAssignment
(``pilot/pkg/networking/core/loadbalancer/loadbalancer.go``); and how endpoints of another
network are represented (through that network's gateway, one host per locality).

- FAILOVER (localityLbSetting on - the mesh default - and outlier detection configured):
  rank 0 = same region/zone/subzone as the client, 1 = same zone, 2 = same region, 3 =
  other regions, except that when a ``failover`` rule starts at the client's region, only
  its ``to`` region stays 3 and the rest become 4. ``failoverPriority`` ranks by labels
  instead: n - (number of leading labels whose value equals the client's, or the value
  written after ``=``); with ``failover`` rules as well the rank is ``label*5 + locality``.
  Ranks are then renumbered 0..N without gaps, as Istio does.
- DISTRIBUTE: the first ``distribute`` rule whose ``from`` matches the client gives each
  ``to`` pattern's localities its weight (split by their own weights, rounded up); the
  localities no pattern claims get no traffic. One priority: no failover.
- OFF: ``enabled: false``, or no outlier detection. Istio: "Failover needs outlier
  detection, otherwise Envoy will never drop down to a lower priority" - so it sets no
  priorities, and meshfed does the same (``fedctl validate`` warns about such a rule): one
  priority, hosts balanced by weight, no locality weighting.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from topology import Endpoint, InvalidValueError, Labels, Locality
from topology._locality import LocalityLoadBalancerSetting

from . import GatewayError
from ._balancer import Host
from ._priority_load import DEFAULT_PANIC_THRESHOLD

TOPOLOGY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone")
"""Labels Istio adds to every proxy and endpoint from its locality, so failoverPriority can name them."""
CLUSTER_LABEL, NETWORK_LABEL = "topology.istio.io/cluster", "topology.istio.io/network"
_TIERS = ("same region/zone/subzone", "same zone, other subzone", "same region, other zone", "other region")


class LocalityLbError(GatewayError):
    """Hosts or localities a locality balancer cannot be built from."""

    def __init__(self, message: str, value: object) -> None:
        super().__init__(message)
        self.value = value


class LocalityMode(enum.Enum):
    OFF = "off"
    FAILOVER = "failover"
    DISTRIBUTE = "distribute"


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """The hosts of one locality at one priority, with the locality's weight."""

    locality: str
    hosts: tuple[Host, ...]
    weight: int
    """Istio's LocalityLbEndpoints weight: the hosts' summed weight, or the distribute weight."""


@dataclass(frozen=True, slots=True)
class PriorityLevel:
    reason: str
    """Why these hosts share this priority, as ``fedctl explain`` prints it."""
    groups: tuple[LocalityGroup, ...]
    hosts: tuple[Host, ...]


def compile_levels(setting: LocalityLoadBalancerSetting | None, client: Locality, hosts: tuple[Host, ...],
                   outlier_enabled: bool, client_labels: Mapping[str, str]) -> tuple[LocalityMode, tuple[PriorityLevel, ...]]:
    """The mode and priority levels for ``hosts`` as seen from ``client`` (see the module docstring)."""
    seen: set[str] = set()
    for h in hosts:
        if h.key in seen:
            raise LocalityLbError(f"host keys must be distinct; found {h.key!r} twice", h.key)
        seen.add(h.key)
    locs = {h.key: parse_locality(h.locality) for h in hosts}
    if setting is not None and setting.enabled is False:
        return LocalityMode.OFF, _levels(hosts, locs, lambda h: (0, "locality load balancing disabled"))
    if setting is not None and setting.distribute:
        return LocalityMode.DISTRIBUTE, _distribute(setting, client, hosts, locs)
    if outlier_enabled:
        return LocalityMode.FAILOVER, _levels(hosts, locs, _failover_rank(setting, client, locs, dict(client_labels)))
    return LocalityMode.OFF, _levels(hosts, locs, lambda h: (0, "no outlierDetection: no failover priorities"))


def parse_locality(value: Locality | str) -> Locality:
    """A Locality from its ``region/zone/subzone`` text; LocalityLbError when malformed."""
    try:
        return value if isinstance(value, Locality) else Locality.parse(value)
    except InvalidValueError as exc:
        raise LocalityLbError(str(exc), value) from None


def _levels(hosts: tuple[Host, ...], locs: Mapping[str, Locality],
            rank: Callable[[Host], tuple[int, str]]) -> tuple[PriorityLevel, ...]:
    """Hosts grouped by (rank, locality); ranks renumbered 0..N in order, as Istio does."""
    buckets: dict[int, dict[str, list[Host]]] = {}
    reasons: dict[int, str] = {}
    for h in hosts:
        r, reasons[r] = rank(h)
        buckets.setdefault(r, {}).setdefault(str(locs[h.key]), []).append(h)
    return tuple(_level(reasons[r], buckets[r]) for r in sorted(buckets))


def _level(reason: str, by_locality: Mapping[str, list[Host]]) -> PriorityLevel:
    groups = tuple(LocalityGroup(loc, tuple(hs), sum(h.weight for h in hs)) for loc, hs in sorted(by_locality.items()))
    return PriorityLevel(reason, groups, tuple(h for g in groups for h in g.hosts))


def _failover_rank(setting: LocalityLoadBalancerSetting | None, client: Locality, locs: Mapping[str, Locality],
                   client_labels: dict[str, str]) -> Callable[[Host], tuple[int, str]]:
    failover = setting.failover if setting is not None else ()
    rule = next((f for f in failover if f.from_ == client.region), None)  # Istio: the first rule from our region

    def locality_rank(h: Host) -> tuple[int, str]:
        loc = locs[h.key]
        tier = 3 - client.proximity(loc)
        if tier == 3 and rule is not None:
            return (3, f"failover region {rule.to}") if loc.region == rule.to else (4, f"other region (failover is to {rule.to})")
        return tier, _TIERS[tier]

    labels = [(p.partition("=")[0], p.partition("=")[2] if "=" in p else None)
              for p in (setting.failover_priority if setting is not None else ())]
    client_labels = {**_topology_labels(client, None), **client_labels}
    if not labels or not client_labels:  # Istio: no proxy labels, no label priorities
        return locality_rank

    def label_rank(h: Host) -> tuple[int, str]:
        mine = {**_topology_labels(locs[h.key], h.endpoint), **h.labels}
        matched = 0
        for key, value in labels:
            if (value if value is not None else client_labels.get(key, "")) != mine.get(key, ""):
                break
            matched += 1
        why = "labels match: " + (", ".join(k for k, _ in labels[:matched]) or "none")
        if not failover:
            return len(labels) - matched, why
        tier, tier_why = locality_rank(h)
        return (len(labels) - matched) * 5 + tier, f"{why}; {tier_why}"
    return label_rank


def _topology_labels(loc: Locality, endpoint: Any) -> dict[str, str]:
    values = (loc.region, loc.zone, loc.subzone, getattr(endpoint, "cluster", ""), getattr(endpoint, "network", ""))
    return {k: v for k, v in zip(TOPOLOGY_LABELS + (CLUSTER_LABEL, NETWORK_LABEL), values) if v}


def _distribute(setting: LocalityLoadBalancerSetting, client: Locality, hosts: tuple[Host, ...],
                locs: Mapping[str, Locality]) -> tuple[PriorityLevel, ...]:
    rule = next((d for d in setting.distribute if client.matches_pattern(d.from_)), None)
    if rule is None:
        return _levels(hosts, locs, lambda h: (0, "no distribute rule for the client's locality: endpoint weights"))
    levels = _levels(hosts, locs, lambda h: (0, f"distribute from {rule.from_}"))
    if not levels:
        return ()
    level = levels[0]
    unclaimed = {g.locality: g for g in level.groups}
    weights: dict[str, int] = {}
    for pattern, weight in rule.to.items():  # in the order written (Istio iterates a Go map)
        matched = [loc for loc, g in unclaimed.items() if locs[g.hosts[0].key].matches_pattern(pattern)]
        total = sum(unclaimed[loc].weight for loc in matched)
        for loc in matched:  # "divided by the sum of the weights of all localities", rounded up
            weights[loc] = -(-unclaimed.pop(loc).weight * weight // total)
    groups = tuple(replace(g, weight=weights[g.locality]) for g in level.groups if g.locality in weights)
    return (PriorityLevel(level.reason, groups, tuple(h for g in groups for h in g.hosts)),) if groups else ()


def panic_threshold_for(outlier_detection: Any) -> float:
    """Istio: with outlierDetection, Envoy's healthy_panic_threshold = minHealthPercent
    (default 0: panic off); without it, Envoy's default of 50 %."""
    if outlier_detection is None:
        return DEFAULT_PANIC_THRESHOLD
    return float(outlier_detection.min_health_percent or 0)


@dataclass(frozen=True, slots=True)
class GatewayHop:
    """What a host standing for another network's endpoints connects to (``Host.endpoint``)."""

    gateway: str
    """``ip:port`` of that network's east-west gateway."""
    network: str
    cluster: str
    locality: Locality
    endpoints: tuple[Endpoint, ...]
    """The healthy endpoints behind the gateway in this locality."""


def network_hosts(endpoints: Iterable[Endpoint], client_network: str,
                  gateway_for: Callable[[str, str], str | None]) -> tuple[Host, ...]:
    """Balancer hosts for a client in ``client_network`` (Istio's EndpointsByNetworkFilter,
    per locality): endpoints of the client's network, or of none, as they are; those of
    another network as one host per (network, cluster, locality) at the gateway
    ``gateway_for(network, cluster)`` names, weighted by the healthy endpoints behind it -
    never one host for a whole cluster, so outlier detection ejects a locality's path, not
    the cluster. Networks without a gateway, and localities with nothing healthy, are left out."""
    direct: list[Host] = []
    remote: dict[tuple[str, str, Locality], list[Endpoint]] = {}
    for ep in endpoints:
        if not ep.network or ep.network == client_network:
            direct.append(Host.of(ep))
        elif ep.healthy:
            remote.setdefault((ep.network, ep.cluster, ep.locality), []).append(ep)
    for (network, cluster, locality), eps in sorted(remote.items()):
        gateway = gateway_for(network, cluster)
        if gateway is None:
            continue
        common = Labels(set.intersection(*(set(e.labels.items()) for e in eps)))  # subset labels survive
        direct.append(Host(f"{gateway}@{cluster}/{locality}", sum(e.weight for e in eps), str(locality), common,
                           GatewayHop(gateway, network, cluster, locality, tuple(eps)), members=len(eps)))
    return tuple(direct)
