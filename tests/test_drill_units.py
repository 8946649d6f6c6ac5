"""fedctl drill's pure parts: load schedule and generator, timeline, verdict, VirtualService
overrides, region evacuation steps and the Drill kind."""

from __future__ import annotations

import json
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import yaml

from federation._drill_load import LoadGenerator, LoadSchedule, Sample, classify
from federation._drill_timeline import Ejections, Scope, build_timeline, percentile, phase_latency
from federation._drill_verdict import Slo, Window, judge
from federation._drill_vs import (
    evacuation_steps, fault_block, find_virtual_service, override_path, with_weights, workload_faults,
)
from topology import load_paths, load_text
from topology._drill import DrillSpec, DrillType

# -- the schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize("rps, duration, total, last_offset", [
    (20, 20, 400, 19.95), (10, 3, 30, 2.9), (3, 1, 3, 2 / 3), (0.5, 10, 5, 8.0), (7, 0.1, 1, 0.0)])
def test_schedule_sends_rps_times_duration_requests_all_before_the_end(rps, duration, total, last_offset) -> None:
    s = LoadSchedule(rps, duration)
    assert s.total == total
    assert s.offset(total - 1) == pytest.approx(last_offset)
    assert s.offset(total - 1) < duration


@pytest.mark.parametrize("elapsed, due", [(-1, 0), (0, 1), (0.09, 1), (0.1, 2), (0.95, 10), (5, 30), (100, 30)])
def test_schedule_due_counts_requests_that_should_have_left(elapsed, due) -> None:
    assert LoadSchedule(10, 3).due(elapsed) == due


@pytest.mark.parametrize("rps, duration", [(0, 1), (1, 0), (-1, 5), (float("inf"), 1)])
def test_schedule_refuses_unbounded_or_empty_plans(rps, duration) -> None:
    with pytest.raises(ValueError, match="load schedule needs rps > 0 and duration > 0"):
        LoadSchedule(rps, duration)


# -- the generator, against an in-memory echo sidecar ----------------------------------------


def echo_server(answers: list[tuple[int, dict]], seen: list[str], delay: float = 0.0):
    """An opener whose streams are served by a keep-alive h11 server answering in turn."""
    opened: list[int] = []

    async def serve(stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                seen.append(event.target.decode())
            elif isinstance(event, h11.EndOfMessage):
                status, doc = answers[(len(seen) - 1) % len(answers)]
                body = json.dumps(doc).encode()
                await trio.sleep(delay)
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                    ("content-length", str(len(body))), ("content-type", "application/json")]))
                    + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()

    async def open_stream(nursery: trio.Nursery) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        opened.append(1)
        nursery.start_soon(serve, server)
        return client

    return open_stream, opened


async def test_generator_sends_the_schedule_at_its_times_over_one_kept_alive_connection(autojump_clock) -> None:
    seen: list[str] = []
    answers = [(200, {"cluster": "east-a", "locality": "us-east/us-east-1a"})]
    async with trio.open_nursery() as nursery:
        opener, opened = echo_server(answers, seen)
        gen = LoadGenerator(lambda: opener(nursery), "http://echo.demo:8080/", "echo.demo:8080",
                            LoadSchedule(4, 2.5))
        t0 = trio.current_time()
        await gen.run(t0)
        ended = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert [s.sent for s in gen.samples] == [pytest.approx(i / 4) for i in range(10)]
    assert ended == pytest.approx(2.25)  # the last request left at 2.25 s and was answered at once
    assert seen == ["http://echo.demo:8080/"] * 10 and len(opened) == 1
    assert {(s.status, s.cluster, s.locality, s.error) for s in gen.samples} == {
        (200, "east-a", "us-east/us-east-1a", None)}


