"""A client that hangs up while its request waits on an app that never answers: every
sidecar on the way lets go of its upstream connection and task, as Envoy resets the
upstream request when the downstream disconnects, and reports the request with ``DC``.

The unit tests drive ``IdleWatch.sweep_hung_up`` over socket pairs; the pair tests count
the app's open connections, the proxies' tasks and this process's file descriptors
(both sidecars run in it) before and after a flood of abandoned requests.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from gateway._downstream import IdleWatch, stream_fd
from gateway._fastio import FastSocketStream
from gateway.testing import start_pair
from test_chaos import CLUSTER, URL, flags_of, vs
from test_chaos_apps import ChaosApp, admin, count_tasks, metric_lines, settle
from trustdomain.testing import MeshPki

ABANDONED = 8


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the watch itself ------------------------------------------------------------------------

@pytest.mark.parametrize("peer_does, cancelled", [
    ("nothing", False),
    ("sends more", False),        # pipelined bytes are not a hang-up
    ("closes", True),             # FIN
    ("resets", True),             # RST
])
async def test_sweep_cancels_only_busy_connections_whose_client_hung_up(peer_does: str, cancelled: bool) -> None:
    ours, theirs = socket.socketpair()
    watch = IdleWatch(lambda: None)
    stream = FastSocketStream(ours)
    with trio.CancelScope() as scope:
        watch.busy[scope] = stream_fd(stream)
        if peer_does == "sends more":
            theirs.send(b"GET / HTTP/1.1\r\n")
        elif peer_does == "closes":
            theirs.close()
        elif peer_does == "resets":
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            theirs.close()
        assert watch.sweep_hung_up() == int(cancelled)
        await trio.lowlevel.checkpoint()  # where a cancelled connection's task stops
    assert (scope.cancelled_caught, len(watch.busy), watch.hung_up) == (cancelled, int(not cancelled), int(cancelled))
    ours.close()
    theirs.close()


def test_stream_fd_finds_the_socket_through_wrappers() -> None:
    from gateway._inbound import PrefixedStream
    a, b = socket.socketpair()
    stream = FastSocketStream(a)
    assert stream_fd(stream) == stream_fd(PrefixedStream(stream, b"x")) == a.fileno()
    assert stream_fd(object()) == -1
    a.close()
    b.close()


# -- through a sidecar pair ------------------------------------------------------------------

async def abandon(address: str, url: str, app: ChaosApp, seen: int) -> None:
    """Send one request to the client sidecar, wait until the app has it, hang up."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(address, 15001)
        authority = url.split("/")[2]
        await stream.send_all(f"GET {url}/abandoned HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
        while app.requests < seen:
            await trio.sleep(0.01)
        await stream.aclose()


async def test_abandoned_requests_to_a_hanging_app_leak_no_connection_task_or_fd(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo", ["ok"], default="hang")
    pair = await start_pair(nursery, pki, tmp_path, app=app)
    await abandon_then_warm(pair, app)
    tasks, fds = count_tasks(), open_fds()
    for i in range(ABANDONED):
        await abandon(pair.addrs.client, URL, app, seen=2 + i)
    assert app.requests == 1 + ABANDONED
    assert await settle(lambda: app.open_connections == 0, timeout=8), app.open_connections
    assert await settle(lambda: count_tasks() <= tasks, timeout=5), (count_tasks(), tasks)
    assert await settle(lambda: open_fds() <= fds, timeout=5), (open_fds(), fds)
    assert pair.client.idle.hung_up == ABANDONED and pair.server.idle.hung_up == ABANDONED
    assert await flags_of(pair) == {("200", "-"): 1.0, ("0", "DC"): float(ABANDONED)}
    text = await admin(pair.addrs.server, "/metrics")
    assert sum(v for _, v in metric_lines(text, "istio_requests_total", reporter="destination",
                                          response_flags="DC")) == ABANDONED


async def abandon_then_warm(pair: object, app: ChaosApp) -> None:
    """One answered request first: both sidecars hold a pooled connection at the baseline."""
    from test_chaos_apps import fetch
    reply = await fetch(pair.addrs.client, f"{URL}/warm")  # type: ignore[attr-defined]
    assert reply.status == 200 and app.open_connections == 1


async def test_a_route_timeout_at_the_client_sidecar_frees_the_app_connection_behind_the_server(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    from test_chaos_apps import fetch
    app = ChaosApp("echo", default="hang")
    pair = await start_pair(nursery, pki, tmp_path, app=app, client_resources=vs(
        "echo", "[{timeout: 0.2s, route: [{destination: {host: echo}}]}]"))
    for _ in range(3):
        assert (await fetch(pair.addrs.client, f"{URL}/")).status == 504
    assert await flags_of(pair) == {("504", "UT"): 3.0}
    assert await settle(lambda: app.open_connections == 0, timeout=8), app.open_connections
    assert await settle(lambda: sum(s.cx_active for s in pair.server.pool.stats.values()) == 0)
    assert pair.server.idle.hung_up == 3
    assert CLUSTER.endswith("echo.demo.svc.cluster.local")
