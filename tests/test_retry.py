"""Retries with Envoy's conditions, Istio's default policy, full-jitter backoff bounds,
host selection away from tried hosts, the retry breaker and the replay buffer."""

import random

import pytest

from gateway._breaker import CircuitBreaker, CircuitBreakerConfig, Resource
from gateway._flags import ResponseFlag
from gateway._retry import (
    IGNORED_REQUEST_HEADERS, ISTIO_DEFAULT_RETRY_ON, AttemptOutcome, AttemptResult, RetryCondition,
    RetryDecision, RetryOnError, RetryPolicy, RetryVerdict, parse_retry_on,
)
from gateway._retry_state import RetryState
from topology._duration import Duration
from topology._http_policy import FaultAbort, HTTPFaultInjection, HTTPRetry

C = RetryCondition
O = AttemptOutcome


@pytest.mark.parametrize("text,conditions,codes", [
    ("5xx", {C.FIVE_XX}, set()),
    ("gateway-error,connect-failure,refused-stream", {C.GATEWAY_ERROR, C.CONNECT_FAILURE, C.REFUSED_STREAM}, set()),
    ("connect-failure, 503 ,504", {C.CONNECT_FAILURE, C.RETRIABLE_STATUS_CODES}, {503, 504}),
    ("retriable-status-codes,409", {C.RETRIABLE_STATUS_CODES}, {409}),
    ("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable",
     {C.CANCELLED, C.DEADLINE_EXCEEDED, C.INTERNAL, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE}, set()),
    ("", set(), set()),
])
def test_retry_on_is_parsed_into_frozen_conditions_and_codes(text: str, conditions: set, codes: set) -> None:
    got = parse_retry_on(text)
    assert got == (frozenset(conditions), frozenset(codes))
    assert isinstance(got[0], frozenset) and isinstance(got[1], frozenset)


def test_unknown_retry_on_entry_is_an_error_quoting_it() -> None:
    with pytest.raises(RetryOnError) as info:
        parse_retry_on("5xx,5xxx")
    assert str(info.value) == "unknown retryOn condition '5xxx' in '5xx,5xxx'"
    assert info.value.entry == "5xxx"


def resp(status: int, headers: dict | None = None, grpc: int | None = None) -> AttemptResult:
    return AttemptResult.response(status, headers, grpc_status=grpc)


def fail(outcome: AttemptOutcome, sent: bool = True) -> AttemptResult:
    return AttemptResult.failure(outcome, request_sent=sent)


@pytest.mark.parametrize("retry_on,result,expected", [
    ("5xx", resp(500), C.FIVE_XX), ("5xx", resp(503), C.FIVE_XX), ("5xx", resp(404), None),
    ("5xx", resp(200), None),
    ("5xx", fail(O.CONNECT_FAILURE), C.FIVE_XX), ("5xx", fail(O.RESET), C.FIVE_XX),
    ("5xx", fail(O.PER_TRY_TIMEOUT), C.FIVE_XX), ("5xx", fail(O.REFUSED_STREAM), C.FIVE_XX),
    ("5xx", fail(O.OVERFLOW), None),
    ("gateway-error", resp(502), C.GATEWAY_ERROR), ("gateway-error", resp(504), C.GATEWAY_ERROR),
    ("gateway-error", resp(500), None), ("gateway-error", fail(O.PER_TRY_TIMEOUT), C.GATEWAY_ERROR),
    ("reset", fail(O.RESET), C.RESET), ("reset", resp(503), None),
    ("connect-failure", fail(O.CONNECT_FAILURE), C.CONNECT_FAILURE), ("connect-failure", fail(O.RESET), None),
    ("connect-failure", fail(O.PER_TRY_TIMEOUT), None),
    ("refused-stream", fail(O.REFUSED_STREAM), C.REFUSED_STREAM), ("refused-stream", fail(O.RESET), None),
    ("reset-before-request", fail(O.RESET, sent=False), C.RESET_BEFORE_REQUEST),
    ("reset-before-request", fail(O.RESET, sent=True), None),
    ("reset-before-request", fail(O.CONNECT_FAILURE), C.RESET_BEFORE_REQUEST),
    ("retriable-4xx", resp(409), C.RETRIABLE_4XX), ("retriable-4xx", resp(429), None),
    ("retriable-status-codes,418", resp(418), C.RETRIABLE_STATUS_CODES),
    ("retriable-status-codes,418", resp(503), None),
    ("unavailable", resp(200, {"grpc-status": "14"}), C.UNAVAILABLE),
    ("unavailable", resp(200, grpc=14), C.UNAVAILABLE),   # from trailers
    ("unavailable", resp(200, {"grpc-status": "13"}), None),
    ("cancelled", resp(200, grpc=1), C.CANCELLED), ("deadline-exceeded", resp(200, grpc=4), C.DEADLINE_EXCEEDED),
    ("internal", resp(200, grpc=13), C.INTERNAL), ("resource-exhausted", resp(200, grpc=8), C.RESOURCE_EXHAUSTED),
    ("envoy-ratelimited", resp(429, {"x-envoy-ratelimited": "true"}), C.ENVOY_RATELIMITED),
    ("5xx", resp(503, {"x-envoy-ratelimited": "true"}), None),   # only envoy-ratelimited retries those
])
def test_envoy_retry_conditions(retry_on: str, result: AttemptResult, expected: RetryCondition | None) -> None:
    conditions, codes = parse_retry_on(retry_on)
    assert RetryPolicy(retry_on=conditions, retriable_status_codes=codes).classify(result) is expected


