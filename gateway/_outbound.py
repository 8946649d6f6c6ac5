"""The sidecar's outbound side: the explicit-proxy listener (:15001) and TCP listeners.

What an app sends when it sets ``HTTP_PROXY=http://<sidecar>:15001``:

* absolute-form HTTP/1.1 requests, ``GET http://reviews.bookinfo.svc.cluster.local:9080/p
  HTTP/1.1``: routed by the snapshot's route table, sent over a pooled mTLS connection to
  the picked endpoint's sidecar in origin form, ``Host`` kept (rewritten only by a
  route's ``authority``);
* ``CONNECT host:port`` (TLS clients, and gRPC clients through ``grpc_proxy``): answered
  200, then the tunnel is spliced to the destination's sidecar over mTLS. The bytes are
  not looked at: an HTTP/2 client (gRPC) is spliced as is, so its streams are neither
  routed per request nor balanced per request - one tunnel, one endpoint.

A request is served by a short stack assembled in ``OutboundHttp.handle`` (STYLE 5):
route match -> local replies (redirect, direct response) -> weighted destination ->
cluster -> balancer (retrying connect failures on another host) -> breaker -> route
timeout -> pooled connection -> ``_exchange.forward``. Failures anywhere become a reply
in ``_rescue``; nothing here picks a status.

The snapshot is read once per request: a reload mid-request changes nothing for it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import trio

from ._breaker import Overflow, Resource
from ._events import InformationalResponse, Request
from ._headerops import HeaderOps
from ._downstream import Downstream, DownstreamGone, serve_http1
from ._exchange import Exchange, ResponseAborted, apply_ops, forward, forward_upgrade, request_headers
from ._match import RouteRequest, join_headers
from ._rescue import (DownstreamProtocolError, NoClusterError, NoHealthyUpstreamError, NoRouteError, ProxyError,
                      UpstreamConnectError, UpstreamOverflowError, UpstreamTimeoutError, rescue)
from ._balancer import NO_CONTEXT, PickContext
from ._fastio import FastSocketStream
from ._tunnel import connect_tunnel, split_authority
from ._upstream import open_connection

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._snapshot import ClusterConfig, Snapshot

log = logging.getLogger("meshfed.gateway.outbound")

DEFAULT_RETRY_ATTEMPTS = 2  # Istio's default retry policy: 2 attempts, connect-failure among retryOn
_CONTINUE = InformationalResponse(100)
_XFP = (b"x-forwarded-proto", b"http")


class LazyHeaders(Mapping[str, str]):
    """Request headers as routing reads them (lower-case str names, repeated values joined
    with ``,``), decoded only if a route condition asks for a header."""

    __slots__ = ("_pairs", "_map")

    def __init__(self, pairs: object) -> None:
        self._pairs = pairs
        self._map: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        m = self._map
        if m is None:
            m = self._map = join_headers((n.decode("latin-1"), v.decode("latin-1"))
                                         for n, v in self._pairs)  # type: ignore[attr-defined]
        return m

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return self._get().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._get()


def split_target(target: bytes, headers: object) -> tuple[bytes, bytes]:
    """(authority, path-and-query) of an absolute-form or origin-form request target."""
    if target[:7].lower() == b"http://":
        rest = target[7:]
        cut = len(rest)
        for sep in (b"/", b"?"):
            i = rest.find(sep)
            if 0 <= i < cut:
                cut = i
        authority, path = rest[:cut], rest[cut:]
        if not path.startswith(b"/"):
            path = b"/" + path
        if not authority:
            raise DownstreamProtocolError(f"request target {target!r} names no host")
        return authority, path
    if target.startswith(b"/"):
        for name, value in headers:  # type: ignore[attr-defined]
            if name == b"host":
                return value, target
        raise DownstreamProtocolError("origin-form request without a Host header")
    raise DownstreamProtocolError(f"request target {target[:200]!r} is neither absolute-form http:// nor origin-form")


def request_id() -> bytes:
    """A random UUID (version 4) for ``x-request-id``, as Envoy makes one."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex().encode()
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class OutboundHttp:
    """The :15001 listener's connection handler."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.rng = random.Random()

    async def handle_connection(self, stream: FastSocketStream) -> None:
        snap = self.proxy.snapshot
        try:
            remote = stream.socket.getpeername()[:2]
        except OSError:
            return
        down = Downstream(stream, snap.limits, remote)
        await serve_http1(down, self.handle, self.proxy.idle)

    async def handle(self, down: Downstream, req: Request) -> bool:
        snap = self.proxy.snapshot  # once: the request finishes on this snapshot
        if req.method == b"CONNECT":
            await self._tunnel(down, req, snap)
            return False
        started = trio.current_time()
        state = Exchange()
        cluster: ClusterConfig | None = None
        target = None
        try:
            authority, path_q = split_target(req.target, req.headers)
            if down.codec.they_are_waiting_for_100_continue:
                await down.send_bytes(down.codec.send(_CONTINUE))
            host_name, port = split_authority(authority)
            path, _, query = path_q.partition(b"?")
            rr = RouteRequest(req.method.decode("latin-1"), "http", authority.decode("latin-1"),
                              path.decode("latin-1"), query.decode("latin-1"), LazyHeaders(req.headers), port)
            decision = snap.routes.route(rr)
            if decision is None:
                raise NoRouteError(rr.authority, rr.path, port)
            action = decision.action
            kind = action.kind
            if kind == "redirect":
                state.status = action.status  # type: ignore[union-attr]
                headers = [(b"location", action.location(rr).encode("latin-1"))]  # type: ignore[union-attr]
                return await down.local_reply(action.status, b"", headers)  # type: ignore[union-attr]
            if kind == "direct_response":
                state.status = action.status  # type: ignore[union-attr]
                return await down.local_reply(action.status, action.body)  # type: ignore[union-attr]
            dest = action.pick(self.rng)  # type: ignore[union-attr]
            cluster = snap.clusters.get((dest.host, dest.subset or "", dest.port_for(port)))
            if cluster is None:
                raise NoClusterError(dest.cluster)
            out_authority = dest.authority.encode("latin-1") if dest.authority else authority
            headers, has_body, upgrade = request_headers(req.headers, out_authority)
            headers.append(_XFP)
            if not any(n == b"x-request-id" for n, _ in headers):
                headers.append((b"x-request-id", request_id()))
            if dest.request_headers:
                headers = apply_ops(dest.request_headers, headers)
            rewrite = action.rewrite  # type: ignore[union-attr]
            new_target = rewrite.apply(rr.path, rr.query).encode("latin-1") if rewrite is not None else path_q
            head = Request(req.method, new_target, headers)
            timeout = decision.timeout
            if timeout is None or timeout.nanos <= 0:
                target = await self._send(down, head, has_body, cluster, decision, state, rr,
                                          dest.response_headers, upgrade is not None)
            else:
                with trio.move_on_at(started + timeout.seconds) as scope:
                    target = await self._send(down, head, has_body, cluster, decision, state, rr,
                                              dest.response_headers, upgrade is not None)
                if scope.cancelled_caught:
                    if state.head_sent:
                        return False
                    raise UpstreamTimeoutError(timeout.seconds)
        except ProxyError as exc:
            reply = rescue(exc)
            state.status = reply.status
            self.proxy.report.outbound_http(cluster, target, state.peer, reply.status, reply.flags, started,
                                            state.bytes_in, state.bytes_out)
            log.debug("outbound %s %s: %s", req.method, req.target[:200], exc)
            try:
                return await down.rescue(reply)
            except DownstreamGone:
                return False
        except (ResponseAborted, DownstreamGone) as exc:
            log.debug("outbound %s %s: %s", req.method, req.target[:200], exc)
            self.proxy.report.outbound_http(cluster, target, state.peer, state.status,
                                            "UC" if isinstance(exc, ResponseAborted) else "DC", started,
                                            state.bytes_in, state.bytes_out)
            return False
        self.proxy.report.outbound_http(cluster, target, state.peer, state.status, "-", started, state.bytes_in,
                                        state.bytes_out)
        return state.status != 101

    async def _send(self, down: Downstream, head: Request, has_body: bool, cluster: ClusterConfig,
                    decision: object, state: Exchange, rr: RouteRequest, response_ops: HeaderOps,
                    upgrade: bool = False) -> object:
        """Pick a host and carry the request there; connect failures move to another host."""
        balancer = cluster.balancer
        if balancer is None:
            raise NoHealthyUpstreamError(cluster.name)
        permit = None
        if cluster.limits_requests:
            permit = cluster.breaker.try_acquire(Resource.REQUESTS)
            if type(permit) is Overflow:
                self.proxy.metrics.record_overflow(cluster.name, permit)
                raise UpstreamOverflowError(cluster.name, "requests")
        retries = decision.retries  # type: ignore[attr-defined]
        attempts = 1 + (retries.attempts if retries is not None else DEFAULT_RETRY_ATTEMPTS)
        ctx = NO_CONTEXT
        if cluster.hash_policy is not None:
            ctx = PickContext(cluster.hash_policy.decide(headers=head.headers, query=rr.query,
                                                         source_ip=down.remote_ip).hash)
        pool = self.proxy.pool
        try:
            for attempt in range(attempts):
                host = balancer.pick(ctx)
                if host is None:
                    raise NoHealthyUpstreamError(cluster.name)
                target = host.endpoint
                stats = target.stats
                stats.rq_total += 1
                stats.rq_active += 1
                balancer.on_request_start(host)
                try:
                    if upgrade:  # WebSocket: a connection of its own, a tunnel after 101
                        conn = await open_connection(target.pool_key, self.proxy.client_mtls if target.tls else None,
                                                     cluster.timeouts.connect_timeout)
                        await forward_upgrade(down, head, conn, response_ops, state)
                    else:
                        await forward(down, head, has_body, pool, target.pool_key, cluster.timeouts.connect_timeout,
                                      response_ops, cluster.timeouts.idle_timeout, state)
                    stats.rq_success += 1
                    return target
                except UpstreamConnectError:
                    stats.cx_connect_fail += 1
                    stats.rq_error += 1
                    if attempt + 1 >= attempts:
                        raise
                    ctx = ctx.excluding(host.key)
                except BaseException:
                    stats.rq_error += 1
                    raise
                finally:
                    stats.rq_active -= 1
                    balancer.on_request_end(host)
        finally:
            if permit is not None:
                permit.release()  # type: ignore[union-attr]
        raise AssertionError("unreachable")  # pragma: no cover

    async def _tunnel(self, down: Downstream, req: Request, snap: Snapshot) -> None:
        await connect_tunnel(self.proxy, down, req, snap)
