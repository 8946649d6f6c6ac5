"""The inbound listener: TLS detection, PeerAuthentication modes, authorization, XFCC, TCP ports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from federation.apps import AppEnv, HttpServer, build_handler
from gateway._config import load_proxy_config_text
from gateway._inbound import PrefixedStream
from gateway.testing import EchoApp, Pair, curl, start_pair
from trustdomain.testing import MeshPki

SNI = "outbound_.8080_._.echo.demo.svc.cluster.local"


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def peer_auth(mode: str, extra: str = "") -> str:
    return (f"\n  - apiVersion: security.istio.io/v1\n    kind: PeerAuthentication\n"
            f"    metadata: {{name: default, namespace: demo}}\n    spec: {{mtls: {{mode: {mode}}}{extra}}}\n")


def authz(name: str, action: str, rules: str) -> str:
    return (f"\n  - apiVersion: security.istio.io/v1\n    kind: AuthorizationPolicy\n"
            f"    metadata: {{name: {name}, namespace: demo}}\n    spec: {{action: {action}, rules: {rules}}}\n")


async def openssl(pair: Pair, folder: Path, *, with_cert: bool, request: bytes = b"") -> tuple[int, str]:
    """``openssl s_client`` straight to the server sidecar's inbound port, SNI as a sidecar sends it."""
    certs = folder / "client-certs"
    args = ["openssl", "s_client", "-connect", f"{pair.addrs.server}:15006", "-servername", SNI, "-quiet",
            "-CAfile", str(certs / "root.pem"), "-verify_return_error"]
    if with_cert:
        args += ["-cert", str(certs / "cert.pem"), "-key", str(certs / "key.pem"), "-cert_chain",
                 str(certs / "chain.pem")]
    with trio.fail_after(10):
        done = await trio.run_process(args, stdin=request, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


async def plaintext(pair: Pair, path: str = "/", *args: str) -> tuple[int, str, str]:
    """curl straight to the inbound port in plaintext, as a caller outside the mesh would."""
    return await curl("-H", f"Host: echo.demo.svc.cluster.local:{pair.addrs.service_port}", *args,
                      f"http://{pair.addrs.server}:15006{path}")


GET = b"GET /direct HTTP/1.1\r\nHost: echo.demo.svc.cluster.local:8080\r\nConnection: close\r\n\r\n"


async def test_strict_refuses_openssl_without_a_client_certificate(nursery: trio.Nursery, pki: MeshPki,
                                                                    tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("STRICT"))
    code, out = await openssl(pair, tmp_path, with_cert=False, request=GET)
    assert "HTTP/1.1" not in out and ("error" in out or "errno" in out), out
    assert pair.app.seen == []
    assert pair.server.server_mtls is not None
    assert {r.value: n for r, n in pair.server.server_mtls.stats.refused.items()} == {"no_client_certificate": 1}
    assert pair.server.metrics.value("meshfed_tls_handshake_refused_total", reason="no_client_certificate") == 1


async def test_strict_accepts_openssl_with_a_mesh_certificate(nursery: trio.Nursery, pki: MeshPki,
                                                               tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("STRICT"))
    code, out = await openssl(pair, tmp_path, with_cert=True, request=GET)
    assert "HTTP/1.1 200 OK" in out
    seen = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert seen["target"] == "/direct"
    assert "URI=spiffe://east.example/ns/demo/sa/client" in seen["headers"]["x-forwarded-client-cert"]


async def test_strict_refuses_plaintext(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("STRICT"))
    code, _, err = await plaintext(pair)
    assert code in (52, 56), err  # empty reply / connection closed without a byte
    assert pair.app.seen == []
    assert pair.server.metrics.value("meshfed_tls_handshake_refused_total", reason="plaintext_under_strict") == 1
    code, out, err = await curl("-x", pair.proxy_url, pair.url("/mesh"))
    assert code == 0 and json.loads(out)["target"] == "/mesh"


async def test_permissive_takes_plaintext_and_mtls(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("PERMISSIVE"))
    code, out, err = await plaintext(pair, "/plain", "-H", "x-forwarded-client-cert: By=spiffe://forged")
    assert code == 0, err
    seen = json.loads(out)
    assert seen["target"] == "/plain" and "x-forwarded-client-cert" not in seen["headers"]
    code, out, err = await curl("-x", pair.proxy_url, pair.url("/mesh"))
    assert code == 0 and json.loads(out)["target"] == "/mesh"


async def test_disable_takes_plaintext_and_refuses_tls(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("DISABLE"))
    code, out, err = await plaintext(pair, "/plain")
    assert code == 0 and json.loads(out)["target"] == "/plain"
    code, out, err = await curl("-x", pair.proxy_url, "-w", " %{http_code}", pair.url("/mesh"))
    assert out.startswith("upstream connect error or disconnect/reset before headers. reset reason: connection failure, "
                          f"transport failure reason: {pair.addrs.server}:15006: TLS") and out.endswith(" 503"), out


async def test_port_level_mtls_overrides_the_workload_mode(nursery: trio.Nursery, pki: MeshPki,
                                                            tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=peer_auth("STRICT"))
    code, _, _ = await plaintext(pair, "/port")
    assert code in (52, 56)
    policy = peer_auth("STRICT", f", selector: {{matchLabels: {{app: echo}}}}, "
                                 f"portLevelMtls: {{{pair.addrs.app_port}: {{mode: PERMISSIVE}}}}")
    text = pair.server_config.read_text() + policy.replace("name: default", "name: echo").lstrip("\n") + "\n"
    config, diagnostics = load_proxy_config_text(text, str(pair.server_config))
    assert config is not None, [str(d) for d in diagnostics]
    assert [d for d in pair.server.apply(config) if d.is_error] == []
    code, out, err = await plaintext(pair, "/port")
    assert code == 0 and json.loads(out)["target"] == "/port"


DENY_ADMIN = authz("deny-admin", "DENY", "[{to: [{operation: {paths: [/admin*]}}]}]")
ALLOW_CLIENT = authz("allow-client", "ALLOW",
                     "[{from: [{source: {principals: [east.example/ns/demo/sa/client]}}]}]")


async def test_deny_policy_answers_403_rbac_access_denied(nursery: trio.Nursery, pki: MeshPki,
                                                          tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=DENY_ADMIN)
    code, out, err = await curl("-x", pair.proxy_url, "-w", " %{http_code}\n", pair.url("/admin/users"),
                                pair.url("/public"))
    assert code == 0, err
    denied, allowed = out.splitlines()[0], out.splitlines()[1]
    assert denied == "RBAC: access denied 403"
    assert json.loads(allowed.rpartition(" ")[0])["target"] == "/public"
    assert [s.target for s in pair.app.seen] == ["/public"]


async def test_allow_policy_by_principal_admits_mesh_caller_only(nursery: trio.Nursery, pki: MeshPki,
                                                                 tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, server_resources=ALLOW_CLIENT)
    code, out, _ = await curl("-x", pair.proxy_url, pair.url("/mesh"))
    assert code == 0 and json.loads(out)["target"] == "/mesh"
    code, out, _ = await plaintext(pair, "/anonymous", "-w", " %{http_code}")
    assert out == "RBAC: access denied 403"


async def test_tcp_port_is_spliced_and_authorized_per_connection(nursery: trio.Nursery, pki: MeshPki,
                                                                  tmp_path: Path) -> None:
    app = EchoApp()
    deny_tcp = authz("deny-client", "DENY", "[{from: [{source: {principals: [east.example/ns/demo/sa/client]}}]}]")
    pair = await start_pair(nursery, pki, tmp_path, app=app, app_protocol="tcp", service_protocol="tcp",
                            server_resources=peer_auth("PERMISSIVE"),
                            tcp_listeners="[{address: '{client}:19000', host: echo.demo.svc.cluster.local, port: 8080}]")
    code, out, err = await plaintext(pair, "/tcp-plain")
    assert code == 0 and json.loads(out)["target"] == "/tcp-plain"
    text = pair.server_config.read_text().replace(
        "resources:\n", "resources:" + deny_tcp.rstrip("\n") + "\n", 1)
    config, diagnostics = load_proxy_config_text(text, str(pair.server_config))
    assert config is not None, [str(d) for d in diagnostics]
    assert [d for d in pair.server.apply(config) if d.is_error] == []
    code, out, err = await curl(f"http://{pair.addrs.client}:19000/tcp-mesh")
    assert code in (52, 56), (code, out, err)
    assert [s.target for s in app.seen] == ["/tcp-plain"]


async def test_tls_client_hello_arriving_in_pieces_is_reassembled(nursery: trio.Nursery, pki: MeshPki,
                                                                   tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path)
    client_tls = pair.client.client_mtls
    assert client_tls is not None

    class Dribble(PrefixedStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            for i in range(0, len(data), 7):
                await self.transport_stream.send_all(data[i:i + 7])
                await trio.sleep(0.001)

    with trio.fail_after(10):
        raw = await trio.open_tcp_stream(pair.addrs.server, 15006)
        tls, peer = await client_tls.connect(Dribble(raw, b""), server_name=SNI)
        assert str(peer.spiffe_id) == "spiffe://east.example/ns/demo/sa/echo"
        await tls.send_all(GET)
        data = b""
        while chunk := await tls.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and pair.app.seen[0].target == "/direct"


async def h2c_app(host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The demo echo app: HTTP/1.1 and h2c on one port, and says which one it was spoken to in."""
    env = AppEnv(app="echo", cluster="east", locality="", version="v1", instance="echo-0", namespace="demo",
                 workload="echo")
    await HttpServer(build_handler(env), grace=0.5).serve(host, 0, task_status=task_status)  # type: ignore[arg-type]


async def test_http2_app_port_is_reached_over_h2c_whatever_the_caller_speaks(nursery: trio.Nursery, pki: MeshPki,
                                                                             tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, app_serve=h2c_app, app_protocol="http2",
                            service_protocol="http2", server_resources=peer_auth("PERMISSIVE"))
    code, out, err = await curl("-x", pair.proxy_url, pair.url("/mesh"))
    assert code == 0, err
    seen = json.loads(out)
    assert (seen["protocol"], seen["path"]) == ("HTTP/2", "/mesh")
    assert "URI=spiffe://east.example/ns/demo/sa/client" in seen["headers"]["x-forwarded-client-cert"]
    for args in ((), ("--http2-prior-knowledge",)):  # plaintext callers under PERMISSIVE, HTTP/1.1 and h2c
        code, out, err = await plaintext(pair, "/plain", *args)
        assert code == 0, err
        seen = json.loads(out)
        assert (seen["protocol"], seen["path"]) == ("HTTP/2", "/plain")
        assert "x-forwarded-client-cert" not in seen["headers"]


async def raw_echo(host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host=host)
    task_status.started(listeners[0].socket.getsockname()[:2])

    async def handle(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(4096):
            await stream.send_all(data)

    await trio.serve_listeners(handle, listeners)


async def test_tls_through_connect_to_a_grpc_port_is_spliced_to_the_app(nursery: trio.Nursery, pki: MeshPki,
                                                                         tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, app_serve=raw_echo, app_protocol="grpc",
                            service_protocol="grpc")
    hello = b"\x16\x03\x01\x00\x05hello, a ClientHello of the app's own TLS"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(pair.addrs.client, 15001)
        async with stream:
            await stream.send_all(b"CONNECT echo.demo.svc.cluster.local:8080 HTTP/1.1\r\n"
                                  b"Host: echo.demo.svc.cluster.local:8080\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n")
            await stream.send_all(hello)
            echoed = data.partition(b"\r\n\r\n")[2]
            while len(echoed) < len(hello):
                echoed += await stream.receive_some(4096)
    assert echoed == hello
