"""One HTTP/1.1 request carried to an upstream connection and its response carried back.

Theory of operation. Both ends are sans-I/O codecs (``Http1Connection``): the downstream
one in the server role, the upstream one in the client role; this module moves events
between them and bytes between their streams, and nothing else - routing, policy and
the choice of connection happen before, in ``_outbound`` and ``_inbound``.

* Writes are coalesced: every event the upstream codec yields without more I/O is
  encoded into one buffer and sent with one ``send_all`` (head and a small body are one
  TLS record), and a request without a body goes out as head + end in one write.
* Bodies stream with backpressure: a chunk is read, sent, and only then is the next one
  read, so a body of any size holds one receive buffer per direction in memory.
* The request body is first drained from what the codec already holds. If it ends there
  (most requests), no task is started; otherwise a pump task in a nursery streams the
  rest while the response is relayed, so a server may answer before the body is over.
* A pooled connection may have died while idle: if a reused one fails before any byte
  of response and the request is still in memory, it is retried once on a new one.
* Failures are ``_rescue`` errors: before the response head went downstream the caller
  answers with ``rescue(error)``; after it, ``ResponseAborted`` and the downstream
  connection is closed (a client then sees a truncated response, as with Envoy).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from . import GatewayError
from ._actions import HeaderOps
from ._events import (END_OF_MESSAGE, ConnectionClosed, Data, EndOfMessage, InformationalResponse, LocalProtocolError,
                      RemoteProtocolError, Request, Response, Role)
from ._http1 import NEED_DATA, Http1Connection
from ._http1_state import Http1State
from ._limits import DEFAULT_LIMITS, HttpLimits
from ._rescue import DownstreamProtocolError, LocalReply, UpstreamProtocolError, UpstreamResetError, rescue
from ._upstream import PoolKey, UpstreamConnection, UpstreamPool

RECV_SIZE = 64 * 1024
DONE = Http1State.DONE
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy answers itself (Expect).
_REQUEST_DROP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te",
                           b"expect", b"http2-settings"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade"})
_TEXT_PLAIN = (b"content-type", b"text/plain")


class ResponseAborted(GatewayError):
    """The exchange failed after the response head went downstream: close that connection."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"response aborted: {cause}")
        self.cause = cause


class DownstreamGone(GatewayError):
    """The downstream client went away (reset, or closed in the middle of its request)."""


class Downstream:
    """The client side of one connection: its stream and server codec."""

    __slots__ = ("stream", "codec", "remote_ip", "remote_port")

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits = DEFAULT_LIMITS,
                 remote: tuple[str, int] = ("", 0), preread: bytes = b"") -> None:
        self.stream = stream
        self.codec = Http1Connection(Role.SERVER, limits)
        if preread:
            self.codec.receive_data(preread)
        self.remote_ip, self.remote_port = remote

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
        if body:
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


