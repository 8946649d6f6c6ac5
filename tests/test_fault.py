"""Fault injection decisions: percentages verified statistically on a seeded rng, DI/FI
flags, gRPC aborts, Istio's bookinfo ratings samples, faults turning off timeouts/retries."""

import random
from pathlib import Path

import pytest

from gateway._fault import MILLION, NO_FAULT, Abort, FaultDecision, FaultPolicy, per_million
from gateway._flags import ResponseFlag
from gateway._retry import RetryPolicy
from gateway._timeouts import TimeoutPolicy
from topology._http_policy import FaultAbort, FaultDelay, HTTPFaultInjection
from topology._istio_types import Percent
from topology._duration import Duration
from topology._loader import load_file

BOOKINFO = Path("/work/shared/corpora/istio/bookinfo/networking")
SAMPLES = 20_000
# Binomial(20 000, p): the standard deviation is at most 71 draws (p = 0.5); a tolerance of
# one percentage point (200 draws, > 2.8 sigma) keeps the seeded test far from its edge.
TOLERANCE = 0.01


def rate(policy: FaultPolicy, seed: int, pick) -> float:
    rng = random.Random(seed)
    return sum(1 for _ in range(SAMPLES) if pick(policy.decide(rng))) / SAMPLES


@pytest.mark.parametrize("percent", [0.0, 0.5, 10.0, 33.3, 50.0, 90.0, 100.0])
def test_delay_percentage_holds_statistically(percent: float) -> None:
    policy = FaultPolicy(delay=2.0, delay_percent=percent)
    observed = rate(policy, seed=11, pick=lambda d: d.delay == 2.0)
    assert abs(observed - percent / 100) <= TOLERANCE


@pytest.mark.parametrize("percent", [0.0, 1.0, 25.0, 75.0, 100.0])
def test_abort_percentage_holds_statistically(percent: float) -> None:
    policy = FaultPolicy(abort_http_status=503, abort_percent=percent)
    observed = rate(policy, seed=12, pick=lambda d: d.abort == Abort(503))
    assert abs(observed - percent / 100) <= TOLERANCE


def test_delay_and_abort_are_drawn_independently() -> None:
    policy = FaultPolicy(delay=1.0, delay_percent=50.0, abort_http_status=500, abort_percent=50.0)
    rng = random.Random(13)
    decisions = [policy.decide(rng) for _ in range(SAMPLES)]
    both = sum(1 for d in decisions if d.delay is not None and d.abort is not None) / SAMPLES
    only_delay = sum(1 for d in decisions if d.delay is not None and d.abort is None) / SAMPLES
    assert abs(both - 0.25) <= TOLERANCE and abs(only_delay - 0.25) <= TOLERANCE


def test_same_seed_gives_the_same_decisions() -> None:
    policy = FaultPolicy(delay=1.0, delay_percent=30.0, abort_http_status=500, abort_percent=30.0)
    a, b = random.Random(99), random.Random(99)
    assert [policy.decide(a) for _ in range(200)] == [policy.decide(b) for _ in range(200)]


@pytest.mark.parametrize("percent,numerator", [(100.0, MILLION), (0.0001, 1), (12.5, 125_000), (0.0, 0), (0.1, 1000)])
def test_percentages_become_millionths_as_istio_sends_them(percent: float, numerator: int) -> None:
    assert per_million(percent) == numerator


def test_decisions_carry_envoys_flags() -> None:
    assert FaultDecision(delay=1.0).flags == (ResponseFlag.DI,)
    assert FaultDecision(abort=Abort(500)).flags == (ResponseFlag.FI,)
    assert FaultDecision(1.0, Abort(500)).flags == (ResponseFlag.DI, ResponseFlag.FI)
    assert NO_FAULT.flags == ()


def test_grpc_abort_is_http_200_with_grpc_status() -> None:
    fault = HTTPFaultInjection(abort=FaultAbort(grpc_status="UNAVAILABLE", percentage=Percent(100.0)))
    policy = FaultPolicy.from_istio(fault)
    assert policy == FaultPolicy(abort_grpc_status=14, abort_percent=100.0)
    decision = policy.decide(random.Random(1))
    assert decision.abort == Abort(200, 14)
    assert decision.abort.headers == {"content-type": "application/grpc", "grpc-status": "14"}


def test_unspecified_percentage_injects_nothing_as_istio_documents() -> None:
    fault = HTTPFaultInjection(delay=FaultDelay(fixed_delay=Duration.parse("5s")), abort=FaultAbort(http_status=500))
    policy = FaultPolicy.from_istio(fault)
    assert (policy.delay_per_million, policy.abort_per_million) == (0, 0)
    assert all(policy.decide(random.Random(s)) is NO_FAULT for s in range(50))


def test_deprecated_integer_percent_is_honoured() -> None:
    fault = HTTPFaultInjection(delay=FaultDelay(fixed_delay=Duration.parse("100ms"), percent=40))
    assert FaultPolicy.from_istio(fault) == FaultPolicy(delay=0.1, delay_percent=40.0)


