"""Pieces for tests and benchmarks of the data plane: a tiny trio HTTP app and sidecar configs.

``EchoApp`` answers every request with JSON describing what it received (method, target,
headers, body length and SHA-256) - bodies are streamed and hashed, never kept, so a
1 GiB upload costs the app nothing. Two paths do more: ``/bytes/<n>`` streams ``n``
bytes back, ``/delay/<ms>`` answers after a pause. ``sidecar_configs`` writes a client
sidecar and a server sidecar config for one service behind one app, with certificates
from a ``trustdomain.testing.MeshPki``, as YAML documents that ``fedctl proxy`` reads;
``start_pair`` runs the app and both sidecars in a nursery on a fresh 127.a.b block, and
``curl`` runs the real curl with a bound on its time.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._events import Data, EndOfMessage, Request, Response, Role
from ._http1 import NEED_DATA, Http1Connection

_CHUNK = b"x" * 65536


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int
    sha256: str


@dataclass
class EchoApp:
    """A trio HTTP/1.1 app for tests; ``seen`` lists the requests it answered."""

    name: str = "echo"
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    async def serve(self, host: str, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self.handle_connection, listeners)

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = Http1Connection(Role.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if type(event) is not Request:
                    return
                await self._answer(stream, conn, event)
                if conn.our_state.name != "DONE" or conn.their_state.name != "DONE":
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.SocketStream, conn: Http1Connection, req: Request) -> None:
        digest = hashlib.sha256()
        size = 0
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if type(event) is Data:
                digest.update(event.data)
                size += len(event.data)
                continue
            if type(event) is EndOfMessage:
                break
            return
        target = req.target.decode()
        headers = {n.decode(): v.decode("latin-1") for n, v in req.headers}
        seen = Seen(req.method.decode(), target, headers, size, digest.hexdigest())
        self.seen.append(seen)
        if target.startswith("/delay/"):
            await trio.sleep(int(target.split("/")[2]) / 1000)
        if target.startswith("/bytes/"):
            n = int(target.split("/")[2])
            await stream.send_all(conn.send(Response(200, [(b"content-length", b"%d" % n)])))
            while n:
                piece = _CHUNK[:min(n, len(_CHUNK))]
                await stream.send_all(conn.send(Data(piece)))
                n -= len(piece)
            await stream.send_all(conn.send(EndOfMessage()))
            return
        if req.method == b"HEAD":
            await stream.send_all(conn.send(Response(200, [(b"content-type", b"application/json"),
                                                            (b"content-length", b"42")]))
                                  + conn.send(EndOfMessage()))
            return
        body = json.dumps({"app": self.name, "method": seen.method, "target": target, "headers": headers,
                           "body_bytes": size, "sha256": seen.sha256}).encode()
        await stream.send_all(conn.send(Response(200, [(b"content-type", b"application/json"),
                                                        (b"content-length", b"%d" % len(body))]))
                              + conn.send(Data(body)) + conn.send(EndOfMessage()))


def random_block() -> str:
    """A random ``127.a.b`` prefix for one test's addresses, so tests never collide."""
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


@dataclass
class PairAddresses:
    client: str
    """The client-side sidecar (and its app)."""
    server: str
    """The server-side sidecar and the app behind it."""
    app_port: int
    service_port: int = 8080
    fqdn: str = "echo.demo.svc.cluster.local"


