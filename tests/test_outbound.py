"""The explicit-proxy listener: routing, local replies and Envoy's failure replies, through curl."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gateway._flags import ResponseFlag
from gateway._rescue import (RESET_PREFIX, NoClusterError, NoHealthyUpstreamError, NoRouteError, UpstreamConnectError,
                             UpstreamOverflowError, UpstreamProtocolError, UpstreamResetError, UpstreamTimeoutError,
                             rescue)
from gateway._events import RemoteProtocolError
from gateway._outbound import split_target
from gateway._tunnel import split_authority
from gateway.testing import Pair, curl, random_block, start_pair
from trustdomain.testing import MeshPki


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


@pytest.fixture
def refusing() -> Iterator[tuple[str, int]]:
    """An address that refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind((f"{random_block()}.9", 0))
        yield s.getsockname()[:2]


def service(name: str, target_port: int, endpoints: str) -> str:
    return (f"\n  - hostname: {name}.demo.svc.cluster.local\n    namespace: demo\n"
            f"    ports: [{{name: web, port: 8080, protocol: http, targetPort: {target_port}}}]\n"
            f"    endpoints: [{endpoints}]")


VS = """
  - apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: echo, namespace: demo}
    spec:
      hosts: [echo]
      http:
      - match: [{uri: {prefix: /teapot}}]
        directResponse: {status: 418, body: {string: "short and stout"}}
      - match: [{uri: {exact: /old}}]
        redirect: {uri: /new, authority: elsewhere.example}
      - match: [{uri: {prefix: /slow}}]
        timeout: 0.2s
        rewrite: {uri: /delay/2000}
        route: [{destination: {host: echo}}]
      - match: [{uri: {prefix: /api/}}]
        rewrite: {uri: /v2/}
        headers:
          request: {set: {x-route: api}}
          response: {add: {x-served-by: meshfed}, remove: [content-type]}
        route: [{destination: {host: echo}}]
      - route: [{destination: {host: echo}}]
"""


@pytest.fixture
async def pair(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, refusing: tuple[str, int]) -> Pair:
    host, port = refusing
    extra = (service("down", port, f"{{address: {host}, port: {port}, proxyPort: 0}}")
             + service("drained", port, f"{{address: {host}, port: {port}, proxyPort: 0, healthy: false}}"))
    return await start_pair(nursery, pki, tmp_path, client_resources=VS, client_services=extra)


async def status_body(pair: Pair, url: str, *args: str) -> tuple[str, str]:
    code, out, err = await curl("-x", pair.proxy_url, "-w", "\n%{http_code}", *args, url)
    assert code == 0, err
    body, _, status = out.rpartition("\n")
    return status, body


@pytest.mark.parametrize("url, status, body", [
    ("http://nowhere.example/", "404", ""),
    ("http://down.demo.svc.cluster.local:8080/", "503", RESET_PREFIX + "connection failure, transport failure reason: "),
    ("http://drained.demo.svc.cluster.local:8080/", "503", "no healthy upstream"),
])
async def test_failures_answer_as_envoy_does(pair: Pair, url: str, status: str, body: str) -> None:
    """Bodies are Envoy's; a connect failure's names the hop and the cause after its prefix."""
    got_status, got_body = await status_body(pair, url)
    assert got_status == status and (got_body.startswith(body) if body.endswith(": ") else got_body == body)


async def test_failures_are_counted_with_their_response_flags(pair: Pair) -> None:
    await status_body(pair, "http://down.demo.svc.cluster.local:8080/")
    await status_body(pair, "http://nowhere.example/")
    code, out, _ = await curl(f"http://{pair.addrs.client}:15000/metrics")
    flags = {line.split('response_flags="')[1].split('"')[0] for line in out.splitlines()
             if line.startswith("istio_requests_total{")}
    assert flags == {"UF,URX", "NR"}  # Istio's default policy retried the connect failure twice, as Envoy logs it


async def test_route_timeout_answers_504(pair: Pair) -> None:
    with trio.fail_after(5):
        assert await status_body(pair, pair.url("/slow")) == ("504", "upstream request timeout")


async def test_direct_response_and_redirect_are_local(pair: Pair) -> None:
    assert await status_body(pair, pair.url("/teapot")) == ("418", "short and stout")
    code, out, _ = await curl("-x", pair.proxy_url, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                              pair.url("/old"))
    assert out == "301 http://elsewhere.example/new"
    assert pair.app.seen == []


async def test_rewrite_and_header_operations_apply(pair: Pair) -> None:
    code, out, err = await curl("-i", "-x", pair.proxy_url, pair.url("/api/users?id=7"))
    assert code == 0, err
    head, _, body = out.partition("\r\n\r\n")
    assert "x-served-by: meshfed" in head.lower().splitlines()
    assert "content-type" not in head.lower()
    seen = json.loads(body)
    assert seen["target"] == "/v2/users?id=7" and seen["headers"]["x-route"] == "api"


async def test_origin_form_request_is_routed_by_its_host_header(pair: Pair) -> None:
    code, out, err = await curl("-H", f"Host: echo.demo.svc.cluster.local:{pair.addrs.service_port}",
                                f"http://{pair.addrs.client}:15001/plain")
    assert code == 0, err
    assert json.loads(out)["target"] == "/plain"


