"""Request mirroring (Istio ``mirror``/``mirrors``, Envoy's request mirror policies).

A copy of the request - same method, target and headers, the authority's host with
``-shadow`` appended before the port, as Envoy writes it (``reviews:9080`` ->
``reviews-shadow:9080``), and the same body - goes to a host of the mirror cluster,
and its answer is read and thrown away. Fire-and-forget: the copy runs as its own task
in the proxy's nursery, after the request was routed, so it can neither delay nor change
the real response. At most ``max_in_flight`` copies run at once; beyond that a copy is
dropped and counted, so a slow or dead mirror costs bounded memory. Each copy is bounded
by ``timeout`` seconds (connect included) and never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from ._downstream import _BROKEN, RECV_SIZE
from ._events import ConnectionClosed, Data, EndOfMessage, Request, Response
from ._http1 import NEED_DATA

if TYPE_CHECKING:
    from ._clusters import ClusterConfig
    from ._outbound_request import OutboundRequest
    from ._proxy import Proxy
    from ._route_policy import MirrorConfig

log = logging.getLogger("meshfed.gateway.mirror")

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_TIMEOUT = 10.0


def shadow_authority(authority: bytes) -> bytes:
    """``host[:port]`` with ``-shadow`` appended to the host (Envoy ``shadowAppendedHost``)."""
    if authority.startswith(b"["):
        end = authority.find(b"]") + 1
        return authority[:end] + b"-shadow" + authority[end:]
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"


class Mirrors:
    """The proxy's mirror sender (see the module docstring)."""

    def __init__(self, proxy: Proxy, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.proxy = proxy
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.in_flight = 0
        self.sent = self.failed = self.dropped = 0

    def submit(self, x: OutboundRequest, mirrors: Sequence[MirrorConfig]) -> None:
        """Start a copy of ``x`` for each of ``mirrors``; never waits."""
        head, body = x.head, x.body
        nursery = self.proxy.nursery
        if head is None or nursery is None or x.rr is None:
            return
        headers = [(n, shadow_authority(v)) if n == b"host" else (n, v) for n, v in head.headers]
        copy = Request(head.method, head.target, headers)
        chunks = list(body.chunks) if body is not None else []
        for m in mirrors:
            cluster = x.snap.clusters.get(m.cluster_key(x.rr.port))
            if cluster is None:
                self._count(m.host, "failed")
                continue
            if self.in_flight >= self.max_in_flight:
                self.dropped += 1
                self._count(cluster.name, "dropped")
                continue
            self.in_flight += 1
            nursery.start_soon(self._send, cluster, copy, chunks)

    def _count(self, cluster: str, result: str) -> None:
        self.proxy.metrics.stat("meshfed_mirror_requests_total").labels(cluster, result).inc()

    async def _send(self, cluster: ClusterConfig, head: Request, chunks: list[Data]) -> None:
        ok = False
        try:
            with trio.move_on_after(self.timeout):
                ok = await self._exchange(cluster, head, chunks)
        except Exception as exc:  # noqa: BLE001 - a mirror's failure is counted, never raised into the proxy
            log.debug("mirror to %s: %s", cluster.name, exc)
        finally:
            self.in_flight -= 1
            if ok:
                self.sent += 1
            else:
                self.failed += 1
            self._count(cluster.name, "sent" if ok else "failed")

    async def _exchange(self, cluster: ClusterConfig, head: Request, chunks: list[Data]) -> bool:
        host = cluster.picker.pick()
        if host is None:
            return False
        target = host.endpoint
        pool = self.proxy.pool
        conn, _ = await pool.acquire(target.pool_key, cluster.timeouts.connect_timeout)
        reusable = False
        try:
            codec = conn.codec
            out = [codec.send(head)] + [codec.send(c) for c in chunks] + [codec.send(EndOfMessage())]
            await conn.stream.send_all(b"".join(out))
            status = 0
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    codec.receive_data(await conn.stream.receive_some(RECV_SIZE))
                    continue
                kind = type(event)
                if kind is Response:
                    status = event.status  # type: ignore[union-attr]
                elif kind is EndOfMessage:
                    break
                elif kind is ConnectionClosed:
                    return False
            reusable = codec.our_state is codec.their_state and codec.our_state.name == "DONE"
            if reusable:
                codec.start_next_cycle()
            return status > 0
        except _BROKEN:
            return False
        finally:
            pool.release(conn, reusable, cluster.timeouts.idle_timeout)

    def __repr__(self) -> str:
        return f"<Mirrors {self.in_flight} in flight, sent={self.sent} failed={self.failed} dropped={self.dropped}>"
