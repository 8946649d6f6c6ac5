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
from ._events import InformationalResponse, Request, Response
from ._actions import HeaderOps
from ._exchange import (Downstream, DownstreamGone, Exchange, ResponseAborted, apply_ops, forward, request_headers,
                        serve_http1)
from ._match import RouteRequest, join_headers
from ._rescue import (DownstreamProtocolError, NoClusterError, NoHealthyUpstreamError, NoRouteError, ProxyError,
                      UpstreamConnectError, UpstreamOverflowError, UpstreamTimeoutError, rescue)
from ._balancer import NO_CONTEXT, PickContext
from ._fastio import FastSocketStream
from ._tcpsplice import splice
from ._upstream import UpstreamConnection, open_connection

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


def split_authority(authority: bytes, default_port: int = 80) -> tuple[str, int]:
    """``b"host:port"`` -> (host, port); brackets kept off IPv6 literals."""
    text = authority.decode("latin-1")
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return text, default_port


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
            headers, has_body = request_headers(req.headers, out_authority)
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
                                          dest.response_headers)
            else:
                with trio.move_on_at(started + timeout.seconds) as scope:
                    target = await self._send(down, head, has_body, cluster, decision, state, rr,
                                              dest.response_headers)
                if scope.cancelled_caught:
                    if state.head_sent:
                        return False
                    raise UpstreamTimeoutError(timeout.seconds)
        except ProxyError as exc:
            reply = rescue(exc)
            state.status = reply.status
            self.proxy.record_outbound(cluster, target, reply.status, reply.flags, started)
            log.debug("outbound %s %s: %s", req.method, req.target[:200], exc)
            try:
                return await down.rescue(reply)
            except DownstreamGone:
                return False
        except (ResponseAborted, DownstreamGone) as exc:
            log.debug("outbound %s %s: %s", req.method, req.target[:200], exc)
            self.proxy.record_outbound(cluster, target, state.status or 503, "UC", started)
            return False
        self.proxy.record_outbound(cluster, target, state.status, "-", started, peer=state.peer)
        return True

    async def _send(self, down: Downstream, head: Request, has_body: bool, cluster: ClusterConfig,
                    decision: object, state: Exchange, rr: RouteRequest, response_ops: HeaderOps) -> object:
        """Pick a host and carry the request there; connect failures move to another host."""
        balancer = cluster.balancer
        if balancer is None:
            raise NoHealthyUpstreamError(cluster.name)
        permit = None
        if cluster.limits_requests:
            permit = cluster.breaker.try_acquire(Resource.REQUESTS)
            if type(permit) is Overflow:
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
        """CONNECT: 200, then bytes both ways to the destination's sidecar over mTLS."""
        started = trio.current_time()
        down.request_complete()  # the CONNECT's (empty) end: the client now waits for our answer
        host_name, port = split_authority(req.target, 443)
        cluster = snap.tcp_cluster(host_name, port)
        try:
            if cluster is None:
                raise NoRouteError(host_name, "", port)
            conn = await self.proxy.connect_cluster(cluster)
        except ProxyError as exc:
            reply = rescue(exc)
            self.proxy.record_outbound(cluster, None, reply.status, reply.flags, started)
            try:
                await down.rescue(reply, close=True)
            except DownstreamGone:
                pass
            return
        try:
            await down.send_bytes(down.codec.send(Response(200, [])))
            prefix, _ = down.codec.trailing_data
            result = await splice(down.stream, conn.stream, a_prefix=prefix)
            log.debug("CONNECT %s closed: %s", req.target, result)
        except DownstreamGone:
            pass
        finally:
            await close_gracefully(conn)
        self.proxy.record_outbound(cluster, None, 200, "-", started)


async def close_gracefully(conn: UpstreamConnection, grace: float = 1.0) -> None:
    """Close with a TLS close_notify when possible (the far end then reads a clean EOF)."""
    with trio.move_on_after(grace) as scope:
        scope.shield = True
        try:
            await conn.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    conn.close()


async def serve_tcp_listener(proxy: Proxy, stream: FastSocketStream, host: str, port: int) -> None:
    """A per-port TCP listener: each connection spliced to ``host:port`` over mTLS."""
    snap = proxy.snapshot
    cluster = snap.tcp_cluster(host, port)
    started = trio.current_time()
    if cluster is None:
        log.warning("TCP listener for %s:%d: no such service in config version %s", host, port, snap.version)
        return
    try:
        conn = await proxy.connect_cluster(cluster)
    except ProxyError as exc:
        log.info("TCP %s:%d: %s", host, port, exc)
        proxy.record_outbound(cluster, None, 0, rescue(exc).flags, started, protocol="tcp")
        return
    try:
        await splice(stream, conn.stream)
    finally:
        await close_gracefully(conn)
    proxy.record_outbound(cluster, None, 0, "-", started, protocol="tcp")


async def open_to_cluster(proxy: Proxy, cluster: ClusterConfig) -> UpstreamConnection:
    """A new (unpooled) connection to a host of ``cluster``, trying other hosts on failure."""
    balancer = cluster.balancer
    if balancer is None:
        raise NoHealthyUpstreamError(cluster.name)
    ctx = PickContext()
    last: UpstreamConnectError | None = None
    for _ in range(1 + DEFAULT_RETRY_ATTEMPTS):
        host = balancer.pick(ctx)
        if host is None:
            break
        target = host.endpoint
        try:
            return await open_connection(target.pool_key, proxy.client_mtls if target.tls else None,
                                         cluster.timeouts.connect_timeout)
        except UpstreamConnectError as exc:
            target.stats.cx_connect_fail += 1
            last = exc
            ctx = ctx.excluding(host.key)
    if last is not None:
        raise last
    raise NoHealthyUpstreamError(cluster.name)
