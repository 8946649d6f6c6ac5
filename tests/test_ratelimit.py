"""Local token bucket: exact refills on a fake clock, 429 + RL, x-ratelimit-* headers."""

from types import SimpleNamespace

import pytest

from gateway._flags import ResponseFlag
from gateway._ratelimit import Allowed, Limited, RateLimitConfigError, TokenBucket, TokenBucketConfig
from topology._duration import Duration


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
