"""The client side of a connection: its stream, its server codec, and the loop that serves it.

``serve_http1`` is the one per-connection loop of every HTTP listener (outbound, inbound,
admin): wait for a request head, hand it to the listener's handler, start the next
cycle while the connection stays usable. Between requests a connection is only a
timestamp in ``IdleWatch``, whose single task closes the ones idle too long - cheaper
than a cancel scope with a deadline per request. While a request is being served its
connection is an entry in ``IdleWatch.busy`` instead: the same task polls those sockets
for the client's hang-up (FIN, RST) and cancels the connection, so a request waiting on
an upstream that never answers lets go of it (Envoy resets the upstream request when the
downstream disconnects; the request is reported with flag ``DC``). Tunnels (CONNECT,
WebSocket after 101) leave the watch (``Downstream.unwatch``): there a half-close is a
legitimate message. A request that does not parse is
answered here, with its status (400, 413, 431, 501, 505; flag DPE), and the connection
closed. Local replies (``reply``, ``local_reply``, ``rescue``) are built by the codec,
which adds ``connection: close`` when the connection cannot go on.
"""

from __future__ import annotations

import select
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
GONE_CHECK = 0.5
"""Seconds between two polls of the busy connections for a client that hung up."""
DONE = Http1State.DONE
_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
_TEXT_PLAIN = (b"content-type", b"text/plain")


class DownstreamGone(GatewayError):
    """The downstream client went away (reset, or closed in the middle of its request)."""


class Downstream:
    """The client side of one connection: its stream and server codec."""

    __slots__ = ("stream", "codec", "remote_ip", "remote_port", "head_request", "watch")
    protocol = "HTTP/1.1"
    """The downstream protocol, as Envoy's ``%PROTOCOL%`` logs it."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits = DEFAULT_LIMITS,
                 remote: tuple[str, int] = ("", 0), preread: bytes = b"") -> None:
        self.stream = stream
        self.codec = Http1Connection(Role.SERVER, limits)
        if preread:
            self.codec.receive_data(preread)
        self.remote_ip, self.remote_port = remote
        self.head_request = False
        """The current request is a HEAD: replies carry no body."""
        self.watch: tuple[dict[trio.CancelScope, int], trio.CancelScope] | None = None
        """Where ``serve_http1`` registered the request being served for the hang-up watch."""

    def unwatch(self) -> None:
        """Leave the hang-up watch for the rest of this request (a tunnel: half-close is data)."""
        watch = self.watch
        if watch is not None:
            watch[0].pop(watch[1], None)

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
        self.now: Callable[[], float] = trio.current_time
        """The clock of ``waiting`` (the proxy's ``run_clock``): equal to ``trio.current_time``."""
        self.waiting: dict[trio.CancelScope, float] = {}
        self.busy: dict[trio.CancelScope, int] = {}
        """Connections serving a request: their socket's file descriptor (module docstring)."""
        self.hung_up = 0
        """Connections cancelled because the client hung up in the middle of a request."""

    def sweep_hung_up(self) -> int:
        """Cancel the busy connections whose client hung up (FIN or RST seen); how many."""
        busy = self.busy
        if not busy:
            return 0
        poller = select.poll()
        by_fd: dict[int, trio.CancelScope] = {}
        for scope, fd in busy.items():
            by_fd[fd] = scope
            poller.register(fd, _HUNG_UP)
        gone = 0
        for fd, events in poller.poll(0):
            scope = by_fd.get(fd)
            if scope is not None and events & _HUNG_UP:
                busy.pop(scope, None)
                scope.cancel()
                gone += 1
        self.hung_up += gone
        return gone

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
            await trio.sleep(GONE_CHECK if timeout is None else min(GONE_CHECK, max(timeout / 4, 0.01)))
            self.sweep_hung_up()
            self.sweep(trio.current_time())


def stream_fd(stream: object) -> int:
    """The file descriptor of the socket under ``stream`` (through TLS and prefix
    wrappers), or -1 when there is none to watch."""
    for _ in range(4):
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                return int(sock.fileno())
            except (OSError, ValueError):
                return -1
        stream = getattr(stream, "transport", None) or getattr(stream, "transport_stream", None)
        if stream is None:
            break
    return -1


async def serve_http1(down: Downstream, handle: Handler, idle: IdleWatch | None) -> None:
    """The per-connection loop: wait for a request head (the wait is watched by ``idle``),
    let ``handle`` answer it, repeat while the connection stays usable. A request that
    does not parse is answered with its status (400, 413, 431, 501, 505; flag DPE) and the
    connection is closed."""
    codec = down.codec
    waiting = idle.waiting if idle is not None else {}
    busy = idle.busy if idle is not None else {}
    fd = stream_fd(down.stream) if idle is not None else -1
    now = idle.now if idle is not None else trio.current_time
    with trio.CancelScope() as scope:
        if fd >= 0:
            down.watch = (busy, scope)
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
                if fd >= 0 and event.method != b"CONNECT":
                    busy[scope] = fd
                try:
                    if not await handle(down, event):
                        return
                finally:
                    busy.pop(scope, None)
                if not down.can_continue():
                    return
        finally:
            waiting.pop(scope, None)
            busy.pop(scope, None)
