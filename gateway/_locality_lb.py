"""Envoy's half of locality load balancing, over the priority levels ``_locality_levels``
compiles from a DestinationRule's localityLbSetting: which priority, which locality, which
host, for each request.

Theory of operation. ``LocalityLb.compile`` ranks hosts once per endpoint or config change.
For each health view - recomputed only when the set of unhealthy hosts changes, so the hot
path compares one frozenset - ``_priority_load`` gives each priority its share of requests
(healthy share x 1.4, spill-over, panic) and each locality its effective weight (weight x
availability). A pick draws a priority by load (from the request hash when consistent
hashing is configured, as Envoy does, else from the injected rng), then a locality by
effective weight - or, at a priority in panic, any of its hosts - then a host from that
locality's balancer (``make_balancer``, all counting into one ``ActiveRequests``). Nothing
here sleeps or does I/O; health (outlier ejections, registry state) comes in as an argument.

Health is counted in endpoints, not hosts: an east-west gateway entry stands for
``Host.members`` endpoints (its weight), so a priority's health is healthy weight over
total weight and ejecting one gateway entry takes only its own endpoints out. A pick whose
context sets ``other_priorities`` (Istio ``retryRemoteLocalities``) counts the priorities of
the hosts it excludes as unhealthy, as Envoy's ``previous_priorities`` retry plugin does.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from topology import Locality
from topology._load_balancer import LoadBalancerSettings
from topology._locality import LocalityLoadBalancerSetting

from ._balancer import NO_CONTEXT, ActiveRequests, Balancer, Host, PickContext, make_balancer
from ._locality_levels import LocalityMode, PriorityLevel, compile_levels, parse_locality
from ._priority_load import DEFAULT_PANIC_THRESHOLD, PriorityLoad, choose_priority, effective_locality_weight, priority_load

_SELECTION_ATTEMPTS = 5  # Istio's retry host predicate: host_selection_retry_max_attempts = 5
HealthView = Callable[[Host], bool] | Mapping[str, bool] | None
"""Whether a host may take traffic: a predicate, a map key -> healthy (absent keys are
healthy), or None for all healthy. Outlier detection's ejections are the usual source."""


@dataclass(frozen=True, slots=True)
class LocalityShare:
    """One locality at one priority."""

    locality: str
    hosts: int
    healthy: int
    weight: int
    share: float
    """Percent of all requests this locality receives at this priority."""


@dataclass(frozen=True, slots=True)
class PriorityView:
    """One priority as ``fedctl explain`` and the admin ``/clusters`` page show it."""

    priority: int
    reason: str
    hosts: int
    healthy: int
    health: int
    """Envoy's health score, percent (healthy share x 1.4, capped at 100)."""
    load: int
    """Percent of requests sent to this priority."""
    panic: bool
    localities: tuple[LocalityShare, ...]


@dataclass(frozen=True, slots=True)
class Loads:
    """Where requests go under one health view."""

    priorities: tuple[int, ...]
    """Percent of requests per priority, summing to 100 (empty without hosts)."""
    localities: dict[str, float]
    """Percent of requests per locality, summed over priorities."""


