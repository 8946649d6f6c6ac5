"""HostPicker: the balancer gated by outlier detection - ejections keep the pick set exact,
panic uses every host, and a response ends a run of local-origin failures (split mode)."""

from __future__ import annotations

import random

from gateway._balancer import Host, RoundRobinBalancer
from gateway._hostpick import HostPicker
from gateway._outlier import OutlierDetector
from gateway._outlier_config import OutlierConfig, OutlierResult

KEYS = ["a:1", "b:1", "c:1", "d:1"]


def picker(config: OutlierConfig) -> HostPicker:
    balancer = RoundRobinBalancer([Host(k) for k in KEYS], random.Random(1))
    return HostPicker("c", balancer, OutlierDetector(config, cluster="c", hosts=KEYS))


def picks(p: HostPicker, n: int = 8) -> set[str]:
    return {p.pick().key for _ in range(n)}  # type: ignore[union-attr]


def test_ejected_host_leaves_the_pick_set_and_returns_after_the_sweep() -> None:
    p = picker(OutlierConfig(consecutive_5xx=1, max_ejection_percent=100, healthy_panic_threshold=0))
    p.record_status("b:1", 500, 0.0)
    assert (p.ejected, picks(p)) == (frozenset({"b:1"}), {"a:1", "c:1", "d:1"})
    assert p.health_flags("b:1") == "/failed_outlier_check" and p.health_flags("a:1") is None
    p.sweep(29.0)
    assert "b:1" in p.ejected
    p.sweep(30.0)
    assert (p.ejected, picks(p)) == (frozenset(), set(KEYS))


def test_every_host_ejected_without_panic_leaves_nothing_to_pick() -> None:
    p = picker(OutlierConfig(consecutive_5xx=1, max_ejection_percent=100, healthy_panic_threshold=0))
    for k in KEYS:
        p.record_status(k, 503, 0.0)
    assert p.pick() is None


def test_panic_threshold_balances_over_every_host() -> None:
    p = picker(OutlierConfig(consecutive_5xx=1, max_ejection_percent=100, healthy_panic_threshold=50))
    p.record_status("a:1", 500, 0.0)
    assert picks(p) == {"b:1", "c:1", "d:1"}  # 75 % healthy: no panic
    p.record_status("b:1", 500, 0.0)
    p.record_status("c:1", 500, 0.0)
    assert picks(p) == set(KEYS)  # 25 % healthy, below 50 %: every host


def test_a_response_ends_a_run_of_local_origin_failures_in_split_mode() -> None:
    config = OutlierConfig(split_external_local_origin_errors=True, consecutive_local_origin_failure=3,
                           max_ejection_percent=100, healthy_panic_threshold=0)
    p = picker(config)
    for _ in range(2):
        p.record_result("a:1", OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    p.record_status("a:1", 200, 0.0)  # connected and answered
    p.record_result("a:1", OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    assert p.ejected == frozenset()
    for _ in range(2):
        p.record_result("a:1", OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    assert p.ejected == frozenset({"a:1"})


def test_repr_counts_healthy_and_ejected() -> None:
    p = picker(OutlierConfig(consecutive_5xx=1, max_ejection_percent=100))
    p.record_status("a:1", 500, 0.0)
    assert repr(p) == "<HostPicker c balancer [3 healthy, 1 ejected]>"
