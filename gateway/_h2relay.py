"""One request carried between an HTTP/2 stream and a stream or connection of either protocol.

Theory of operation. ``_exchange`` relays HTTP/1.1 to HTTP/1.1 byte-efficiently; every
exchange with an HTTP/2 end goes through ``exchange`` here instead. Both ends are
*sides* with one small interface - ``send_head``, ``send_data``, ``send_end(trailers)``,
``receive`` (the head, Data, EndOfMessage) and ``ack`` - which an upstream ``H2Stream``
implements itself, ``_h2down.H2DownSide`` gives a client's stream, and two adapters give
an HTTP/1.1 end: ``H1Downstream`` (a client's connection, for an HTTP/1.1 app calling a
gRPC or HTTP/2 service) and ``H1Upstream`` (a pooled connection, for an HTTP/1.1 app or
service reached from an HTTP/2 client).

* The request body is relayed as it comes: what already arrived goes with the head; if
  the body is not over, a pump task streams the rest while the response comes back.
  A chunk is read from one side only once the previous one was taken by the other
  (``send_data`` returns when the peer's window took it), and an HTTP/2 side hands the
  credit back as it is read (``ack``), so flow control holds a fast sender to the pace of
  a slow receiver, in both directions, with one window per stream in memory.
* Trailers travel end to end (gRPC's ``grpc-status``/``grpc-message``); a response that
  is one HEADERS frame ending the stream (gRPC's Trailers-Only) stays one.
* A reset on either side ends the exchange: the other side's stream is reset by its
  owner's ``release``. Failures are ``_rescue`` errors before the response head went
  downstream (the caller answers locally) and ``ResponseAborted`` after it (the caller
  resets the downstream stream, or closes an HTTP/1.1 connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from ._downstream import _BROKEN, DONE, RECV_SIZE, Downstream, DownstreamGone
from ._events import (END_OF_MESSAGE, ConnectionClosed, Data, EndOfMessage, InformationalResponse,
                      LocalProtocolError, RemoteProtocolError, Request, Response)
from ._exchange import Exchange, ResponseAborted, response_headers
from ._grpc import grpc_status
from ._headerops import HeaderOps
from ._http1 import NEED_DATA
from ._rescue import DownstreamProtocolError, ProxyError, UpstreamProtocolError, UpstreamResetError
from ._upstream import PoolKey, UpstreamConnection, UpstreamPool

H2_PROTOCOLS = frozenset({"HTTP2", "GRPC"})
"""Istio port protocols whose requests travel as HTTP/2 between sidecars (and to the app)."""
_CHUNKED = (b"transfer-encoding", b"chunked")


def speaks_h2(protocol: str) -> bool:
    """Whether a port of this Istio protocol (``http2``, ``GRPC``, ...) is served over HTTP/2."""
    return protocol.upper() in H2_PROTOCOLS


def h2_key(address: str, port: int, sni: str = "") -> PoolKey:
    """The H2Pool key: mTLS with ``sni``, else h2c by prior knowledge."""
    return (address, port, sni, "h2" if sni else "h2c")


def h1_head(head: Request, has_body: bool) -> Request:
    """``head`` for an HTTP/1.1 upstream: an HTTP/2 body without Content-Length goes chunked."""
    if has_body and not any(n == b"content-length" or n == b"transfer-encoding" for n, _ in head.headers):
        return Request(head.method, head.target, [*head.headers, _CHUNKED])
    return head


# -- HTTP/1.1 sides ---------------------------------------------------------------------------

class H1Upstream:
    """A pooled HTTP/1.1 connection as the upstream side of one exchange. The head is held
    until the first body bytes (or a read), so head and a small body leave in one write."""

    __slots__ = ("pool", "conn", "reused", "idle_timeout", "_out")

    def __init__(self, pool: UpstreamPool, conn: UpstreamConnection, reused: bool,
                 idle_timeout: float | None = None) -> None:
        self.pool = pool
        self.conn = conn
        self.reused = reused
        self.idle_timeout = idle_timeout
        self._out: list[bytes] = []

    @property
    def peer(self) -> str:
        return self.conn.peer

    def _encode(self, event: Any) -> None:
        try:
            self._out.append(self.conn.codec.send(event))
        except LocalProtocolError as exc:
            raise DownstreamProtocolError(exc.message) from None

    async def _flush(self) -> None:
        out = self._out
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            try:
                await self.conn.stream.send_all(data)
            except _BROKEN as exc:
                raise UpstreamResetError(self.conn.address, f"send failed: {exc}") from None

    async def send_head(self, head: Request, end: bool = False) -> None:
        self._encode(head)
        if end:
            self._encode(END_OF_MESSAGE)
            await self._flush()

    async def send_data(self, data: bytes, end: bool = False) -> None:
        self._encode(Data(data))
        if end:
            self._encode(END_OF_MESSAGE)
        await self._flush()

    async def send_end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        # Request trailers go to HTTP/2 apps only: an HTTP/1.1 app gets the body's end.
        self._encode(END_OF_MESSAGE)
        await self._flush()

    async def receive(self) -> Any:
        await self._flush()
        conn = self.conn
        codec = conn.codec
        while True:
            try:
                event = codec.next_event()
            except RemoteProtocolError as exc:
                raise UpstreamProtocolError(conn.address, exc.message) from None
            if event is not NEED_DATA:
                if type(event) is ConnectionClosed:
                    raise UpstreamResetError(conn.address, "connection closed before the response ended")
                return event
            try:
                data = await conn.stream.receive_some(RECV_SIZE)
            except _BROKEN as exc:
                raise UpstreamResetError(conn.address, f"{exc.__cause__ or exc}") from None
            codec.receive_data(data)

    def receive_nowait(self) -> Any:
        return None

    def ack(self, size: int) -> None:
        pass

    def release(self) -> None:
        """Back to the pool if both messages completed, else closed."""
        conn = self.conn
        codec = conn.codec
        reusable = codec.our_state is DONE and codec.their_state is DONE
        if reusable:
            conn.served += 1
            codec.start_next_cycle()
        self.pool.release(conn, reusable, self.idle_timeout)


class H1Downstream:
    """An HTTP/1.1 client connection as the downstream side of one exchange; ``body`` is
    the retry layer's replay buffer (``_replay.RequestBody``) when there is one."""

    __slots__ = ("down", "body")

    def __init__(self, down: Downstream, body: Any = None) -> None:
        self.down = down
        self.body = body

    def buffered_body(self) -> tuple[list[Data], EndOfMessage | None]:
        return self.body.start(self.down) if self.body is not None else self.down.buffered_body()

    async def receive_body(self) -> Data | EndOfMessage:
        try:
            event = await (self.body.next_event(self.down) if self.body is not None else self.down.next_event())
        except RemoteProtocolError as exc:
            raise DownstreamGone(str(exc)) from None
        if type(event) is Data or type(event) is EndOfMessage:
            return event  # type: ignore[return-value]
        raise DownstreamGone("client closed the connection in the middle of its request body")

    def ack(self, size: int) -> None:
        pass

    async def send_head(self, head: Response, end: bool = False) -> None:
        codec = self.down.codec
        out = codec.send(Response(head.status, head.headers, head.reason))
        if end:
            out += codec.send(END_OF_MESSAGE)
        await self.down.send_bytes(out)

    async def send_data(self, data: bytes, end: bool = False) -> None:
        codec = self.down.codec
        out = codec.send(Data(data))
        if end:
            out += codec.send(END_OF_MESSAGE)
        await self.down.send_bytes(out)

    async def send_end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        codec = self.down.codec
        try:
            out = codec.send(EndOfMessage(trailers)) if trailers else codec.send(END_OF_MESSAGE)
        except LocalProtocolError:  # a Content-Length body cannot carry trailers on HTTP/1.1
            out = codec.send(END_OF_MESSAGE)
        await self.down.send_bytes(out)


