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
* An Upgrade (WebSocket) gets a connection of its own; after ``101`` the two connections
  are spliced into one tunnel (``forward_upgrade``).
* Failures are ``_rescue`` errors: before the response head went downstream the caller
  answers with ``rescue(error)``; after it, ``ResponseAborted`` and the downstream
  connection is closed (a client then sees a truncated response, as with Envoy).
* For the retry layer, ``forward_attempt`` takes the body from a ``RequestBody`` (kept
  for replay) and calls ``accept(response)`` when the response head arrives, *before*
  anything goes downstream: raising there (``RetryableResponse``) drops this attempt's
  connection and leaves the client untouched, so the request can be tried again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from . import GatewayError
from ._downstream import _BROKEN, DONE, RECV_SIZE, Downstream, DownstreamGone
from ._events import (Data, EndOfMessage, InformationalResponse, LocalProtocolError, RemoteProtocolError, Request,
                      Response, _new_response)
from ._headerops import HeaderOps
from ._http1 import NEED_DATA
from ._rescue import DownstreamProtocolError, UpstreamProtocolError, UpstreamResetError
from ._upstream import PoolKey, UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from ._replay import RequestBody
    from ._upstream import ConnectionGate

Accept = Callable[[Response], None]
"""Called with the upstream response head before it goes downstream; may raise to drop it."""

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy answers itself (Expect).
_REQUEST_DROP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te",
                           b"expect", b"http2-settings"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade"})
_REQUEST_LISTED_GONE = _REQUEST_DROP - {b"te"}
"""Connection tokens naming headers the first pass already dropped (``te: trailers`` is
kept by it, ``host`` is kept anyway): no second pass is needed for them."""


class RetryableResponse(GatewayError):
    """Raised by an ``accept`` hook: this attempt's response is dropped, to be retried."""

    def __init__(self, status: int, decision: object = None) -> None:
        super().__init__(f"upstream answered {status}: retrying")
        self.status = status
        self.decision = decision


class ResponseAborted(GatewayError):
    """The exchange failed after the response head went downstream: close that connection."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"response aborted: {cause}")
        self.cause = cause


def request_headers(headers: Sequence[tuple[bytes, bytes]], authority: bytes
                    ) -> tuple[list[tuple[bytes, bytes]], bool, bytes | None]:
    """The headers to send upstream (``host`` first, hop-by-hop ones gone), whether a body
    follows, and the protocol of an Upgrade to pass through (WebSocket; not h2c, which
    Envoy drops too) - then ``connection: upgrade`` and ``upgrade`` are kept."""
    out = [(b"host", authority)]
    has_body = False
    listed: list[bytes] | None = None
    upgrade: bytes | None = None
    for pair in headers:
        name = pair[0]
        if name in _REQUEST_DROP:
            if name == b"connection":
                listed = [t.strip().lower() for t in pair[1].split(b",")]
            elif name == b"te" and pair[1].strip().lower() == b"trailers":
                out.append(pair)
            elif name == b"upgrade":
                upgrade = pair[1]
            continue
        if name == b"content-length":
            has_body = pair[1] != b"0"
        elif name == b"transfer-encoding":
            has_body = True
        out.append(pair)
    if listed and not _REQUEST_LISTED_GONE.issuperset(listed):
        out = [p for p in out if p[0] not in listed or p[0] == b"host"]
    if upgrade is not None:
        if listed is not None and b"upgrade" in listed and not has_body and upgrade.strip().lower() != b"h2c":
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", upgrade))
        else:
            upgrade = None
    return out, has_body, upgrade


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
    if listed and not _RESPONSE_DROP.issuperset(listed):  # "keep-alive" names nothing left
        out = [p for p in out if p[0] not in listed]
    if ops:
        out = apply_ops(ops, out)
    return out


def apply_ops(ops: HeaderOps, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ops.apply(text)]


class Exchange:
    """Progress of one request through ``forward``: what the caller reports and logs."""

    __slots__ = ("status", "head_sent", "request_done", "bytes_in", "bytes_out", "error", "peer", "extra_headers",
                 "response_headers", "grpc_status")

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
        self.extra_headers: list[tuple[bytes, bytes]] | None = None
        """Added to the response head (CORS, rate-limit headers), after the route's ops."""
        self.response_headers: Sequence[tuple[bytes, bytes]] = ()
        """The upstream response head's headers, as received (for the access log)."""
        self.grpc_status: int | None = None
        """A gRPC call's status (trailers, Trailers-Only head or local reply), for the metrics."""


async def forward(down: Downstream, head: Request, has_body: bool, pool: UpstreamPool, key: PoolKey,
                  connect_timeout: float, response_ops: HeaderOps = HeaderOps(),
                  idle_timeout: float | None = None, state: Exchange | None = None) -> Exchange:
    """Carry ``head`` (and the request body still on ``down``) to a connection for ``key``
    and the response back; see the module docstring for the failure contract."""
    return await forward_attempt(down, head, pool, key, connect_timeout, response_ops, idle_timeout, state)


