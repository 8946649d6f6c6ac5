"""The sidecar's outbound side: the explicit-proxy listener (:15001) and TCP listeners.

What an app sends when it sets ``HTTP_PROXY=http://<sidecar>:15001``:

* absolute-form HTTP/1.1 requests, ``GET http://reviews.bookinfo.svc.cluster.local:9080/p
  HTTP/1.1``: routed by the snapshot's route table, sent over a pooled mTLS connection to
  the picked endpoint's sidecar in origin form, ``Host`` kept (rewritten only by a
  route's ``authority``);
* ``CONNECT host:port`` (TLS clients, and gRPC clients through ``grpc_proxy``): answered
  200, then the tunnel is spliced to the destination's sidecar over mTLS - unless the
  service port's protocol is ``http2``/``grpc`` and the tunnel opens with the HTTP/2
  preface: then the client sidecar terminates that HTTP/2 (``_h2serve``), and each stream
  is a request of its own through the stack below, as Envoy's sidecar would see it;
* h2c by prior knowledge (the connection opens with the HTTP/2 preface): each stream
  through the stack, routed by its ``:authority``.

A request is served by the stack ``build_outbound`` assembles (``_layers``, STYLE 5):
telemetry -> route match -> CORS -> faults -> weighted split -> rate limit -> mirror ->
route timeout -> retry -> per-try timeout -> balancer gated by breaker and outlier
detector -> pooled mTLS endpoint (``_exchange``). Failures anywhere become a reply in
``_rescue``, called from the telemetry layer; nothing else picks a status.

The snapshot is read once per request: a reload mid-request changes nothing for it.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

from ._events import Request
from ._downstream import Downstream, serve_http1
from ._layers import build_outbound
from ._outbound_request import LazyHeaders, OutboundRequest, request_id, split_target
from ._downstream import RECV_SIZE
from ._fastio import FastSocketStream
from ._h2serve import H2_PREFACE, read_preface, serve_outbound_h2
from ._tunnel import connect_tunnel

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._snapshot import Snapshot

log = logging.getLogger("meshfed.gateway.outbound")
__all__ = ["LazyHeaders", "OutboundHttp", "request_id", "split_target"]


class OutboundHttp:
    """The :15001 listener's connection handler."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.rng = random.Random()
        self.stack = build_outbound(proxy, self.rng)

    async def handle_connection(self, stream: FastSocketStream) -> None:
        snap = self.proxy.snapshot
        try:
            remote = stream.socket.getpeername()[:2]
        except OSError:
            return
        first = await self._first_bytes(stream)
        if first[:3] == b"PRI":  # the HTTP/2 preface, perhaps (HTTP/1.1 has no PRI method)
            first = await read_preface(stream, first)
            if first.startswith(H2_PREFACE):
                await serve_outbound_h2(self.proxy, stream, first, remote)
                return
        if not first:
            return
        down = Downstream(stream, snap.limits, remote, preread=first)
        await serve_http1(down, self.handle, self.proxy.idle)

    async def _first_bytes(self, stream: FastSocketStream) -> bytes:
        """The connection's first bytes, waited for under the idle watch like any request."""
        waiting = self.proxy.idle.waiting
        with trio.CancelScope() as scope:
            waiting[scope] = trio.current_time()
            try:
                return await stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            finally:
                waiting.pop(scope, None)
        return b""

    async def handle(self, down: Downstream, req: Request) -> bool:
        snap = self.proxy.snapshot  # once: the request finishes on this snapshot
        if req.method == b"CONNECT":
            await self._tunnel(down, req, snap)
            return False
        x = OutboundRequest(self.proxy, snap, down, req)
        await self.stack.handle(x)
        return x.keep_alive and x.state.status != 101

    async def _tunnel(self, down: Downstream, req: Request, snap: Snapshot) -> None:
        await connect_tunnel(self.proxy, down, req, snap)
