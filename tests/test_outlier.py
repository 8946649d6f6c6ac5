"""Outlier detection against Envoy's documented behaviour: consecutive-error triggers,
ejection time growth and decay, the maxEjectionPercent cap, panic threshold, events."""

import itertools
import random

import pytest

from gateway._outlier import (
    HOST_TRANSITIONS, EjectionType, HostInput, HostMonitor, HostState, OutlierAction, OutlierConfig,
    OutlierDetector, OutlierEvent, OutlierResult, RecordingSink,
)
from gateway._transitions import IllegalTransitionError
from topology._loader import load_file, load_text

HOSTS = [f"10.0.0.{i}:9080" for i in range(10)]
BAD = HOSTS[0]


def detector(config: OutlierConfig | None = None, hosts=HOSTS, **kw) -> OutlierDetector:
    return OutlierDetector(config or OutlierConfig(), cluster="reviews", hosts=hosts, **kw)


def fail(d: OutlierDetector, host: str, n: int, status: int = 500, now: float = 0.0) -> list[OutlierEvent]:
    events: list[OutlierEvent] = []
    for _ in range(n):
        events += d.record_http_status(host, status, now)
    return events


def test_fifth_consecutive_5xx_ejects_at_once_for_base_ejection_time() -> None:
    d = detector()
    assert fail(d, BAD, 4) == []
    [event] = fail(d, BAD, 1, now=7.0)
    assert event == OutlierEvent(OutlierAction.EJECT, "reviews", BAD, 7.0, EjectionType.CONSECUTIVE_5XX,
                                 True, 1, 30.0)
    assert d.is_ejected(BAD)
    assert (d.health_flags(BAD), d.health_flags(HOSTS[1])) == ("/failed_outlier_check", "healthy")
    assert str(event) == "outlier eject reviews/10.0.0.0:9080: consecutive_5xx, ejections=1 for 30s"


def test_a_success_between_errors_resets_the_count() -> None:
    d = detector()
    fail(d, BAD, 4)
    d.record_http_status(BAD, 200, 0.0)
    assert fail(d, BAD, 4) == []
    assert not d.is_ejected(BAD)


def test_gateway_errors_are_detected_but_not_enforced_by_envoys_default() -> None:
    """enforcing_consecutive_gateway_failure defaults to 0: the gateway trigger is reported
    unenforced, then the same 503s eject through consecutive_5xx."""
    d = detector()
    events = fail(d, BAD, 5, status=503)
    assert [(e.ejection_type, e.enforced) for e in events] == [
        (EjectionType.CONSECUTIVE_GATEWAY_FAILURE, False), (EjectionType.CONSECUTIVE_5XX, True)]
    assert str(events[0]).startswith("outlier eject (not enforced) reviews/")
    assert d.stats["ejections_detected_consecutive_gateway_failure"] == 1
    assert d.stats["ejections_enforced_consecutive_gateway_failure"] == 0


def test_consecutive_gateway_errors_eject_when_enforced_and_500_breaks_the_run() -> None:
    cfg = OutlierConfig(consecutive_5xx=0, enforcing_consecutive_5xx=0, consecutive_gateway_failure=3,
                        enforcing_consecutive_gateway_failure=100)
    d = detector(cfg)
    fail(d, BAD, 2, status=502)
    fail(d, BAD, 1, status=500)  # a 5xx that is not a gateway error resets the gateway count
    assert fail(d, BAD, 2, status=504) == []
    [event] = fail(d, BAD, 1, status=503)
    assert event.ejection_type is EjectionType.CONSECUTIVE_GATEWAY_FAILURE and event.enforced


def test_threshold_zero_disables_a_detector() -> None:
    d = detector(OutlierConfig(consecutive_5xx=0))
    assert fail(d, BAD, 50) == []


@pytest.mark.parametrize("result,status", [
    (OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 503), (OutlierResult.LOCAL_ORIGIN_TIMEOUT, 504),
    (OutlierResult.EXT_ORIGIN_REQUEST_FAILED, 500)])
def test_without_split_local_failures_count_as_the_status_envoy_maps_them_to(result: OutlierResult, status: int) -> None:
    d = detector()
    for _ in range(4):
        d.record_result(BAD, result, 0.0)
    assert d.monitor(BAD).consecutive_5xx == 4
    assert d.monitor(BAD).consecutive_gateway_failure == (4 if status != 500 else 0)
    events = d.record_result(BAD, result, 0.0)
    assert events[-1].ejection_type is EjectionType.CONSECUTIVE_5XX and d.is_ejected(BAD)


def test_connect_success_without_split_neither_counts_nor_resets() -> None:
    d = detector()
    fail(d, BAD, 4)
    d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS, 0.0)
    assert fail(d, BAD, 1)[0].enforced


