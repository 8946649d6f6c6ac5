"""HTTP/2 from clients: connections served as ``H2Session``s, each stream a request.

Where a client's HTTP/2 arrives, and what each stream goes through:

* outbound ``:15001`` - h2c by prior knowledge (the connection opens with the preface),
  and the HTTP/2 inside a CONNECT tunnel to a service whose port protocol is
  ``http2``/``grpc`` (what grpcio sends through ``grpc_proxy``). Each stream is one
  request through the outbound stack (``OutboundH2.handle_stream``), routed by its own
  ``:authority`` and balanced on its own, never pinned to the tunnel;
* inbound ``:15006`` - the client sidecar's HTTP/2 over mTLS (ALPN ``h2``), or a
  plaintext preface under PERMISSIVE: each stream through the inbound handler
  (authorization, XFCC, rate limit) to the app.

gRPC's ``grpc-timeout`` is the caller's deadline: the outbound side gives up at that
moment (as Istio's routes do with ``maxStreamDuration.grpcTimeoutHeaderMax``), answers
Trailers-Only DEADLINE_EXCEEDED if nothing went back yet and resets the upstream stream.
A stream the client resets cancels its handler, which resets the upstream side; the
request is still reported, with flag ``DC``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ._events import Request, Role
from ._flags import ResponseFlag
from ._grpc import DEADLINE_EXCEEDED, grpc_timeout
from ._h2down import H2Downstream
from ._h2session import H2Session, H2Stream
from ._limits import HttpLimits
from ._outbound_request import OutboundRequest

if TYPE_CHECKING:
    from ._inbound import Caller, InboundListener
    from ._proxy import Proxy

log = logging.getLogger("meshfed.gateway.h2serve")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNIFF_TIMEOUT = 10.0
"""Seconds a tunnel or connection may take to show whether it opens with the HTTP/2 preface."""
_TIMEOUT_BODY = b"upstream request timeout"


def maybe_preface(data: bytes) -> bool:
    """``data`` could still turn out to be the HTTP/2 preface (it is a prefix of it, or starts with it)."""
    n = min(len(data), len(H2_PREFACE))
    return data[:n] == H2_PREFACE[:n]


async def read_preface(stream: trio.abc.Stream, first: bytes, timeout: float = SNIFF_TIMEOUT) -> bytes:
    """``first`` and what follows it, until it is known whether the HTTP/2 preface opens
    the stream (24 bytes, or a byte that differs); whatever was read, at EOF or timeout."""
    with trio.move_on_after(timeout):
        while len(first) < len(H2_PREFACE) and maybe_preface(first):
            more = await stream.receive_some(65536)
            if not more:
                break
            first += more
    return first


async def serve_h2(transport: trio.abc.Stream, prefix: bytes, limits: HttpLimits,
                   handler: Callable[[H2Stream], Awaitable[None]], *, name: str = "", peer: str = "") -> None:
    """Serve one client's HTTP/2 connection until it ends (``prefix``: bytes already read)."""
    idle = limits.idle_timeout.seconds if limits.idle_timeout is not None else None
    session = H2Session(transport, Role.SERVER, limits, handler=handler, prefix=prefix, idle_timeout=idle,
                        name=name, peer=peer)
    await session.run()


class OutboundH2:
    """Streams of an outbound HTTP/2 connection through the outbound stack."""

    def __init__(self, proxy: Proxy, remote: tuple[str, int]) -> None:
        self.proxy = proxy
        self.remote = remote

    async def handle_stream(self, stream: H2Stream) -> None:
        proxy = self.proxy
        snap = proxy.snapshot  # once: the request finishes on this snapshot
        req = await stream.receive()
        if type(req) is not Request:
            return
        down = H2Downstream(stream, req, self.remote)
        x = OutboundRequest(proxy, snap, down, down.request)  # type: ignore[arg-type]
        down.state = x.state
        stack = proxy.outbound.stack
        deadline = grpc_timeout(req.headers) if down.grpc else None
        reported = False
        try:
            if deadline is None:
                await stack.handle(x)
                reported = True
                return
            with trio.move_on_after(deadline) as scope:
                await stack.handle(x)
                reported = True
            if scope.cancelled_caught and not reported:
                await self._deadline_passed(x, down, deadline)
                reported = True
        finally:
            if not reported:  # the client reset its stream (or went away): Envoy's DC
                x.flags.append(ResponseFlag.DC)
                proxy.report.outbound_request(x)

    async def _deadline_passed(self, x: OutboundRequest, down: H2Downstream, seconds: float) -> None:
        from ._attempts import record_timeout  # the stack imports this module's neighbours

        log.debug("outbound %s %s: grpc-timeout of %gs passed", x.req.method, x.req.target[:200], seconds)
        record_timeout(x, self.proxy)
        x.flags.append(ResponseFlag.UT)
        x.details = "response_timeout"
        try:
            if not down.stream.sent_head:
                x.state.status = 504
                await down.local_reply(504, _TIMEOUT_BODY, grpc=DEADLINE_EXCEEDED)  # not 504's UNAVAILABLE
        finally:
            self.proxy.report.outbound_request(x)


async def serve_outbound_h2(proxy: Proxy, transport: trio.abc.Stream, prefix: bytes,
                            remote: tuple[str, int]) -> None:
    """An outbound connection (or CONNECT tunnel) that speaks HTTP/2."""
    await serve_h2(transport, prefix, proxy.snapshot.limits, OutboundH2(proxy, remote).handle_stream,
                   name=f"{remote[0]}:{remote[1]}")


async def serve_inbound_h2(listener: InboundListener, transport: trio.abc.Stream, prefix: bytes,
                           caller: Caller) -> None:
    """An inbound connection that speaks HTTP/2: each stream through ``listener.handle``."""
    async def handle_stream(stream: H2Stream) -> None:
        req = await stream.receive()
        if type(req) is not Request:
            return
        down = H2Downstream(stream, req, (caller.source_ip, 0))
        done = False
        started = trio.current_time()
        try:
            await listener.handle(down, down.request, caller)  # type: ignore[arg-type]
            done = True
        finally:
            if not done and caller.port is not None:
                listener.proxy.report.inbound_http(caller.peer, caller.port, 0, "DC", started)

    await serve_h2(transport, prefix, listener.proxy.snapshot.limits, handle_stream,
                   name=caller.source_ip, peer=caller.peer or "")
