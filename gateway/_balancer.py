"""Load balancers over one host set: ROUND_ROBIN, RANDOM, LEAST_REQUEST and consistent
hashing (ring hash, Maglev), chosen by a DestinationRule's ``loadBalancer``.

Theory of operation. A balancer is a plain object built from a tuple of hosts (anything
with a stable ``key`` and an integer ``weight``) and an injected ``random.Random``; it
never sleeps, reads a clock or does I/O. ``pick(context)`` returns a host, or None for an
empty set. The context carries the request's hash (consistent hashing) and the keys of
hosts earlier attempts used: while any other host is left, an excluded host is never
returned (Envoy's ``previous_hosts`` retry predicate, made strict). The caller reports
``on_request_start`` / ``on_request_end``; the counts live in an ``ActiveRequests`` that
a balancer shares with its rebuilds, so requests in flight across an endpoint update are
still counted, as Envoy keeps ``rq_active`` on the host rather than in the balancer.

Endpoint changes never mutate a balancer: ``rebuild(hosts)`` (or ``make_balancer``)
returns a new one and the caller swaps it in. A locality/priority layer sits on top: it
picks a priority and locality first, then asks the balancer built for that locality's
hosts (``make_balancer(..., active=shared)`` so all of them count into one table).

Envoy's algorithms (``load_balancer_impl.cc``, ``least_request_lb.cc``):
- ROUND_ROBIN: equal weights rotate through the hosts from a random offset; unequal
  weights use an earliest-deadline-first schedule (deadline += 1/weight, ties first in,
  first out), fast-forwarded by a random number of picks so proxies do not move in step.
- LEAST_REQUEST: equal weights sample ``choice_count`` hosts (2: "power of two choices")
  and keep the one with fewest active requests. Unlike Envoy the samples are distinct,
  so with two hosts the busier one never wins (Envoy samples with replacement and lets
  it win 25 % of the time). Unequal weights: the EDF schedule with weight
  ``weight / (active + 1) ** active_request_bias``, recomputed when a host is re-queued.
- RANDOM: a host drawn with probability proportional to its weight.
- Consistent hash: ``_ringhash`` / ``_maglev``; no hash in the context means a random one.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Generic, Protocol, TypeVar

from topology import Labels
from topology._decode import describe
from topology._load_balancer import LoadBalancerSettings, SimpleLB
from topology._traffic_policy import TrafficPolicy

from . import GatewayError
from ._maglev import DEFAULT_TABLE_SIZE, MaglevTable
from ._ringhash import DEFAULT_MINIMUM_RING_SIZE, RingHashTable

DEFAULT_CHOICE_COUNT = 2  # Envoy LeastRequest.choice_count default
DEFAULT_ACTIVE_REQUEST_BIAS = 1.0  # Envoy LeastRequest.active_request_bias default
_EXACT_EDF_LIMIT = 1 << 40  # weights whose LCM fits here get integer (exact) EDF deadlines
_MAX_PREPICKS = 4096  # cap on the random fast-forward of a new EDF schedule (Envoy: seed % 429496729)


class BalancerError(GatewayError):
    """A host list or a load-balancer setting no balancer can be built from."""

    def __init__(self, message: str, value: object) -> None:
        super().__init__(message)
        self.value = value


class BalancerHost(Protocol):
    """What a balancer needs of a host: a stable identity and a weight >= 1."""

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...


H = TypeVar("H", bound=BalancerHost)


@dataclass(frozen=True, slots=True)
class Host:
    """A balancer host: ``Host.of(endpoint)`` adapts a registry ``Endpoint``."""

    key: str
    """Stable identity, ``ip:port``; consistent hashing places the host by it."""
    weight: int = 1
    """Load-balancing weight, >= 1. Defaults to 1."""
    locality: str = ""
    """``region/zone/subzone``, for the locality layer above the balancer."""
    labels: Labels = Labels()
    """Labels that DestinationRule subsets select on."""
    endpoint: Any = field(default=None, compare=False, repr=False)
    """Whatever the caller connects to (the registry ``Endpoint``); not looked at here."""
    members: int = 1
    """Endpoints this host stands for: 1, or for an east-west gateway entry the healthy
    endpoints behind it. The locality layer counts health in members, so a gateway
    entry ejected by outlier detection takes its whole weight out of its priority."""

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Labels):
            object.__setattr__(self, "labels", Labels.of(self.labels))

    @classmethod
    def of(cls, endpoint: Any) -> Host:
        """From anything with ``address``, ``port``, ``weight``, ``locality`` and ``labels``."""
        address = endpoint.address
        key = f"[{address}]:{endpoint.port}" if ":" in address else f"{address}:{endpoint.port}"
        return cls(key, endpoint.weight, str(endpoint.locality), endpoint.labels, endpoint)


@dataclass(frozen=True, slots=True)
class PickContext:
    """What a pick may depend on besides the balancer's own state."""

    hash: int | None = None
    """64-bit request hash for consistent hashing (``HashPolicy.decide``); None picks at random."""
    exclude: frozenset[str] = frozenset()
    """Keys of hosts to avoid (earlier attempts of a retried request), honoured while
    another host exists."""
    other_priorities: bool = False
    """Istio's ``retryRemoteLocalities``: the locality layer also avoids the priorities of
    the ``exclude`` hosts while another priority has healthy hosts (Envoy's
    ``previous_priorities``). Plain balancers ignore it."""

    def excluding(self, key: str) -> PickContext:
        return PickContext(self.hash, self.exclude | {key}, self.other_priorities)


