"""Link health: up, degraded on a blip, down past the failure threshold, imports removed only past the TTL."""

from __future__ import annotations

import pytest

from federation._link_health import LinkHealth, ProbePolicy, ProbePolicyError

POLICY = ProbePolicy(interval=1.0, failure_threshold=3, ttl=10.0)


def run(events: list[tuple[float, str]]) -> LinkHealth:
    health = LinkHealth(POLICY, 0.0)
    for t, what in events:
        health.success(t, 0.004) if what == "ok" else health.failure(t, what)
    return health


@pytest.mark.parametrize("events, now, state, keeps", [
    ([], 0.5, "connecting", False),
    ([(1, "ok")], 1.5, "up", True),
    ([(1, "ok"), (2, "refused")], 2.5, "degraded", True),  # one lost probe changes nothing for traffic
    ([(1, "ok"), (2, "x"), (3, "x"), (4, "ok")], 4.5, "up", True),  # a flap heals
    ([(1, "ok"), (2, "x"), (3, "x"), (4, "x")], 4.5, "down", True),  # down, endpoints still served
    ([(1, "ok"), (2, "x"), (3, "x"), (4, "x")], 10.9, "down", True),  # 9.9 s since the last contact
    ([(1, "ok"), (2, "x"), (3, "x"), (4, "x")], 11.0, "expired", False),  # TTL reached: imports removed
    ([(1, "ok"), (2, "x"), (3, "x"), (4, "x"), (12, "ok")], 12.5, "up", True),  # back: imported again
    ([(1, "x"), (2, "x"), (3, "x")], 3.5, "connecting", False),  # never succeeded: nothing to keep
])
def test_state_and_whether_imports_are_kept(events: list[tuple[float, str]], now: float, state: str,
                                            keeps: bool) -> None:
    health = run(events)
    assert (health.state(now), health.keeps_imports(now)) == (state, keeps)


def test_failures_remember_the_last_reason_and_success_clears_it() -> None:
    health = run([(1, "ok"), (2, "connection refused")])
    assert (health.failures, health.last_error) == (1, "connection refused")
    health.success(3, 0.002)
    assert (health.failures, health.last_error, health.latency) == (0, None, 0.002)


@pytest.mark.parametrize("kwargs, message", [
    ({"interval": 0}, "probe interval must be positive; found 0"),
    ({"failure_threshold": 0}, "failure threshold must be at least 1; found 0"),
    ({"interval": 2, "failure_threshold": 3, "ttl": 6},
     "ttl (6 s) must be longer than interval x failure threshold (2 s x 3): a blip would expire the link"),
    ({"timeout": -1}, "probe timeout must be positive; found -1"),
])
def test_probe_settings_that_cannot_work_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ProbePolicyError) as caught:
        ProbePolicy(**kwargs)
    assert str(caught.value) == message


def test_probe_settings_round_trip_through_json() -> None:
    policy = ProbePolicy(0.5, 2, 4.0, 1.0)
    assert ProbePolicy.from_json(policy.to_json()) == policy
    assert ProbePolicy.from_json(None) == ProbePolicy()
