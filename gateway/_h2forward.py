"""One attempt of a request when either end speaks HTTP/2: the sides chosen, the relay run.

``_exchange`` carries HTTP/1.1 to HTTP/1.1; everything else comes here, from two places:

* the outbound stack's endpoint layer (``forward_attempt_h2``), when the cluster's port
  protocol is ``http2``/``grpc`` (a stream on a pooled HTTP/2 mTLS connection to the
  server's sidecar, ALPN ``h2``) or when the client itself spoke HTTP/2 (an ``H2Downstream``);
* the inbound side (``forward_to_app``), when the app's port protocol is ``http2``/``grpc``
  (a stream on a pooled h2c connection) or the caller spoke HTTP/2 to an HTTP/1.1 app.

The attempt contract is ``_exchange.forward_attempt``'s: the upstream is opened before the
request body is touched (a connect failure leaves the request intact for a retry),
``accept`` sees the response head before the client does, and a stream the upstream
refused unprocessed (REFUSED_STREAM, above a GOAWAY's last stream) - like a pooled
HTTP/1.1 connection that died while idle - is tried once more when the body is in memory.
The gRPC status read from the trailers (or a Trailers-Only head) lands in the Exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._exchange import Exchange
from ._h2down import H2Downstream, H2DownSide
from ._h2relay import H2_PROTOCOLS, H1Downstream, H1Upstream, exchange, h1_head, h2_key
from ._h2session import UpstreamRefusedError
from ._headerops import HeaderOps
from ._rescue import UpstreamResetError
from ._upstream import PoolKey

if TYPE_CHECKING:
    from ._outbound_request import OutboundRequest
    from ._proxy import Proxy

_NO_OPS = HeaderOps()


def needs_h2_relay(x: OutboundRequest) -> bool:
    """The endpoint layer's test: this attempt is not HTTP/1.1 at both ends."""
    return type(x.down) is H2Downstream or (x.cluster.speaks_h2 and not x.upgrade)  # type: ignore[union-attr]


def _down_side(down: Any, body: Any) -> H1Downstream:
    return H2DownSide(down, body) if type(down) is H2Downstream else H1Downstream(down, body)


async def forward_attempt_h2(x: OutboundRequest, proxy: Proxy) -> None:
    """The endpoint layer's attempt for ``needs_h2_relay`` requests (module docstring)."""
    target, cluster, dest = x.target, x.cluster, x.dest
    assert target is not None and cluster is not None and dest is not None and x.head is not None
    side = _down_side(x.down, x.body)
    timeout = cluster.timeouts.connect_timeout
    if cluster.speaks_h2 and (target.tls or cluster.protocol in H2_PROTOCOLS):  # UPGRADE: to sidecars only
        key = h2_key(target.address, target.port, target.sni if target.tls else "")
        await relay_h2(proxy, side, x.head, key, timeout, dest.response_headers, x.state, x.attempt_accept,
                       cluster.gate, cluster.timeouts.idle_timeout)
    else:
        await relay_h1(proxy, side, h1_head(x.head, x.has_body), target.pool_key, timeout, dest.response_headers,
                       x.state, x.attempt_accept, cluster.timeouts.idle_timeout, cluster.gate)


async def forward_to_app(proxy: Proxy, down: Any, head: Any, has_body: bool, address: str, port: int,
                         protocol: str, state: Exchange) -> None:
    """Inbound: the request (from an HTTP/1.1 connection or an HTTP/2 stream) to the app,
    over h2c when its port protocol says HTTP/2, else over HTTP/1.1."""
    side = _down_side(down, None)
    timeout = proxy.app_connect_timeout
    if protocol.upper() in H2_PROTOCOLS:
        await relay_h2(proxy, side, head, h2_key(address, port), timeout, _NO_OPS, state, None)
    else:
        await relay_h1(proxy, side, h1_head(head, has_body), (address, port, "", ""), timeout, _NO_OPS, state, None)


async def relay_h2(proxy: Proxy, side: H1Downstream, head: Any, key: PoolKey, connect_timeout: float,
                   ops: HeaderOps, state: Exchange, accept: Any, gate: Any = None,
                   idle_timeout: float | None = None) -> None:
    pool = proxy.h2pool
    stream = await pool.open_stream(key, connect_timeout, gate, idle_timeout)  # before the body: a failure leaves it intact
    try:
        chunks, end = side.buffered_body()
    except BaseException:
        stream.release()
        raise
    for attempt in (0, 1):
        try:
            state.peer = stream.peer
            state.grpc_status = await exchange(side, stream, head, chunks, end, ops, state, accept)  # type: ignore[attr-defined]
            return
        except UpstreamRefusedError:
            if attempt or state.head_sent or end is None:
                raise
            state.bytes_in = 0
        finally:
            stream.release()
        stream = await pool.open_stream(key, connect_timeout, gate, idle_timeout)


async def relay_h1(proxy: Proxy, side: H1Downstream, head: Any, key: PoolKey, connect_timeout: float,
                   ops: HeaderOps, state: Exchange, accept: Any, idle_timeout: float | None = None,
                   gate: Any = None) -> None:
    pool = proxy.pool
    conn, reused = await pool.acquire(key, connect_timeout, gate)
    try:
        chunks, end = side.buffered_body()
    except BaseException:
        pool.release(conn, False)
        raise
    for attempt in (0, 1):
        up = H1Upstream(pool, conn, reused, idle_timeout)
        try:
            state.peer = conn.peer
            state.grpc_status = await exchange(side, up, head, chunks, end, ops, state, accept)  # type: ignore[attr-defined]
            return
        except UpstreamResetError:
            if attempt or not reused or state.head_sent or state.status or end is None:
                raise
            state.bytes_in = 0  # a pooled connection that died while idle: once more, on a new one
        finally:
            up.release()
        conn, reused = await pool.acquire(key, connect_timeout, gate)
