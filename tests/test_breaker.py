"""Circuit breakers: Envoy's per-cluster counting limits, UO on overflow, permits released once."""

import itertools
from pathlib import Path

import pytest

from gateway._breaker import (
    PERMIT_TRANSITIONS, UINT32_MAX, CircuitBreaker, CircuitBreakerConfig, Overflow, Permit,
    PermitInput, PermitState, Resource, RetryBudget,
)
from gateway._flags import ResponseFlag
from gateway._transitions import IllegalTransitionError
from topology._loader import load_file, load_text

CORPUS = Path("/work/shared/corpora/istio")


def small(n: int = 2) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(n, n, n, n), name="reviews")


@pytest.mark.parametrize("resource", list(Resource))
def test_acquire_beyond_limit_overflows_at_once_with_503_uo(resource: Resource) -> None:
    breaker = small(2)
    permits = [breaker.try_acquire(resource) for _ in range(2)]
    assert all(isinstance(p, Permit) for p in permits)
    got = breaker.try_acquire(resource)
    assert got == Overflow(resource)
    assert (got.status, got.flag) == (503, ResponseFlag.UO)
    assert breaker.overflows(resource) == 1
    assert breaker.remaining(resource) == 0 and breaker.is_open(resource)


def test_overflow_never_queues_a_flood_keeps_active_count_at_the_limit() -> None:
    breaker = small(3)
    results = [breaker.try_acquire(Resource.PENDING_REQUESTS) for _ in range(10_000)]
    assert sum(isinstance(r, Permit) for r in results) == 3
    assert breaker.active(Resource.PENDING_REQUESTS) == 3
    assert breaker.overflows(Resource.PENDING_REQUESTS) == 9_997


def test_released_permit_frees_a_unit_for_the_next_caller() -> None:
    breaker = small(1)
    permit = breaker.try_acquire(Resource.REQUESTS)
    assert isinstance(permit, Permit)
    assert isinstance(breaker.try_acquire(Resource.REQUESTS), Overflow)
    permit.release()
    assert permit.state is PermitState.RELEASED
    assert isinstance(breaker.try_acquire(Resource.REQUESTS), Permit)


def test_resources_are_counted_independently() -> None:
    breaker = small(1)
    held = [breaker.try_acquire(r) for r in Resource]
    assert all(isinstance(p, Permit) for p in held)
    assert [breaker.active(r) for r in Resource] == [1, 1, 1, 1]


def test_with_block_releases_once_even_after_explicit_release() -> None:
    breaker = small(1)
    with breaker.try_acquire(Resource.CONNECTIONS) as permit:  # type: ignore[union-attr]
        assert breaker.active(Resource.CONNECTIONS) == 1
    assert permit.state is PermitState.RELEASED
    assert breaker.active(Resource.CONNECTIONS) == 0
    with breaker.try_acquire(Resource.CONNECTIONS) as permit:  # type: ignore[union-attr]
        permit.release()
    assert breaker.active(Resource.CONNECTIONS) == 0


def test_second_release_is_an_illegal_move_that_names_state_and_input() -> None:
    breaker = small(1)
    permit = breaker.try_acquire(Resource.RETRIES)
    assert isinstance(permit, Permit)
    permit.release()
    with pytest.raises(IllegalTransitionError) as info:
        permit.release()
    assert str(info.value) == "Permit: illegal input RELEASE in state RELEASED"
    assert (info.value.state, info.value.event) == (PermitState.RELEASED, PermitInput.RELEASE)
    assert permit.state is PermitState.ERROR
    assert breaker.active(Resource.RETRIES) == 0  # the count moved once only


@pytest.mark.parametrize("state,event", list(itertools.product(PermitState, PermitInput)))
def test_permit_machine_follows_its_table_for_every_pair(state: PermitState, event: PermitInput) -> None:
    breaker = small(5)
    permit = breaker.try_acquire(Resource.REQUESTS)
    assert isinstance(permit, Permit)
    permit.state = state
    expected = PERMIT_TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransitionError, match=f"illegal input {event.name} in state {state.name}"):
            permit.release()
        assert permit.state is PermitState.ERROR
    else:
        permit.release()
        assert permit.state is expected


def test_defaults_are_istios_effectively_unlimited_thresholds() -> None:
    cfg = CircuitBreakerConfig()
    assert (cfg.max_connections, cfg.max_pending_requests, cfg.max_requests, cfg.max_retries) == (UINT32_MAX,) * 4
    assert UINT32_MAX == 4294967295
    assert cfg.max_requests_per_connection == 0


