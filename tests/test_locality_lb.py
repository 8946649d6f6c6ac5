"""Locality-weighted, priority-based load balancing: Envoy's priority load arithmetic,
Istio's priority assignment, and the corpus' failover and distribute samples."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from gateway._balancer import Host, PickContext
from gateway._locality_lb import LocalityLb, PriorityView
from gateway._locality_levels import GatewayHop, LocalityLbError, LocalityMode, network_hosts, panic_threshold_for
from gateway._priority_load import PriorityLoad, choose_priority, effective_locality_weight, health_score, priority_load
from topology import Endpoint, Locality
from topology._loader import load_paths
from topology._locality import LocalityDistribute, LocalityFailover, LocalityLoadBalancerSetting
from topology._traffic_policy import OutlierDetection

CORPUS = Path("/work/shared/corpora/istio/docs/locality-load-balancing")
DRAWS = 20_000


def host(n: int, locality: str, **labels: str) -> Host:
    return Host(f"10.0.0.{n}:80", 1, locality, labels)


def shares(lb: LocalityLb, healthy: object = None, draws: int = DRAWS) -> dict[str, float]:
    """Fraction of picks per locality."""
    counts = Counter(lb.pick(healthy=healthy).locality for _ in range(draws))  # type: ignore[union-attr,arg-type]
    return {loc: n / draws for loc, n in counts.items()}


def down(*hosts: Host) -> dict[str, bool]:
    return {h.key: False for h in hosts}


# --- Envoy's arithmetic ----------------------------------------------------------------------

@pytest.mark.parametrize("healthy, total, score", [(10, 10, 100), (8, 10, 100), (72, 100, 100), (71, 100, 99),
                                                    (7, 10, 98), (5, 10, 70), (1, 10, 14), (0, 10, 0), (0, 0, 0)])
def test_health_score_is_healthy_share_times_1_4_capped_at_100(healthy: int, total: int, score: int) -> None:
    assert health_score(healthy, total) == score


# Envoy docs "Priority levels": P=1 fully healthy; P=0 healthy share -> traffic to P=0 / P=1.
@pytest.mark.parametrize("p0_healthy, p0, p1", [(100, 100, 0), (72, 100, 0), (71, 99, 1), (70, 98, 2), (50, 70, 30),
                                                (25, 35, 65), (0, 0, 100)])
def test_two_priorities_spill_over_in_proportion_to_missing_health(p0_healthy: int, p0: int, p1: int) -> None:
    assert priority_load([(p0_healthy, 100), (100, 100)]).load == (p0, p1)


# Envoy docs: three levels, loads as the health of the levels above falls (panic off, as Istio sets it).
@pytest.mark.parametrize("healthy, loads", [
    ((100, 100, 100), (100, 0, 0)),
    ((72, 72, 100), (100, 0, 0)),
    ((71, 71, 100), (99, 1, 0)),
    ((50, 50, 100), (70, 30, 0)),
    ((25, 100, 100), (35, 65, 0)),
    ((25, 25, 100), (35, 35, 30)),
    ((25, 25, 20), (37, 35, 28)),  # total availability 98: rounding remainder to P=0
])
def test_three_priorities_spill_over_table(healthy: tuple[int, ...], loads: tuple[int, ...]) -> None:
    assert priority_load([(h, 100) for h in healthy], panic_threshold=0).load == loads


def test_panic_only_in_a_level_under_the_threshold_when_total_health_is_short() -> None:
    assert priority_load([(20, 100), (100, 100)]) == PriorityLoad((28, 100), (28, 72), (False, False))
    assert priority_load([(20, 100), (60, 100)]) == PriorityLoad((28, 84), (28, 72), (False, False))  # total 100
    assert priority_load([(20, 100), (50, 100)]) == PriorityLoad((28, 70), (29, 71), (True, False))


def test_total_panic_distributes_by_host_count_ignoring_health() -> None:
    load = priority_load([(1, 10), (0, 30)])
    assert load.total_panic and load.load == (25, 75)


def test_panic_threshold_zero_never_panics_and_gives_p0_the_load_when_nothing_is_healthy() -> None:
    assert priority_load([(0, 5), (0, 5)], panic_threshold=0) == PriorityLoad((0, 0), (100, 0), (False, False))
    assert priority_load([(1, 10), (0, 30)], panic_threshold=0).panic == (False, False)


def test_choose_priority_follows_cumulative_load() -> None:
    assert [choose_priority((35, 65), r) for r in (1, 35, 36, 100)] == [0, 0, 1, 1]


def test_effective_locality_weight_scales_by_availability() -> None:
    assert [effective_locality_weight(10, h, 10) for h in (10, 8, 5, 0)] == pytest.approx([10, 10, 7, 0])


# --- the failover sample --------------------------------------------------------------------

def corpus_setting(name: str) -> tuple[LocalityLoadBalancerSetting, OutlierDetection]:
    result = load_paths([str(CORPUS / name)])
    (dr,) = [r for r in result.resources if r.kind == "DestinationRule"]
    policy = dr.spec.traffic_policy
    return policy.load_balancer.locality_lb_setting, policy.outlier_detection


HELLO = [host(1, "region1/zone1"), host(2, "region1/zone2"), host(3, "region2/zone3"), host(4, "region3/zone4")]


def test_failover_sample_priorities_as_the_istio_task_lists_them() -> None:
    setting, od = corpus_setting("failover-destination-rule.yaml")
    lb = LocalityLb.compile(setting, "region1/zone1", HELLO, od is not None, rng=random.Random(1),
                            panic_threshold=panic_threshold_for(od))
    assert lb.mode is LocalityMode.FAILOVER
    assert [(v.priority, [s.locality for s in v.localities], v.reason) for v in lb.priorities()] == [
        (0, ["region1/zone1"], "same region/zone/subzone"),
        (1, ["region1/zone2"], "same region, other zone"),
        (2, ["region2/zone3"], "failover region region2"),
        (3, ["region3/zone4"], "other region (failover is to region2)"),
    ]
    assert shares(lb, draws=2000) == {"region1/zone1": 1.0}


def test_failover_sample_draining_each_locality_moves_all_traffic_to_the_next() -> None:
    setting, od = corpus_setting("failover-destination-rule.yaml")
    lb = LocalityLb.compile(setting, Locality("region1", "zone1"), HELLO, True, rng=random.Random(2),
                            panic_threshold=panic_threshold_for(od))
    for drained in range(1, 4):
        health = down(*HELLO[:drained])
        assert shares(lb, health, draws=2000) == {HELLO[drained].locality: 1.0}
        assert lb.loads(health).priorities == tuple(100 if i == drained else 0 for i in range(4))
    assert lb.pick(healthy=down(*HELLO)) is None  # minHealthPercent 0: no panic, nothing to pick
    assert shares(lb, down(HELLO[0], HELLO[2]), draws=500) == {"region1/zone2": 1.0}  # back as it returns


def test_seventy_percent_healthy_priority_keeps_98_percent() -> None:
    local = [host(i, "r1/z1") for i in range(10)]
    remote = [host(100 + i, "r2/z9") for i in range(10)]
    lb = LocalityLb.compile(None, "r1/z1", local + remote, True, rng=random.Random(3))
    health = down(*local[:3])
    assert lb.loads(health).priorities == (98, 2)
    assert lb.priorities(health)[0] == PriorityView(0, "same region/zone/subzone", 10, 7, 98, 98, False,
                                                    lb.priorities(health)[0].localities)
    assert shares(lb, health)["r2/z9"] == pytest.approx(0.02, abs=0.005)


def test_panic_in_a_priority_balances_over_all_its_hosts() -> None:
    local = [host(i, "r1/z1") for i in range(4)]
    remote = [host(100 + i, "r2/z9") for i in range(4)]
    lb = LocalityLb.compile(None, "r1/z1", local + remote, True, rng=random.Random(4), panic_threshold=50)
    health = down(*local[:3], *remote[:3])  # 25 % healthy everywhere: total panic
    views = lb.priorities(health)
    assert [(v.load, v.panic) for v in views] == [(50, True), (50, True)]
    picked = Counter(lb.pick(healthy=health).key for _ in range(4000))  # type: ignore[union-attr]
    assert set(picked) == {h.key for h in local + remote}  # ejected hosts take traffic again


def test_priority_is_named_by_tier_with_subzones() -> None:
    hosts = [host(1, "r1/z1/a"), host(2, "r1/z1/b"), host(3, "r1/z2/a"), host(4, "r2/z1/a")]
    lb = LocalityLb.compile(None, "r1/z1/a", hosts, True)
    assert [v.reason for v in lb.priorities()] == ["same region/zone/subzone", "same zone, other subzone",
                                                   "same region, other zone", "other region"]


def test_without_outlier_detection_there_are_no_failover_priorities() -> None:
    setting = LocalityLoadBalancerSetting(failover=(LocalityFailover("region1", "region2"),))
    lb = LocalityLb.compile(setting, "region1/zone1", HELLO, False, rng=random.Random(5))
    assert lb.mode is LocalityMode.OFF and len(lb.priorities()) == 1
    got = shares(lb)
    assert got == pytest.approx({h.locality: 0.25 for h in HELLO}, abs=0.02)


def test_enabled_false_balances_across_all_hosts() -> None:
    lb = LocalityLb.compile(LocalityLoadBalancerSetting(enabled=False), "region1/zone1", HELLO, True,
                            rng=random.Random(6))
    assert lb.mode is LocalityMode.OFF
    assert [v.reason for v in lb.priorities()] == ["locality load balancing disabled"]
    assert shares(lb) == pytest.approx({h.locality: 0.25 for h in HELLO}, abs=0.02)
    assert shares(lb, down(HELLO[0]), draws=3000) == pytest.approx({h.locality: 1 / 3 for h in HELLO[1:]}, abs=0.03)


# --- distribute -----------------------------------------------------------------------------

def test_distribute_sample_splits_70_20_0_10() -> None:
    setting, od = corpus_setting("distribute-destination-rule.yaml")
    lb = LocalityLb.compile(setting, "region1/zone1", HELLO, od is not None, rng=random.Random(7))
    assert lb.mode is LocalityMode.DISTRIBUTE
    assert lb.loads().localities == pytest.approx({"region1/zone1": 70, "region1/zone2": 20, "region3/zone4": 10})
    got = shares(lb)
    assert "region2/zone3" not in got
    assert got == pytest.approx({"region1/zone1": 0.7, "region1/zone2": 0.2, "region3/zone4": 0.1}, abs=0.015)


def test_distribute_wildcard_splits_a_weight_by_the_localities_it_covers() -> None:
    hosts = [host(1, "r1/z1"), host(2, "r1/z1"), host(3, "r1/z2"), host(4, "r2/z3")]
    setting = LocalityLoadBalancerSetting(distribute=(LocalityDistribute("r1/*", {"r1/*": 90, "r2/*": 10}),))
    lb = LocalityLb.compile(setting, "r1/z1", hosts, False, rng=random.Random(8))
    assert [(s.locality, s.weight) for s in lb.priorities()[0].localities] == [("r1/z1", 60), ("r1/z2", 30), ("r2/z3", 10)]


def test_distribute_rule_for_another_origin_leaves_endpoint_weights() -> None:
    setting = LocalityLoadBalancerSetting(distribute=(LocalityDistribute("region9/*", {"region1/*": 100}),))
    lb = LocalityLb.compile(setting, "region1/zone1", HELLO, True, rng=random.Random(9))
    assert len(lb.priorities()) == 1
    assert lb.loads().localities == pytest.approx({h.locality: 25 for h in HELLO})


def test_distribute_shifts_weight_away_from_an_unhealthy_locality() -> None:
    setting, _ = corpus_setting("distribute-destination-rule.yaml")
    hosts = [host(i, "region1/zone1") for i in range(2)] + [host(10, "region1/zone2"), host(11, "region3/zone4")]
    lb = LocalityLb.compile(setting, "region1/zone1", hosts, True, rng=random.Random(10), panic_threshold=0)
    # zone1 at 50 % healthy: effective weight 70 x 0.7 = 49 of 49 + 20 + 10
    assert lb.loads(down(hosts[0])).localities == pytest.approx(
        {"region1/zone1": 100 * 49 / 79, "region1/zone2": 100 * 20 / 79, "region3/zone4": 100 * 10 / 79})


# --- failoverPriority -----------------------------------------------------------------------

NET = "topology.istio.io/network"
REGION = "topology.kubernetes.io/region"


def test_failover_priority_ranks_by_leading_matching_labels() -> None:
    hosts = [Host("10.0.0.1:80", 1, "r1/z1", {NET: "n1"}), Host("10.0.0.2:80", 1, "r2/z1", {NET: "n1"}),
             Host("10.0.0.3:80", 1, "r1/z1", {NET: "n2"}), Host("10.0.0.4:80", 1, "r2/z1", {NET: "n2"})]
    setting = LocalityLoadBalancerSetting(failover_priority=(NET, REGION))
    lb = LocalityLb.compile(setting, "r1/z1", hosts, True, client_labels={NET: "n1"}, rng=random.Random(11))
    assert [([s.locality for s in v.localities], v.hosts, v.reason) for v in lb.priorities()] == [
        (["r1/z1"], 1, f"labels match: {NET}, {REGION}"),
        (["r2/z1"], 1, f"labels match: {NET}"),
        (["r1/z1", "r2/z1"], 2, "labels match: none"),
    ]
    assert lb.pick() is hosts[0]
    assert lb.pick(healthy=down(hosts[0])) is hosts[1]


def test_failover_priority_value_overrides_the_clients_label() -> None:
    hosts = [Host("10.0.0.1:80", 1, "r1/z1", {NET: "n1"}), Host("10.0.0.2:80", 1, "r1/z1", {NET: "n2"})]
    setting = LocalityLoadBalancerSetting(failover_priority=(f"{NET}=n2",))
    lb = LocalityLb.compile(setting, "r1/z1", hosts, True, client_labels={NET: "n1"})
    assert [v.localities[0].hosts for v in lb.priorities()] == [1, 1] and lb.pick() is hosts[1]


def test_failover_priority_reads_cluster_and_network_of_registry_endpoints() -> None:
    eps = [Endpoint("10.0.0.1", 80, locality="r1/z1", cluster="east", network="n1"),
           Endpoint("10.0.0.2", 80, locality="r1/z1", cluster="west", network="n2")]
    setting = LocalityLoadBalancerSetting(failover_priority=(NET,))
    lb = LocalityLb.compile(setting, "r1/z1", eps, True, client_labels={NET: "n2"})
    assert lb.pick().endpoint is eps[1]  # type: ignore[union-attr]


def test_failover_priority_with_failover_rules_combines_both_rankings() -> None:
    hosts = [Host("10.0.0.1:80", 1, "r2/z1", {NET: "n1"}), Host("10.0.0.2:80", 1, "r3/z1", {NET: "n1"}),
             Host("10.0.0.3:80", 1, "r1/z1", {NET: "n2"})]
    setting = LocalityLoadBalancerSetting(failover_priority=(NET,), failover=(LocalityFailover("r1", "r3"),))
    lb = LocalityLb.compile(setting, "r1/z1", hosts, True, client_labels={NET: "n1"})
    assert [v.reason for v in lb.priorities()] == [f"labels match: {NET}; failover region r3",
                                                   f"labels match: {NET}; other region (failover is to r3)",
                                                   "labels match: none; same region/zone/subzone"]


# --- picking --------------------------------------------------------------------------------

def test_health_may_be_a_predicate() -> None:
    lb = LocalityLb.compile(None, "region1/zone1", HELLO, True, rng=random.Random(12))
    assert lb.pick(healthy=lambda h: h.locality != "region1/zone1") is HELLO[1]


def test_retry_excluding_the_local_host_goes_elsewhere() -> None:
    local = [host(1, "r1/z1"), host(2, "r1/z1")]
    lb = LocalityLb.compile(None, "r1/z1", local + [host(3, "r2/z1")], True, rng=random.Random(13))
    assert {lb.pick(PickContext(exclude=frozenset({local[0].key}))) for _ in range(50)} == {local[1]}


def test_same_hash_picks_the_same_host_with_consistent_hashing() -> None:
    from topology._load_balancer import ConsistentHashLB, LoadBalancerSettings
    lbs = LoadBalancerSettings(consistent_hash=ConsistentHashLB(http_header_name="x-user"))
    hosts = [host(i, f"r1/z{i % 2}") for i in range(6)]
    lb = LocalityLb.compile(None, "r1/z0", hosts, False, lb=lbs, rng=random.Random(14))
    assert {lb.pick(PickContext(hash=123456789)) for _ in range(20)} == {lb.pick(PickContext(hash=123456789))}


def test_active_requests_are_counted_in_one_table() -> None:
    lb = LocalityLb.compile(None, "r1/z1", HELLO, True)
    lb.on_request_start(HELLO[0])
    lb.on_request_start(HELLO[3])
    lb.on_request_end(HELLO[0])
    assert lb.active.counts == {HELLO[3].key: 1}


def test_no_hosts_picks_nothing() -> None:
    lb = LocalityLb.compile(None, "r1/z1", [], True)
    assert lb.pick() is None and lb.priorities() == () and lb.loads().priorities == ()


def test_repr_shows_mode_and_counts() -> None:
    lb = LocalityLb.compile(None, "region1/zone1", HELLO, True)
    assert repr(lb) == "<LocalityLb failover [3 priorities, 4 localities, 4 hosts]>"  # no failover rule: both remote regions rank 3


@pytest.mark.parametrize("hosts, client, message", [
    ([host(1, "r1/z1"), host(1, "r1/z2")], "r1/z1", "host keys must be distinct; found '10.0.0.1:80' twice"),
    ([host(1, "r1/z1")], "a/b/c/d", "locality has at most 3 tiers (region/zone/subzone); found 'a/b/c/d'"),
    ([host(1, "r1/*")], "r1", "locality tier must be a string without '/' or '*'; found string '*'"),
])
def test_bad_input_raises_locality_lb_error(hosts: list[Host], client: str, message: str) -> None:
    with pytest.raises(LocalityLbError) as info:
        LocalityLb.compile(None, client, hosts, True)
    assert str(info.value) == message


def test_passthrough_has_no_balancer_and_fails_at_compile() -> None:
    from gateway._balancer import BalancerError
    from topology._load_balancer import LoadBalancerSettings, SimpleLB
    with pytest.raises(BalancerError):
        LocalityLb.compile(None, "r1/z1", HELLO, True, lb=LoadBalancerSettings(simple=SimpleLB.PASSTHROUGH))


@pytest.mark.parametrize("od, threshold", [(None, 50.0), (OutlierDetection(), 0.0),
                                           (OutlierDetection(min_health_percent=30), 30.0)])
def test_panic_threshold_follows_istio_min_health_percent(od: OutlierDetection | None, threshold: float) -> None:
    assert panic_threshold_for(od) == threshold


# --- other networks through their gateway -----------------------------------------------------

def test_other_networks_are_one_gateway_host_per_locality_weighted_by_healthy_endpoints() -> None:
    eps = [Endpoint("127.1.1.10", 9080, {"version": "v1"}, "us-east/z1", "east", "net-east"),
           Endpoint("127.1.2.10", 9080, {"version": "v1"}, "us-west/z1", "west", "net-west"),
           Endpoint("127.1.2.11", 9080, {"version": "v1", "x": "1"}, "us-west/z1", "west", "net-west"),
           Endpoint("127.1.2.12", 9080, {"version": "v1"}, "us-west/z1", "west", "net-west", healthy=False),
           Endpoint("127.1.2.13", 9080, {"version": "v1"}, "us-west/z2", "west", "net-west"),
           Endpoint("127.1.3.10", 9080, {"version": "v1"}, "eu/z1", "eu", "net-eu")]  # no gateway there
    gateways = {("net-west", "west"): "127.1.2.250:15443"}
    hosts = network_hosts(eps, "net-east", lambda net, cluster: gateways.get((net, cluster)))
    assert [(h.key, h.weight, h.locality, dict(h.labels)) for h in hosts] == [
        ("127.1.1.10:9080", 1, "us-east/z1", {"version": "v1"}),
        ("127.1.2.250:15443@west/us-west/z1", 2, "us-west/z1", {"version": "v1"}),
        ("127.1.2.250:15443@west/us-west/z2", 1, "us-west/z2", {"version": "v1"}),
    ]
    assert hosts[1].endpoint == GatewayHop("127.1.2.250:15443", "net-west", "west", Locality("us-west", "z1"),
                                           (eps[1], eps[2]))
    lb = LocalityLb.compile(None, "us-east/z1", hosts, True, rng=random.Random(15))
    assert [(v.reason, [(s.locality, s.weight) for s in v.localities]) for v in lb.priorities()] == [
        ("same region/zone/subzone", [("us-east/z1", 1)]),
        ("other region", [("us-west/z1", 2), ("us-west/z2", 1)]),
    ]
    # the local endpoint ejected: the west localities share by the healthy endpoints behind each gateway entry
    assert lb.loads(down(hosts[0])).localities == pytest.approx({"us-east/z1": 0, "us-west/z1": 200 / 3,
                                                                 "us-west/z2": 100 / 3})
