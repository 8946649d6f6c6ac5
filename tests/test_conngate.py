"""ConnectionGate: maxConnections and http1MaxPendingRequests where connections are opened -
waiters beyond the pending limit overflow at once (503 UO), a cancelled waiter gives its
place back, and a released connection lets one waiter on. On trio's MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from gateway._breaker import CircuitBreaker, CircuitBreakerConfig, Overflow, Permit, Resource
from gateway._conngate import ConnectionGate
from gateway._rescue import UpstreamOverflowError


class FakePool:
    """Idle connections by key, each holding its connection permit as a real one does."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], Permit] = {}

    def evict_idle(self, keys: set) -> bool:
        for key in keys & set(self.idle):
            self.idle.pop(key).release()  # closing the connection gives its permit back
            return True
        return False


def gate(connections: int = 1, pending: int = 1) -> tuple[ConnectionGate, list[tuple[str, Overflow]]]:
    overflows: list[tuple[str, Overflow]] = []
    g = ConnectionGate(CircuitBreaker(CircuitBreakerConfig(max_connections=connections,
                                                           max_pending_requests=pending)), "c",
                       on_overflow=lambda name, o: overflows.append((name, o)))
    return g, overflows


async def test_beyond_the_pending_limit_a_request_overflows_at_once(autojump_clock: MockClock) -> None:
    g, overflows = gate()
    assert g.try_connect(FakePool(), ("a", 1)) is not None
    assert g.try_connect(FakePool(), ("a", 1)) is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(g.wait_pending)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(UpstreamOverflowError):
            await g.wait_pending()
        assert trio.current_time() == start and g.waiting == 1
        assert overflows == [("c", Overflow(Resource.PENDING_REQUESTS))]
        g.wake()  # a connection came back: the waiter goes on
    assert (g.waiting, g.breaker.active(Resource.PENDING_REQUESTS)) == (0, 0)


async def test_cancelled_waiter_gives_its_pending_place_back(autojump_clock: MockClock) -> None:
    g, _ = gate()
    g.try_connect(FakePool(), ("a", 1))
    start = trio.current_time()
    with trio.move_on_after(5):
        await g.wait_pending()
    assert trio.current_time() - start == pytest.approx(5.0)
    assert g.breaker.active(Resource.PENDING_REQUESTS) == 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(g.wait_pending)  # the place is free again
        await trio.testing.wait_all_tasks_blocked()
        assert g.waiting == 1
        nursery.cancel_scope.cancel()


def test_idle_connection_to_another_host_is_closed_to_make_room() -> None:
    g, _ = gate()
    pool = FakePool()
    pool.idle[("b", 1)] = g.try_connect(pool, ("b", 1))  # type: ignore[assignment]
    assert g.try_connect(pool, ("b", 1)) is None  # nothing idle elsewhere: wait or overflow
    assert g.try_connect(pool, ("a", 1)) is not None  # b's idle connection closed for a
    assert pool.idle == {} and g.keys == {("a", 1), ("b", 1)}


def test_unlimited_gate_stays_off_the_path() -> None:
    assert ConnectionGate(CircuitBreaker(), "c").limited is False
    assert gate()[0].limited is True