def sidecar_configs(pki: Any, folder: Path, addrs: PairAddresses, *, server_resources: str = "",
                    client_resources: str = "", app_protocol: str = "http", service_protocol: str = "http",
                    version: str = "1", extra_service_ports: str = "", tcp_listeners: str = "[]",
                    client_version: str = "1", client_services: str = "",
                    app_ports: str = "") -> tuple[Path, Path]:
    """Write certificates and the two sidecar configs into ``folder``; returns (client, server) paths.
    ``pki`` must have the trust domain ``east.example``."""
    client_certs = pki.write_svid(pki.svid("east.example", "demo", "client"), folder / "client-certs")
    server_certs = pki.write_svid(pki.svid("east.example", "demo", "echo"), folder / "server-certs")
    service = f"""
  - hostname: {addrs.fqdn}
    namespace: demo
    ports: [{{name: web, port: {addrs.service_port}, protocol: {service_protocol}, targetPort: {addrs.app_port}}}{extra_service_ports}]
    endpoints:
    - {{address: {addrs.server}, port: {addrs.app_port}, proxyPort: 15006, labels: {{app: echo, version: v1}},
       cluster: east, serviceAccount: echo}}"""

    def tls(certs: dict[str, Path]) -> str:
        return (f"  tls: {{cert: {certs['cert']}, key: {certs['key']}, chain: {certs['chain']}, "
                f"bundles: {{east.example: {certs['root']}}}}}")

    client = f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: client}}
spec:
  version: "{client_version}"
  node: {{cluster: east, namespace: demo, workload: client, serviceAccount: client, trustDomain: east.example,
          labels: {{app: client}}}}
  listeners:
    outbound: {addrs.client}:15001
    admin: {addrs.client}:15000
    tcp: {tcp_listeners}
{tls(client_certs)}
  services:{service}{client_services}
  resources:{client_resources or " []"}
"""
    server = f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: server}}
spec:
  version: "{version}"
  node: {{cluster: east, namespace: demo, workload: echo, serviceAccount: echo, trustDomain: east.example,
          labels: {{app: echo, version: v1}}}}
  listeners:
    inbound: {addrs.server}:15006
    admin: {addrs.server}:15000
  app:
    address: {addrs.server}
    ports: [{{port: {addrs.app_port}, protocol: {app_protocol}}}{app_ports}]
{tls(server_certs)}
  services:{service}
  resources:{server_resources or " []"}
"""
    (folder / "client.yaml").write_text(client)
    (folder / "server.yaml").write_text(server)
    return folder / "client.yaml", folder / "server.yaml"


@dataclass
class Pair:
    """A running sidecar pair around one EchoApp, all in the caller's nursery."""

    client: Any
    server: Any
    app: Any
    addrs: PairAddresses
    client_config: Path
    server_config: Path

    @property
    def proxy_url(self) -> str:
        return f"http://{self.addrs.client}:15001"

    def url(self, path: str = "/") -> str:
        return f"http://{self.addrs.fqdn}:{self.addrs.service_port}{path}"


async def start_pair(nursery: trio.Nursery, pki: Any, folder: Path, *, app: Any = None, app_serve: Any = None,
                     **config: Any) -> Pair:
    """Start ``app`` (an EchoApp by default; ``app_serve(host, task_status)`` for another
    server), a server sidecar in front of it and a client sidecar, on a fresh 127.a.b block.
    ``{client}`` in a config string stands for the client sidecar's address."""
    from ._config import load_proxy_config
    from ._proxy import Proxy

    block = random_block()
    app = app if app is not None else EchoApp()
    serve = app_serve or app.serve
    _, app_port = await nursery.start(serve, f"{block}.2")
    addrs = PairAddresses(f"{block}.1", f"{block}.2", app_port)
    config = {k: v.replace("{client}", addrs.client) if isinstance(v, str) else v for k, v in config.items()}
    client_path, server_path = sidecar_configs(pki, folder, addrs, **config)
    proxies = []
    for path in (server_path, client_path):
        loaded, diagnostics = load_proxy_config(str(path))
        assert loaded is not None, [str(d) for d in diagnostics]
        proxy = Proxy(loaded)
        await nursery.start(proxy.run)
        proxies.append(proxy)
    return Pair(proxies[1], proxies[0], app, addrs, client_path, server_path)


async def curl(*args: str, timeout: float = 20) -> tuple[int, str, str]:
    """Run the real ``curl`` (silent, errors shown); (exit code, stdout, stderr)."""
    with trio.fail_after(timeout):
        done = await trio.run_process(["curl", "-sS", "--max-time", str(timeout), *args], capture_stdout=True,
                                      capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


from ._eastwest_testing import Instance, Site, client_config, start_client, start_proxy, start_site  # noqa: E402,F401
