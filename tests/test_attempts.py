"""The attempt layers (route timeout -> retry -> per-try timeout -> balancer) over a scripted
upstream, on trio's MockClock: exact virtual times for backoffs, timeouts, ejections and
returns, and overflow that never waits.

``Upstream`` stands in for the endpoint layer: each host plays its script of actions (a
status, ``hang``, ``connect``, ``reset``, ``overflow``) and records when it was called.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway._attempts import BalancerLayer, PerTryTimeoutLayer, RetryLayer, RouteTimeoutLayer
from gateway._balancer import Host, RoundRobinBalancer
from gateway._breaker import CircuitBreaker, CircuitBreakerConfig, Resource
from gateway._clusters import ClusterConfig, HostStats
from gateway._events import Request, Response
from gateway._flags import ResponseFlag
from gateway._hostpick import HostPicker, sweep_outliers
from gateway._locality_lb import LocalityLb
from gateway._layers import Layer
from gateway._metrics import ProxyMetrics
from gateway._outbound_request import OutboundRequest
from gateway._outlier import OutlierAction, OutlierDetector, RecordingSink
from gateway._outlier_config import OutlierConfig
from gateway._replay import RequestBody
from gateway._rescue import UpstreamConnectError, UpstreamOverflowError, UpstreamResetError, UpstreamTimeoutError
from gateway._retry import RetryCondition, RetryPolicy
from gateway._route_policy import RouteConfig
from gateway._timeouts import TimeoutPolicy

KEYS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
FIVE_XX = frozenset({RetryCondition.FIVE_XX})


class Upstream(Layer):
    """The endpoint layer's stand-in (module docstring)."""

    def __init__(self, scripts: dict[str, list[Any]] | None = None, defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.scripts = scripts or {}
        self.defaults = defaults or {}
        self.calls: list[tuple[str, float]] = []

    async def handle(self, x: OutboundRequest) -> None:
        key = x.host.key  # type: ignore[union-attr]
        self.calls.append((key, trio.current_time()))
        script = self.scripts.get(key)
        action = script.pop(0) if script else self.defaults.get(key, 200)
        if action == "hang":
            await trio.sleep_forever()
        if action == "connect":
            raise UpstreamConnectError(key, "connection refused")
        if action == "reset":
            raise UpstreamResetError(key, "connection reset by peer")
        if action == "overflow":
            raise UpstreamOverflowError("c", "pending requests")
        x.state.status = action
        if x.attempt_accept is not None:
            x.attempt_accept(Response(action))
        x.state.head_sent = True

    @property
    def hosts(self) -> list[str]:
        return [k for k, _ in self.calls]


def make_cluster(*, outlier: OutlierConfig | None = None, breaker: CircuitBreakerConfig | None = None,
                 n: int = 3) -> ClusterConfig:
    hosts = [Host(k, endpoint=SimpleNamespace(stats=HostStats())) for k in KEYS[:n]]
    balancer = RoundRobinBalancer(hosts, random.Random(1))
    detector = None
    if outlier is not None:
        detector = OutlierDetector(outlier, cluster="c", hosts=[h.key for h in hosts], now=trio.current_time(),
                                   sink=RecordingSink(), rng=random.Random(2))
    return ClusterConfig("c", "c.demo.svc.cluster.local", "", 80, "HTTP", tuple(hosts), balancer,
                         breaker=CircuitBreaker(breaker or CircuitBreakerConfig(), "c"),
                         picker=HostPicker("c", balancer, detector))


class Stack:
    """The four attempt layers over ``upstream`` for ``cluster``."""

    def __init__(self, cluster: ClusterConfig, upstream: Upstream, seed: int = 3) -> None:
        self.proxy = SimpleNamespace(metrics=ProxyMetrics(), now=trio.current_time)
        self.cluster = cluster
        self.upstream = upstream
        self.seed = seed
        layer: Layer = BalancerLayer(upstream, self.proxy)  # type: ignore[arg-type]
        layer = PerTryTimeoutLayer(layer, self.proxy)  # type: ignore[arg-type]
        layer = RetryLayer(layer, self.proxy, random.Random(seed))  # type: ignore[arg-type]
        self.top = RouteTimeoutLayer(layer, self.proxy)  # type: ignore[arg-type]

    def request(self, retry: RetryPolicy = RetryPolicy(), timeouts: TimeoutPolicy = TimeoutPolicy(),
                body: RequestBody | None = None) -> OutboundRequest:
        x = OutboundRequest(self.proxy, None, None, Request(b"GET", b"/", []))  # type: ignore[arg-type]
        x.cluster = self.cluster
        x.policy = RouteConfig("r", retry=retry, timeouts=timeouts)
        x.body = body
        return x

    async def send(self, x: OutboundRequest) -> OutboundRequest:
        await self.top.handle(x)
        return x

    def backoffs(self, policy: RetryPolicy, n: int) -> list[float]:
        """The pauses the retry layer draws, replayed from its seed."""
        rng = random.Random(self.seed)
        return [policy.draw_backoff(rng, i) for i in range(n)]


# -- retries ---------------------------------------------------------------------------

async def test_default_policy_retries_503_twice_on_other_hosts_after_jittered_backoffs(
        autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: 503 for k in KEYS[:2]}))
    start = trio.current_time()
    x = await stack.send(stack.request())
    b0, b1 = stack.backoffs(RetryPolicy(), 2)
    assert 0 <= b0 < 0.025 and 0 <= b1 < 0.05  # full jitter below 25 ms, then below 50 ms
    assert [t - start for _, t in stack.upstream.calls] == pytest.approx([0, b0, b0 + b1])
    assert len(set(stack.upstream.hosts)) == 3  # each retry on a host not tried before
    assert (x.state.status, x.flags, x.attempts) == (200, [], 3)


