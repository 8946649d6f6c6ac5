"""Envoy's priority load: how much traffic each priority level gets, from its health.

Theory of operation (Envoy ``load_balancer_impl.cc``; architecture overview "Priority
levels", "Panic threshold", "Locality weighted load balancing"). Integer percents, as
Envoy computes them, so that a test can state the exact figure:

- health score of a level = min(100, factor x healthy / total), factor 140 by default: a
  level with 70 % of its hosts healthy still scores 98, one with 72 % or more scores 100;
- normalized total availability = min(100, sum of the scores); each level, from priority
  0 down, takes min(what is left, score x 100 / normalized) and the rounding remainder goes
  to the first level with a non-zero score, so the loads always add up to 100;
- a level is in panic - its hosts are balanced ignoring health - when the total is below
  100 and fewer of its hosts than the panic threshold are healthy; when every level is in
  panic the load follows the host counts instead (Envoy's "total panic"); with the
  threshold at 0 and nothing healthy, priority 0 gets the load and no host is picked;
- within a level a locality's effective weight = weight x min(1, factor x healthy / total).

Degraded hosts are not modelled: meshfed's health is healthy or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OVERPROVISIONING_FACTOR = 140  # percent; Envoy ClusterLoadAssignment.Policy.overprovisioning_factor default (1.4)
DEFAULT_PANIC_THRESHOLD = 50  # percent; Envoy CommonLbConfig.healthy_panic_threshold default


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """The health-dependent state of a priority set, one entry per priority."""

    health: tuple[int, ...]
    """Health score, 0..100: min(100, factor x healthy / total)."""
    load: tuple[int, ...]
    """Percent of requests sent to the priority; sums to 100 whenever a priority exists."""
    panic: tuple[bool, ...]
    """Whether picks at that priority ignore health."""

    @property
    def total_panic(self) -> bool:
        return bool(self.panic) and all(self.panic)


def health_score(healthy: int, total: int, factor: int = OVERPROVISIONING_FACTOR) -> int:
    """Envoy's per-level health: ``min(100, factor * healthy // total)``; 0 for an empty level."""
    return min(100, factor * healthy // total) if total else 0


def effective_locality_weight(weight: int, healthy: int, total: int, factor: int = OVERPROVISIONING_FACTOR) -> float:
    """A locality's weight scaled by its availability (Envoy ``effectiveLocalityWeight``)."""
    return weight * min(1.0, factor / 100 * healthy / total) if total else 0.0


def priority_load(counts: Sequence[tuple[int, int]], panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                  factor: int = OVERPROVISIONING_FACTOR) -> PriorityLoad:
    """Loads and panic flags for levels given as ``(healthy, total)`` host counts, priority 0 first."""
    n = len(counts)
    health = [health_score(h, t, factor) for h, t in counts]
    normalized = min(100, sum(health))
    load = [0] * n
    if normalized:
        left, first = 100, -1
        for i, score in enumerate(health):
            if first < 0 and score > 0:
                first = i
            load[i] = min(left, score * 100 // normalized)
            left -= load[i]
        load[first] += left  # rounding remainder
    threshold = min(100, round(panic_threshold))  # Envoy: PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT
    if not n:
        return PriorityLoad((), (), ())
    if threshold == 0 and normalized == 0:
        load[0] = 100  # "nothing will be routed to P=0 ... as there are no healthy hosts there"
        return PriorityLoad(tuple(health), tuple(load), (False,) * n)
    panic = [normalized != 100 and _in_panic(h, t, threshold) for h, t in counts]
    if all(panic):
        load = _total_panic_load([t for _, t in counts])
    return PriorityLoad(tuple(health), tuple(load), tuple(panic))


def _in_panic(healthy: int, total: int, threshold: int) -> bool:
    return (100.0 * healthy / total if total else 0.0) < threshold


def _total_panic_load(totals: list[int]) -> list[int]:
    """Every level in panic: load by host count, regardless of health (``recalculateLoadInTotalPanic``)."""
    hosts = sum(totals)
    load = [100 * t // hosts if hosts else 0 for t in totals]
    first = next((i for i, t in enumerate(totals) if t), 0)
    load[first] += 100 - sum(load)
    return load


def choose_priority(load: Sequence[int], roll: int) -> int:
    """The priority a roll in 1..100 lands in (Envoy ``choosePriority``: ``hash % 100 + 1``)."""
    acc = 0
    for i, share in enumerate(load):
        acc += share
        if roll <= acc:
            return i
    return 0