def test_split_counts_local_origin_failures_apart_from_upstream_errors() -> None:
    d = detector(OutlierConfig(split_external_local_origin_errors=True, consecutive_local_origin_failure=3))
    fail(d, BAD, 4)  # four upstream 5xx
    d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_TIMEOUT, 0.0)
    assert d.monitor(BAD).consecutive_5xx == 4 and d.monitor(BAD).consecutive_local_origin_failure == 2
    d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS, 0.0)  # resets only the local count
    assert d.monitor(BAD).consecutive_local_origin_failure == 0
    for _ in range(2):
        d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    [event] = d.record_result(BAD, OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, 0.0)
    assert event.ejection_type is EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE and event.enforced


def eject_and_return(d: OutlierDetector, host: str, start: float) -> float:
    """Eject ``host`` at ``start``, sweep every interval until it returns; the return time."""
    assert fail(d, host, 5, now=start)[-1].enforced
    now = start
    for _ in range(100):
        now += d.config.interval
        if d.sweep(now):
            return now
    raise AssertionError("host never returned")


def test_ejection_time_grows_by_base_per_ejection_and_is_capped_at_max() -> None:
    """Envoy: base_ejection_time x times ejected, capped by max_ejection_time (300 s);
    re-ejected right after each return, the host never gets to decay its multiplier."""
    d = detector()
    durations, start = [], 0.0
    for _ in range(12):
        back = eject_and_return(d, BAD, start)
        durations.append(back - start)
        start = back
    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    assert d.monitor(BAD).num_ejections == 12


def test_multiplier_decays_one_step_per_healthy_interval_after_return() -> None:
    d = detector()
    back = eject_and_return(d, BAD, 0.0)     # 30 s
    back = eject_and_return(d, BAD, back)    # 60 s: multiplier 2
    assert d.monitor(BAD).backoff == 2
    d.sweep(back + 5)                        # less than an interval since the return
    assert d.monitor(BAD).backoff == 2
    d.sweep(back + 10)
    assert d.monitor(BAD).backoff == 1
    d.sweep(back + 20)
    d.sweep(back + 30)
    assert d.monitor(BAD).backoff == 0
    assert eject_and_return(d, BAD, back + 30) - (back + 30) == 30   # back to the base time


def test_host_returns_at_first_sweep_after_its_time_and_counters_reset() -> None:
    d = detector()
    fail(d, BAD, 5, now=1.0)
    fail(d, BAD, 3, now=2.0)  # in-flight failures while ejected change nothing
    assert d.sweep(30.0) == ()
    [event] = d.sweep(31.0)
    assert (event.action, event.enforced, event.reason, event.num_ejections) == (
        OutlierAction.UNEJECT, True, "ejection time elapsed", 1)
    assert d.monitor(BAD).consecutive_5xx == 0
    assert d.next_sweep == 41.0


@pytest.mark.parametrize("hosts,max_percent,always_one,ejectable", [
    (10, 10, False, 1), (20, 10, False, 2), (3, 10, False, 0), (9, 10, False, 0),
    (3, 10, True, 1), (20, 10, True, 2), (3, 33, False, 0), (3, 34, False, 1),
    (4, 50, False, 2), (5, 100, False, 5), (5, 0, False, 0), (5, 0, True, 1),
])
def test_max_ejection_percent_caps_ejections_as_envoy_computes_it(
        hosts: int, max_percent: int, always_one: bool, ejectable: int) -> None:
    """Envoy ejects while 100 * (ejected + 1) / hosts <= max_ejection_percent; since
    Envoy 1.31 "at least one host" needs always_eject_one_host."""
    names = [f"h{i}" for i in range(hosts)]
    d = detector(OutlierConfig(max_ejection_percent=max_percent, always_eject_one_host=always_one), hosts=names)
    for h in names:
        fail(d, h, 5)
    assert sum(d.is_ejected(h) for h in names) == ejectable
    assert d.stats["ejections_active"] == ejectable
    assert d.stats["ejections_overflow"] == hosts - ejectable
    assert d.stats["ejections_detected_consecutive_5xx"] == hosts


@pytest.mark.parametrize("ejected,threshold,panic", [
    (0, 50, False), (1, 50, False), (2, 50, False), (3, 50, True), (4, 50, True),
    (3, 0, False), (4, 0, False), (1, 80, True), (0, 100, False),
])
def test_panic_when_healthy_share_falls_below_threshold(ejected: int, threshold: float, panic: bool) -> None:
    names = ["a", "b", "c", "d"]
    d = detector(OutlierConfig(max_ejection_percent=100, healthy_panic_threshold=threshold), hosts=names)
    for h in names[:ejected]:
        fail(d, h, 5)
    assert d.is_panic() is panic
    assert d.eligible_hosts() == (tuple(names) if panic else tuple(names[ejected:]))


def test_is_panic_judges_the_hosts_it_is_given() -> None:
    d = detector(OutlierConfig(max_ejection_percent=100), hosts=["a", "b", "c", "d"])
    fail(d, "a", 5)
    assert d.is_panic(["a", "b"]) is False     # 50 % healthy is not below 50
    assert d.is_panic(["a"]) is True
    assert d.is_panic(["c", "d"]) is False


def test_events_go_to_the_sink_and_back_to_the_caller() -> None:
    sink = RecordingSink()
    d = detector(sink=sink)
    returned = list(fail(d, BAD, 5)) + list(d.sweep(30.0))
    assert sink.events == returned
    assert [e.action for e in returned] == [OutlierAction.EJECT, OutlierAction.UNEJECT]