def request_headers(headers: Sequence[tuple[bytes, bytes]], authority: bytes
                    ) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to send upstream (``host`` first, hop-by-hop ones gone) and whether a body follows."""
    out = [(b"host", authority)]
    has_body = False
    listed: list[bytes] | None = None
    for pair in headers:
        name = pair[0]
        if name in _REQUEST_DROP:
            if name == b"connection":
                listed = [t.strip().lower() for t in pair[1].split(b",")]
            elif name == b"te" and pair[1].strip().lower() == b"trailers":
                out.append(pair)
            continue
        if name == b"content-length":
            has_body = pair[1] != b"0"
        elif name == b"transfer-encoding":
            has_body = True
        out.append(pair)
    if listed:
        out = [p for p in out if p[0] not in listed or p[0] == b"host"]
    return out, has_body


def response_headers(headers: Sequence[tuple[bytes, bytes]], ops: HeaderOps) -> list[tuple[bytes, bytes]]:
    listed: list[bytes] | None = None
    out = []
    for pair in headers:
        name = pair[0]
        if name in _RESPONSE_DROP:
            if name == b"connection":
                listed = [t.strip().lower() for t in pair[1].split(b",")]
            continue
        out.append(pair)
    if listed:
        out = [p for p in out if p[0] not in listed]
    if ops:
        out = apply_ops(ops, out)
    return out


def apply_ops(ops: HeaderOps, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ops.apply(text)]


class Exchange:
    """Progress of one request through ``forward``: what the caller reports and logs."""

    __slots__ = ("status", "head_sent", "request_done", "bytes_in", "bytes_out", "error", "peer")

    def __init__(self) -> None:
        self.status = 0
        self.head_sent = False
        self.request_done = False
        self.bytes_in = 0
        """Request body bytes sent upstream."""
        self.bytes_out = 0
        """Response body bytes sent downstream."""
        self.error: BaseException | None = None
        self.peer = ""
        """SPIFFE ID of the upstream (mTLS connections)."""


async def forward(down: Downstream, head: Request, has_body: bool, pool: UpstreamPool, key: PoolKey,
                  connect_timeout: float, response_ops: HeaderOps = HeaderOps(),
                  idle_timeout: float | None = None, state: Exchange | None = None) -> Exchange:
    """Carry ``head`` (and the request body still on ``down``) to a connection for ``key``
    and the response back; see the module docstring for the failure contract."""
    state = state or Exchange()
    # Connect before touching the body: a connect failure leaves the request intact for
    # the caller to try another host.
    conn, reused = await pool.acquire(key, connect_timeout)
    try:
        chunks, end = down.buffered_body()
    except BaseException:
        pool.release(conn, False)
        raise
    for attempt in (0, 1):
        state.peer = conn.peer
        try:
            await _send_head(conn, head, chunks, end, state)
            if end is not None:
                state.request_done = True
                await _relay_response(down, conn, response_ops, state)
            else:
                await _relay_streaming(down, conn, response_ops, state)
        except UpstreamResetError:
            pool.release(conn, False)
            if attempt == 0 and reused and state.status == 0 and end is not None:
                # A pooled connection that died while idle: once more, on a new one.
                state.bytes_in = 0
                conn, reused = await pool.acquire(key, connect_timeout)
                continue
            raise
        except BaseException:
            pool.release(conn, False)
            raise
        conn.served += 1
        codec = conn.codec
        reusable = codec.our_state is DONE and codec.their_state is DONE
        if reusable:
            codec.start_next_cycle()
        pool.release(conn, reusable, idle_timeout)
        break
    return state


async def _send_head(conn: UpstreamConnection, head: Request, chunks: list[Data], end: EndOfMessage | None,
                     state: Exchange) -> None:
    codec = conn.codec
    try:
        parts = [codec.send(head)]
        for chunk in chunks:
            parts.append(codec.send(chunk))
            state.bytes_in += len(chunk.data)
        if end is not None:
            parts.append(codec.send(end))
    except LocalProtocolError as exc:
        raise DownstreamProtocolError(exc.message) from None
    try:
        await conn.stream.send_all(b"".join(parts) if len(parts) > 1 else parts[0])
    except _BROKEN as exc:
        raise UpstreamResetError(conn.address, f"send failed: {exc}") from None


async def _relay_streaming(down: Downstream, conn: UpstreamConnection, ops: HeaderOps, state: Exchange) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_body, down, conn, state, nursery.cancel_scope)
        try:
            await _relay_response(down, conn, ops, state)
        finally:
            if not state.request_done:
                # The response ended (or failed) before the request body: stop sending it.
                # Neither connection can carry another exchange.
                conn.close()
            nursery.cancel_scope.cancel()
    if state.error is not None:
        raise state.error


async def _pump_body(down: Downstream, conn: UpstreamConnection, state: Exchange, scope: trio.CancelScope) -> None:
    codec = conn.codec
    stream = conn.stream
    try:
        while True:
            event = await down.next_event()
            kind = type(event)
            if kind is Data:
                data = codec.send(event)  # type: ignore[arg-type]
                state.bytes_in += len(event.data)  # type: ignore[union-attr]
                await stream.send_all(data)
            elif kind is EndOfMessage:
                await stream.send_all(codec.send(event))  # type: ignore[arg-type]
                state.request_done = True
                return
            else:
                raise DownstreamGone("client closed the connection in the middle of its request body")
    except _BROKEN as exc:
        if not conn.closed:
            state.error = UpstreamResetError(conn.address, f"send failed: {exc}")
            scope.cancel()
    except (DownstreamGone, RemoteProtocolError) as exc:
        state.error = DownstreamGone(str(exc))
        scope.cancel()
    except LocalProtocolError as exc:
        state.error = DownstreamProtocolError(exc.message)
        scope.cancel()


async def _relay_response(down: Downstream, conn: UpstreamConnection, ops: HeaderOps, state: Exchange) -> None:
    ucodec = conn.codec
    dcodec = down.codec
    stream = conn.stream
    out: list[bytes] = []
    while True:
        try:
            event = ucodec.next_event()
        except RemoteProtocolError as exc:
            error: BaseException = UpstreamProtocolError(conn.address, exc.message)
            raise (ResponseAborted(error) if state.head_sent else error) from None
        if event is NEED_DATA:
            if out:
                await down.send_bytes(b"".join(out))
                out.clear()
            try:
                data = await stream.receive_some(RECV_SIZE)
            except _BROKEN as exc:
                error = UpstreamResetError(conn.address, f"{exc.__cause__ or exc}")
                raise (ResponseAborted(error) if state.head_sent else error) from None
            ucodec.receive_data(data)
            continue
        kind = type(event)
        if kind is Data:
            state.bytes_out += len(event.data)  # type: ignore[union-attr]
            out.append(dcodec.send(event))  # type: ignore[arg-type]
        elif kind is Response:
            state.status = event.status  # type: ignore[union-attr]
            headers = response_headers(event.headers, ops)  # type: ignore[union-attr]
            out.append(dcodec.send(Response(event.status, headers, event.reason)))  # type: ignore[union-attr]
            state.head_sent = True
        elif kind is EndOfMessage:
            out.append(dcodec.send(event))  # type: ignore[arg-type]
            await down.send_bytes(b"".join(out))
            return
        elif kind is InformationalResponse:
            continue  # 100 Continue was answered by the proxy itself; others are not forwarded
        else:  # ConnectionClosed before the end of the response
            error = UpstreamResetError(conn.address, "connection closed before the response ended")
            raise (ResponseAborted(error) if state.head_sent else error)


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
                if not await handle(down, event):
                    return
                if not down.can_continue():
                    return
        finally:
            waiting.pop(scope, None)
