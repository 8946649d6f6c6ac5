"""Request deadlines: route timeout, per-try timeout, connect timeout, header overrides,
and what each expiry answers (504 UT / 503 UF)."""

import pytest

from gateway._flags import ResponseFlag
from gateway._timeouts import (
    Deadline, TimeoutExpired, TimeoutKind, TimeoutPolicy, idle_expiry,
)
from topology._loader import load_text


def test_istio_defaults_no_route_timeout_10s_connect_1h_idle() -> None:
    policy = TimeoutPolicy()
    assert (policy.route_timeout, policy.per_try_timeout, policy.connect_timeout, policy.idle_timeout) == (
        None, None, 10.0, 3600.0)
    timer = policy.start(100.0)
    assert timer.next_deadline() is None
    assert timer.expired(10**9) is None
    assert timer.remaining(200.0) is None


@pytest.mark.parametrize("kind,status,flag", [
    (TimeoutKind.ROUTE, 504, ResponseFlag.UT), (TimeoutKind.PER_TRY, 504, ResponseFlag.UT),
    (TimeoutKind.CONNECT, 503, ResponseFlag.UF)])
def test_each_expiry_answers_its_status_and_flag(kind: TimeoutKind, status: int, flag: ResponseFlag) -> None:
    assert (TimeoutExpired(kind).status, TimeoutExpired(kind).flag) == (status, flag)


def test_route_deadline_counts_from_the_request_start() -> None:
    timer = TimeoutPolicy(route_timeout=3.0).start(100.0)
    assert timer.next_deadline() == Deadline(103.0, TimeoutKind.ROUTE)
    assert timer.expired(102.999) is None
    assert timer.expired(103.0) == TimeoutExpired(TimeoutKind.ROUTE)
    assert timer.remaining(101.5) == 1.5 and timer.remaining(200.0) == 0.0


@pytest.mark.parametrize("attempt_started,expected", [
    (100.0, Deadline(101.0, TimeoutKind.PER_TRY)),   # first try: per-try is earlier
    (101.5, Deadline(102.5, TimeoutKind.PER_TRY)),
    (102.5, Deadline(103.0, TimeoutKind.ROUTE)),     # a late retry is cut by the route deadline
    (102.0, Deadline(103.0, TimeoutKind.ROUTE)),     # tie: the route deadline wins
])
def test_next_deadline_is_the_earliest_that_applies(attempt_started: float, expected: Deadline) -> None:
    timer = TimeoutPolicy(route_timeout=3.0, per_try_timeout=1.0).start(100.0)
    assert timer.next_deadline(attempt_started=attempt_started) == expected


def test_per_try_expiry_is_distinguished_from_route_expiry() -> None:
    timer = TimeoutPolicy(route_timeout=10.0, per_try_timeout=2.0).start(0.0)
    assert timer.expired(2.0, attempt_started=0.0) == TimeoutExpired(TimeoutKind.PER_TRY)
    assert timer.expired(3.0, attempt_started=2.5) is None
    assert timer.expired(10.0, attempt_started=9.0) == TimeoutExpired(TimeoutKind.ROUTE)


def test_per_try_without_route_timeout_applies_alone() -> None:
    timer = TimeoutPolicy(per_try_timeout=0.5).start(1.0)
    assert timer.next_deadline() is None
    assert timer.next_deadline(attempt_started=4.0) == Deadline(4.5, TimeoutKind.PER_TRY)


@pytest.mark.parametrize("route,per_try,kept", [(2.0, 2.0, None), (2.0, 5.0, None), (2.0, 1.0, 1.0), (None, 5.0, 5.0)])
def test_per_try_timeout_not_shorter_than_route_timeout_is_ignored(
        route: float | None, per_try: float, kept: float | None) -> None:
    assert TimeoutPolicy(route_timeout=route, per_try_timeout=per_try).start(0.0).per_try_timeout == kept


def test_connect_deadline_applies_while_connecting() -> None:
    timer = TimeoutPolicy(route_timeout=30.0, connect_timeout=1.0).start(0.0)
    assert timer.next_deadline(connect_started=5.0) == Deadline(6.0, TimeoutKind.CONNECT)
    assert timer.expired(6.0, connect_started=5.0) == TimeoutExpired(TimeoutKind.CONNECT)


@pytest.mark.parametrize("headers,route,per_try", [
    ({"x-envoy-upstream-rq-timeout-ms": "1500"}, 1.5, None),
    ({"x-envoy-upstream-rq-timeout-ms": "0"}, None, None),            # 0: no timeout
    ({"x-envoy-upstream-rq-timeout-ms": "abc"}, 5.0, None),           # not a number: ignored
    ({"x-envoy-upstream-rq-timeout-ms": "-5"}, 5.0, None),
    ({"x-envoy-upstream-rq-per-try-timeout-ms": "250"}, 5.0, 0.25),
    ({"x-envoy-upstream-rq-timeout-ms": "200", "x-envoy-upstream-rq-per-try-timeout-ms": "250"}, 0.2, None),
    ({}, 5.0, None),
])
def test_trusted_timeout_headers_override_the_route(headers: dict, route: float | None, per_try: float | None) -> None:
    timer = TimeoutPolicy(route_timeout=5.0).start(0.0, headers)
    assert (timer.route_timeout, timer.per_try_timeout) == (route, per_try)


@pytest.mark.parametrize("route,per_try,expected", [(5.0, 1.0, 1000), (5.0, None, 5000), (None, None, None)])
def test_expected_timeout_header_value_for_the_upstream(route, per_try, expected) -> None:
    assert TimeoutPolicy(route_timeout=route, per_try_timeout=per_try).start(0.0).expected_timeout_ms == expected


def test_idle_expiry() -> None:
    assert idle_expiry(TimeoutPolicy(), 10.0) == 3610.0
    assert idle_expiry(TimeoutPolicy(idle_timeout=None), 10.0) is None


def _load(text: str):
    result = load_text(text)
    assert result.errors == []
    return result.resources[0].spec


VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 200ms}
    route: [{destination: {host: reviews}}]
  - fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}
    timeout: 0.5s
    route: [{destination: {host: reviews}}]
"""


def test_from_istio_route_timeouts_and_faults_switch_them_off() -> None:
    plain, faulty = _load(VS).http
    assert TimeoutPolicy.from_istio(plain) == TimeoutPolicy(route_timeout=0.5, per_try_timeout=0.2)
    assert TimeoutPolicy.from_istio(faulty) == TimeoutPolicy()


def test_from_istio_connection_pool_connect_and_idle_timeouts() -> None:
    dr = _load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 30ms, idleTimeout: 0s}
      http: {idleTimeout: 5m}
""")
    policy = TimeoutPolicy.from_istio(None, dr.traffic_policy.connection_pool)
    assert (policy.connect_timeout, policy.idle_timeout) == (0.03, 300.0)
    tcp_only = TimeoutPolicy.from_istio(None, _pool_with_tcp_idle("0s"))
    assert tcp_only.idle_timeout is None


def _pool_with_tcp_idle(value: str):
    return _load(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {{idleTimeout: {value}}}
""").traffic_policy.connection_pool