async def forward_attempt(down: Downstream, head: Request, pool: UpstreamPool, key: PoolKey, connect_timeout: float,
                          response_ops: HeaderOps = HeaderOps(), idle_timeout: float | None = None,
                          state: Exchange | None = None, *, body: RequestBody | None = None,
                          accept: Accept | None = None, gate: ConnectionGate | None = None,
                          max_requests_per_connection: int = 0) -> Exchange:
    """``forward`` for one attempt of the retry layer: the body comes from (and is kept
    in) ``body``, ``accept`` sees the response head first, ``gate`` bounds the cluster's
    connections (circuit breaker), and a connection that has served
    ``max_requests_per_connection`` requests is closed instead of pooled."""
    state = state or Exchange()
    # Connect before touching the body: a connect failure leaves the request intact for
    # the caller to try another host.
    conn, reused = await pool.acquire(key, connect_timeout, gate)
    try:
        chunks, end = body.start(down) if body is not None else down.buffered_body()
    except BaseException:
        pool.release(conn, False)
        raise
    for attempt in (0, 1):
        state.peer = conn.peer
        try:
            await _send_head(conn, head, chunks, end, state)
            if end is not None:
                state.request_done = True
                await _relay_response(down, conn, response_ops, state, accept)
            else:
                await _relay_streaming(down, conn, response_ops, state, body, accept)
        except UpstreamResetError:
            pool.release(conn, False)
            if attempt == 0 and reused and state.status == 0 and end is not None:
                # A pooled connection that died while idle: once more, on a new one.
                state.bytes_in = 0
                conn, reused = await pool.acquire(key, connect_timeout, gate)
                continue
            raise
        except BaseException:
            pool.release(conn, False)
            raise
        conn.served += 1
        codec = conn.codec
        reusable = codec.our_state is DONE and codec.their_state is DONE
        if max_requests_per_connection and conn.served >= max_requests_per_connection:
            reusable = False  # connectionPool.http.maxRequestsPerConnection
        if reusable:
            codec.start_next_cycle()
        pool.release(conn, reusable, idle_timeout)
        break
    return state


async def forward_upgrade(down: Downstream, head: Request, conn: UpstreamConnection,
                          response_ops: HeaderOps = HeaderOps(), state: Exchange | None = None) -> Exchange:
    """An Upgrade request (WebSocket) on a connection of its own: on ``101`` both
    connections become one tunnel, spliced until either side ends; any other answer is
    relayed as a normal response. ``conn`` is consumed (closed) either way."""
    from ._tcpsplice import splice  # the tunnel half of an upgrade

    state = state or Exchange()
    try:
        chunks, end = down.buffered_body()
        await _send_head(conn, head, chunks, end, state)
        state.request_done = True
        ucodec = conn.codec
        while True:
            try:
                event = ucodec.next_event()
            except RemoteProtocolError as exc:
                raise UpstreamProtocolError(conn.address, exc.message) from None
            if event is NEED_DATA:
                try:
                    data = await conn.stream.receive_some(RECV_SIZE)
                except _BROKEN as exc:
                    raise UpstreamResetError(conn.address, f"{exc.__cause__ or exc}") from None
                ucodec.receive_data(data)
                continue
            kind = type(event)
            if kind is InformationalResponse and event.status == 101:  # type: ignore[union-attr]
                state.status = 101
                headers = [p for p in event.headers if p[0] not in _RESPONSE_DROP]  # type: ignore[union-attr]
                headers += [(b"connection", b"upgrade")] + [p for p in event.headers  # type: ignore[union-attr]
                                                            if p[0] == b"upgrade"]
                await down.send_bytes(down.codec.send(InformationalResponse(101, apply_ops(response_ops, headers)
                                                                            if response_ops else headers)))
                state.head_sent = True
                up_rest, _ = ucodec.trailing_data
                down_rest, _ = down.codec.trailing_data
                result = await splice(down.stream, conn.stream, a_prefix=down_rest, b_prefix=up_rest)
                state.bytes_in, state.bytes_out = result.sent, result.received
                return state
            if kind is InformationalResponse:
                continue
            if kind is Response:
                # Declined: an ordinary response, relayed as one (the codecs dropped the proposal).
                state.status = event.status  # type: ignore[union-attr]
                out = down.codec.send(Response(event.status, response_headers(event.headers, response_ops),  # type: ignore[union-attr]
                                               event.reason))  # type: ignore[union-attr]
                state.head_sent = True
                await down.send_bytes(out)
                await _relay_response(down, conn, response_ops, state)
                return state
            raise UpstreamResetError(conn.address, "connection closed before the response")
    finally:
        conn.close()


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


async def _relay_streaming(down: Downstream, conn: UpstreamConnection, ops: HeaderOps, state: Exchange,
                           body: RequestBody | None = None, accept: Accept | None = None) -> None:
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_body, down, conn, state, nursery.cancel_scope, body)
        try:
            await _relay_response(down, conn, ops, state, accept)
        except Exception as exc:  # raised below, not wrapped in the nursery's ExceptionGroup
            failure = exc
        finally:
            if not state.request_done:
                # The response ended (or failed) before the request body: stop sending it.
                # Neither connection can carry another exchange.
                conn.close()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if state.error is not None:
        raise state.error


async def _pump_body(down: Downstream, conn: UpstreamConnection, state: Exchange, scope: trio.CancelScope,
                     body: RequestBody | None = None) -> None:
    codec = conn.codec
    stream = conn.stream
    try:
        while True:
            event = await (body.next_event(down) if body is not None else down.next_event())
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


async def _relay_response(down: Downstream, conn: UpstreamConnection, ops: HeaderOps, state: Exchange,
                          accept: Accept | None = None) -> None:
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
            state.response_headers = event.headers  # type: ignore[union-attr]
            if accept is not None:
                accept(event)  # type: ignore[arg-type]
            headers = response_headers(event.headers, ops)  # type: ignore[union-attr]
            if state.extra_headers:
                headers += state.extra_headers
            out.append(dcodec.send(_new_response(event.status, headers, event.reason, b"1.1")))  # type: ignore[union-attr]
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