def _ratings_fault_rule(name: str):
    result = load_file(str(BOOKINFO / name))
    assert result.errors == []
    jason, default = result.resources[0].spec.http
    return jason, default


def test_bookinfo_ratings_delay_sample_delays_every_jason_request_7s() -> None:
    jason, default = _ratings_fault_rule("virtual-service-ratings-test-delay.yaml")
    policy = FaultPolicy.from_istio(jason.fault)
    rng = random.Random(3)
    assert all(policy.decide(rng) == FaultDecision(delay=7.0) for _ in range(1000))
    assert FaultPolicy.from_istio(default.fault) is None
    # the fault switches off the rule's timeouts and retries
    assert policy.disables_timeouts_and_retries
    assert RetryPolicy.from_istio(jason.retries, fault=jason.fault).attempts == 0
    assert TimeoutPolicy.from_istio(jason) == TimeoutPolicy()
    assert RetryPolicy.from_istio(default.retries, fault=default.fault) == RetryPolicy()


def test_bookinfo_ratings_abort_sample_answers_500_to_every_jason_request() -> None:
    jason, _ = _ratings_fault_rule("virtual-service-ratings-test-abort.yaml")
    policy = FaultPolicy.from_istio(jason.fault)
    rng = random.Random(4)
    decisions = [policy.decide(rng) for _ in range(1000)]
    assert all(d == FaultDecision(abort=Abort(500)) for d in decisions)
    assert decisions[0].flags == (ResponseFlag.FI,)


def test_a_route_without_faults_keeps_timeouts_and_retries() -> None:
    assert FaultPolicy().disables_timeouts_and_retries is False
    assert FaultPolicy(abort_http_status=500).disables_timeouts_and_retries is True


# -- WorkloadFault: a workload's inbound faults ---------------------------------------------------

WORKLOAD_FAULTS = """apiVersion: meshfed.io/v1alpha1
kind: WorkloadFault
metadata: {name: b-slow, namespace: demo}
spec:
  locality: us-east/us-east-1a
  fault: {delay: {fixedDelay: 0.1s, percentage: {value: 100}}}
---
apiVersion: meshfed.io/v1alpha1
kind: WorkloadFault
metadata: {name: a-slow-fail, namespace: demo}
spec:
  workloadSelector: {matchLabels: {app: echo}}
  cluster: east-a
  fault:
    delay: {fixedDelay: 0.2s, percentage: {value: 100}}
    abort: {httpStatus: 503, percentage: {value: 100}}
---
apiVersion: meshfed.io/v1alpha1
kind: WorkloadFault
metadata: {name: c-fail, namespace: demo}
spec:
  locality: us-east
  fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
---
apiVersion: meshfed.io/v1alpha1
kind: WorkloadFault
metadata: {name: other-namespace, namespace: bookinfo}
spec:
  fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
"""


@pytest.mark.parametrize("labels, cluster, locality, sources", [
    ({"app": "echo"}, "east-a", "us-east/us-east-1a/rack1", ["demo/a-slow-fail", "demo/b-slow", "demo/c-fail"]),
    ({"app": "echo"}, "east-b", "us-east/us-east-1b", ["demo/c-fail"]),
    ({"app": "client"}, "east-a", "us-east/us-east-1ab", ["demo/c-fail"]),  # a prefix by segments, not letters
    ({"app": "echo"}, "west", "us-west/us-west-1a", []),
])
def test_workload_faults_select_by_labels_cluster_and_locality(tmp_path: Path, labels, cluster, locality,
                                                               sources) -> None:
    from gateway._workload_faults import InboundFaults
    path = tmp_path / "faults.yaml"
    path.write_text(WORKLOAD_FAULTS)
    result = load_file(str(path))
    assert not result.diagnostics
    faults = InboundFaults.compile(result.resources, namespace="demo", labels=labels, cluster=cluster,
                                   locality=locality)
    assert [f.source for f in faults.faults] == sources and bool(faults) == bool(sources)


def test_workload_faults_add_their_delays_and_the_first_abort_answers(tmp_path: Path) -> None:
    from gateway._workload_faults import InboundFaults
    path = tmp_path / "faults.yaml"
    path.write_text(WORKLOAD_FAULTS)
    faults = InboundFaults.compile(load_file(str(path)).resources, namespace="demo", labels={"app": "echo"},
                                   cluster="east-a", locality="us-east/us-east-1a")
    decision, delayed, aborted = faults.decide(random.Random(1))
    assert decision.delay == pytest.approx(0.3) and decision.abort == Abort(503)
    assert delayed == ("demo/a-slow-fail", "demo/b-slow") and aborted == ("demo/a-slow-fail",)
    assert decision.flags == (ResponseFlag.DI, ResponseFlag.FI)
    assert InboundFaults().decide(random.Random(1)) == (NO_FAULT, (), ())
