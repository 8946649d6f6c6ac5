"""The byte splice: both directions, half-close, errors, idle timeout, streams that cannot half-close."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway._tcpsplice import splice


class NoHalfClose(trio.abc.Stream):
    """A stream like TLS: no send_eof; records whether it was closed."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_bytes_flow_both_ways_and_half_close_is_passed_on() -> None:
    client, proxy_a = trio.testing.memory_stream_pair()
    proxy_b, server = trio.testing.memory_stream_pair()
    results = {}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                results["splice"] = await splice(proxy_a, proxy_b, a_prefix=b"early ")

            nursery.start_soon(run)
            await client.send_all(b"request")
            await client.send_eof()                       # the client is done sending ...
            assert await read_all(server) == b"early request"   # ... and the server sees EOF
            await server.send_all(b"answer after the client's EOF")
            await server.send_eof()
            assert await read_all(client) == b"answer after the client's EOF"
    result = results["splice"]
    assert (result.sent, result.received, result.reason) == (13, 29, "closed")


async def test_an_error_on_one_side_ends_both_directions() -> None:
    client, proxy_a = trio.testing.memory_stream_pair()
    proxy_b, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            results = {}

            async def run() -> None:
                results["splice"] = await splice(proxy_a, proxy_b)

            nursery.start_soon(run)
            await server.aclose()          # the far end goes away
            await client.send_all(b"lost")  # the proxy's write to it fails
    assert results["splice"].reason.startswith("error: ")


async def test_nothing_moving_for_the_idle_timeout_ends_the_splice(autojump_clock: trio.testing.MockClock) -> None:
    _, proxy_a = trio.testing.memory_stream_pair()
    proxy_b, _ = trio.testing.memory_stream_pair()
    start = trio.current_time()
    result = await splice(proxy_a, proxy_b, idle_timeout=30)
    assert result.reason == "idle" and trio.current_time() - start == pytest.approx(30)


async def test_eof_towards_a_stream_that_cannot_half_close_closes_it() -> None:
    client, proxy_a = trio.testing.memory_stream_pair()
    proxy_b, server = trio.testing.memory_stream_pair()
    tls_like = NoHalfClose(proxy_b)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            results = {}

            async def run() -> None:
                results["splice"] = await splice(proxy_a, tls_like)

            nursery.start_soon(run)
            await client.send_all(b"bye")
            await client.send_eof()
            assert await read_all(server) == b"bye"
    assert tls_like.closed and results["splice"].sent == 3