async def test_generator_counts_slow_answers_as_timeouts_and_opens_connections_as_needed(autojump_clock) -> None:
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        opener, opened = echo_server([(503, {"cluster": "west"})], seen, delay=3.0)
        gen = LoadGenerator(lambda: opener(nursery), "http://echo.demo:8080/", "echo.demo:8080",
                            LoadSchedule(2, 2), timeout=1.0)
        await gen.run()
        nursery.cancel_scope.cancel()
    assert [(s.sent, s.error, s.latency_ms) for s in gen.samples] == [
        (0.0, "timeout", 1000.0), (0.5, "timeout", 1000.0), (1.0, "timeout", 1000.0), (1.5, "timeout", 1000.0)]
    assert len(opened) == 4  # a timed-out connection is never reused


async def test_generator_stop_sends_nothing_more(autojump_clock) -> None:
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        opener, _ = echo_server([(200, {})], seen)
        gen = LoadGenerator(lambda: opener(nursery), "http://echo.demo:8080/", "echo.demo:8080",
                            LoadSchedule(10, 100))
        nursery.start_soon(gen.run)
        await trio.sleep(0.95)
        gen.stop()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert gen.sent == 10 and len(gen.samples) == 10


async def test_generator_counts_refused_connections() -> None:
    async def refuse() -> trio.abc.Stream:
        raise ConnectionRefusedError(111, "refused")
    gen = LoadGenerator(refuse, "http://echo.demo:8080/", "echo.demo:8080", LoadSchedule(100, 0.03))
    await gen.run()
    assert [(s.status, s.error) for s in gen.samples] == [(0, "connect")] * 3


@pytest.mark.parametrize("status, body, expected", [
    (200, b'{"cluster": "east-b", "locality": "us-east/us-east-1b"}', ("east-b", "us-east/us-east-1b", None)),
    (503, b"no healthy upstream", (None, None, "503")),
    (404, b'{"cluster": 3}', (None, None, "404")),
    (302, b"", (None, None, None)),
    (200, b"{not json", (None, None, None))])
def test_classify_reads_who_answered_from_the_echo_body(status, body, expected) -> None:
    assert classify(status, body) == expected


# -- timeline -------------------------------------------------------------------------------


def s(sent: float, ms: float, cluster: str | None = "east-a", error: str | None = None,
      locality: str | None = None) -> Sample:
    loc = locality or {"east-a": "us-east/us-east-1a", "east-b": "us-east/us-east-1b", "west": "us-west/w1"}.get(
        cluster or "", None)
    return Sample(sent, ms, 0 if error in ("timeout", "reset", "connect") else (503 if error else 200),
                  None if error else cluster, None if error else loc, error)


@pytest.mark.parametrize("values, q, expected", [
    ([], 50, None), ([5.0], 99, 5.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4), (list(range(1, 101)), 99, 99)])
def test_percentile_is_nearest_rank(values, q, expected) -> None:
    assert percentile(values, q) == expected


def test_timeline_buckets_by_second_sent_with_shares_errors_and_percentiles() -> None:
    samples = [s(0.1, 10), s(0.6, 30), s(1.2, 1000, "east-b"), s(1.7, 20, "east-a"), s(1.9, 2000, error="timeout"),
               s(3.5, 5, "west")]
    timeline = build_timeline(samples, [Ejections(1.4, 1), Ejections(3.1, 0)], Scope("cluster", "east-a"))
    assert [e.to_json() for e in timeline] == [
        {"t": 0, "requests": 2, "errors": 0, "p50_ms": 10, "p99_ms": 30, "share": {"east-a": 1.0},
         "share_locality": {"us-east/us-east-1a": 1.0}, "ejections": -1},
        {"t": 1, "requests": 3, "errors": 1, "p50_ms": 1000, "p99_ms": 2000,
         "share": {"east-a": 0.3333, "east-b": 0.3333},
         "share_locality": {"us-east/us-east-1a": 0.3333, "us-east/us-east-1b": 0.3333}, "ejections": 1},
        {"t": 2, "requests": 0, "errors": 0, "p50_ms": None, "p99_ms": None, "share": {}, "share_locality": {},
         "ejections": 1},
        {"t": 3, "requests": 1, "errors": 0, "p50_ms": 5, "p99_ms": 5, "share": {"west": 1.0},
         "share_locality": {"us-west/w1": 1.0}, "ejections": 0}]
    assert [(e.covered, e.healthy) for e in timeline] == [(2, 0), (1, 1), (0, 0), (0, 1)]