def test_retriable_headers_match_by_name() -> None:
    policy = RetryPolicy(retry_on=frozenset({C.RETRIABLE_HEADERS}), retriable_headers=("x-upstream-busy",))
    assert policy.classify(resp(200, {"x-upstream-busy": "1"})) is C.RETRIABLE_HEADERS
    assert policy.classify(resp(200, {"x-other": "1"})) is None


@pytest.mark.parametrize("result,retried", [
    (resp(503), True), (resp(500), False), (resp(502), False), (fail(O.CONNECT_FAILURE), True),
    (fail(O.REFUSED_STREAM), True), (fail(O.RESET), False), (fail(O.PER_TRY_TIMEOUT), False),
    (resp(200, grpc=14), True), (resp(200, grpc=1), True), (resp(200, grpc=4), False), (resp(200), False),
])
def test_istio_implicit_default_policy(result: AttemptResult, retried: bool) -> None:
    """No retries block: 2 retries on connect-failure, refused-stream, unavailable,
    cancelled and retriable-status-codes with 503."""
    policy = RetryPolicy.from_istio(None)
    assert policy == RetryPolicy()
    assert (policy.attempts, policy.retry_on, policy.retriable_status_codes) == (2, ISTIO_DEFAULT_RETRY_ON, {503})
    assert policy.should_retry(result, 1).retry is retried


def test_attempts_zero_turns_retries_off_without_a_flag() -> None:
    policy = RetryPolicy.from_istio(HTTPRetry(attempts=0))
    assert policy.attempts == 0
    assert policy.should_retry(fail(O.CONNECT_FAILURE), 1) == RetryDecision(RetryVerdict.DONE)


def test_attempts_are_retries_after_the_first_try_then_urx() -> None:
    policy = RetryPolicy(attempts=2)
    decisions = [policy.should_retry(resp(503), n) for n in (1, 2, 3)]
    assert [d.verdict for d in decisions] == [RetryVerdict.RETRY, RetryVerdict.RETRY, RetryVerdict.LIMIT_EXCEEDED]
    assert decisions[2].flag is ResponseFlag.URX
    assert policy.should_retry(resp(200), 3) == RetryDecision(RetryVerdict.DONE)


def test_attempt_numbers_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt_no counts from 1; found 0"):
        RetryPolicy().should_retry(resp(503), 0)


def test_from_istio_retry_on_replaces_conditions_and_the_default_503() -> None:
    policy = RetryPolicy.from_istio(HTTPRetry(attempts=3, per_try_timeout=Duration.parse("2s"),
                                              retry_on="gateway-error,connect-failure,refused-stream"))
    assert policy.attempts == 3 and policy.per_try_timeout == 2.0
    assert policy.retry_on == {C.GATEWAY_ERROR, C.CONNECT_FAILURE, C.REFUSED_STREAM}
    assert policy.retriable_status_codes == frozenset()
    codes = RetryPolicy.from_istio(HTTPRetry(attempts=1, retry_on="retriable-4xx,429"))
    assert codes.retry_on == {C.RETRIABLE_4XX, C.RETRIABLE_STATUS_CODES} and codes.retriable_status_codes == {429}


def test_from_istio_other_fields() -> None:
    policy = RetryPolicy.from_istio(HTTPRetry(attempts=4, retry_remote_localities=True,
                                              retry_ignore_previous_hosts=False, backoff=Duration.parse("100ms")))
    assert (policy.retry_remote_localities, policy.retry_ignore_previous_hosts) == (True, False)
    assert (policy.backoff_base, policy.max_backoff) == (0.1, 1.0)
    assert policy.retry_on == ISTIO_DEFAULT_RETRY_ON  # retryOn unset keeps the defaults


