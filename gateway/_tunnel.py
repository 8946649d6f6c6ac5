"""CONNECT tunnels and per-port TCP listeners: bytes spliced to a service over mTLS.

``CONNECT host:port`` (TLS clients, gRPC clients through ``grpc_proxy``) is answered 200
and the tunnel spliced to a host of the cluster the TCP routes pick; a per-port TCP
listener does the same for every connection it accepts. One exception: a tunnel to a
service port of protocol ``http2``/``grpc`` that opens with the HTTP/2 preface is not
spliced but served as HTTP/2 here (``_h2serve``), so that each stream is routed and
balanced on its own and carried on the pooled HTTP/2 connections between sidecars; a
tunnel carrying the client's own TLS (or anything else) stays a splice. Spliced
connections are new ones (never pooled), tried on up to three hosts when connecting
fails, and closed with a TLS close_notify so that the far side reads a clean end.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._balancer import PickContext
from ._downstream import Downstream, DownstreamGone
from ._events import Request, Response
from ._fastio import FastSocketStream
from ._h2relay import H2_PROTOCOLS
from ._h2serve import H2_PREFACE, read_preface, serve_outbound_h2
from ._rescue import NoHealthyUpstreamError, NoRouteError, ProxyError, UpstreamConnectError, rescue
from ._tcpsplice import splice
from ._upstream import UpstreamConnection, open_connection

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._snapshot import ClusterConfig, Snapshot

log = logging.getLogger("meshfed.gateway.tunnel")
CONNECT_ATTEMPTS = 3  # Istio's default retry policy: 2 retries on connect-failure


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


async def connect_tunnel(proxy: Proxy, down: Downstream, req: Request, snap: Snapshot) -> None:
    """CONNECT: 200, then bytes both ways to the destination's sidecar over mTLS."""
    down.request_complete()  # the CONNECT's (empty) end: the client now waits for our answer
    host_name, port = split_authority(req.target, 443)
    cluster = snap.tcp_cluster(host_name, port)
    prefix = b""
    if cluster is not None and cluster.protocol in H2_PROTOCOLS:
        try:
            await down.send_bytes(down.codec.send(Response(200, [])))
        except DownstreamGone:
            return
        prefix = await read_preface(down.stream, down.codec.trailing_data[0])
        if prefix.startswith(H2_PREFACE):
            log.debug("CONNECT %s: HTTP/2 inside, served here", req.target)
            await serve_outbound_h2(proxy, down.stream, prefix, (down.remote_ip, down.remote_port))
            return
        if not prefix:
            return
    try:
        if cluster is None:
            raise NoRouteError(host_name, "", port)
        conn = await proxy.connect_cluster(cluster)
    except ProxyError as exc:
        reply = rescue(exc)
        proxy.report.outbound_tcp(cluster, None, "", reply.flags)
        if not prefix:  # else the 200 went out already: closing is all that is left
            try:
                await down.rescue(reply, close=True)
            except DownstreamGone:
                pass
        return
    result = None
    try:
        if not prefix:
            await down.send_bytes(down.codec.send(Response(200, [])))
            prefix, _ = down.codec.trailing_data
        result = await splice(down.stream, conn.stream, a_prefix=prefix)
        log.debug("CONNECT %s closed: %s", req.target, result)
    except DownstreamGone:
        pass
    finally:
        await close_gracefully(conn)
    proxy.report.outbound_tcp(cluster, None, conn.peer, "-", result)


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
    if cluster is None:
        log.warning("TCP listener for %s:%d: no such service in config version %s", host, port, snap.version)
        return
    try:
        conn = await proxy.connect_cluster(cluster)
    except ProxyError as exc:
        log.info("TCP %s:%d: %s", host, port, exc)
        proxy.report.outbound_tcp(cluster, None, "", rescue(exc).flags)
        return
    try:
        result = await splice(stream, conn.stream)
    finally:
        await close_gracefully(conn)
    proxy.report.outbound_tcp(cluster, None, conn.peer, "-", result)


async def open_to_cluster(proxy: Proxy, cluster: ClusterConfig) -> UpstreamConnection:
    """A new (unpooled) connection to a host of ``cluster``, trying other hosts on failure."""
    picker = cluster.picker  # the balancer, without the hosts outlier detection ejected
    if cluster.balancer is None:
        raise NoHealthyUpstreamError(cluster.name)
    ctx = PickContext()
    last: UpstreamConnectError | None = None
    for _ in range(CONNECT_ATTEMPTS):
        host = picker.pick(ctx)
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
