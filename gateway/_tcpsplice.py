"""Bytes both ways between two streams: TCP services, CONNECT tunnels, TLS passthrough.

Two copy loops run in one nursery, one per direction. Each reads at most ``bufsize``
bytes and writes them before reading again, so a splice holds at most two buffers
whatever flows through it, and a slow reader slows the writer down (backpressure is
TCP's own). When one side ends its sending half (EOF), the other side's sending half is
closed too if it can be (``HalfCloseableStream``: TCP) and the other direction keeps
flowing until it ends as well. A TLS stream cannot half-close (Python's ``ssl`` cannot
send close_notify and keep reading), so an EOF towards a TLS side closes it cleanly and
ends the splice: TLS and HTTP/2 clients never half-close, a plain-TCP client that sends
its request and then half-closes before reading the answer is not served. An
error on either side (reset, TLS failure) ends both directions at once. The splice
returns when both directions are done; closing the streams is the caller's business.
``idle_timeout`` ends a splice on which nothing moved for that long (Envoy's TCP proxy
``idle_timeout``, 1 h by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

BUFSIZE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 3600.0  # Envoy tcp_proxy idle_timeout default 1h
CLOSE_GRACE = 1.0  # seconds a TLS close_notify may take before the socket is just closed


@dataclass
class SpliceResult:
    """Bytes copied each way, and why the splice ended."""

    sent: int = 0
    """From ``a`` to ``b``."""
    received: int = 0
    """From ``b`` to ``a``."""
    reason: str = "closed"
    """``closed`` (both sides ended), ``idle`` or ``error: <what>``."""


class _Idle:
    __slots__ = ("deadline", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = trio.current_time() + timeout

    def touch(self) -> None:
        self.deadline = trio.current_time() + self.timeout


async def _copy(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream, prefix: bytes, idle: _Idle,
                result: SpliceResult, forward: bool, cancel: trio.CancelScope, bufsize: int) -> None:
    count = 0
    try:
        if prefix:
            await dst.send_all(prefix)
            count += len(prefix)
        while True:
            data = await src.receive_some(bufsize)
            if not data:
                break
            idle.touch()
            await dst.send_all(data)
            count += len(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        else:
            # TLS cannot half-close (Python's ssl has no close_notify that keeps reading):
            # the end of one direction ends the connection, closed cleanly so that the far
            # side reads an EOF rather than a reset.
            with trio.move_on_after(CLOSE_GRACE) as scope:
                scope.shield = True
                try:
                    await dst.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            cancel.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        result.reason = f"error: {exc.__cause__ or exc or type(exc).__name__}"
        cancel.cancel()
    finally:
        if forward:
            result.sent += count
        else:
            result.received += count


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, *, a_prefix: bytes = b"", b_prefix: bytes = b"",
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, bufsize: int = BUFSIZE) -> SpliceResult:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both end. ``a_prefix`` are bytes already
    read from ``a`` (sent to ``b`` first), ``b_prefix`` likewise from ``b``."""
    result = SpliceResult()
    idle = _Idle(idle_timeout)
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as copies:
            scope = copies.cancel_scope
            outer.start_soon(_watch_idle, idle, scope, result)
            copies.start_soon(_copy, a, b, a_prefix, idle, result, True, scope, bufsize)
            copies.start_soon(_copy, b, a, b_prefix, idle, result, False, scope, bufsize)
        outer.cancel_scope.cancel()
    return result


async def _watch_idle(idle: _Idle, copies: trio.CancelScope, result: SpliceResult) -> None:
    while True:
        await trio.sleep_until(idle.deadline)
        if trio.current_time() >= idle.deadline:
            result.reason = "idle"
            copies.cancel()
            return