@pytest.mark.parametrize("scope, cluster, locality, covered", [
    (Scope("cluster", "east-a"), "east-a", "us-east/us-east-1a", True),
    (Scope("cluster", "east-a"), "east-b", "us-east/us-east-1a", False),
    (Scope("zone", "us-east-1b"), "east-b", "us-east/us-east-1b", True),
    (Scope("zone", "us-east-1b"), "east-b", "us-east/us-east-1a/s", False),
    (Scope("region", "us-east"), "x", "us-east/z", True),
    (Scope("region", "us-east"), "x", None, False)])
def test_scope_covers_answers_by_cluster_zone_or_region(scope, cluster, locality, covered) -> None:
    assert scope.covers(cluster, locality) is covered


def test_phase_latency_splits_before_during_after() -> None:
    samples = [s(0.5, 10), s(1.5, 100), s(2.5, 300), s(3.5, 20)]
    assert [phase_latency(samples, a, b) for a, b in ((0, 1), (1, 3), (3, 9))] == [
        {"requests": 1, "p50_ms": 10, "p99_ms": 10}, {"requests": 2, "p50_ms": 100, "p99_ms": 300},
        {"requests": 1, "p50_ms": 20, "p99_ms": 20}]


# -- verdict --------------------------------------------------------------------------------

def drill(per_second: list[tuple[int, int, int]], ejected_from: int | None = None) -> list:
    """Seconds of (answered from east-a, answered from east-b, failed) at 10 requests/second."""
    samples = []
    for t, (a, b, failed) in enumerate(per_second):
        outcomes = ["east-a"] * a + ["east-b"] * b + [None] * failed
        for k, cluster in enumerate(outcomes):
            samples.append(s(t + k / 10, 10.0 if cluster else 2000.0, cluster, None if cluster else "timeout"))
    ejections = [Ejections(t + 0.5, 1 if ejected_from is not None and t >= ejected_from else 0)
                 for t in range(len(per_second))]
    return build_timeline(samples, ejections, Scope("cluster", "east-a"))


# fault injected at 2.0 s, removed at 6.0 s
GOOD = [(10, 0, 0), (10, 0, 0), (3, 7, 0), (0, 10, 0), (0, 10, 0), (0, 10, 0), (2, 8, 0), (10, 0, 0)]
SLOW = [(10, 0, 0), (10, 0, 0), (5, 0, 5), (0, 0, 10), (0, 4, 6), (0, 10, 0), (5, 5, 0), (6, 4, 0), (10, 0, 0)]
NEVER = [(10, 0, 0), (10, 0, 0), (0, 0, 10), (0, 0, 10), (0, 0, 10), (0, 0, 10), (10, 0, 0), (10, 0, 0)]


def test_verdict_passes_when_traffic_moves_with_no_error() -> None:
    v = judge(drill(GOOD, ejected_from=3), Window(2.0, 6.0), Slo(0, 5))
    assert (v.verdict, v.reasons, v.requests, v.client_errors) == ("pass", (), 80, 0)
    assert (v.detect_seconds, v.failover_seconds, v.failback_seconds, v.baseline_share) == (0.0, 1.0, 1.0, 1.0)


def test_verdict_fails_on_errors_and_slow_failover_with_reasons() -> None:
    v = judge(drill(SLOW, ejected_from=4), Window(2.0, 6.0), Slo(3, 2))
    assert v.verdict == "fail" and (v.failover_seconds, v.failback_seconds, v.client_errors) == (3.0, 2.0, 21)
    assert v.reasons == (
        "21 of 90 requests failed as seen by the client, more than --max-errors 3 (first failures in second 2, "
        "0 s after the injection)",
        "traffic took 3 s to move, more than --max-failover-seconds 2")


