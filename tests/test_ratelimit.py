"""Local token bucket: exact refills on a fake clock, 429 + RL, x-ratelimit-* headers; the
RateLimit kind compiled into per-route, per-destination and inbound buckets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from gateway._flags import ResponseFlag
from gateway._ratelimit import Allowed, Limited, RateLimitConfigError, TokenBucket, TokenBucketConfig
from topology._duration import Duration

if TYPE_CHECKING:
    from gateway._ratelimits import RateLimits


def test_bucket_starts_full_and_refuses_the_request_after_the_burst() -> None:
    bucket = TokenBucket(TokenBucketConfig(max_tokens=3, fill_interval=1.0), now=0.0)
    got = [bucket.try_take(0.0) for _ in range(4)]
    assert got[:3] == [Allowed(3, 2, 1.0), Allowed(3, 1, 1.0), Allowed(3, 0, 1.0)]
    assert got[3] == Limited(3, 1.0)
    assert (got[3].status, got[3].flag) == (429, ResponseFlag.RL)


@pytest.mark.parametrize("now,tokens", [
    (0.0, 0), (0.099999, 0), (0.1, 2), (0.15, 2), (0.2, 4), (0.3, 5), (10.0, 5)])
def test_refill_is_exact_at_whole_intervals_and_capped(now: float, tokens: int) -> None:
    bucket = TokenBucket(TokenBucketConfig(max_tokens=5, tokens_per_fill=2, fill_interval=0.1), now=0.0)
    for _ in range(5):
        bucket.try_take(0.0)
    assert bucket.tokens(now) == tokens


def test_many_small_float_steps_neither_lose_nor_invent_tokens() -> None:
    """1000 fills of 0.1 s reached by adding 0.1 each time (float drift) give exactly 1000 tokens
    over the run."""
    bucket = TokenBucket(TokenBucketConfig(max_tokens=1, fill_interval=0.1), now=0.0)
    now, taken = 0.0, 0
    for _ in range(1000):
        if isinstance(bucket.try_take(now), Allowed):
            taken += 1
        now += 0.1
    assert taken == 1000


def test_fills_count_from_creation_not_from_the_last_request() -> None:
    bucket = TokenBucket(TokenBucketConfig(max_tokens=1, fill_interval=1.0), now=10.0)
    assert isinstance(bucket.try_take(10.0), Allowed)
    assert bucket.try_take(10.75) == Limited(1, 0.25)
    assert bucket.next_fill(10.75) == 11.0
    assert bucket.try_take(11.0) == Allowed(1, 0, 1.0)


def test_rate_limit_headers_round_reset_up_to_whole_seconds() -> None:
    bucket = TokenBucket(TokenBucketConfig(max_tokens=2, fill_interval=60.0), now=0.0)
    allowed = bucket.try_take(0.5)
    assert allowed.headers == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "1", "x-ratelimit-reset": "60"}
    bucket.try_take(1.0)
    limited = bucket.try_take(59.2)
    assert limited.headers == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}


@pytest.mark.parametrize("kwargs,message", [
    ({"max_tokens": 0, "fill_interval": 1.0}, "maxTokens: must be at least 1; found 0"),
    ({"max_tokens": 1, "fill_interval": 0.0}, "fillInterval: must be above 0; found 0.0"),
    ({"max_tokens": 1, "fill_interval": 1.0, "tokens_per_fill": 0}, "tokensPerFill: must be at least 1; found 0"),
])
def test_impossible_buckets_are_refused_quoting_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(RateLimitConfigError) as info:
        TokenBucketConfig(**kwargs)
    assert str(info.value) == message


def test_from_spec_reads_decoded_fields() -> None:
    spec = SimpleNamespace(max_tokens=10, tokens_per_fill=None, fill_interval=Duration.parse("500ms"))
    assert TokenBucketConfig.from_spec(spec) == TokenBucketConfig(10, 0.5, 1)


def test_repr_shows_tokens() -> None:
    bucket = TokenBucket(TokenBucketConfig(max_tokens=4, fill_interval=0.5, tokens_per_fill=2), now=0.0)
    bucket.try_take(0.0)
    assert repr(bucket) == "<TokenBucket 3/4 +2 per 0.5s>"


# -- RateLimit resources compiled into the buckets of one proxy ------------------------------

RATE_LIMITS = """
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: all, namespace: demo}
spec: {targetRef: {host: echo}, maxTokens: 3, fillInterval: 1s}
---
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: slow, namespace: demo}
spec: {targetRef: {host: echo.demo.svc.cluster.local}, route: slow, maxTokens: 1, fillInterval: 1s}
---
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: mine, namespace: demo}
spec: {workloadSelector: {matchLabels: {app: echo}}, maxTokens: 2, fillInterval: 1s}
---
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: theirs, namespace: other}
spec: {workloadSelector: {matchLabels: {app: echo}}, maxTokens: 2, fillInterval: 1s}
"""


def compiled(labels: dict[str, str]) -> RateLimits:
    from gateway._ratelimits import RateLimits
    from topology._loader import load_text

    loaded = load_text(RATE_LIMITS, "limits.yaml")
    assert loaded.errors == []
    return RateLimits.compile(loaded.resources, namespace="demo", labels=labels, domain="cluster.local")


def test_rate_limits_sort_into_per_route_per_destination_and_inbound_buckets() -> None:
    limits = compiled({"app": "echo"})
    host = "echo.demo.svc.cluster.local"
    assert [b.source for b in limits.outbound(host, "other")] == ["demo/all"]
    assert [b.source for b in limits.outbound(host, "slow")] == ["demo/all", "demo/slow"]
    assert limits.outbound("reviews.demo.svc.cluster.local", "slow") == ()
    assert [b.source for b in limits.inbound] == ["demo/mine"]  # same namespace only
    assert compiled({"app": "ratings"}).inbound == ()


def test_take_all_refuses_at_the_first_empty_bucket_and_reports_the_tightest_grant() -> None:
    from gateway._ratelimits import take_all

    buckets = compiled({}).outbound("echo.demo.svc.cluster.local", "slow")
    first = take_all(buckets, 0.0)
    assert type(first) is Allowed and (first.limit, first.remaining) == (1, 0)
    second = take_all(buckets, 0.5)
    assert type(second) is Limited and second.limit == 1 and second.retry_after == pytest.approx(0.5)
    assert take_all((), 0.0) is None
    assert type(take_all(buckets, 1.0)) is Allowed  # refilled a second after the buckets were created


def test_rate_limit_resource_errors_quote_the_bad_value() -> None:
    from topology._loader import load_text

    bad = RATE_LIMITS.split("---")[0].replace("fillInterval: 1s", "fillInterval: 10ms").replace(
        "targetRef: {host: echo}, ", "targetRef: {host: echo}, route: '', ")
    messages = [str(d) for d in load_text(bad, "limits.yaml").errors]
    assert messages == ["limits.yaml:5: spec.fillInterval: must be at least 50ms; found '10ms'",
                        "limits.yaml:5: spec.route: must not be empty; omit it to limit every route"]