class LocalityLb:
    """A compiled priority set over one destination's hosts (see the module docstring)."""

    def __init__(self, mode: LocalityMode, levels: tuple[PriorityLevel, ...], *, lb: LoadBalancerSettings | None,
                 rng: random.Random, panic_threshold: float, active: ActiveRequests | None = None) -> None:
        self.mode, self.levels, self.lb, self.panic_threshold = mode, levels, lb, panic_threshold
        self.locality_weighted = mode is not LocalityMode.OFF  # Istio sets LocalityWeightedLbConfig then
        self.active = active if active is not None else ActiveRequests()
        self._rng = rng
        self._hosts = tuple(h for lvl in levels for h in lvl.hosts)
        self._priority = {h.key: p for p, lvl in enumerate(levels) for h in lvl.hosts}
        self._cache: tuple[frozenset[str], _State] | None = None

    @classmethod
    def compile(cls, setting: LocalityLoadBalancerSetting | None, client_locality: Locality | str,
                hosts: Iterable[Any], outlier_enabled: bool, *, client_labels: Mapping[str, str] | None = None,
                lb: LoadBalancerSettings | None = None, rng: random.Random | None = None,
                panic_threshold: float = DEFAULT_PANIC_THRESHOLD, active: ActiveRequests | None = None) -> LocalityLb:
        """``setting`` None means the mesh default (enabled, no rules). ``hosts`` are balancer
        ``Host``s or registry ``Endpoint``s. ``panic_threshold``: see ``panic_threshold_for``."""
        hs = tuple(h if isinstance(h, Host) else Host.of(h) for h in hosts)
        mode, levels = compile_levels(setting, parse_locality(client_locality), hs, outlier_enabled, client_labels or {})
        rng = rng if rng is not None else random.Random()
        make_balancer(lb, (), rng)  # a setting no balancer can serve (PASSTHROUGH) fails here, not at a pick
        return cls(mode, levels, lb=lb, rng=rng, panic_threshold=panic_threshold, active=active)

    def pick(self, context: PickContext = NO_CONTEXT, healthy: HealthView = None) -> Host | None:
        """A host for one request, or None when there is none to send it to. A host in
        ``context.exclude`` is avoided by picking again, up to 5 times, as Envoy's retry
        host predicate does."""
        if not self.levels:
            return None
        state = self._state(healthy)
        load = state.load
        if context.other_priorities and context.exclude:
            load = state.load_avoiding(self, frozenset(self._priority.get(k, -1) for k in context.exclude))
        host = None
        for _ in range(_SELECTION_ATTEMPTS):
            host = self._pick_once(state, load, context)
            if host is None or host.key not in context.exclude:
                return host
        return host

    def _pick_once(self, state: _State, load: PriorityLoad, context: PickContext) -> Host | None:
        h = context.hash  # consistent hashing keeps a key on one priority and locality
        p = choose_priority(load.load, (h % 100 if h is not None else self._rng.randrange(100)) + 1)
        if load.panic[p]:
            return state.balancer(self, p, _ALL).pick(context)
        cum = state.cumulative[p]
        if self.locality_weighted and cum and cum[-1] > 0:
            x = ((h >> 11) / 2 ** 53 if h is not None else self._rng.random()) * cum[-1]
            return state.balancer(self, p, min(bisect_right(cum, x), len(cum) - 1)).pick(context)
        return state.balancer(self, p, _HEALTHY).pick(context)

    def priority_of(self, key: str) -> int | None:
        """The priority of the host ``key``; None for a host this balancer does not hold."""
        return self._priority.get(key)

    def on_request_start(self, host: Host) -> None:
        self.active.start(host.key)

    def on_request_end(self, host: Host) -> None:
        self.active.end(host.key)

    def priorities(self, healthy: HealthView = None) -> tuple[PriorityView, ...]:
        """Each priority's localities, health and share of requests under ``healthy``."""
        state = self._state(healthy)
        out = []
        for p, lvl in enumerate(self.levels):
            load, panic = state.load.load[p], state.load.panic[p]
            if panic:
                basis = [float(sum(h.weight for h in g.hosts)) for g in lvl.groups]  # all hosts, by host weight
            elif self.locality_weighted and any(state.weights[p]):
                basis = state.weights[p]
            else:
                basis = [float(sum(h.weight for h in hh)) for hh in state.healthy[p]]
            total = sum(basis)
            shares = tuple(LocalityShare(g.locality, _members(g.hosts), _members(hh), g.weight,
                                         load * b / total if total else 0.0)
                           for g, hh, b in zip(lvl.groups, state.healthy[p], basis))
            out.append(PriorityView(p, lvl.reason, _members(lvl.hosts), sum(_members(hh) for hh in state.healthy[p]),
                                    state.load.health[p], load, panic, shares))
        return tuple(out)

    def loads(self, healthy: HealthView = None) -> Loads:
        views = self.priorities(healthy)
        per_locality: dict[str, float] = {}
        for v in views:
            for s in v.localities:
                per_locality[s.locality] = per_locality.get(s.locality, 0.0) + s.share
        return Loads(tuple(v.load for v in views), per_locality)

    def _state(self, healthy: HealthView) -> _State:
        if healthy is None:
            unhealthy: frozenset[str] = frozenset()
        elif isinstance(healthy, Mapping):
            unhealthy = frozenset(k for k, ok in healthy.items() if not ok)
        else:
            unhealthy = frozenset(h.key for h in self._hosts if not healthy(h))
        if self._cache is None or self._cache[0] != unhealthy:
            self._cache = (unhealthy, _State(self, unhealthy))
        return self._cache[1]

    def __repr__(self) -> str:
        localities = {g.locality for lvl in self.levels for g in lvl.groups}
        return (f"<LocalityLb {self.mode.value} [{len(self.levels)} priorities, {len(localities)} localities, "
                f"{len(self._hosts)} hosts]>")


_ALL, _HEALTHY = -2, -1


def _members(hosts: Iterable[Host]) -> int:
    return sum(h.members for h in hosts)


class _State:
    """What a health view implies: loads, healthy hosts and weights per group, balancers (lazily)."""

    __slots__ = ("healthy", "load", "weights", "cumulative", "_balancers", "_counts", "_avoiding", "_threshold")

    def __init__(self, lb: LocalityLb, unhealthy: frozenset[str]) -> None:
        self.healthy = [[tuple(h for h in g.hosts if h.key not in unhealthy) for g in lvl.groups] for lvl in lb.levels]
        # Health counts endpoints: a gateway entry counts as the endpoints behind it (Host.members).
        counts = [(sum(_members(hh) for hh in groups), _members(lvl.hosts)) for groups, lvl in zip(self.healthy, lb.levels)]
        self.load: PriorityLoad = priority_load(counts, lb.panic_threshold)
        self._counts, self._threshold = counts, lb.panic_threshold
        self._avoiding: dict[frozenset[int], PriorityLoad] = {}
        self.weights = [[effective_locality_weight(g.weight, _members(hh), _members(g.hosts))
                         for g, hh in zip(lvl.groups, groups)] for lvl, groups in zip(lb.levels, self.healthy)]
        self.cumulative = [list(accumulate(w)) for w in self.weights]
        self._balancers: dict[tuple[int, int], Balancer[Host]] = {}

    def load_avoiding(self, lb: LocalityLb, tried: frozenset[int]) -> PriorityLoad:
        """Envoy's ``previous_priorities`` retry plugin (Istio ``retryRemoteLocalities``):
        the load with the priorities earlier attempts used counted as unhealthy - unless
        that leaves no healthy priority, when the plain load stands."""
        found = self._avoiding.get(tried)
        if found is None:
            counts = [(0, t) if p in tried else (h, t) for p, (h, t) in enumerate(self._counts)]
            found = self.load
            if any(h for h, _ in counts):
                found = priority_load(counts, self._threshold)
            self._avoiding[tried] = found
        return found

    def balancer(self, lb: LocalityLb, p: int, which: int) -> Balancer[Host]:
        b = self._balancers.get((p, which))
        if b is None:
            if which == _ALL:
                hosts = lb.levels[p].hosts
            elif which == _HEALTHY:
                hosts = tuple(h for hh in self.healthy[p] for h in hh)
            else:
                hosts = self.healthy[p][which]
            b = self._balancers[(p, which)] = make_balancer(lb.lb, hosts, lb._rng, active=lb.active)
        return b


