"""Misbehaving upstreams and a raw HTTP/1.1 client for the chaos tests (``test_chaos*.py``),
and the tests that show the upstreams misbehave as scripted.

A ``ChaosApp`` answers each request with the next action of its script (then its
default): ``ok`` (200 with JSON naming the app), a status code (``"500"``, ``"503"``),
``hang`` (never answers; reads on until the peer closes), ``reset`` (TCP RST instead of
an answer) or ``slow:<s>`` (200 after ``s`` seconds). It counts requests and the
connections it holds open, so a test can see that the proxy let go of them. ``fetch``
sends one request with ``connection: close`` and reads the whole answer, without curl,
so floods of concurrent requests stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from gateway._events import Data, EndOfMessage, Request, Response, Role
from gateway._http1 import NEED_DATA, Http1Connection
from gateway.testing import random_block


@dataclass
class ChaosApp:
    """A trio HTTP/1.1 upstream that misbehaves as its script says (module docstring)."""

    name: str = "chaos"
    script: list[str] = field(default_factory=list)
    default: str = "ok"
    requests: int = 0
    open_connections: int = 0
    hosts: list[str] = field(default_factory=list)
    """The ``host`` header of every request, in order."""
    bodies: list[str] = field(default_factory=list)
    """SHA-256 of every request body, in order."""

    async def serve(self, host: str, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        conn = Http1Connection(Role.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if type(event) is not Request:
                    return
                if not await self._answer(stream, conn, event):
                    return
                if conn.our_state.name != "DONE" or conn.their_state.name != "DONE":
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.SocketStream, conn: Http1Connection, req: Request) -> bool:
        digest = hashlib.sha256()
        while True:  # read the body, whatever the action
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if type(event) is EndOfMessage:
                break
            if type(event) is not Data:
                return False
            digest.update(event.data)
        self.requests += 1
        self.bodies.append(digest.hexdigest())
        self.hosts.append(next((v.decode() for n, v in req.headers if n == b"host"), ""))
        action = self.script.pop(0) if self.script else self.default
        if action == "hang":  # never answer, but notice the peer closing (leak checks count connections)
            while await stream.receive_some(65536):
                pass
            return False
        if action == "reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if action.startswith("slow:"):
            await trio.sleep(float(action[5:]))
            action = "ok"
        status = 200 if action == "ok" else int(action)
        body = json.dumps({"app": self.name, "n": self.requests}).encode()
        await stream.send_all(conn.send(Response(status, [(b"content-type", b"application/json"),
                                                          (b"content-length", b"%d" % len(body))]))
                              + conn.send(Data(body)) + conn.send(EndOfMessage()))
        return True


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(proxy: str, url: str, *, method: str = "GET", headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", timeout: float = 10.0, origin_form: bool = False) -> Reply:
    """One request through the explicit proxy at ``proxy`` (``host`` or ``host:port``,
    port 15001 by default) with ``connection: close``; the whole answer. ``origin_form``
    sends the path only (for a server rather than a proxy)."""
    host, _, port = proxy.partition(":")
    authority = url.split("/", 3)[2]
    target = "/" + url.split("/", 3)[3] if origin_form else url
    lines = [f"{method} {target} HTTP/1.1", f"host: {authority}", "connection: close",
             *(f"{n}: {v}" for n, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    started = trio.current_time()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, int(port or 15001))
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), parsed, rest, trio.current_time() - started)


async def start_apps(nursery: trio.Nursery, apps: Iterable[ChaosApp]) -> list[tuple[str, int]]:
    """Serve ``apps`` on addresses of a fresh 127.a.b block; their (address, port)s."""
    block = random_block()
    return [await nursery.start(app.serve, f"{block}.{10 + i}") for i, app in enumerate(apps)]


def direct_service(name: str, endpoints: Iterable[tuple[str, int]]) -> str:
    """A ``client_services`` entry: ``<name>.demo`` on port 8080, served by plaintext
    endpoints without sidecars (the client sidecar meets them directly)."""
    eps = ", ".join(f"{{address: {h}, port: {p}, proxyPort: 0, servicePort: 8080}}" for h, p in endpoints)
    return (f"\n  - hostname: {name}.demo.svc.cluster.local\n    namespace: demo\n"
            f"    ports: [{{name: web, port: 8080, protocol: http, targetPort: 8080}}]\n"
            f"    endpoints: [{eps}]")


def metric_lines(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of ``name`` in a Prometheus text page whose labels include ``labels``."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        body, _, value = line.rpartition(" ")
        found: dict[str, str] = {}
        if "{" in body:
            for part in body[body.index("{") + 1:body.rindex("}")].split('",'):
                k, _, v = part.partition('="')
                found[k.strip()] = v.rstrip('"')
        if all(found.get(k) == v for k, v in labels.items()):
            out.append((found, float(value)))
    return out


async def admin(address: str, path: str) -> str:
    """An admin page of the proxy at ``address`` (port 15000)."""
    reply = await fetch(f"{address}:15000", f"http://{address}:15000{path}", origin_form=True)
    assert reply.status == 200, reply
    return reply.body.decode()


def count_tasks() -> int:
    """Every task now running under trio's root task (leak checks)."""
    todo = [trio.lowlevel.current_root_task()]
    n = 0
    while todo:
        task = todo.pop()
        n += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return n


async def settle(predicate: Any, *, timeout: float = 5.0) -> bool:
    """Wait (polling, bounded) until ``predicate()`` holds; whether it did."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return True
    return bool(predicate())


# -- the apps misbehave as scripted ------------------------------------------------------

async def test_script_is_played_in_order_then_the_default(nursery: trio.Nursery) -> None:
    app = ChaosApp("a", ["503", "500"], default="ok")
    [(host, port)] = await start_apps(nursery, [app])
    statuses = []
    for _ in range(3):
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(4096):
                    data += chunk
        statuses.append(int(data.split()[1]))
    assert statuses == [503, 500, 200] and app.requests == 3


async def test_reset_sends_no_answer_and_hang_holds_the_connection(nursery: trio.Nursery) -> None:
    app = ChaosApp("a", ["reset"], default="hang")
    [(host, port)] = await start_apps(nursery, [app])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        try:
            assert await stream.receive_some(4096) == b""
        except trio.BrokenResourceError:
            pass  # ECONNRESET
        await stream.aclose()
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert await settle(lambda: app.requests == 2)
        assert app.open_connections == 1
        await stream.aclose()
        assert await settle(lambda: app.open_connections == 0)


def test_metric_lines_filter_by_labels() -> None:
    text = 'a_total{x="1",y="b"} 3\na_total{x="2",y="b"} 4\nab_total{x="1"} 9\n'
    assert metric_lines(text, "a_total", y="b") == [({"x": "1", "y": "b"}, 3.0), ({"x": "2", "y": "b"}, 4.0)]
    assert metric_lines(text, "a_total", x="2") == [({"x": "2", "y": "b"}, 4.0)]