async def test_retries_spent_the_last_503_goes_downstream_flagged_urx(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: 503 for k in KEYS}))
    x = await stack.send(stack.request())
    assert (x.state.status, x.flags, len(stack.upstream.calls)) == (503, [ResponseFlag.URX], 3)


async def test_attempts_zero_sends_once(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: 503 for k in KEYS}))
    x = await stack.send(stack.request(RetryPolicy.disabled()))
    assert (x.state.status, x.flags, len(stack.upstream.calls)) == (503, [], 1)


async def test_connect_failures_are_retried_then_raised_with_urx(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: "connect" for k in KEYS}))
    x = stack.request()
    with pytest.raises(UpstreamConnectError):
        await stack.send(x)
    assert (x.flags, sorted(stack.upstream.hosts)) == ([ResponseFlag.URX], KEYS)
    assert [h.endpoint.stats.cx_connect_fail for h in stack.cluster.hosts] == [1, 1, 1]


@pytest.mark.parametrize("action, error", [("overflow", UpstreamOverflowError), ("reset", UpstreamResetError)])
async def test_overflow_and_reset_are_not_retried_by_the_default_policy(
        action: str, error: type, autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: action for k in KEYS}))
    x = stack.request()
    with pytest.raises(error):
        await stack.send(x)
    assert (x.flags, len(stack.upstream.calls)) == ([], 1)


async def test_request_body_beyond_the_replay_buffer_is_not_retried(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: 503 for k in KEYS}))
    body = RequestBody(limit=10)
    body.size, body.replayable = 11, False
    x = await stack.send(stack.request(body=body))
    assert (x.state.status, x.flags, len(stack.upstream.calls)) == (503, [], 1)


def locality_cluster() -> ClusterConfig:
    """Two hosts in the client's zone (priority 0) and one in another region (a lower priority)."""
    hosts = [Host(k, 1, loc, endpoint=SimpleNamespace(stats=HostStats()))
             for k, loc in zip(KEYS, ["r1/z1", "r1/z1", "r2/z1"])]
    lb = LocalityLb.compile(None, "r1/z1", hosts, True, rng=random.Random(4))
    balancer = RoundRobinBalancer(hosts, random.Random(1))
    return ClusterConfig("c", "c.demo.svc.cluster.local", "", 80, "HTTP", tuple(hosts), balancer,
                         breaker=CircuitBreaker(CircuitBreakerConfig(), "c"),
                         picker=HostPicker("c", balancer, None, locality=lb))


@pytest.mark.parametrize("remote, regions, status", [
    (False, ["r1", "r1", "r1"], 503),  # Envoy's previous_hosts only: the local priority again
    (True, ["r1", "r2"], 200),         # retryRemoteLocalities: the retry leaves the tried priority
])
async def test_retry_remote_localities_lets_a_retry_go_to_another_priority(
        remote: bool, regions: list[str], status: int, autojump_clock: MockClock) -> None:
    region = {KEYS[0]: "r1", KEYS[1]: "r1", KEYS[2]: "r2"}
    for seed in range(5):
        stack = Stack(locality_cluster(), Upstream(defaults={KEYS[0]: 503, KEYS[1]: 503}), seed=seed)
        x = await stack.send(stack.request(RetryPolicy(retry_remote_localities=remote)))
        assert ([region[k] for k in stack.upstream.hosts], x.state.status) == (regions, status)


# -- timeouts ----------------------------------------------------------------------------

async def test_per_try_timeout_cancels_a_hanging_try_and_retries_after_the_backoff(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(scripts={KEYS[0]: ["hang"], KEYS[1]: ["hang"]}))
    policy = RetryPolicy(attempts=2, retry_on=FIVE_XX)
    start = trio.current_time()
    x = await stack.send(stack.request(policy, TimeoutPolicy(per_try_timeout=1.0)))
    [b0] = stack.backoffs(policy, 1)
    first = stack.upstream.calls[0][0]
    assert [t - start for _, t in stack.upstream.calls[:2]] == pytest.approx([0, 1.0 + b0])
    assert x.state.status == 200 and x.flags == []
    stats = {h.key: h.endpoint.stats for h in stack.cluster.hosts}
    assert stats[first].rq_timeout == 1


