"""One request of a client's HTTP/2 connection, as the request stack and the relay see it.

The outbound stack (``_layers``, ``_attempts``), the inbound handler and the relay were
written against an HTTP/1.1 ``Downstream``; ``H2Downstream`` gives a server ``H2Stream``
the few members they use - ``remote_ip``, ``buffered_body``/``next_event`` for the
request body, ``local_reply``/``rescue`` for answers the proxy makes itself - plus the
response half of a relay side (``send_head``, ``send_data``, ``send_end``).

* Body credit goes back to the client as the body is read from the stream: the reader
  reads the next chunk only after the previous one was taken upstream, so what a client
  can have in flight stays one stream window, however slow the upstream.
* A gRPC call's local reply is Trailers-Only: HTTP 200 and one HEADERS frame ending the
  stream with ``grpc-status`` (Envoy's mapping of the HTTP status, ``_rescue``) and the
  body text as ``grpc-message``; the Exchange then records 200 and that gRPC status, as
  Istio's metrics count it.
* An HTTP/2 request body without ``content-length`` is announced to the stack with
  ``transfer-encoding: chunked`` - what an HTTP/1.1 upstream needs, and what the HTTP/2
  codec drops on the way out - so "has a body" reads the same for both protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._downstream import DownstreamGone
from ._events import Data, EndOfMessage, Request, Response
from ._exchange import Exchange
from ._grpc import grpc_status, is_grpc, local_reply_headers
from ._h2relay import H1Downstream
from ._h2session import H2Stream
from ._rescue import LocalReply

_TEXT_PLAIN = (b"content-type", b"text/plain")
_CHUNKED = (b"transfer-encoding", b"chunked")


class _NoContinue:
    """HTTP/2 has no ``Expect: 100-continue`` dance for the proxy to answer."""

    __slots__ = ()
    they_are_waiting_for_100_continue = False


NO_CONTINUE = _NoContinue()


class H2Downstream:
    """A server stream and its request (see the module docstring)."""

    __slots__ = ("stream", "request", "remote_ip", "remote_port", "head_request", "grpc", "state", "codec")
    protocol = "HTTP/2"
    """The downstream protocol, as Envoy's ``%PROTOCOL%`` logs it (gRPC included)."""

    def __init__(self, stream: H2Stream, request: Request, remote: tuple[str, int] = ("", 0)) -> None:
        self.stream = stream
        self.remote_ip, self.remote_port = remote
        self.head_request = request.method == b"HEAD"
        self.grpc = is_grpc(request.headers)
        self.state: Exchange | None = None
        """The exchange this stream answers, once the handler made one (local replies record into it)."""
        self.codec = NO_CONTINUE
        if not stream.ended_in and not _has_framing(request.headers):
            request = Request(request.method, request.target, [*request.headers, _CHUNKED],
                              request.http_version, request.stream_id)
        self.request = request

    def __repr__(self) -> str:
        return f"<H2Downstream {self.stream!r} grpc={self.grpc}>"

    # -- the request body ------------------------------------------------------------------

    def buffered_body(self) -> tuple[list[Data], EndOfMessage | None]:
        chunks, end = self.stream.buffered_body()
        size = sum(len(c.data) for c in chunks)
        if size:
            self.stream.ack(size)
        return chunks, end

    async def next_event(self) -> object:
        """The next body event (Data or EndOfMessage); DownstreamGone if the client reset."""
        event = await self.stream.receive()
        if type(event) is Data:
            self.stream.ack(len(event.data))
        return event

    # -- the response ----------------------------------------------------------------------

    async def send_head(self, head: Response, end: bool = False) -> None:
        await self.stream.send_head(head, end)

    async def send_data(self, data: bytes, end: bool = False) -> None:
        await self.stream.send_data(data, end)

    async def send_end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        await self.stream.send_end(trailers)

    async def send_bytes(self, data: bytes) -> None:
        raise DownstreamGone("an HTTP/2 stream takes no HTTP/1.1 bytes")  # pragma: no cover - never asked

    # -- local replies ---------------------------------------------------------------------

    async def local_reply(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                          close: bool = False, grpc: int | None = None) -> bool:
        """Answer the request locally (Trailers-Only for gRPC, with ``grpc`` as its status
        when given, else the one ``status`` maps to); the connection always goes on."""
        stream = self.stream
        if self.grpc:
            given = grpc_status(headers) if status == 200 and grpc is None else None  # a fault's own grpc-status
            if given is None:
                fields = [*headers, *local_reply_headers(status, body, grpc)]
                given = grpc_status(fields)
            else:
                fields = [*headers, *(p for p in local_reply_headers(200, b"", given) if p[0] == b"content-type")]
            state = self.state
            if state is not None:
                state.status = 200
                state.grpc_status = given  # type: ignore[attr-defined]
            await stream.send_head(Response(200, fields), end=True)
            return True
        hs = [*headers, (b"content-length", b"%d" % len(body))]
        if body and not any(n == b"content-type" for n, _ in headers):
            hs.append(_TEXT_PLAIN)
        send_body = body and not self.head_request
        await stream.send_head(Response(status, hs), end=not send_body)
        if send_body:
            await stream.send_data(body, end=True)
        return True

    async def rescue(self, reply: LocalReply, close: bool = False) -> bool:
        """A rescue reply if no response head went out yet; False when it is too late."""
        if self.stream.sent_head:
            return False
        return await self.local_reply(reply.status, reply.body)


def _has_framing(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, _ in headers:
        if name == b"content-length" or name == b"transfer-encoding":
            return True
    return False


class H2DownSide(H1Downstream):
    """The relay's downstream side for an ``H2Downstream``: the body through the retry
    layer's replay buffer when there is one, the response onto the stream."""

    __slots__ = ()

    async def receive_body(self) -> Data | EndOfMessage:
        down: Any = self.down
        event = await (self.body.next_event(down) if self.body is not None else down.next_event())
        if type(event) is Data or type(event) is EndOfMessage:
            return event  # type: ignore[return-value]
        raise DownstreamGone("the client's stream ended in the middle of its request body")

    async def send_head(self, head: Response, end: bool = False) -> None:
        await self.down.stream.send_head(Response(head.status, head.headers, head.reason), end)  # type: ignore[attr-defined]

    async def send_data(self, data: bytes, end: bool = False) -> None:
        await self.down.stream.send_data(data, end)  # type: ignore[attr-defined]

    async def send_end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        await self.down.stream.send_end(trailers)  # type: ignore[attr-defined]
