"""A client sidecar and a server sidecar on loopback, mTLS between them, the real curl in front."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway._config import load_proxy_config, load_proxy_config_text
from gateway._xfcc import parse as parse_xfcc
from gateway.testing import EchoApp, Pair, curl, start_pair
from trustdomain.testing import MeshPki

BIG_MB = int(os.environ.get("MESHFED_PAIR_BODY_MB", "64"))


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


@pytest.fixture
async def pair(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> Pair:
    return await start_pair(nursery, pki, tmp_path)


async def through(pair: Pair, path: str, *args: str) -> dict:
    code, out, err = await curl("-x", pair.proxy_url, *args, pair.url(path))
    assert code == 0, err
    return json.loads(out)


async def test_get_reaches_the_app_with_host_kept_and_origin_form(pair: Pair) -> None:
    seen = await through(pair, "/hello?x=1")
    assert seen["method"] == "GET" and seen["target"] == "/hello?x=1"
    assert seen["headers"]["host"] == f"echo.demo.svc.cluster.local:{pair.addrs.service_port}"
    assert len(seen["headers"]["x-request-id"]) == 36 and seen["headers"]["x-forwarded-proto"] == "http"
    assert "proxy-connection" not in seen["headers"]


async def test_app_learns_the_caller_from_xfcc_as_istio_sets_it(pair: Pair) -> None:
    seen = await through(pair, "/", "-H", "x-forwarded-client-cert: By=spiffe://evil/ns/x/sa/y;URI=spiffe://evil")
    elements = parse_xfcc(seen["headers"]["x-forwarded-client-cert"])
    assert len(elements) == 1
    assert elements[0]["by"] == ["spiffe://east.example/ns/demo/sa/echo"]
    assert elements[0]["uri"] == ["spiffe://east.example/ns/demo/sa/client"]
    assert len(elements[0]["hash"][0]) == 64


async def test_post_body_arrives_whole(pair: Pair, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    (tmp_path / "body").write_bytes(body)
    seen = await through(pair, "/post", "--data-binary", f"@{tmp_path / 'body'}")
    assert seen["method"] == "POST" and seen["body_bytes"] == len(body)
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"]["content-length"] == str(len(body))


async def test_chunked_upload_arrives_whole_and_chunked(pair: Pair, tmp_path: Path) -> None:
    body = os.urandom(200_001)
    (tmp_path / "body").write_bytes(body)
    seen = await through(pair, "/upload", "-H", "Transfer-Encoding: chunked", "--data-binary",
                         f"@{tmp_path / 'body'}")
    assert seen["body_bytes"] == len(body) and seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"]["transfer-encoding"] == "chunked"


async def test_keep_alive_carries_several_requests_on_pooled_connections(pair: Pair) -> None:
    code, out, err = await curl("-v", "-w", "\n", "-x", pair.proxy_url, pair.url("/a"), pair.url("/b"),
                                pair.url("/c"))
    assert code == 0, err
    assert [json.loads(line)["target"] for line in out.splitlines()] == ["/a", "/b", "/c"]
    assert err.count("Re-using existing connection") == 2
    pool = pair.client.pool
    assert sum(s.cx_total for s in pool.stats.values()) == 1  # one mTLS connection between the sidecars
    assert pair.app.connections == 1                           # one connection from the server sidecar


async def test_large_body_streams_both_ways(pair: Pair, tmp_path: Path) -> None:
    size = BIG_MB * 1024 * 1024
    path = tmp_path / "big"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(BIG_MB):
            f.write(block)
            digest.update(block)
    code, out, err = await curl("-x", pair.proxy_url, "-T", str(path), pair.url("/big"), timeout=60)
    assert code == 0, err
    seen = json.loads(out)
    assert seen["body_bytes"] == size and seen["sha256"] == digest.hexdigest()
    code, out, err = await curl("-x", pair.proxy_url, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                pair.url(f"/bytes/{size}"), timeout=60)
    assert (code, out) == (0, f"200 {size}"), err


async def test_in_flight_request_finishes_on_the_config_it_started_with(pair: Pair) -> None:
    text = pair.client_config.read_text()
    drained = text.replace('version: "1"', 'version: "2"').replace("proxyPort: 15006,", "proxyPort: 15006, healthy: false,")
    config, diagnostics = load_proxy_config_text(drained, str(pair.client_config))
    assert config is not None, diagnostics
    results: dict[str, tuple[int, str, str]] = {}

    async def slow() -> None:
        results["slow"] = await curl("-x", pair.proxy_url, pair.url("/delay/600"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        with trio.fail_after(5):
            while not any(s.target == "/delay/600" for s in pair.app.seen):
                await trio.sleep(0.01)
        assert [d for d in pair.client.apply(config) if d.is_error] == []
        results["new"] = await curl("-x", pair.proxy_url, "-w", " %{http_code}", pair.url("/after"))
    assert json.loads(results["slow"][1])["target"] == "/delay/600"
    assert results["new"][1] == "no healthy upstream 503"
    assert pair.client.snapshot.version == "2"


async def test_invalid_document_is_refused_and_the_old_one_stays(pair: Pair, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(pair.client_config.read_text().replace('version: "1"', 'version: "9"')
                   .replace("tls: {cert: ", "tls: {cert: /nonexistent/cert.pem, unused: "))
    config, diagnostics = load_proxy_config(str(bad))
    assert config is None
    assert any("unused" in str(d) and str(d).startswith(f"{bad}:") for d in diagnostics)
    missing = tmp_path / "missing.yaml"
    missing.write_text(pair.client_config.read_text().replace('version: "1"', 'version: "9"')
                       .replace(str(tmp_path / "client-certs" / "cert.pem"), "/nonexistent/cert.pem"))
    config, diagnostics = load_proxy_config(str(missing))
    assert config is not None
    refused = [str(d) for d in pair.client.apply(config) if d.is_error]
    assert len(refused) == 1 and refused[0].startswith(f"{missing}:") and "/nonexistent/cert.pem" in refused[0]
    assert pair.client.snapshot.version == "1" and pair.client.refused == 1
    assert (await through(pair, "/still"))["target"] == "/still"


async def test_admin_reports_ready_config_clusters_and_metrics(pair: Pair) -> None:
    await through(pair, "/count")
    admin = f"http://{pair.addrs.client}:15000"
    code, out, _ = await curl(f"{admin}/ready")
    assert (code, out) == (0, "LIVE\n")
    code, out, _ = await curl(f"{admin}/config_dump")
    dump = json.loads(out)
    assert dump["version"] == "1" and dump["tls"]["private_key"] == "[redacted]"
    assert dump["tls"]["spiffe_id"] == "spiffe://east.example/ns/demo/sa/client"
    assert "PRIVATE KEY" not in out
    assert [c["sni"] for c in dump["clusters"]] == ["outbound_.8080_._.echo.demo.svc.cluster.local"]
    code, out, _ = await curl(f"{admin}/clusters")
    host = f"{pair.addrs.server}:{pair.addrs.app_port}"
    assert f"outbound|8080||echo.demo.svc.cluster.local::{host}::health_flags::healthy" in out.splitlines()
    assert f"outbound|8080||echo.demo.svc.cluster.local::{host}::rq_success::1" in out.splitlines()
    code, out, _ = await curl(f"{admin}/clusters?format=json")
    assert json.loads(out)["cluster_statuses"][0]["hosts"][0]["stats"]["rq_total"] == 1
    code, out, _ = await curl(f"{admin}/metrics")
    line = next(x for x in out.splitlines() if x.startswith("istio_requests_total{"))
    for label in ('reporter="source"', 'source_workload="client"', 'destination_service="echo.demo.svc.cluster.local"',
                  'destination_principal="spiffe://east.example/ns/demo/sa/echo"', 'response_code="200"',
                  'source_cluster="east"', 'destination_cluster="east"', 'response_flags="-"'):
        assert label in line
    assert line.endswith(" 1.0")
    code, out, _ = await curl(f"http://{pair.addrs.server}:15000/metrics")
    line = next(x for x in out.splitlines() if x.startswith("istio_requests_total{"))
    assert 'reporter="destination"' in line and 'source_principal="spiffe://east.example/ns/demo/sa/client"' in line
    assert 'connection_security_policy="mutual_tls"' in line


def tls_app(pki: MeshPki, folder: Path, app: EchoApp):  # noqa: ANN201 - an app_serve for start_pair
    """An HTTPS app (certificate for echo.demo.svc.cluster.local from the mesh CA)."""
    files = pki.write_svid(pki.svid("east.example", "demo", "echo", dns_names=("echo.demo.svc.cluster.local",)),
                           folder / "app-certs")
    bundle = folder / "app-certs" / "bundle.pem"
    bundle.write_bytes(files["cert"].read_bytes() + files["chain"].read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(bundle, files["key"])

    async def serve(host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=host)
        task_status.started(listeners[0].socket.getsockname()[:2])

        async def handle(stream: trio.SocketStream) -> None:
            tls = trio.SSLStream(stream, context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return
            await app.handle_connection(tls)  # type: ignore[arg-type]

        await trio.serve_listeners(handle, listeners)
    return serve, files["root"]


async def test_connect_tunnels_tls_to_the_app_behind_the_server_sidecar(nursery: trio.Nursery, pki: MeshPki,
                                                                      tmp_path: Path) -> None:
    app = EchoApp()
    serve, root = tls_app(pki, tmp_path, app)
    pair = await start_pair(nursery, pki, tmp_path, app=app, app_serve=serve, app_protocol="tcp",
                            service_protocol="tcp")
    url = f"https://echo.demo.svc.cluster.local:{pair.addrs.service_port}/tunnel"
    code, out, err = await curl("-v", "-p", "-x", pair.proxy_url, "--cacert", str(root), url, url)
    assert code == 0, err
    assert "HTTP/1.1 200" in err and "CONNECT echo.demo.svc.cluster.local:8080 HTTP/1.1" in err
    assert [s.target for s in app.seen] == ["/tunnel", "/tunnel"]
    assert app.connections == 1  # both requests in one tunnel


async def test_connect_to_an_unknown_service_is_404(pair: Pair) -> None:
    code, out, err = await curl("-p", "-x", pair.proxy_url, "https://nowhere.example/")
    assert code != 0 and "CONNECT tunnel failed, response 404" in err


async def test_tcp_listener_splices_to_the_service(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = EchoApp()
    pair = await start_pair(nursery, pki, tmp_path, app=app, app_protocol="tcp", service_protocol="tcp",
                            tcp_listeners="[{address: '{client}:19000', host: echo.demo.svc.cluster.local, port: 8080}]")
    assert pair.client.addresses["tcp:echo.demo.svc.cluster.local:8080"] == (pair.addrs.client, 19000)
    code, out, err = await curl(f"http://{pair.addrs.client}:19000/raw", f"http://{pair.addrs.client}:19000/again")
    assert code == 0, err
    assert [s.target for s in app.seen] == ["/raw", "/again"]
    seen = app.seen[0].headers
    assert "x-forwarded-client-cert" not in seen and seen["host"] == f"{pair.addrs.client}:19000"  # bytes untouched
    code, out, _ = await curl(f"http://{pair.addrs.server}:15000/metrics")
    assert any(x.startswith("istio_tcp_connections_opened_total{") and 'source_principal="spiffe://east.example/ns/'
               'demo/sa/client"' in x for x in out.splitlines())


async def upgrade_echo(host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A WebSocket-shaped app: answers an Upgrade with 101, then echoes bytes upper-cased."""
    listeners = await trio.open_tcp_listeners(0, host=host)
    task_status.started(listeners[0].socket.getsockname()[:2])

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        request, _, rest = head.partition(b"\r\n\r\n")
        assert b"upgrade: websocket" in request.lower() and b"connection: upgrade" in request.lower()
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        if rest:
            await stream.send_all(rest.upper())
        while data := await stream.receive_some(4096):
            await stream.send_all(data.upper())

    await trio.serve_listeners(handle, listeners)


