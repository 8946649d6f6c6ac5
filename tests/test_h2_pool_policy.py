"""A DestinationRule's ``connectionPool`` on the connections between sidecars: the HTTP/2
pool honours ``maxConnections``, ``http1MaxPendingRequests`` and
``maxRequestsPerConnection`` as the HTTP/1.1 pool does, both pools age connections out at
``maxConnectionDuration`` and set ``tcpKeepalive`` on their sockets, the cluster's
``idleTimeout`` closes idle HTTP/2 connections, and ``h2UpgradePolicy: UPGRADE`` carries
an http port's requests to the peer sidecar over HTTP/2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from gateway._events import Data, Request, Response, Role
from gateway._h2session import H2Session, H2Stream
from gateway._rescue import RESET_PREFIX
from gateway.testing import Pair, curl, start_pair
from test_chaos_apps import settle
from test_h2_pair import H2, Sink, server_key
from trustdomain.testing import MeshPki


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def dr(pool: str) -> str:
    return ("\n  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n"
            "    metadata: {name: echo, namespace: demo}\n"
            f"    spec: {{host: echo, trafficPolicy: {{connectionPool: {pool}}}}}")


async def h2_pair(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, pool: str) -> Pair:
    return await start_pair(nursery, pki, tmp_path, app_serve=Sink().serve, client_resources=dr(pool), **H2)


async def client_session(nursery: trio.Nursery, pair: Pair) -> H2Session:
    session = H2Session(await trio.open_tcp_stream(pair.addrs.client, 15001), Role.CLIENT)
    await nursery.start(session.run)
    return session


async def upload(session: H2Session, pair: Pair) -> H2Stream:
    """A POST whose body is left open: the stream stays busy until ``finish``."""
    stream = session.open_stream()
    await stream.send_head(Request(b"POST", b"/upload", [(b"host", b"%s:%d" % (
        pair.addrs.fqdn.encode(), pair.addrs.service_port))]))
    await stream.send_data(b"x" * 100)
    return stream


async def finish(stream: H2Stream) -> int:
    await stream.send_data(b"", end=True)
    head = await stream.receive()
    assert type(head) is Response
    while type(await stream.receive()) is Data:
        pass
    return head.status


async def get(pair: Pair, path: str = "/") -> str:
    code, out, err = await curl("-o", "/dev/null", "-w", "%{http_code}", "-x", pair.proxy_url, pair.url(path))
    assert code == 0, err
    return out


async def test_max_connections_and_requests_per_connection_bound_the_http2_pool(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pair = await h2_pair(nursery, pki, tmp_path, "{tcp: {maxConnections: 1}, "
                         "http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}")
    stats = pair.client.h2pool.stats
    with trio.fail_after(10):
        session = await client_session(nursery, pair)
        first = await upload(session, pair)  # the connection's one request: it drains
        while not stats or stats[server_key(pair)].rq_total < 1:
            await trio.sleep(0.01)
        second = await upload(session, pair)  # no connection may be opened: pending
        while not pair.client.snapshot.cluster(pair.addrs.fqdn, "", 8080).gate.waiting:
            await trio.sleep(0.01)
        third = await upload(session, pair)  # the pending queue is full: 503 UO at once
        head = await third.receive()
        body = b""
        while type(event := await third.receive()) is Data:
            body += event.data
        assert (head.status, body) == (503, RESET_PREFIX.encode() + b"overflow")
        assert await finish(first) == 200
        assert await finish(second) == 200  # went on once the first connection ended
        session.close()
    key = stats[server_key(pair)]
    assert (key.cx_total, key.rq_total, key.max_streams) == (2, 2, 1)


async def test_max_connection_duration_drains_old_connections_in_both_pools(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pool = "{tcp: {maxConnectionDuration: 0.3s}}"
    (tmp_path / "h2").mkdir()
    h2 = await h2_pair(nursery, pki, tmp_path / "h2", pool)
    h1 = await start_pair(nursery, pki, tmp_path, client_resources=dr(pool))
    for pair in (h2, h1):
        assert await get(pair, "/one") == "200"
    await trio.sleep(0.4)
    for pair in (h2, h1):
        assert await get(pair, "/two") == "200"
    h1_total = sum(s.cx_total for s in h1.client.pool.stats.values())
    h2_stats = h2.client.h2pool.stats[server_key(h2)]
    assert (h1_total, h2_stats.cx_total) == (2, 2)  # the old connections took no second request
    assert await settle(lambda: h2_stats.cx_active == 0 and not h1.client.pool.idle_count(), timeout=5)


async def test_idle_timeout_of_the_cluster_closes_an_idle_http2_connection(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pair = await h2_pair(nursery, pki, tmp_path, "{http: {idleTimeout: 0.2s}}")
    assert await get(pair) == "200"
    stats = pair.client.h2pool.stats[server_key(pair)]
    assert stats.cx_active == 1
    assert await settle(lambda: stats.cx_active == 0, timeout=5)


def keepalive_of(sock: socket.socket) -> tuple[int, ...]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


async def test_tcp_keepalive_is_set_on_upstream_sockets_of_both_pools(nursery: trio.Nursery, pki: MeshPki,
                                                                      tmp_path: Path) -> None:
    pool = "{tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}"
    (tmp_path / "h2").mkdir()
    h2 = await h2_pair(nursery, pki, tmp_path / "h2", pool)
    h1 = await start_pair(nursery, pki, tmp_path, client_resources=dr(pool))
    for pair in (h2, h1):
        assert await get(pair) == "200"
    [session] = h2.client.h2pool.sessions(server_key(h2))
    [conn] = [c for idle in h1.client.pool._idle.values() for c in idle]
    assert keepalive_of(session.transport.transport.socket) == (True, 7, 3, 4)
    assert keepalive_of(conn._raw.socket) == (True, 7, 3, 4)
    [to_app] = [c for idle in h1.server.pool._idle.values() for c in idle]
    assert keepalive_of(to_app._raw.socket)[0] is False  # the app's connection has no DestinationRule


@pytest.mark.parametrize("policy, over_h2", [("UPGRADE", True), ("DO_NOT_UPGRADE", False), ("DEFAULT", False)])
async def test_h2_upgrade_policy_decides_the_protocol_between_sidecars(nursery: trio.Nursery, pki: MeshPki,
                                                                       tmp_path: Path, policy: str,
                                                                       over_h2: bool) -> None:
    pair = await start_pair(nursery, pki, tmp_path, client_resources=dr(f"{{http: {{h2UpgradePolicy: {policy}}}}}"))
    for path in ("/a", "/b"):
        assert await get(pair, path) == "200"
    h2_requests = sum(s.rq_total for s in pair.client.h2pool.stats.values())
    h1_connections = sum(s.cx_total for s in pair.client.pool.stats.values())
    assert (h2_requests, h1_connections) == ((2, 0) if over_h2 else (0, 1))
    assert [s.target for s in pair.app.seen] == ["/a", "/b"]  # the app speaks HTTP/1.1 either way