def test_enforcing_zero_reports_detection_without_ejecting() -> None:
    d = detector(OutlierConfig(enforcing_consecutive_5xx=0))
    [event] = fail(d, BAD, 5)
    assert (event.enforced, event.duration, event.num_ejections) == (False, None, 0)
    assert not d.is_ejected(BAD)
    assert fail(d, BAD, 5)[0].ejection_type is EjectionType.CONSECUTIVE_5XX  # counter was reset


def test_partial_enforcement_draws_from_the_injected_rng() -> None:
    """enforcing 50 %: over 400 seeded triggers the enforced share is 50 % within 8 points."""
    d = detector(OutlierConfig(enforcing_consecutive_5xx=50, max_ejection_percent=100),
                 hosts=["h"], rng=random.Random(1))
    enforced = 0
    for i in range(400):
        [event] = fail(d, "h", 5, now=i * 1000.0)
        enforced += event.enforced
        d.sweep(i * 1000.0 + 999.0)
    assert 168 <= enforced <= 232


def test_ejection_jitter_is_drawn_within_its_maximum() -> None:
    d = detector(OutlierConfig(max_ejection_time_jitter=5.0), rng=random.Random(7))
    [event] = fail(d, BAD, 5)
    assert event.duration is not None and 30.0 <= event.duration <= 35.0
    assert event.duration == 30.0 + d.monitor(BAD).jitter


def test_removed_host_is_forgotten_and_its_ejection_stops_counting() -> None:
    d = detector()
    fail(d, BAD, 5)
    d.remove_host(BAD)
    assert d.stats["ejections_active"] == 0
    assert d.record_http_status(BAD, 500, 0.0) == ()  # in-flight reply from a removed host
    assert repr(d) == "<OutlierDetector reviews [9 healthy, 0 ejected]>"


@pytest.mark.parametrize("state,event", list(itertools.product(HostState, HostInput)))
def test_host_state_machine_follows_its_table_for_every_pair(state: HostState, event: HostInput) -> None:
    monitor = HostMonitor("10.0.0.9:80")
    monitor.state = state
    expected = HOST_TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransitionError) as info:
            monitor.move(event)
        assert str(info.value) == f"host 10.0.0.9:80: illegal input {event.name} in state {state.name}"
        assert monitor.state is HostState.ERROR
    else:
        monitor.move(event)
        assert monitor.state is expected


def _detection(yaml: str):
    result = load_text(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection:
{yaml}
""")
    assert result.errors == []
    return result.resources[0].spec.traffic_policy.outlier_detection


def test_from_istio_empty_block_keeps_envoy_defaults_and_disables_panic() -> None:
    cfg = OutlierConfig.from_istio(_detection("      {}"))
    assert cfg == OutlierConfig(healthy_panic_threshold=0.0)
    assert (cfg.consecutive_5xx, cfg.interval, cfg.base_ejection_time, cfg.max_ejection_percent) == (5, 10.0, 30.0, 10)
    assert cfg.effective_max_ejection_time == 300.0


def test_from_istio_circuit_breaking_task_sample_ejects_on_one_5xx_for_three_minutes() -> None:
    result = load_file("/work/shared/corpora/istio/docs/traffic-management/circuit-breaking/httpbin-destination-rule.yaml")
    assert result.errors == []
    cfg = OutlierConfig.from_istio(result.resources[0].spec.traffic_policy.outlier_detection)
    assert cfg is not None
    assert (cfg.consecutive_5xx, cfg.enforcing_consecutive_5xx, cfg.interval, cfg.base_ejection_time,
            cfg.max_ejection_percent, cfg.effective_max_ejection_time) == (1, 100, 1.0, 180.0, 100, 300.0)
    d = OutlierDetector(cfg, cluster="httpbin", hosts=["a", "b"])
    [event] = d.record_http_status("a", 503, 0.5)
    assert event.enforced and event.duration == 180.0
    back = next(t for t in range(1, 400) if d.sweep(float(t)))
    assert back == 181   # first 1 s sweep at least 180 s after the ejection


def test_from_istio_gateway_errors_local_origin_split_and_min_health() -> None:
    cfg = OutlierConfig.from_istio(_detection(
        "      consecutiveGatewayErrors: 3\n      consecutive5xxErrors: 0\n"
        "      splitExternalLocalOriginErrors: true\n      consecutiveLocalOriginFailures: 2\n"
        "      minHealthPercent: 40"))
    assert cfg is not None
    assert (cfg.consecutive_gateway_failure, cfg.enforcing_consecutive_gateway_failure) == (3, 100)
    assert (cfg.consecutive_5xx, cfg.enforcing_consecutive_5xx) == (0, 0)
    assert (cfg.split_external_local_origin_errors, cfg.consecutive_local_origin_failure) == (True, 2)
    assert cfg.healthy_panic_threshold == 40.0


def test_from_istio_without_outlier_detection_is_none() -> None:
    assert OutlierConfig.from_istio(None) is None