async def test_websocket_upgrade_passes_through_both_sidecars(nursery: trio.Nursery, pki: MeshPki,
                                                              tmp_path: Path) -> None:
    pair = await start_pair(nursery, pki, tmp_path, app_serve=upgrade_echo)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(pair.addrs.client, 15001)
        async with stream:
            await stream.send_all(f"GET {pair.url('/ws')} HTTP/1.1\r\nHost: echo.demo.svc.cluster.local:8080\r\n"
                                  "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            head, _, data = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"upgrade: websocket" in head.lower()
            for word in (b"hello", b"over", b"the mesh"):
                await stream.send_all(word)
                while len(data) < len(word):
                    data += await stream.receive_some(4096)
                assert data == word.upper()
                data = b""


async def test_a_new_document_moves_listeners(pair: Pair) -> None:
    text = pair.client_config.read_text()
    moved = text.replace(f"admin: {pair.addrs.client}:15000", f"admin: {pair.addrs.client}:15100")
    config, diagnostics = load_proxy_config_text(moved, str(pair.client_config))
    assert config is not None, diagnostics
    assert [d for d in pair.client.apply(config) if d.is_error] == []
    with trio.fail_after(5):
        while pair.client.addresses.get("admin") != (pair.addrs.client, 15100):
            await trio.sleep(0.01)
    code, out, _ = await curl(f"http://{pair.addrs.client}:15100/ready")
    assert (code, out) == (0, "LIVE\n")
    code, _, _ = await curl(f"http://{pair.addrs.client}:15000/ready")
    assert code == 7  # connection refused: the old listener is closed
    assert (await through(pair, "/after-move"))["target"] == "/after-move"