def test_envoy_defaults_are_1024_and_three_retries() -> None:
    cfg = CircuitBreakerConfig.envoy_defaults()
    assert (cfg.max_connections, cfg.max_pending_requests, cfg.max_requests, cfg.max_retries) == (1024, 1024, 1024, 3)


@pytest.mark.parametrize("active,pending,expected", [
    (0, 0, 3),     # floor: min_retry_concurrency
    (10, 0, 3),    # 20 % of 10 = 2 < 3
    (20, 5, 5),    # 20 % of 25 = 5
    (40, 9, 9),    # 20 % of 49 = 9.8 -> 9 (Envoy truncates)
])
def test_retry_budget_limit_follows_active_and_pending_requests(active: int, pending: int, expected: int) -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_retries=1, retry_budget=RetryBudget()))
    for _ in range(active):
        breaker.try_acquire(Resource.REQUESTS)
    for _ in range(pending):
        breaker.try_acquire(Resource.PENDING_REQUESTS)
    assert breaker.limit(Resource.RETRIES) == expected
    granted = [breaker.try_acquire(Resource.RETRIES) for _ in range(expected + 1)]
    assert [isinstance(g, Permit) for g in granted] == [True] * expected + [False]


@pytest.mark.parametrize("limit,served,close", [(0, 10**6, False), (1, 0, False), (1, 1, True), (3, 2, False), (3, 3, True)])
def test_max_requests_per_connection_closes_a_connection_when_reached(limit: int, served: int, close: bool) -> None:
    breaker = CircuitBreaker(CircuitBreakerConfig(max_requests_per_connection=limit))
    assert breaker.should_close_connection(served) is close


def test_stats_use_envoys_names() -> None:
    breaker = small(1)
    breaker.try_acquire(Resource.CONNECTIONS)
    breaker.try_acquire(Resource.CONNECTIONS)
    breaker.try_acquire(Resource.PENDING_REQUESTS)
    breaker.try_acquire(Resource.PENDING_REQUESTS)
    breaker.try_acquire(Resource.REQUESTS)
    breaker.try_acquire(Resource.REQUESTS)
    assert breaker.stats == {
        "upstream_cx_overflow": 1, "upstream_rq_pending_overflow": 2, "upstream_rq_retry_overflow": 0,
        "remaining_cx": 0, "remaining_pending": 0, "remaining_rq": 0, "remaining_retries": 1,
        "cx_open": 1, "pending_open": 1, "rq_open": 1, "retries_open": 0,
    }
    assert repr(breaker) == "<CircuitBreaker reviews cx 1/1 pending 1/1 rq 1/1 retries 0/1>"


def _pool(yaml_pool: str):  # -> ConnectionPoolSettings
    result = load_text(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin, namespace: default}}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
{yaml_pool}
""")
    assert result.errors == []
    return result.resources[0].spec.traffic_policy.connection_pool


def test_from_istio_circuit_breaking_task_sample_overflows_the_second_waiting_request() -> None:
    """istio.io circuit-breaking task: 1 connection, 1 pending request, 1 request per
    connection; with two callers one waits, a third is refused at once (UO, counted in
    upstream_rq_pending_overflow as EXPECTED.md says)."""
    result = load_file(str(CORPUS / "docs/traffic-management/circuit-breaking/httpbin-destination-rule.yaml"))
    assert result.errors == []
    cfg = CircuitBreakerConfig.from_istio(result.resources[0].spec.traffic_policy.connection_pool)
    assert cfg == CircuitBreakerConfig(max_connections=1, max_pending_requests=1, max_requests=UINT32_MAX,
                                       max_retries=UINT32_MAX, max_requests_per_connection=1)
    breaker = CircuitBreaker(cfg, name="httpbin")
    assert isinstance(breaker.try_acquire(Resource.CONNECTIONS), Permit)        # caller 1 connects
    assert isinstance(breaker.try_acquire(Resource.PENDING_REQUESTS), Permit)   # caller 2 waits
    assert breaker.try_acquire(Resource.PENDING_REQUESTS) == Overflow(Resource.PENDING_REQUESTS)
    assert breaker.stats["upstream_rq_pending_overflow"] == 1
    assert breaker.should_close_connection(1)


def test_from_istio_zero_means_unset_as_in_pilot() -> None:
    pool = _pool("      http: {http2MaxRequests: 0, maxRetries: 7}")
    cfg = CircuitBreakerConfig.from_istio(pool)
    assert (cfg.max_requests, cfg.max_retries, cfg.max_connections) == (UINT32_MAX, 7, UINT32_MAX)


def test_from_istio_without_connection_pool_gives_istio_defaults() -> None:
    assert CircuitBreakerConfig.from_istio(None) == CircuitBreakerConfig()