def test_verdict_says_traffic_never_moved_and_no_endpoint_was_ejected() -> None:
    v = judge(drill(NEVER), Window(2.0, 6.0, scope="cluster east-a"), Slo(None, 10))
    assert v.failover_seconds is None and v.detect_seconds == 0.0
    assert v.reasons == (
        "traffic never moved: at best 0% of a second's requests were answered from outside cluster east-a while "
        "the fault was in force, below 95% and the client's sidecar ejected no endpoint (is outlierDetection set "
        "for the service?)",)


def test_verdict_says_traffic_came_back_to_the_scope_while_the_fault_was_in_force() -> None:
    back = [(10, 0, 0), (10, 0, 0), (0, 10, 0), (0, 10, 0), (0, 10, 0), (3, 7, 0), (10, 0, 0), (10, 0, 0)]
    v = judge(drill(back), Window(2.0, 6.0, scope="cluster east-a"), Slo(None, 10))
    assert v.failover_seconds is None
    assert v.reasons == ("traffic did not stay moved: in second 5 only 70% of the requests were answered from "
                         "outside cluster east-a while the fault was in force, below 95%",)


def test_verdict_without_slo_passes_and_data_plane_faults_have_no_failover() -> None:
    v = judge(drill(NEVER), Window(2.0, 6.0, moves_traffic=False), Slo())
    assert (v.verdict, v.failover_seconds, v.failback_seconds, v.client_errors) == ("pass", None, None, 40)


def test_verdict_of_an_interrupted_drill_fails_and_says_so() -> None:
    v = judge(drill(GOOD[:3]), Window(2.0, None), Slo(0, None), interrupted="SIGINT")
    assert v.reasons == ("the drill was interrupted (SIGINT); the fault was undone",)
    assert v.failback_seconds is None


def test_verdict_when_traffic_was_never_on_the_scope_has_zero_failover_and_a_note() -> None:
    off = [(0, 10, 0)] * 8
    v = judge(drill(off), Window(2.0, 6.0), Slo(0, 1))
    assert (v.verdict, v.failover_seconds, v.failback_seconds) == ("pass", 0.0, 0.0)
    assert v.notes == ("only 0% of the traffic was on the fault's scope before the fault: failover had nothing "
                       "to move",)


def test_verdict_with_no_request_fails() -> None:
    v = judge([], Window(1.0, 2.0), Slo())
    assert v.reasons == ("no request was sent: the load never started",)


# -- VirtualService overrides and evacuation --------------------------------------------------

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - route:
    - {destination: {host: echo.demo.svc.cluster.local, subset: east}, weight: 60}
    - {destination: {host: echo.demo.svc.cluster.local, subset: west}, weight: 40}
    retries: {attempts: 3}