async def test_malformed_request_gets_400_and_the_connection_closes(pair: Pair) -> None:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(pair.addrs.client, 15001)
        async with stream:
            await stream.send_all(b"GET http://echo.demo.svc.cluster.local:8080/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and data.endswith(b"\r\n\r\nBad Request")
    assert b"connection: close\r\n" in data


async def test_connect_failure_moves_to_another_host(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path,
                                                     refusing: tuple[str, int]) -> None:
    host, port = refusing
    pair = await start_pair(nursery, pki, tmp_path)
    text = pair.client_config.read_text().replace(
        "endpoints:\n", f"endpoints:\n    - {{address: {host}, port: {port}, proxyPort: 0, servicePort: 8080}}\n", 1)
    rr = ("\n  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n    metadata: {name: echo, namespace: "
          "demo}\n    spec: {host: echo, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n")
    text = text.replace("resources: []", f"resources:{rr}")
    from gateway._config import load_proxy_config_text
    config, diagnostics = load_proxy_config_text(text, "client.yaml")
    assert config is not None, [str(d) for d in diagnostics]
    assert [d for d in pair.client.apply(config) if d.is_error] == []
    for _ in range(4):
        assert (await status_body(pair, pair.url("/retry")))[0] == "200"
    code, out, _ = await curl(f"http://{pair.addrs.client}:15000/clusters")
    lines = out.splitlines()
    good = f"{pair.addrs.server}:{pair.addrs.app_port}"
    assert f"outbound|8080||echo.demo.svc.cluster.local::{good}::rq_success::4" in lines
    failures = [x for x in lines if x.startswith(f"outbound|8080||echo.demo.svc.cluster.local::{host}:{port}::cx_connect_fail::")]
    assert len(failures) == 1 and int(failures[0].rpartition("::")[2]) >= 1


async def test_breaker_overflow_answers_503_uo(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    dr = ("\n  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n    metadata: {name: echo, namespace: "
          "demo}\n    spec: {host: echo, trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}}}\n")
    pair = await start_pair(nursery, pki, tmp_path, client_resources=dr)
    results: list[tuple[str, str]] = []

    async def one(path: str) -> None:
        results.append(await status_body(pair, pair.url(path)))

    async with trio.open_nursery() as inner:
        inner.start_soon(one, "/delay/500")
        with trio.fail_after(5):
            while not pair.app.seen:
                await trio.sleep(0.01)
        inner.start_soon(one, "/second")
    assert ("503", RESET_PREFIX + "overflow") in results
    assert sorted(s for s, _ in results) == ["200", "503"]


@pytest.mark.parametrize("error, status, flag, body", [
    (NoRouteError("a", "/", 80), 404, ResponseFlag.NR, b""),
    (NoClusterError("outbound|80||x"), 503, ResponseFlag.NC, b""),
    (NoHealthyUpstreamError("c"), 503, ResponseFlag.UH, b"no healthy upstream"),
    (UpstreamConnectError("1.2.3.4:5", "refused"), 503, ResponseFlag.UF,
     (RESET_PREFIX + "connection failure, transport failure reason: 1.2.3.4:5: refused").encode()),
    (UpstreamOverflowError("c", "requests"), 503, ResponseFlag.UO, (RESET_PREFIX + "overflow").encode()),
    (UpstreamResetError("a", "eof"), 503, ResponseFlag.UC, (RESET_PREFIX + "connection termination").encode()),
    (UpstreamTimeoutError(1.0), 504, ResponseFlag.UT, b"upstream request timeout"),
    (UpstreamProtocolError("a", "bad"), 502, ResponseFlag.UPE, (RESET_PREFIX + "protocol error").encode()),
    (RemoteProtocolError("too big", 431), 431, ResponseFlag.DPE, b"Request Header Fields Too Large"),
    (ValueError("a bug"), 500, None, b""),
])
def test_rescue_maps_each_cause_to_one_reply(error: Exception, status: int, flag: ResponseFlag | None,
                                              body: bytes) -> None:
    reply = rescue(error)
    assert (reply.status, reply.flag, reply.body) == (status, flag, body)


@pytest.mark.parametrize("target, headers, expected", [
    (b"http://a.b:81/p?q=1", [], (b"a.b:81", b"/p?q=1")),
    (b"http://a.b", [], (b"a.b", b"/")),
    (b"http://a.b?x", [], (b"a.b", b"/?x")),
    (b"/p", [(b"host", b"h:1")], (b"h:1", b"/p")),
])
def test_request_targets_split_into_authority_and_path(target: bytes, headers: list, expected: tuple) -> None:
    assert split_target(target, headers) == expected


@pytest.mark.parametrize("authority, expected", [
    (b"a.b:81", ("a.b", 81)), (b"a.b", ("a.b", 80)), (b"[::1]:9", ("::1", 9)), (b"[::1]", ("::1", 80)),
])
def test_authorities_split_into_host_and_port(authority: bytes, expected: tuple) -> None:
    assert split_authority(authority) == expected


async def test_head_request_gets_headers_without_a_body(pair: Pair) -> None:
    code, out, err = await curl("-I", "-x", pair.proxy_url, pair.url("/head"), pair.url("/head2"))
    assert code == 0, err
    heads = [h for h in out.split("\r\n\r\n") if h]
    assert len(heads) == 2 and all(h.startswith("HTTP/1.1 200 OK") for h in heads)
    assert all("content-length:" in h.lower() for h in heads)
