"""The upstream pool on loopback: reuse after release, stale idle connections, expiry, limits, mTLS + SNI."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from gateway._events import END_OF_MESSAGE, Request, Response
from gateway._http1 import NEED_DATA
from gateway._inbound import PrefixedStream
from gateway._rescue import UpstreamConnectError
from gateway._sni import NEED_DATA as HELLO_NEED_DATA
from gateway._sni import sniff_server_name
from gateway._upstream import UpstreamConnection, UpstreamPool, open_connection
from gateway.testing import EchoApp, random_block
from trustdomain import MtlsContexts
from trustdomain.testing import MeshPki


async def get(conn: UpstreamConnection, path: bytes = b"/") -> int:
    """One GET on ``conn``; the status. Leaves the codec ready for the next cycle."""
    codec = conn.codec
    await conn.stream.send_all(codec.send(Request(b"GET", path, [(b"host", b"app")])) + codec.send(END_OF_MESSAGE))
    status = 0
    while True:
        event = codec.next_event()
        if event is NEED_DATA:
            codec.receive_data(await conn.stream.receive_some(65536))
        elif type(event) is Response:
            status = event.status
        elif event == END_OF_MESSAGE:
            codec.start_next_cycle()
            return status


@pytest.fixture
async def app(nursery: trio.Nursery) -> tuple[EchoApp, tuple[str, int]]:
    echo = EchoApp()
    address = await nursery.start(echo.serve, f"{random_block()}.2")
    return echo, address


def key(address: tuple[str, int]) -> tuple[str, int, str, str]:
    return (address[0], address[1], "", "")


async def test_released_connection_is_reused(app: tuple[EchoApp, tuple[str, int]]) -> None:
    echo, address = app
    pool = UpstreamPool(lambda: None)
    with trio.fail_after(5):
        first, reused = await pool.acquire(key(address), 5)
        assert not reused and await get(first) == 200
        pool.release(first, True)
        second, reused = await pool.acquire(key(address), 5)
        assert reused and second is first and await get(second) == 200
        pool.release(second, True)
    assert echo.connections == 1
    assert pool.stats[key(address)].cx_total == 1 and pool.idle_count() == 1


async def test_not_reusable_release_closes(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    pool = UpstreamPool(lambda: None)
    with trio.fail_after(5):
        conn, _ = await pool.acquire(key(address), 5)
        pool.release(conn, False)
    assert conn.closed and pool.idle_count() == 0 and pool.stats[key(address)].cx_active == 0


async def test_idle_connection_closed_by_the_server_is_not_reused(nursery: trio.Nursery) -> None:
    accepted: list[trio.SocketStream] = []

    async def closing_server(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, closing_server, 0, host=f"{random_block()}.3"))
    address = listeners[0].socket.getsockname()[:2]
    pool = UpstreamPool(lambda: None)
    with trio.fail_after(5):
        conn, _ = await pool.acquire(key(address), 5)
        while not accepted:
            await trio.sleep(0.01)
        await trio.sleep(0.05)  # the FIN arrives
        pool.release(conn, True)
        fresh, reused = await pool.acquire(key(address), 5)
    assert conn.closed and fresh is not conn and not reused


async def test_idle_connections_expire(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    now = [100.0]
    pool = UpstreamPool(lambda: None, idle_timeout=30, clock=lambda: now[0])
    with trio.fail_after(5):
        conn, _ = await pool.acquire(key(address), 5)
    pool.release(conn, True)
    now[0] = 129.0
    assert pool.expire(now[0]) == 0 and not conn.closed
    now[0] = 130.0
    assert pool.expire(now[0]) == 1 and conn.closed and pool.idle_count() == 0


async def test_per_release_idle_timeout_overrides_the_pool_default(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    pool = UpstreamPool(lambda: None, idle_timeout=30, clock=lambda: 0.0)
    with trio.fail_after(5):
        conn, _ = await pool.acquire(key(address), 5)
    pool.release(conn, True, idle_timeout=2)
    assert pool.expire(2.0) == 1


async def test_at_most_max_idle_per_key_are_kept(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    pool = UpstreamPool(lambda: None, max_idle_per_key=2)
    with trio.fail_after(5):
        conns = [(await pool.acquire(key(address), 5))[0] for _ in range(3)]
    for c in conns:
        pool.release(c, True)
    assert pool.idle_count(key(address)) == 2 and conns[2].closed


async def test_reaper_closes_idle_connections_when_cancelled(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    pool = UpstreamPool(lambda: None)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            conn, _ = await pool.acquire(key(address), 5)
            pool.release(conn, True)
            nursery.cancel_scope.cancel()
    assert conn.closed and pool.idle_count() == 0


async def test_refused_connection_names_the_address() -> None:
    host = f"{random_block()}.4"
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        pool = UpstreamPool(lambda: None)
        with trio.fail_after(5), pytest.raises(UpstreamConnectError) as info:
            await pool.acquire((host, port, "", ""), 5)
    assert info.value.address == f"{host}:{port}" and info.value.reason == "Connection refused"
    assert pool.stats[(host, port, "", "")].cx_connect_fail == 1


async def test_mtls_connection_sends_the_sni_and_verifies_the_server(nursery: trio.Nursery) -> None:
    pki = MeshPki.shared_root("east.example")
    server_tls = MtlsContexts(pki.svid("east.example", "demo", "echo"), pki.bundles())
    client_tls = MtlsContexts(pki.svid("east.example", "demo", "client"), pki.bundles(), alpn=("http/1.1",))
    seen: list[object] = []

    async def tls_server(stream: trio.SocketStream) -> None:
        data = b""
        while (name := sniff_server_name(data)) is HELLO_NEED_DATA:
            data += await stream.receive_some(65536)
        seen.append(name)
        tls, peer = await server_tls.accept(PrefixedStream(stream, data))
        seen.append(str(peer.spiffe_id))
        await tls.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, tls_server, 0, host=f"{random_block()}.5"))
    host, port = listeners[0].socket.getsockname()[:2]
    sni = "outbound_.8080_._.echo.demo.svc.cluster.local"
    with trio.fail_after(5):
        conn = await open_connection((host, port, sni, "http/1.1"), client_tls, 5)
        assert conn.peer == "spiffe://east.example/ns/demo/sa/echo"
        while len(seen) < 2:
            await trio.sleep(0.01)
        conn.close()
    assert seen == [sni, "spiffe://east.example/ns/demo/sa/client"]


async def test_server_from_another_trust_domain_is_refused(nursery: trio.Nursery) -> None:
    pki = MeshPki.independent_roots("east.example", "evil.example")
    server_tls = MtlsContexts(pki.svid("evil.example", "demo", "echo"), pki.bundles())
    client_tls = MtlsContexts(pki.svid("east.example", "demo", "client"), pki.bundles("east.example"))

    async def tls_server(stream: trio.SocketStream) -> None:
        try:
            await server_tls.accept(stream)
        except Exception:  # noqa: BLE001 - the client refuses us; nothing to check here
            pass

    listeners = await nursery.start(partial(trio.serve_tcp, tls_server, 0, host=f"{random_block()}.6"))
    host, port = listeners[0].socket.getsockname()[:2]
    with trio.fail_after(5), pytest.raises(UpstreamConnectError) as info:
        await open_connection((host, port, "outbound_.1_._.x", "h2"), client_tls, 5)
    assert info.value.reason.startswith(("TLS peer refused", "TLS handshake failed"))


async def test_cancelled_connect_leaves_no_open_count(app: tuple[EchoApp, tuple[str, int]]) -> None:
    _, address = app
    pool = UpstreamPool(lambda: None)
    with trio.CancelScope() as scope:
        scope.cancel()
        await pool.acquire(key(address), 5)
    assert pool.stats.get(key(address)) is None or pool.stats[key(address)].cx_active == 0