NO_CONTEXT = PickContext()


class ActiveRequests:
    """Requests in flight per host key, shared by a balancer, its rebuilds and the
    balancers of sibling localities."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)

    def start(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def end(self, key: str) -> None:
        """One request to ``key`` ended; an end with none in flight is ignored."""
        n = self.counts.get(key, 0)
        if n > 1:
            self.counts[key] = n - 1
        else:
            self.counts.pop(key, None)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"<ActiveRequests [{self.total} in flight on {len(self.counts)} hosts]>"


class Balancer(Protocol[H]):
    """The interface every balancer offers; see the module docstring."""

    hosts: tuple[H, ...]

    def pick(self, context: PickContext = NO_CONTEXT) -> H | None: ...

    def on_request_start(self, host: H) -> None: ...

    def on_request_end(self, host: H) -> None: ...

    def rebuild(self, hosts: Iterable[H]) -> Balancer[H]: ...


class _BalancerBase(Generic[H]):
    """Validation, exclusion, request counting and repr shared by every balancer."""

    def __init__(self, hosts: Iterable[H], rng: random.Random, *, active: ActiveRequests | None = None) -> None:
        self.hosts: tuple[H, ...] = tuple(hosts)
        seen: set[str] = set()
        for h in self.hosts:
            w = h.weight
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                raise BalancerError(f"host {h.key!r}: weight must be an integer >= 1; found {describe(w)}", w)
            if h.key in seen:
                raise BalancerError(f"host keys must be distinct; found {h.key!r} twice", h.key)
            seen.add(h.key)
        self._rng = rng
        self.active = active if active is not None else ActiveRequests()
        self.picks = 0
        weights = [h.weight for h in self.hosts]
        self.total_weight = sum(weights)
        self.equal_weights = len(set(weights)) <= 1
        self._setup()

    def _setup(self) -> None:
        pass

    def _options(self) -> dict[str, Any]:
        return {}

    def _choose(self, context: PickContext) -> H:
        raise NotImplementedError

    def _choose_among(self, context: PickContext, allowed: list[int]) -> H:
        raise NotImplementedError

    def pick(self, context: PickContext = NO_CONTEXT) -> H | None:
        hosts = self.hosts
        if not hosts:
            return None
        self.picks += 1
        host = self._choose(context)
        exclude = context.exclude
        if not exclude or host.key not in exclude:
            return host
        # The ordinary pick landed on an excluded host: choose among the others, if any.
        allowed = [i for i, h in enumerate(hosts) if h.key not in exclude]
        return self._choose_among(context, allowed) if allowed else host

    def on_request_start(self, host: H) -> None:
        self.active.start(host.key)

    def on_request_end(self, host: H) -> None:
        self.active.end(host.key)

    def rebuild(self, hosts: Iterable[H]) -> _BalancerBase[H]:
        """A balancer of the same kind and settings over ``hosts``, sharing the active counts."""
        return type(self)(hosts, self._rng, active=self.active, **self._options())

    def __len__(self) -> int:
        return len(self.hosts)

    def _describe(self) -> str:
        return "weighted" if not self.equal_weights else "unweighted"

    def __repr__(self) -> str:
        n = len(self.hosts)
        in_flight = sum(self.active[h.key] for h in self.hosts)
        return (f"<{type(self).__name__} {self._describe()} [{n} host{'' if n == 1 else 's'}, "
                f"weight {self.total_weight}, {in_flight} active, {self.picks} picks]>")


class _Edf:
    """Earliest-deadline-first schedule over host indices (Envoy ``EdfScheduler``)."""

    __slots__ = ("heap", "order")

    def __init__(self, steps: list[Any]) -> None:
        # Each entry: (deadline, insertion order, index); ties go first in, first out.
        self.heap = [(step, i, i) for i, step in enumerate(steps)]
        heapq.heapify(self.heap)
        self.order = len(steps)

    def pick(self, step: Any) -> int:
        """Pop the earliest deadline, re-queue it ``step(index)`` later, return its index."""
        deadline, _, index = self.heap[0]
        heapq.heapreplace(self.heap, (deadline + step(index), self.order, index))
        self.order += 1
        return index


def _edf_steps(weights: list[int]) -> list[Any]:
    """1/weight per host, as exact integers over the weights' LCM when that is small."""
    scale = math.lcm(*weights)
    if scale <= _EXACT_EDF_LIMIT:
        return [scale // w for w in weights]
    return [1.0 / w for w in weights]


class RoundRobinBalancer(_BalancerBase[H]):
    """ROUND_ROBIN: rotation when weights are equal, EDF when they differ."""

    def _setup(self) -> None:
        n = len(self.hosts)
        self._next = self._rng.randrange(n) if n else 0
        self._edf: _Edf | None = None
        if not self.equal_weights:
            self._steps = _edf_steps([h.weight for h in self.hosts])
            self._edf = _Edf(list(self._steps))
            # Envoy's createWithPicks: start at a random point of the schedule's cycle.
            for _ in range(self._rng.randrange(min(self.total_weight, _MAX_PREPICKS))):
                self._edf.pick(self._steps.__getitem__)

    def _choose(self, context: PickContext) -> H:
        if self._edf is not None:
            return self.hosts[self._edf.pick(self._steps.__getitem__)]
        i = self._next
        self._next = i + 1 if i + 1 < len(self.hosts) else 0
        return self.hosts[i]

    def _choose_among(self, context: PickContext, allowed: list[int]) -> H:
        # Go on with the schedule, skipping excluded hosts: a rotation reaches every host
        # within len(hosts) picks; EDF nearly always does, and otherwise the rotation
        # position chooses among the allowed ones.
        for _ in range(len(self.hosts)):
            host = self._choose(context)
            if host.key not in context.exclude:
                return host
        return self.hosts[allowed[self.picks % len(allowed)]]


class RandomBalancer(_BalancerBase[H]):
    """RANDOM: each host with probability weight / total weight."""

    def _setup(self) -> None:
        self._cumulative = list(accumulate(h.weight for h in self.hosts))

    def _choose(self, context: PickContext) -> H:
        hosts = self.hosts
        if self.equal_weights:
            return hosts[int(self._rng.random() * len(hosts))]
        return hosts[bisect_right(self._cumulative, self._rng.random() * self.total_weight)]

    def _choose_among(self, context: PickContext, allowed: list[int]) -> H:
        cumulative = list(accumulate(self.hosts[i].weight for i in allowed))
        return self.hosts[allowed[bisect_right(cumulative, self._rng.random() * cumulative[-1])]]


class LeastRequestBalancer(_BalancerBase[H]):
    """LEAST_REQUEST: power of ``choice_count`` choices, or EDF on load-scaled weights."""

    def __init__(self, hosts: Iterable[H], rng: random.Random, *, active: ActiveRequests | None = None,
                 choice_count: int = DEFAULT_CHOICE_COUNT,
                 active_request_bias: float = DEFAULT_ACTIVE_REQUEST_BIAS) -> None:
        if not isinstance(choice_count, int) or choice_count < 2:
            raise BalancerError(f"choice_count must be an integer >= 2; found {describe(choice_count)}", choice_count)
        if not active_request_bias >= 0:
            raise BalancerError(f"active_request_bias must be >= 0; found {describe(active_request_bias)}",
                                active_request_bias)
        self.choice_count = choice_count
        self.bias = float(active_request_bias)
        super().__init__(hosts, rng, active=active)

    def _options(self) -> dict[str, Any]:
        return {"choice_count": self.choice_count, "active_request_bias": self.bias}

    def _setup(self) -> None:
        self._edf: _Edf | None = None
        if not self.equal_weights:
            self._edf = _Edf([1.0 / self._effective_weight(i) for i in range(len(self.hosts))])
            for _ in range(self._rng.randrange(min(self.total_weight, _MAX_PREPICKS))):
                self._edf.pick(self._step)

    def _effective_weight(self, index: int) -> float:
        """Envoy: ``weight / (active_requests + 1) ^ active_request_bias``."""
        host = self.hosts[index]
        load = self.active.counts.get(host.key, 0) + 1
        if self.bias == 1.0:
            return host.weight / load
        return host.weight / load ** self.bias if self.bias else float(host.weight)

    def _step(self, index: int) -> float:
        return 1.0 / self._effective_weight(index)

    def _choose(self, context: PickContext) -> H:
        hosts = self.hosts
        n = len(hosts)
        if n == 1:
            return hosts[0]
        if self._edf is not None:
            return hosts[self._edf.pick(self._step)]
        counts = self.active.counts
        if self.choice_count == 2:
            rand = self._rng.random
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1  # two distinct hosts
            a, b = hosts[i], hosts[j]
            return b if counts.get(b.key, 0) < counts.get(a.key, 0) else a
        return self._least_of(range(n))

    def _least_of(self, candidates: list[int] | range) -> H:
        """Fewest active requests among ``choice_count`` distinct samples; ties keep the first."""
        counts, hosts = self.active.counts, self.hosts
        sample = self._rng.sample(candidates, min(self.choice_count, len(candidates)))
        best = hosts[sample[0]]
        for i in sample[1:]:
            if counts.get(hosts[i].key, 0) < counts.get(best.key, 0):
                best = hosts[i]
        return best

    def _choose_among(self, context: PickContext, allowed: list[int]) -> H:
        if self._edf is None:
            return self._least_of(allowed)
        for _ in range(len(self.hosts)):
            host = self.hosts[self._edf.pick(self._step)]
            if host.key not in context.exclude:
                return host
        return self.hosts[max(allowed, key=self._effective_weight)]

    def _describe(self) -> str:
        if self._edf is None:
            return f"p{self.choice_count}c"
        return f"weighted bias={self.bias:g}"


class ConsistentHashBalancer(_BalancerBase[H]):
    """consistentHash: a ring hash or Maglev table keyed by ``PickContext.hash``."""

    def __init__(self, hosts: Iterable[H], rng: random.Random, *, active: ActiveRequests | None = None,
                 maglev: bool = False, minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE,
                 table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.maglev = maglev
        self.minimum_ring_size = minimum_ring_size
        self.table_size = table_size
        super().__init__(hosts, rng, active=active)

    def _options(self) -> dict[str, Any]:
        return {"maglev": self.maglev, "minimum_ring_size": self.minimum_ring_size, "table_size": self.table_size}

    def _setup(self) -> None:
        pairs = [(h.key, h.weight) for h in self.hosts]
        self.table: RingHashTable | MaglevTable = (
            MaglevTable(pairs, self.table_size) if self.maglev else RingHashTable(pairs, self.minimum_ring_size))

    def _hash(self, context: PickContext) -> int:
        h = context.hash
        return self._rng.getrandbits(64) if h is None else h  # Envoy: no hash, random host

    def _choose(self, context: PickContext) -> H:
        return self.hosts[self.table.lookup(self._hash(context))]

    def _choose_among(self, context: PickContext, allowed: list[int]) -> H:
        avoid = set(range(len(self.hosts))).difference(allowed)
        return self.hosts[self.table.lookup_avoiding(self._hash(context), avoid)]

    def _describe(self) -> str:
        return f"maglev({self.table.size} slots)" if self.maglev else f"ring_hash({self.table.size} points)"


def make_balancer(policy: LoadBalancerSettings | None, hosts: Iterable[H], rng: random.Random, *,
                  active: ActiveRequests | None = None) -> Balancer[H]:
    """The balancer a DestinationRule's ``loadBalancer`` asks for, over ``hosts``.

    No policy, UNSPECIFIED and the deprecated LEAST_CONN mean LEAST_REQUEST, as Istio
    configures Envoy. PASSTHROUGH has no balancer: the caller connects to the address the
    client dialled.
    """
    ch = policy.consistent_hash if policy is not None else None
    if ch is not None:
        if ch.maglev is not None:
            return ConsistentHashBalancer(hosts, rng, active=active, maglev=True,
                                          table_size=ch.maglev.table_size or DEFAULT_TABLE_SIZE)
        ring = ch.ring_hash.minimum_ring_size if ch.ring_hash is not None else ch.minimum_ring_size
        return ConsistentHashBalancer(hosts, rng, active=active, minimum_ring_size=ring or DEFAULT_MINIMUM_RING_SIZE)
    simple = policy.simple if policy is not None else None
    if simple is SimpleLB.ROUND_ROBIN:
        return RoundRobinBalancer(hosts, rng, active=active)
    if simple is SimpleLB.RANDOM:
        return RandomBalancer(hosts, rng, active=active)
    if simple is SimpleLB.PASSTHROUGH:
        raise BalancerError("PASSTHROUGH has no balancer: connect to the address the client dialled", simple)
    return LeastRequestBalancer(hosts, rng, active=active)


def subset_hosts(hosts: Iterable[H], labels: Mapping[str, str]) -> tuple[H, ...]:
    """Hosts (with a ``labels`` mapping) carrying every label of a DestinationRule subset;
    ``{}`` selects all."""
    pairs = tuple(labels.items())
    return tuple(h for h in hosts if all(h.labels.get(k) == v for k, v in pairs))  # type: ignore[attr-defined]


def load_balancer_for(policy: TrafficPolicy | None, port: int | None = None,
                      subset_policy: TrafficPolicy | None = None) -> LoadBalancerSettings | None:
    """The ``loadBalancer`` in force for ``port`` of a destination (and subset).

    Istio's ``MergeSubsetTrafficPolicy``: a ``portLevelSettings`` entry for the port
    replaces the policy it sits in ("port level policies do not inherit", so an entry
    without loadBalancer means the default); a subset's policy then overrides the rule's
    when it sets loadBalancer or has an entry for the port.
    """
    def at_port(p: TrafficPolicy | None) -> tuple[LoadBalancerSettings | None, bool]:
        if p is None:
            return None, False
        if port is not None:
            for entry in p.port_level_settings:
                if entry.port is not None and entry.port.number == port:
                    return entry.load_balancer, True
        return p.load_balancer, False

    rule_lb, _ = at_port(policy)
    subset_lb, port_level = at_port(subset_policy)
    return subset_lb if subset_lb is not None or port_level else rule_lb