def test_client_side_fault_disables_retries_of_the_route() -> None:
    fault = HTTPFaultInjection(abort=FaultAbort(http_status=500))
    assert RetryPolicy.from_istio(HTTPRetry(attempts=3, retry_on="5xx"), fault=fault).attempts == 0
    assert RetryPolicy.from_istio(None, fault=fault).attempts == 0


def test_backoff_bound_doubles_from_25ms_and_caps_at_ten_times_base() -> None:
    bounds = [RetryPolicy().backoff_bound(n) for n in range(7)]
    assert bounds == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]


@pytest.mark.parametrize("base,cap", [(0.025, None), (0.01, 0.5), (0.1, 0.15)])
def test_every_drawn_backoff_is_within_zero_and_min_of_max_and_base_times_two_to_the_n(
        base: float, cap: float | None) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_max=cap)
    rng = random.Random(5)
    for n in range(12):
        bound = min(policy.max_backoff, base * 2 ** n)
        draws = [policy.draw_backoff(rng, n) for _ in range(500)]
        assert all(0.0 <= d < bound for d in draws), n
        assert max(draws) >= 0.9 * bound - 0.001   # full jitter reaches the top of the range
        assert min(draws) <= 0.1 * bound + 0.001   # ... and the bottom


def attempt(state: RetryState, host: str, result: AttemptResult) -> RetryDecision:
    state.record_attempt(host)
    return state.should_retry(result)


def test_retries_go_to_other_hosts_the_balancer_is_told_which_were_tried() -> None:
    state = RetryState(RetryPolicy(attempts=2), random.Random(1))
    assert state.excluded_hosts == frozenset()
    d1 = attempt(state, "a:80", resp(503))
    assert d1.retry and state.excluded_hosts == {"a:80"}
    assert 0.0 <= d1.backoff < 0.025
    d2 = attempt(state, "b:80", fail(O.CONNECT_FAILURE))
    assert d2.retry and state.excluded_hosts == {"a:80", "b:80"} and 0.0 <= d2.backoff < 0.05
    d3 = attempt(state, "c:80", resp(503))
    assert (d3.verdict, d3.flag) == (RetryVerdict.LIMIT_EXCEEDED, ResponseFlag.URX)
    assert state.tried_hosts == ("a:80", "b:80", "c:80")
    assert repr(state) == "<RetryState 3/3 attempts, tried ['a:80', 'b:80', 'c:80']>"


def test_retry_ignore_previous_hosts_false_excludes_nothing() -> None:
    state = RetryState(RetryPolicy(retry_ignore_previous_hosts=False), random.Random(1))
    attempt(state, "a:80", resp(503))
    assert state.excluded_hosts == frozenset() and state.tried_hosts == ("a:80",)


def test_tried_localities_are_recorded_for_remote_locality_retries() -> None:
    state = RetryState(RetryPolicy(retry_remote_localities=True), random.Random(1))
    state.record_attempt("a:80", "east/zone-a")
    state.record_attempt("b:80", "west/zone-b")
    assert state.tried_localities == {"east/zone-a", "west/zone-b"}


def test_retry_overflow_of_the_breaker_stops_retrying_with_uo() -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_retries=1))
    first = RetryState(RetryPolicy(), random.Random(1), breaker)
    second = RetryState(RetryPolicy(), random.Random(2), breaker)
    assert attempt(first, "a:80", resp(503)).retry           # holds the only retry permit
    d = attempt(second, "a:80", resp(503))
    assert (d.verdict, d.flag, d.condition) == (RetryVerdict.OVERFLOW, ResponseFlag.UO, C.RETRIABLE_STATUS_CODES)
    assert breaker.stats["upstream_rq_retry_overflow"] == 1
    assert attempt(first, "b:80", resp(200)).verdict is RetryVerdict.DONE   # permit given back
    assert breaker.active(Resource.RETRIES) == 0
    assert attempt(second, "b:80", resp(503)).retry
    second.close()
    assert breaker.active(Resource.RETRIES) == 0


def test_body_beyond_the_replay_buffer_is_not_retried() -> None:
    state = RetryState(RetryPolicy(per_request_buffer_limit=1000), random.Random(1))
    assert state.record_request_body(600) is True
    assert state.record_request_body(400) is True    # exactly at the limit is still kept
    assert state.record_request_body(1) is False
    d = attempt(state, "a:80", resp(503))
    assert (d.verdict, d.flag) == (RetryVerdict.NOT_REPLAYABLE, None)


def test_default_replay_buffer_is_envoys_one_mebibyte() -> None:
    assert RetryPolicy().per_request_buffer_limit == 1024 * 1024


def test_retry_steering_headers_from_callers_are_never_honoured() -> None:
    assert set(IGNORED_REQUEST_HEADERS) == {
        "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
        "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names"}