"""


def test_find_virtual_service_finds_the_one_in_force_and_the_override_goes_beside_it(tmp_path: Path) -> None:
    (tmp_path / "istio").mkdir()
    (tmp_path / "istio" / "vs.yaml").write_text("kind: Other\n---\n" + VS)
    found = find_virtual_service(tmp_path, "echo.demo.svc.cluster.local")
    assert found is not None and found[0] == tmp_path / "istio" / "vs.yaml"
    assert override_path(tmp_path, found, "d1") == tmp_path / "istio" / "zzzz-meshfed-drill-d1.yaml"
    assert find_virtual_service(tmp_path, "other.demo.svc.cluster.local") is None


def test_fault_blocks_are_istio_fault_injection() -> None:
    assert fault_block("errors", 25, 0, 503) == {"abort": {"percentage": {"value": 25.0}, "httpStatus": 503}}
    assert fault_block("latency", 50, 0.2, 503) == {"delay": {"percentage": {"value": 50.0}, "fixedDelay": "0.2s"}}


@pytest.mark.parametrize("scope, localities, wheres", [
    (("cluster", "east-a"), ["us-east/us-east-1a"], [{"cluster": "east-a"}]),
    (("region", "us-east"), ["us-east/us-east-1a", "us-east/us-east-1b"], [{"locality": "us-east"}]),
    (("zone", "z1"), ["r1/z1", "r1/z1", "r2/z1"], [{"locality": "r1/z1"}, {"locality": "r2/z1"}])])
def test_workload_faults_name_the_scope_and_validate(tmp_path: Path, scope, localities, wheres) -> None:
    fault = fault_block("latency", 50, 0.2, 503)
    docs = workload_faults("echo.demo.svc.cluster.local", {"app": "echo"}, scope, localities, fault, "20261123-1-x")
    assert [{k: v for k, v in d["spec"].items() if k in ("cluster", "locality")} for d in docs] == wheres
    assert all(d["spec"]["fault"] == fault and d["spec"]["workloadSelector"] == {"matchLabels": {"app": "echo"}}
               and d["metadata"]["namespace"] == "demo" for d in docs)
    assert len({d["metadata"]["name"] for d in docs}) == len(docs)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump_all(docs))
    result = load_paths([tmp_path])
    assert not result.diagnostics and [r.kind for r in result.resources] == ["WorkloadFault"] * len(docs)


@pytest.mark.parametrize("weights, inside, steps, expected", [
    ([60, 40], [True, False], 4, [[45, 55], [30, 70], [15, 85], [0, 100]]),
    ([100], [False], 2, [[100], [100]]),
    ([50, 25, 25], [True, False, False], 2, [[25, 38, 37], [0, 50, 50]]),
    ([34, 33, 33], [True, True, False], 1, [[0, 0, 100]])])
def test_evacuation_steps_take_the_region_to_zero_keeping_the_total(weights, inside, steps, expected) -> None:
    plan = evacuation_steps(weights, inside, steps)
    assert plan == expected and all(sum(p) == sum(weights) for p in plan)


def test_evacuation_refuses_a_split_with_nowhere_to_go() -> None:
    with pytest.raises(ValueError, match="every destination is in the region"):
        evacuation_steps([100], [True], 3)


def test_weights_are_written_to_the_first_route() -> None:
    import yaml
    doc = with_weights(yaml.safe_load(VS), [10, 90])
    assert [d["weight"] for d in doc["spec"]["http"][0]["route"]] == [10, 90]


# -- the Drill kind -------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster" / "drills"


def test_every_drill_kind_has_a_valid_example_file() -> None:
    kinds = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = load_text(path.read_text(), str(path))
        assert [str(d) for d in result.diagnostics] == [] and len(result.resources) == 1, path
        kinds[result.resources[0].spec.type] = path.stem
    assert kinds == {t: t.value for t in DrillType}


def test_drill_spec_defaults() -> None:
    r = load_text("apiVersion: meshfed.io/v1alpha1\nkind: Drill\nmetadata: {name: d}\nspec:\n  type: errors\n"
                  "  service: echo.demo\n  zone: z1\n  from: a/client\n").resources[0]
    spec: DrillSpec = r.spec
    assert (spec.duration.nanos, spec.rps, spec.path, spec.port, spec.scope) == (20_000_000_000, 20.0, "/", None,
                                                                                 ("zone", "z1"))
    assert (spec.fault.percent, spec.fault.http_status, spec.slo.max_errors) == (100.0, 503, None)


@pytest.mark.parametrize("body, message", [
    ("type: latency\n  service: echo.demo\n  from: a/b\n",
     "f:4: spec: give exactly one of cluster, zone or region (where the fault goes); found none"),
    ("type: latency\n  service: echo.demo\n  from: a/b\n  zone: z\n  region: r\n",
     "f:4: spec: give exactly one of cluster, zone or region (where the fault goes); found zone, region"),
    ("type: link-down\n  service: echo.demo\n  from: a/b\n  region: r\n",
     "f:8: spec.region: a link-down drill acts on a whole cluster: give cluster, not region"),
    ("type: region-evacuation\n  service: echo.demo\n  from: a/b\n  cluster: c\n",
     "f:8: spec.cluster: a region-evacuation drill moves traffic off a region: give region, not cluster"),
    ("type: errors\n  service: echo.demo\n  from: client\n  cluster: c\n",
     "f:7: spec.from: expected CLUSTER/WORKLOAD or CLUSTER/NAMESPACE/WORKLOAD; found string 'client'"),
    ("type: errors\n  service: echo.demo\n  from: a/b\n  cluster: c\n  rps: 5000\n",
     "f:9: spec.rps: must be more than 0 and at most 1000; found number 5000"),
    ("type: errors\n  service: echo.demo\n  from: a/b\n  cluster: c\n  fault: {httpStatus: 99}\n",
     "f:9: spec.fault.httpStatus: must be an HTTP status 200..599; found integer 99"),
    ("type: errors\n  service: echo.demo\n  from: a/b\n  cluster: c\n  slo: {maxErrors: -1}\n",
     "f:9: spec.slo.maxErrors: must be 0 or more; found integer -1"),
    ("type: crash\n  service: echo.demo\n  from: a/b\n  cluster: c\n",
     "f:5: spec.type: must be one of endpoints-down, gateway-down, link-down, control-plane-down, latency, "
     "errors, region-evacuation, trust-rotation; found string 'crash'")])
def test_drill_spec_errors_name_the_field_and_quote_the_value(body: str, message: str) -> None:
    text = f"apiVersion: meshfed.io/v1alpha1\nkind: Drill\nmetadata: {{name: d}}\nspec:\n  {body}"
    assert [str(d) for d in load_text(text, "f").diagnostics] == [message]


def test_requests_in_flight_when_the_fault_comes_do_not_count_for_failover() -> None:
    # sent before the injection at 1.5 and answered after it: which side it is on is ambiguous
    samples = [s(0.5, 10), s(1.2, 800), s(1.6, 10, "east-b"), s(2.6, 10, "east-b"), s(3.5, 10)]
    timeline = build_timeline(samples, [], Scope("cluster", "east-a"), edges=[1.5])
    assert [(e.requests, e.counted, e.covered, e.healthy) for e in timeline] == [
        (1, 1, 1, 0), (2, 1, 0, 1), (1, 1, 0, 1), (1, 1, 1, 0)]
    v = judge(timeline, Window(1.5, 3.0), Slo(0, 1))
    assert (v.verdict, v.failover_seconds, v.failback_seconds) == ("pass", 0.0, 0.0)


def test_answers_that_first_waited_on_the_failed_endpoints_are_not_healthy() -> None:
    from federation._drill_timeline import prompt_threshold
    samples = [s(0.1, 10), s(0.5, 20), s(1.1, 1020, "east-b"), s(1.6, 12, "east-b")]
    assert prompt_threshold(samples, 1.0) == 320.0 and prompt_threshold([], 1.0) == 1000.0
    assert prompt_threshold([s(0.1, 200), s(0.2, 150)], 1.0) == 600.0  # 3x the p99 when that is more
    timeline = build_timeline(samples, [], Scope("cluster", "east-a"), prompt_ms=320.0)
    assert [(e.covered, e.healthy, e.counted) for e in timeline] == [(2, 0, 2), (0, 1, 2)]
    v = judge(timeline, Window(1.0, None, scope="cluster east-a", prompt_ms=120.0), Slo(None, 5))
    assert v.reasons[0].startswith("traffic never moved: at best 50% of a second's requests were answered within "
                                   "120 ms from outside cluster east-a while the fault was in force, below 95%")
