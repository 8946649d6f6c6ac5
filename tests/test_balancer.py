"""Balancers over one host set: the exact schedules, the statistical shares (fixed seeds,
bounded samples, tolerances stated at each assertion), exclusion on retries, request
counting across rebuilds, and the choice of balancer from a DestinationRule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway import (ActiveRequests, BalancerError, Host, PickContext, load_balancer_for, make_balancer,
                     subset_hosts)
from gateway._balancer import (ConsistentHashBalancer, LeastRequestBalancer, RandomBalancer,
                               RoundRobinBalancer)
from topology import Endpoint
from topology._istio_types import PortSelector
from topology._load_balancer import ConsistentHashLB, LoadBalancerSettings, MagLev, RingHash, SimpleLB
from topology._traffic_policy import PortTrafficPolicy, TrafficPolicy


class NoOffset(random.Random):
    """A Random whose offsets are 0, so the schedules start at their canonical point."""

    def randrange(self, *args, **kwargs):  # type: ignore[override]
        return 0


def hosts(*weights: int) -> list[Host]:
    return [Host(f"127.1.1.{i + 1}:9080", w) for i, w in enumerate(weights)]


def abc(*weights: int) -> list[Host]:
    return [Host(k, w) for k, w in zip("abc", weights)]


def keys(balancer, n: int, context: PickContext = PickContext()) -> str:
    return "".join(balancer.pick(context).key for _ in range(n))


KINDS = {
    "round_robin": lambda hs, rng: RoundRobinBalancer(hs, rng),
    "random": lambda hs, rng: RandomBalancer(hs, rng),
    "least_request": lambda hs, rng: LeastRequestBalancer(hs, rng),
    "least_request_3": lambda hs, rng: LeastRequestBalancer(hs, rng, choice_count=3),
    "ring_hash": lambda hs, rng: ConsistentHashBalancer(hs, rng),
    "maglev": lambda hs, rng: ConsistentHashBalancer(hs, rng, maglev=True, table_size=1009),
}


# -- hosts ----------------------------------------------------------------------------

def test_host_adapts_a_registry_endpoint_in_one_call() -> None:
    ep = Endpoint("127.1.1.5", 9080, labels={"version": "v2"}, locality="us-east/us-east-1a", weight=3)
    host = Host.of(ep)
    assert (host.key, host.weight, host.locality, dict(host.labels)) == (
        "127.1.1.5:9080", 3, "us-east/us-east-1a", {"version": "v2"})
    assert host.endpoint is ep


def test_host_key_brackets_an_ipv6_address() -> None:
    assert Host.of(Endpoint("::1", 80)).key == "[::1]:80"


@pytest.mark.parametrize("weight, message", [
    (0, "host 'h': weight must be an integer >= 1; found integer 0"),
    (1.5, "host 'h': weight must be an integer >= 1; found number 1.5"),
    (True, "host 'h': weight must be an integer >= 1; found boolean true"),
])
def test_balancer_refuses_a_bad_weight(weight, message) -> None:
    with pytest.raises(BalancerError) as err:
        RoundRobinBalancer([Host("h", weight)], random.Random(1))
    assert str(err.value) == message
    assert err.value.value == weight


def test_balancer_refuses_duplicate_keys() -> None:
    with pytest.raises(BalancerError, match=r"^host keys must be distinct; found 'a' twice$"):
        RandomBalancer([Host("a"), Host("b"), Host("a")], random.Random(1))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_empty_host_set_picks_nothing(kind) -> None:
    assert KINDS[kind]([], random.Random(1)).pick() is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_single_host_is_always_picked(kind) -> None:
    b = KINDS[kind](hosts(4), random.Random(1))
    assert {b.pick().key for _ in range(20)} == {"127.1.1.1:9080"}


# -- ROUND_ROBIN --------------------------------------------------------------------------

def test_weighted_round_robin_sequence_for_weights_1_2_3_is_edf() -> None:
    # Deadlines 1/w: c at 1/3, b at 1/2, c at 2/3, then a, b, c tie at 1 and leave first-in
    # first-out; the cycle then repeats exactly.
    b = RoundRobinBalancer(abc(1, 2, 3), NoOffset())
    assert keys(b, 18) == "cbcabc" * 3


@pytest.mark.parametrize("seed", range(8))
def test_weighted_round_robin_starts_at_a_random_point_of_the_same_cycle(seed) -> None:
    seq = keys(RoundRobinBalancer(abc(1, 2, 3), random.Random(seed)), 60)
    start = ("cbcabc" * 2).index(seq[:6])
    assert seq == (("cbcabc" * 12)[start:start + 60])


def test_weighted_round_robin_random_offsets_differ_between_seeds() -> None:
    firsts = {keys(RoundRobinBalancer(abc(1, 2, 3), random.Random(seed)), 6) for seed in range(20)}
    assert len(firsts) >= 3


def test_weighted_round_robin_gives_exact_shares_over_whole_cycles() -> None:
    weights = (1, 2, 3, 4, 5, 7)
    b = RoundRobinBalancer(hosts(*weights), random.Random(3))
    counts = Counter(b.pick().key for _ in range(sum(weights) * 50))
    assert [counts[h.key] for h in hosts(*weights)] == [w * 50 for w in weights]


def test_equal_weight_round_robin_rotates_from_a_random_offset() -> None:
    hs = hosts(1, 1, 1, 1)
    seqs = set()
    for seed in range(10):
        b = RoundRobinBalancer(hs, random.Random(seed))
        picked = [b.pick() for _ in range(8)]
        first = hs.index(picked[0])
        assert picked == (hs[first:] + hs[:first]) * 2
        seqs.add(first)
    assert len(seqs) >= 2


# -- RANDOM ----------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(1, 2, 3), (1, 1, 1, 1), (5, 1)])
def test_random_shares_follow_weights(weights) -> None:
    n = 60_000
    b = RandomBalancer(hosts(*weights), random.Random(11))
    counts = Counter(b.pick().key for _ in range(n))
    for h in hosts(*weights):
        # share std <= 0.0021 at n=60000; 0.01 is ~5 sigma.
        assert counts[h.key] / n == pytest.approx(h.weight / sum(weights), abs=0.01)


# -- LEAST_REQUEST ---------------------------------------------------------------------

def test_p2c_with_two_hosts_never_picks_the_busier_one() -> None:
    hs = hosts(1, 1)
    b = LeastRequestBalancer(hs, random.Random(5))
    for _ in range(3):
        b.on_request_start(hs[0])
    assert {b.pick().key for _ in range(1000)} == {hs[1].key}


def test_p2c_never_picks_the_most_loaded_of_the_two_sampled() -> None:
    # One host is busier than every other, so whichever pair is sampled it is the busier.
    hs = hosts(*[1] * 10)
    b = LeastRequestBalancer(hs, random.Random(6))
    for i, h in enumerate(hs):
        for _ in range(i if i < 9 else 20):
            b.on_request_start(h)
    counts = Counter(b.pick().key for _ in range(5000))
    assert counts[hs[9].key] == 0
    assert counts[hs[0].key] > counts[hs[8].key]  # the idlest wins most pairs


def test_least_request_with_choice_count_n_always_picks_the_least_loaded() -> None:
    hs = hosts(*[1] * 5)
    b = LeastRequestBalancer(hs, random.Random(7), choice_count=5)
    for h, load in zip(hs, (4, 2, 0, 3, 1)):
        for _ in range(load):
            b.on_request_start(h)
    assert {b.pick().key for _ in range(200)} == {hs[2].key}


def test_p2c_keeps_active_requests_level() -> None:
    hs = hosts(*[1] * 10)
    b = LeastRequestBalancer(hs, random.Random(8))
    for _ in range(1000):
        b.on_request_start(b.pick())
    loads = [b.active[h.key] for h in hs]
    assert sum(loads) == 1000
    # Two choices keep the gap O(log log n) (it is 4 with this seed); placing 1000 requests
    # at random would spread them about +-3 sigma = +-28 around 100.
    assert max(loads) - min(loads) <= 5


def test_p2c_idle_hosts_share_evenly() -> None:
    n = 50_000
    hs = hosts(*[1] * 5)
    b = LeastRequestBalancer(hs, random.Random(9))
    counts = Counter(b.pick().key for _ in range(n))
    for h in hs:
        assert counts[h.key] / n == pytest.approx(0.2, abs=0.01)  # std 0.0018; ~5 sigma


def test_weighted_least_request_follows_weights_when_idle() -> None:
    hs = abc(1, 3)
    b = LeastRequestBalancer(hs, random.Random(10))
    counts = Counter(b.pick().key for _ in range(400))
    assert abs(counts["a"] - 100) <= 1 and abs(counts["b"] - 300) <= 1  # EDF, exact up to the cut


def test_weighted_least_request_divides_weight_by_active_plus_one() -> None:
    # b: weight 3 with 2 active -> 3/3 = 1; a: weight 1 idle -> 1/1. Equal effective weights.
    hs = abc(1, 3)
    b = LeastRequestBalancer(hs, random.Random(12))
    b.on_request_start(hs[1])
    b.on_request_start(hs[1])
    fresh = b.rebuild(hs)  # weights are recomputed as hosts are re-queued; a rebuild starts clean
    counts = Counter(fresh.pick().key for _ in range(200))
    assert abs(counts["a"] - counts["b"]) <= 2


def test_weighted_least_request_with_bias_zero_is_weighted_round_robin() -> None:
    hs = abc(1, 3)
    b = LeastRequestBalancer(hs, random.Random(13), active_request_bias=0.0)
    for _ in range(5):
        b.on_request_start(hs[1])
    counts = Counter(b.pick().key for _ in range(400))
    assert abs(counts["b"] - 300) <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"choice_count": 1}, "choice_count must be an integer >= 2; found integer 1"),
    ({"active_request_bias": -0.5}, "active_request_bias must be >= 0; found number -0.5"),
])
def test_least_request_refuses_bad_settings(kwargs, message) -> None:
    with pytest.raises(BalancerError) as err:
        LeastRequestBalancer(hosts(1), random.Random(1), **kwargs)
    assert str(err.value) == message


# -- exclusion (retries) ----------------------------------------------------------------

EXCLUSION_CASES = [(kind, weights) for kind in sorted(KINDS) for weights in ((1, 1, 1, 1, 1), (1, 2, 3, 4, 5))]


@pytest.mark.parametrize("kind, weights", EXCLUSION_CASES)
def test_exclude_is_honoured_while_another_host_exists(kind, weights) -> None:
    hs = hosts(*weights)
    b = KINDS[kind](hs, random.Random(14))
    rng = random.Random(15)
    two = frozenset(h.key for h in hs[1:3])
    all_but_one = frozenset(h.key for h in hs if h is not hs[3])
    for _ in range(300):
        h = rng.getrandbits(64)
        assert b.pick(PickContext(h, two)).key not in two
        assert b.pick(PickContext(h, all_but_one)).key == hs[3].key


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_exclude_of_every_host_still_picks_one(kind) -> None:
    hs = hosts(1, 2, 3)
    b = KINDS[kind](hs, random.Random(16))
    everyone = frozenset(h.key for h in hs)
    assert all(b.pick(PickContext(7, everyone)) in hs for _ in range(50))


def test_exclude_of_unknown_keys_leaves_the_schedule_alone() -> None:
    b = RoundRobinBalancer(abc(1, 2, 3), NoOffset())
    assert keys(b, 12, PickContext(exclude=frozenset({"z"}))) == "cbcabc" * 2


def test_pick_context_excluding_accumulates_keys() -> None:
    ctx = PickContext(hash=5).excluding("a").excluding("b")
    assert ctx == PickContext(5, frozenset({"a", "b"}))


# -- request counts and rebuilds --------------------------------------------------------

def test_active_requests_survive_a_rebuild_and_never_go_negative() -> None:
    hs = hosts(1, 1, 1)
    old = LeastRequestBalancer(hs, random.Random(17))
    old.on_request_start(hs[0])
    old.on_request_start(hs[0])
    new = old.rebuild(hs[:2] + hosts(1, 1, 1, 1)[3:])
    assert new.active is old.active and new.active[hs[0].key] == 2
    new.on_request_end(hs[0])
    old.on_request_end(hs[0])
    new.on_request_end(hs[0])
    assert new.active[hs[0].key] == 0 and new.active.counts == {}


def test_rebuild_keeps_kind_and_settings_and_leaves_the_old_balancer_alone() -> None:
    hs = hosts(1, 1, 1)
    old = ConsistentHashBalancer(hs, random.Random(18), maglev=True, table_size=1013)
    new = old.rebuild(hs[:2])
    assert type(new) is ConsistentHashBalancer and new.maglev and new.table.size == 1013
    assert old.hosts == tuple(hs) and new.hosts == tuple(hs[:2])
    lr = LeastRequestBalancer(hs, random.Random(1), choice_count=3, active_request_bias=0.5).rebuild(hs)
    assert (lr.choice_count, lr.bias) == (3, 0.5)


def test_balancers_of_sibling_localities_share_one_active_table() -> None:
    shared = ActiveRequests()
    east = make_balancer(None, hosts(1, 1), random.Random(1), active=shared)
    west = make_balancer(None, [Host("127.1.2.1:9080")], random.Random(1), active=shared)
    east.on_request_start(east.hosts[0])
    west.on_request_start(west.hosts[0])
    assert shared.total == 2 and repr(shared) == "<ActiveRequests [2 in flight on 2 hosts]>"


# -- repr ------------------------------------------------------------------------------------

def test_reprs_show_kind_state_and_counts() -> None:
    rr = RoundRobinBalancer(abc(1, 2, 3), NoOffset())
    rr.on_request_start(rr.pick())
    rr.pick()
    assert repr(rr) == "<RoundRobinBalancer weighted [3 hosts, weight 6, 1 active, 2 picks]>"
    assert repr(RandomBalancer(abc(1, 1), NoOffset())) == \
        "<RandomBalancer unweighted [2 hosts, weight 2, 0 active, 0 picks]>"
    assert repr(LeastRequestBalancer(abc(1), NoOffset())) == \
        "<LeastRequestBalancer p2c [1 host, weight 1, 0 active, 0 picks]>"
    assert repr(LeastRequestBalancer(abc(1, 2), NoOffset())) == \
        "<LeastRequestBalancer weighted bias=1 [2 hosts, weight 3, 0 active, 0 picks]>"
    assert repr(ConsistentHashBalancer(abc(1, 2, 3), NoOffset())) == \
        "<ConsistentHashBalancer ring_hash(1026 points) [3 hosts, weight 6, 0 active, 0 picks]>"
    assert repr(ConsistentHashBalancer(abc(1), NoOffset(), maglev=True, table_size=7)) == \
        "<ConsistentHashBalancer maglev(7 slots) [1 host, weight 1, 0 active, 0 picks]>"


# -- from a DestinationRule ----------------------------------------------------------------

@pytest.mark.parametrize("settings, kind, detail", [
    (None, LeastRequestBalancer, "p2c"),
    (LoadBalancerSettings(simple=SimpleLB.UNSPECIFIED), LeastRequestBalancer, "p2c"),
    (LoadBalancerSettings(simple=SimpleLB.LEAST_CONN), LeastRequestBalancer, "p2c"),
    (LoadBalancerSettings(simple=SimpleLB.LEAST_REQUEST), LeastRequestBalancer, "p2c"),
    (LoadBalancerSettings(simple=SimpleLB.ROUND_ROBIN), RoundRobinBalancer, "unweighted"),
    (LoadBalancerSettings(simple=SimpleLB.RANDOM), RandomBalancer, "unweighted"),
    (LoadBalancerSettings(consistent_hash=ConsistentHashLB(use_source_ip=True)),
     ConsistentHashBalancer, "ring_hash(1026 points)"),
    (LoadBalancerSettings(consistent_hash=ConsistentHashLB(http_header_name="x-user",
                                                           ring_hash=RingHash(minimum_ring_size=4096))),
     ConsistentHashBalancer, "ring_hash(4098 points)"),
    (LoadBalancerSettings(consistent_hash=ConsistentHashLB(use_source_ip=True, minimum_ring_size=2048)),
     ConsistentHashBalancer, "ring_hash(2049 points)"),
    (LoadBalancerSettings(consistent_hash=ConsistentHashLB(use_source_ip=True, maglev=MagLev(table_size=1009))),
     ConsistentHashBalancer, "maglev(1009 slots)"),
])
def test_make_balancer_follows_the_destination_rule(settings, kind, detail) -> None:
    b = make_balancer(settings, hosts(1, 1, 1), random.Random(1))
    assert type(b) is kind and b._describe() == detail


def test_make_balancer_refuses_passthrough() -> None:
    with pytest.raises(BalancerError, match="^PASSTHROUGH has no balancer: connect to the address the client "
                                            "dialled$"):
        make_balancer(LoadBalancerSettings(simple=SimpleLB.PASSTHROUGH), hosts(1), random.Random(1))


RR = LoadBalancerSettings(simple=SimpleLB.ROUND_ROBIN)
RANDOM = LoadBalancerSettings(simple=SimpleLB.RANDOM)
MAGLEV = LoadBalancerSettings(consistent_hash=ConsistentHashLB(use_source_ip=True, maglev=MagLev(table_size=7)))


def port_policy(port: int, lb: LoadBalancerSettings | None) -> PortTrafficPolicy:
    return PortTrafficPolicy(port=PortSelector(number=port), load_balancer=lb)


@pytest.mark.parametrize("rule, port, subset, expected", [
    (None, 9080, None, None),
    (TrafficPolicy(load_balancer=RR), 9080, None, RR),
    (TrafficPolicy(load_balancer=RR, port_level_settings=(port_policy(9080, RANDOM),)), 9080, None, RANDOM),
    (TrafficPolicy(load_balancer=RR, port_level_settings=(port_policy(9090, RANDOM),)), 9080, None, RR),
    # A port-level entry does not inherit: without loadBalancer it means the default.
    (TrafficPolicy(load_balancer=RR, port_level_settings=(port_policy(9080, None),)), 9080, None, None),
    (TrafficPolicy(load_balancer=RR, port_level_settings=(port_policy(9080, RANDOM),)), None, None, RR),
    (TrafficPolicy(load_balancer=RR), 9080, TrafficPolicy(load_balancer=MAGLEV), MAGLEV),
    (TrafficPolicy(load_balancer=RR), 9080, TrafficPolicy(), RR),
    (None, 9080, TrafficPolicy(load_balancer=RANDOM), RANDOM),
    (TrafficPolicy(load_balancer=RR), 9080,
     TrafficPolicy(load_balancer=RANDOM, port_level_settings=(port_policy(9080, MAGLEV),)), MAGLEV),
    (TrafficPolicy(load_balancer=RR), 9080, TrafficPolicy(port_level_settings=(port_policy(9080, None),)), None),
    (TrafficPolicy(port_level_settings=(port_policy(9080, RANDOM),)), 9080, TrafficPolicy(), RANDOM),
])
def test_load_balancer_for_applies_port_level_then_subset_as_istio(rule, port, subset, expected) -> None:
    assert load_balancer_for(rule, port, subset) is expected


def test_subset_hosts_selects_by_every_label() -> None:
    hs = [Host("a", labels={"version": "v1", "tier": "web"}), Host("b", labels={"version": "v2"}),
          Host("c", labels={"version": "v1"})]
    assert [h.key for h in subset_hosts(hs, {"version": "v1"})] == ["a", "c"]
    assert [h.key for h in subset_hosts(hs, {"version": "v1", "tier": "web"})] == ["a"]
    assert [h.key for h in subset_hosts(hs, {})] == ["a", "b", "c"]
    assert subset_hosts(hs, {"version": "v3"}) == ()
