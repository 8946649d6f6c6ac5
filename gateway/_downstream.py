"""The client side of a connection: its stream, its server codec, and the loop that serves it.

``serve_http1`` is the one per-connection loop of every HTTP listener (outbound, inbound,
admin): wait for a request head, hand it to the listener's handler, start the next
cycle while the connection stays usable. Between requests a connection is only a
timestamp in ``IdleWatch``, whose single task closes the ones idle too long - cheaper
than a cancel scope with a deadline per request. A request that does not parse is
answered here, with its status (400, 413, 431, 501, 505; flag DPE), and the connection
closed. Local replies (``reply``, ``local_reply``, ``rescue``) are built by the codec,
which adds ``connection: close`` when the connection cannot go on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from . import GatewayError
from ._events import END_OF_MESSAGE, ConnectionClosed, Data, EndOfMessage, RemoteProtocolError, Request, Response, Role
from ._http1 import NEED_DATA, Http1Connection
from ._http1_state import Http1State
from ._limits import DEFAULT_LIMITS, HttpLimits
from ._rescue import LocalReply, rescue

RECV_SIZE = 64 * 1024
DONE = Http1State.DONE
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
_TEXT_PLAIN = (b"content-type", b"text/plain")


class DownstreamGone(GatewayError):
    """The downstream client went away (reset, or closed in the middle of its request)."""


class Downstream:
    """The client side of one connection: its stream and server codec."""

    __slots__ = ("stream", "codec", "remote_ip", "remote_port", "head_request")

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits = DEFAULT_LIMITS,
                 remote: tuple[str, int] = ("", 0), preread: bytes = b"") -> None:
        self.stream = stream
        self.codec = Http1Connection(Role.SERVER, limits)
        if preread:
            self.codec.receive_data(preread)
        self.remote_ip, self.remote_port = remote
        self.head_request = False
        """The current request is a HEAD: replies carry no body."""

    async def next_event(self) -> object:
        """The next event from the client, reading as needed (EOF and resets become EOF)."""
        codec = self.codec
        while True:
            event = codec.next_event()
            if event is not NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except _BROKEN:
                data = b""
            codec.receive_data(data)

    def buffered_body(self) -> tuple[list[Data], EndOfMessage | None]:
        """Body events the codec can give without reading: the chunks, and the end if reached."""
        codec = self.codec
        chunks: list[Data] = []
        while True:
            event = codec.next_event()
            kind = type(event)
            if kind is Data:
                chunks.append(event)  # type: ignore[arg-type]
            elif kind is EndOfMessage:
                return chunks, event  # type: ignore[return-value]
            else:
                if kind is ConnectionClosed:
                    raise DownstreamGone("client closed the connection in the middle of its request")
                return chunks, None  # NEED_DATA

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except _BROKEN as exc:
            raise DownstreamGone(f"client went away: {exc}") from None

    def reply_bytes(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                    close: bool = False) -> bytes:
        """A complete local reply, encoded by the codec (which adds ``connection: close`` if needed)."""
        codec = self.codec
        hs = list(headers)
        hs.append((b"content-length", b"%d" % len(body)))
        if body and not any(n == b"content-type" for n, _ in headers):
            hs.append(_TEXT_PLAIN)
        if close:
            hs.append((b"connection", b"close"))
        out = codec.send(Response(status, hs))
        if body and not self.head_request:
            out += codec.send(Data(body))
        return out + codec.send(END_OF_MESSAGE)

    async def reply(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                    close: bool = False) -> None:
        await self.send_bytes(self.reply_bytes(status, body, headers, close))

    def request_complete(self) -> bool:
        """Consume what is left of the request in the codec's buffer (a local reply does
        not read bodies); True when the request is complete, so the connection can go on."""
        codec = self.codec
        if codec.their_state is DONE:
            return True
        try:
            self.buffered_body()
        except (DownstreamGone, RemoteProtocolError):
            return False
        return codec.their_state is DONE

    async def local_reply(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                          close: bool = False) -> bool:
        """Answer the current request locally; whether the connection may carry another."""
        close = close or not self.request_complete()
        await self.reply(status, body, headers, close=close)
        return not close

    async def rescue(self, reply: LocalReply, close: bool = False) -> bool:
        """Send a rescue reply if a response can still be sent; whether the connection may continue."""
        if self.codec.our_state not in (Http1State.IDLE, Http1State.SEND_RESPONSE):
            return False
        return await self.local_reply(reply.status, reply.body, close=close)

    def can_continue(self) -> bool:
        """Both messages complete and keep-alive: start the next cycle (and say so)."""
        codec = self.codec
        if codec.our_state is DONE and codec.their_state is DONE:
            codec.start_next_cycle()
            return True
        return False


Handler = Callable[[Downstream, Request], Awaitable[bool]]
"""Answers one request; True when the connection may carry another."""


class IdleWatch:
    """Connections waiting for their next request, and since when.

    One task (``run``) cancels those idle longer than the timeout, instead of a cancel
    scope with a deadline per request: waiting costs two dict stores per request."""

    def __init__(self, timeout: Callable[[], float | None]) -> None:
        self.timeout = timeout
        self.waiting: dict[trio.CancelScope, float] = {}

    def sweep(self, now: float) -> int:
        """Cancel the connections idle too long at ``now``; how many."""
        timeout = self.timeout()
        if timeout is None:
            return 0
        cut = now - timeout
        stale = [scope for scope, since in self.waiting.items() if since <= cut]
        for scope in stale:
            del self.waiting[scope]
            scope.cancel()
        return len(stale)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            timeout = self.timeout()
            await trio.sleep(1.0 if timeout is None else min(1.0, max(timeout / 4, 0.01)))
            self.sweep(trio.current_time())


async def serve_http1(down: Downstream, handle: Handler, idle: IdleWatch | None) -> None:
    """The per-connection loop: wait for a request head (the wait is watched by ``idle``),
    let ``handle`` answer it, repeat while the connection stays usable. A request that
    does not parse is answered with its status (400, 413, 431, 501, 505; flag DPE) and the
    connection is closed."""
    codec = down.codec
    waiting = idle.waiting if idle is not None else {}
    now = trio.current_time
    with trio.CancelScope() as scope:
        try:
            while True:
                waiting[scope] = now()
                try:
                    event = await down.next_event()
                except RemoteProtocolError as exc:
                    waiting.pop(scope, None)
                    if codec.our_state in (Http1State.IDLE, Http1State.SEND_RESPONSE):
                        reply = rescue(exc)
                        try:
                            await down.reply(reply.status, reply.body, close=True)
                        except DownstreamGone:
                            pass
                    return
                waiting.pop(scope, None)
                if type(event) is not Request:
                    return  # ConnectionClosed, or PAUSED after a switch
                down.head_request = event.method == b"HEAD"
                if not await handle(down, event):
                    return
                if not down.can_continue():
                    return
        finally:
            waiting.pop(scope, None)