async def test_route_timeout_bounds_every_try_and_backoff_together_504_ut(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: "hang" for k in KEYS}))
    policy = RetryPolicy(attempts=5, retry_on=FIVE_XX)
    x = stack.request(policy, TimeoutPolicy(route_timeout=2.5, per_try_timeout=1.0))
    start = trio.current_time()
    with pytest.raises(UpstreamTimeoutError):
        await stack.send(x)
    assert trio.current_time() - start == pytest.approx(2.5)
    assert len(stack.upstream.calls) == 3


async def test_per_try_timeouts_spent_raise_the_timeout_with_urx(autojump_clock: MockClock) -> None:
    stack = Stack(make_cluster(), Upstream(defaults={k: "hang" for k in KEYS}))
    x = stack.request(RetryPolicy(attempts=2, retry_on=FIVE_XX), TimeoutPolicy(per_try_timeout=1.0))
    with pytest.raises(UpstreamTimeoutError):
        await stack.send(x)
    assert (x.flags, len(stack.upstream.calls)) == ([ResponseFlag.URX], 3)


# -- circuit breaking ----------------------------------------------------------------------

async def test_requests_beyond_http2_max_requests_overflow_at_once_and_never_queue(autojump_clock: MockClock) -> None:
    cluster = make_cluster(breaker=CircuitBreakerConfig(max_requests=1))
    stack = Stack(cluster, Upstream(defaults={k: "hang" for k in KEYS}))
    refused = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stack.send, stack.request(RetryPolicy.disabled()))
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for _ in range(50):
            with pytest.raises(UpstreamOverflowError):
                await stack.send(stack.request(RetryPolicy.disabled()))
            refused.append(trio.current_time() - start)
        assert cluster.breaker.active(Resource.REQUESTS) == 1
        nursery.cancel_scope.cancel()
    assert refused == [0.0] * 50
    assert cluster.breaker.overflows(Resource.REQUESTS) == 50
    assert cluster.breaker.active(Resource.REQUESTS) == 0  # the cancelled request gave its permit back


# -- outlier detection ---------------------------------------------------------------------

OUTLIER = OutlierConfig(consecutive_5xx=2, interval=10.0, base_ejection_time=30.0, max_ejection_percent=100,
                        healthy_panic_threshold=0.0)


async def drive(stack: Stack, seconds: int) -> list[str]:
    """One request a second for ``seconds``; the host of each."""
    before = len(stack.upstream.calls)
    for _ in range(seconds):
        await stack.send(stack.request(RetryPolicy.disabled()))
        await trio.sleep(1)
    return stack.upstream.hosts[before:]


async def test_failing_host_is_ejected_returns_after_base_time_then_is_ejected_twice_as_long(
        autojump_clock: MockClock) -> None:
    bad = KEYS[2]
    cluster = make_cluster(outlier=OUTLIER)
    stack = Stack(cluster, Upstream(defaults={bad: 500}))
    sink: RecordingSink = cluster.outlier.sink  # type: ignore[union-attr, assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(sweep_outliers, lambda: [cluster])
        hosts = await drive(stack, 6)
        assert hosts.count(bad) == 2 and len(sink.events) == 1
        ejected = sink.events[0]
        assert (ejected.action, ejected.host, ejected.duration) == (OutlierAction.EJECT, bad, 30.0)
        assert cluster.picker.health_flags(bad) == "/failed_outlier_check"
        assert bad not in await drive(stack, 25)  # traffic moves to the others
        await drive(stack, 30)
        returned, again = sink.events[1:3]
        assert returned.action is OutlierAction.UNEJECT
        assert 30.0 <= returned.at - ejected.at < 30.0 + OUTLIER.interval  # at the first sweep past 30 s
        assert (again.action, again.duration) == (OutlierAction.EJECT, 60.0)  # base x ejections
        nursery.cancel_scope.cancel()


async def test_max_ejection_percent_keeps_the_second_failing_host_in_the_pool(autojump_clock: MockClock) -> None:
    cluster = make_cluster(outlier=OutlierConfig(consecutive_5xx=2, max_ejection_percent=34,
                                                 healthy_panic_threshold=0.0))
    stack = Stack(cluster, Upstream(defaults={KEYS[1]: 500, KEYS[2]: 500}))
    hosts = await drive(stack, 30)
    assert cluster.picker.ejected == frozenset({KEYS[1]}) or cluster.picker.ejected == frozenset({KEYS[2]})
    assert cluster.outlier.stats["ejections_overflow"] >= 1  # type: ignore[union-attr]
    still = (set(KEYS[1:]) - cluster.picker.ejected).pop()
    assert hosts[-10:].count(still) >= 3  # the cap keeps it in rotation


async def test_below_min_health_percent_the_balancer_panics_and_uses_every_host(autojump_clock: MockClock) -> None:
    cluster = make_cluster(outlier=OutlierConfig(consecutive_5xx=2, max_ejection_percent=100,
                                                 healthy_panic_threshold=80.0))
    stack = Stack(cluster, Upstream(defaults={KEYS[2]: 500}))
    hosts = await drive(stack, 30)
    assert cluster.picker.ejected == frozenset({KEYS[2]})  # ejected: 2 of 3 healthy is below 80 %
    assert hosts[-9:].count(KEYS[2]) == 3  # ... yet still picked: panic mode