# -- the exchange -----------------------------------------------------------------------------

async def exchange(down: Any, up: Any, head: Request, chunks: list[Data], end: EndOfMessage | None,
                   ops: HeaderOps, state: Exchange, accept: Any = None) -> int | None:
    """Carry ``head``, the body already read (``chunks``, ``end``) and the rest of it from
    ``down`` to ``up``, and the response back; returns the gRPC status, if any."""
    await _send_request(up, head, chunks, end, state)
    if end is not None:
        return await _relay_response(down, up, ops, state, accept)
    result = None
    done = False
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, down, up, state, nursery.cancel_scope)
        try:
            result = await _relay_response(down, up, ops, state, accept)
            done = True
        except Exception as exc:  # raised below, not wrapped in the nursery's ExceptionGroup
            failure = exc
        finally:
            nursery.cancel_scope.cancel()  # a response that ended first stops the request body
    if failure is not None:
        raise failure
    error = state.error
    if error is not None and not done:
        state.error = None
        if state.head_sent and isinstance(error, ProxyError):
            raise ResponseAborted(error)
        raise error
    return result


async def _send_request(up: Any, head: Request, chunks: list[Data], end: EndOfMessage | None,
                        state: Exchange) -> None:
    trailers = end.trailers if end is not None else ()
    whole = end is not None and not trailers
    if whole and not chunks:
        await up.send_head(head, end=True)
        state.request_done = True
        return
    await up.send_head(head, end=False)
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        state.bytes_in += len(chunk.data)
        await up.send_data(chunk.data, end=whole and i == last)
    if end is not None:
        if trailers:
            await up.send_end(trailers)
        state.request_done = True


async def _pump(down: Any, up: Any, state: Exchange, scope: trio.CancelScope) -> None:
    """The rest of the request body, chunk by chunk, each acknowledged once sent on."""
    try:
        while True:
            event = await down.receive_body()
            if type(event) is Data:
                size = len(event.data)
                state.bytes_in += size
                await up.send_data(event.data)
                down.ack(size)
            else:
                await up.send_end(event.trailers)
                state.request_done = True
                return
    except (ProxyError, DownstreamGone) as exc:
        state.error = exc
        scope.cancel()


async def _relay_response(down: Any, up: Any, ops: HeaderOps, state: Exchange, accept: Any) -> int | None:
    try:
        event = await up.receive()
        while True:
            kind = type(event)
            if kind is Data:
                data = event.data
                state.bytes_out += len(data)
                await down.send_data(data)
                up.ack(len(data))
            elif kind is Response:
                state.status = event.status
                state.response_headers = event.headers
                if accept is not None:
                    accept(event)
                headers = response_headers(event.headers, ops)
                extra = state.extra_headers
                if extra:
                    headers += extra
                after = up.receive_nowait()
                if type(after) is EndOfMessage and not after.trailers:  # Trailers-Only: one frame
                    await down.send_head(Response(event.status, headers, event.reason), end=True)
                    state.head_sent = True
                    return grpc_status(headers)
                await down.send_head(Response(event.status, headers, event.reason))
                state.head_sent = True
                if after is not None:
                    event = after
                    continue
            elif kind is EndOfMessage:
                await down.send_end(event.trailers)
                return grpc_status(event.trailers)
            elif kind is not InformationalResponse:  # 1xx are answered hop by hop
                raise UpstreamProtocolError("upstream", f"unexpected {kind.__name__}")
            event = await up.receive()
    except ProxyError as exc:
        if state.head_sent:
            raise ResponseAborted(exc) from None
        raise
