"""Discovery over mTLS + HTTP/2: subscribe, push, ACK/NACK, refusals, reconnects; and the wire codec."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import trio

from federation._controlplane import ControlPlane
from gateway._config import load_proxy_config_text
from gateway._discovery_client import Backoff, DiscoveryClient
from gateway._discovery_wire import (
    DocumentAssembler, FrameDecoder, FrameHeader, NodeIdentity, WireError, encode_frame,
)
from gateway._cert_client import bootstrap_context
from gateway._h2channel import H2Channel
from trustdomain import BootstrapAuthority, ClusterSigner, MtlsContexts
from trustdomain.testing import MeshPki

TD = "east.meshfed.local"
HOST = "127.85.0.1"
MESH = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters: [{name: east, addressBlock: 127.85.0.0/24, trustDomain: east.meshfed.local}]
  workloads:
  - {name: reviews-v1, namespace: bookinfo, service: reviews, serviceAccount: bookinfo-reviews, app: reviews,
     version: v1, cluster: east, ports: [{name: http, port: 9080}]}
  - {name: echo, namespace: demo, app: echo, cluster: east, ports: [{name: http, port: 8080}]}
"""
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-demo, namespace: demo}
spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [demo]}}]}]}
"""
REVIEWS = NodeIdentity("east", "bookinfo", "reviews-v1", "reviews-v1-0", "bookinfo-reviews")
ECHO = NodeIdentity("east", "demo", "echo", "echo-0", "echo")
FAST = Backoff(initial=0.02, maximum=0.1)


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(TD)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "mesh.yaml").write_text(MESH)
    return tmp_path


def control_plane(pki: MeshPki, tree: Path, port: int = 0) -> ControlPlane:
    signer = ClusterSigner(pki.ca(TD), BootstrapAuthority(b"s" * 32))
    return ControlPlane("east", tree, signer, pki.bundles(), host=HOST, discovery_port=port, metrics_port=0,
                        poll_interval=0.02, in_thread=False, rng=random.Random(1))


class Proxy:
    """A discovery client with an apply callback that records documents (or refuses them)."""

    def __init__(self, pki: MeshPki, cp: ControlPlane, node: NodeIdentity, sa: str | None = None,
                 refuse: list[str] | None = None) -> None:
        self.applied: list[str] = []
        self.refuse = refuse or []
        svid = pki.svid(TD, node.namespace, sa or node.service_account)
        assert cp.discovery_address is not None
        self.client = DiscoveryClient(cp.discovery_address, node, MtlsContexts(svid, pki.bundles()), self.apply,
                                      backoff=FAST, rng=random.Random(2))

    def apply(self, text: str) -> list[str]:
        if self.refuse:
            return self.refuse
        self.applied.append(text)
        return []


async def until(wait: Callable[[Callable[[], bool]], Any], predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        await wait(predicate)


@pytest.fixture
async def running(pki: MeshPki, tree: Path, nursery: trio.Nursery) -> AsyncIterator[ControlPlane]:
    cp = control_plane(pki, tree)
    await nursery.start(cp.run)
    yield cp


async def serve_in(scope: trio.CancelScope, cp: ControlPlane, *, task_status: trio.TaskStatus[Any]) -> None:
    """Run ``cp`` until ``scope`` is cancelled: a control plane that can be made to go away."""
    with scope:
        await cp.run(task_status=task_status)


def state(cp: ControlPlane, instance: str) -> dict[str, Any]:
    return next((p for p in cp.status()["proxies"] if p["instance"] == instance), {})


async def test_proxy_subscribes_receives_its_document_and_acks(running: ControlPlane, pki: MeshPki,
                                                               nursery: trio.Nursery) -> None:
    proxy = Proxy(pki, running, REVIEWS)
    nursery.start_soon(proxy.client.run)
    await until(running.discovery.wait_until, lambda: state(running, "reviews-v1-0").get("ackedVersion") == "1")
    config, diagnostics = load_proxy_config_text(proxy.applied[0])
    assert diagnostics == [] and config is not None
    assert (config.spec.node.instance, config.version) == ("reviews-v1-0", "1")
    s = state(running, "reviews-v1-0")
    assert (s["connected"], s["inSync"], s["lastPushedVersion"], s["nacks"]) == (True, True, 1, 0)
    assert s["spiffeId"] == "spiffe://east.meshfed.local/ns/bookinfo/sa/bookinfo-reviews"
    assert running.metrics.value("pilot_xds_pushes_total", type="proxyconfig") == 1
    assert running.metrics.value("pilot_xds") == 1
    assert proxy.client.version == "1" and proxy.client.document == proxy.applied[0]


async def test_nack_is_recorded_per_proxy_with_its_reason(running: ControlPlane, pki: MeshPki,
                                                          nursery: trio.Nursery) -> None:
    proxy = Proxy(pki, running, REVIEWS, refuse=["listener 127.85.0.10:15001: address in use"])
    nursery.start_soon(proxy.client.run)
    await until(running.discovery.wait_until, lambda: state(running, "reviews-v1-0").get("nacks") == 1)
    s = state(running, "reviews-v1-0")
    assert s["lastNack"]["version"] == 1
    assert s["lastNack"]["reason"] == "listener 127.85.0.10:15001: address in use"
    assert (s["ackedVersion"], s["inSync"]) == (None, False)
    assert running.metrics.value("pilot_total_xds_rejects_total") == 1
    assert proxy.client.version is None and proxy.client.last_nack == (1, ("listener 127.85.0.10:15001: address in use",))


async def test_a_change_is_pushed_only_to_proxies_whose_document_changed(
        running: ControlPlane, pki: MeshPki, tree: Path, nursery: trio.Nursery) -> None:
    reviews, echo = Proxy(pki, running, REVIEWS), Proxy(pki, running, ECHO)
    nursery.start_soon(reviews.client.run)
    nursery.start_soon(echo.client.run)
    await until(running.discovery.wait_until,
                lambda: all(state(running, i).get("ackedVersion") == "1" for i in ("reviews-v1-0", "echo-0")))
    (tree / "policy.yaml").write_text(POLICY)
    await until(running.discovery.wait_until, lambda: state(running, "echo-0")["ackedVersion"] == "2")
    assert '"allow-demo"' in echo.applied[-1]
    assert len(reviews.applied) == 1 and state(running, "reviews-v1-0")["ackedVersion"] == "1"
    assert running.metrics.value("pilot_xds_pushes_total", type="proxyconfig") == 3
    assert running.metrics.value("pilot_proxy_convergence_time_count") == 1  # change-triggered pushes only
    assert [(v, i) for v, i, _ in running.discovery.latencies] == [(2, "echo-0")]
    assert 0 <= state(running, "echo-0")["lastPushLatencySeconds"] < 10


async def test_bad_file_is_refused_and_the_previous_version_is_still_served(
        running: ControlPlane, pki: MeshPki, tree: Path, nursery: trio.Nursery) -> None:
    (tree / "policy.yaml").write_text(POLICY.replace("action: ALLOW", "action: PERMIT"))
    with trio.fail_after(10):
        while running.status()["config"]["lastRefusal"] is None:
            await trio.sleep(0.01)
    refusal = running.status()["config"]["lastRefusal"]
    assert refusal["messages"] == [f"{tree / 'policy.yaml'}:4: spec.action: must be one of ALLOW, DENY, AUDIT, "
                                   "CUSTOM; found string 'PERMIT'"]
    assert running.metrics.value("galley_validation_failed_total") == 1
    proxy = Proxy(pki, running, ECHO)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.version == "1")
    assert '"allow-demo"' not in proxy.applied[0]


@pytest.mark.parametrize(("node", "sa", "status", "message"), [
    (REVIEWS, "echo", 403, "node bookinfo/reviews-v1-0 must present spiffe://east.meshfed.local/ns/bookinfo/sa/"
                           "bookinfo-reviews; found spiffe://east.meshfed.local/ns/bookinfo/sa/echo"),
    (NodeIdentity("east", "demo", "echo", "echo-7", "echo"), None, 404,
     "config version 1 has no instance 'echo-7' of workload demo/echo with service account 'echo' in cluster 'east'"),
    (NodeIdentity("west", "demo", "echo", "echo-0", "echo"), None, 404,
     "this control plane serves cluster 'east'; found 'west'"),
])
async def test_subscription_is_refused_with_the_reason(running: ControlPlane, pki: MeshPki, nursery: trio.Nursery,
                                                       node: NodeIdentity, sa: str | None, status: int,
                                                       message: str) -> None:
    proxy = Proxy(pki, running, node, sa=sa)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.last_error is not None)
    assert proxy.client.last_error == f"subscription refused ({status}): {message}"
    assert not proxy.client.connected and running.status()["proxies"] == []


async def test_anonymous_connection_may_only_ask_for_a_certificate(running: ControlPlane, pki: MeshPki,
                                                                   nursery: trio.Nursery) -> None:
    assert running.discovery_address is not None
    tcp = await trio.open_tcp_stream(*running.discovery_address)
    stream = trio.SSLStream(tcp, bootstrap_context(pki.bundles()), server_hostname=None)
    channel = H2Channel(stream, ping_interval=None)
    await nursery.start(channel.run)
    status, body = await channel.request("POST", "/v1/subscribe", ECHO.to_json())
    assert (status, body) == (401, b'{"error": "/v1/subscribe requires a client certificate (mTLS); only '
                                   b'/v1/certificate accepts a bootstrap token"}')
    await channel.aclose()


async def test_proxy_keeps_its_config_while_the_control_plane_is_away_and_resyncs(
        pki: MeshPki, tree: Path, nursery: trio.Nursery) -> None:
    first, scope = control_plane(pki, tree), trio.CancelScope()
    await nursery.start(serve_in, scope, first)
    assert first.discovery_address is not None
    port = first.discovery_address[1]
    proxy = Proxy(pki, first, ECHO)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.version == "1")
    kept = proxy.client.document
    scope.cancel()  # the control plane goes away
    await until(proxy.client.wait_until, lambda: not proxy.client.connected)
    assert proxy.client.document == kept and proxy.client.has_config.is_set()

    second = control_plane(pki, tree, port)  # back, with the same config: nothing to resend
    await nursery.start(second.run)
    await until(second.discovery.wait_until, lambda: second.discovery.connected == 1)
    assert second.metrics.value("pilot_xds_pushes_total", type="proxyconfig") == 0
    assert state(second, "echo-0")["ackedVersion"] == "1" and len(proxy.applied) == 1
    (tree / "policy.yaml").write_text(POLICY)  # and later changes arrive as before
    await until(proxy.client.wait_until, lambda: proxy.client.version == "2")
    assert '"allow-demo"' in (proxy.client.document or "")


async def test_change_made_while_the_control_plane_was_away_arrives_on_reconnect(
        pki: MeshPki, tree: Path, nursery: trio.Nursery) -> None:
    first, scope = control_plane(pki, tree), trio.CancelScope()
    await nursery.start(serve_in, scope, first)
    assert first.discovery_address is not None
    proxy = Proxy(pki, first, ECHO)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.version == "1")
    scope.cancel()
    await until(proxy.client.wait_until, lambda: not proxy.client.connected)
    (tree / "policy.yaml").write_text(POLICY)
    second = control_plane(pki, tree, first.discovery_address[1])
    await nursery.start(second.run)
    await until(proxy.client.wait_until, lambda: '"allow-demo"' in (proxy.client.document or ""))
    assert proxy.client.sessions == 2 and proxy.client.version == "1"  # the new control plane's first version


# -- the wire, without sockets ---------------------------------------------------------------

def frame(version: int, parts: list[bytes], known: set[str]) -> bytes:
    return b"".join(encode_frame(version, "n1", "d", parts, [p.decode() for p in parts], known))


def test_frames_split_at_any_byte_decode_the_same() -> None:
    data = frame(1, [b"ab", b"cd"], set()) + frame(2, [b"ab", b"ef"], {"ab", "cd"})
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        got = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [(h.version, h.parts, body) for h, body in got] == [
            (1, (("ab", 2, True), ("cd", 2, True)), b"abcd"), (2, (("ab", 2, False), ("ef", 2, True)), b"ef")]
        assert dec.buffered == 0


def test_assembler_takes_held_parts_from_the_last_frame_and_refuses_unknown_ones() -> None:
    asm, known = DocumentAssembler(), set()
    dec = FrameDecoder()
    for parts, expected in (([b"ab", b"cd"], b"abcd"), ([b"ab", b"ef", b"ab"], b"abefab"), ([b"ef"], b"ef")):
        ((header, body),) = dec.feed(frame(1, parts, known))
        assert asm.assemble(header, body) == expected
    stale = FrameHeader(2, "n", "d", 0, (("cd", 2, False),))
    with pytest.raises(WireError, match="part cd is neither sent nor held from the last frame"):
        asm.assemble(stale, b"")


@pytest.mark.parametrize(("raw", "message"), [
    ((1 << 20).to_bytes(4, "big"), "config frame: header of 1048576 bytes exceeds 65536"),
    (b"\x00\x00\x00\x02[]", "config frame header: expected a JSON object; found list"),
    (b"\x00\x00\x00\x0a{\"a\": 1}  ", "config frame header: missing field 'parts'"),
])
def test_malformed_frames_are_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        FrameDecoder().feed(raw)
    assert str(info.value) == message


@pytest.mark.parametrize(("attempt", "low", "high"), [(0, 0.05, 0.1), (1, 0.1, 0.2), (3, 0.4, 0.8), (10, 5.0, 10.0)])
def test_backoff_grows_exponentially_with_jitter_and_a_cap(attempt: int, low: float, high: float) -> None:
    rng = random.Random(3)
    delays = [Backoff().delay(attempt, rng) for _ in range(200)]
    assert low <= min(delays) and max(delays) <= high


async def test_metrics_endpoint_serves_the_exposition_and_404_elsewhere(running: ControlPlane, pki: MeshPki,
                                                                        nursery: trio.Nursery) -> None:
    proxy = Proxy(pki, running, ECHO)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.version == "1")
    assert running.metrics_address is not None

    async def get(path: str) -> bytes:
        stream = await trio.open_tcp_stream(*running.metrics_address)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
        return data
    with trio.fail_after(10):
        metrics, other = await get("/metrics"), await get("/")
    assert metrics.startswith(b"HTTP/1.1 200 OK\r\n")
    for line in (b'pilot_xds_pushes_total{type="proxyconfig"} 1.0', b"pilot_xds 1.0", b"meshfed_config_version 1.0",
                 b"citadel_server_success_cert_issuance_count_total 0.0"):
        assert line in metrics.split(b"\n")
    assert other.startswith(b"HTTP/1.1 404 Not Found\r\n")


async def test_a_proxy_that_goes_away_is_shown_disconnected(running: ControlPlane, pki: MeshPki,
                                                            nursery: trio.Nursery) -> None:
    proxy = Proxy(pki, running, ECHO)
    scope = trio.CancelScope()

    async def run_client() -> None:
        with scope:
            await proxy.client.run()
    nursery.start_soon(run_client)
    await until(running.discovery.wait_until, lambda: state(running, "echo-0").get("ackedVersion") == "1")
    scope.cancel()
    await until(running.discovery.wait_until, lambda: state(running, "echo-0")["connected"] is False)
    assert running.metrics.value("pilot_xds") == 0 and state(running, "echo-0")["ackedVersion"] == "1"


async def test_malformed_requests_get_4xx_and_leave_the_connection_usable(running: ControlPlane, pki: MeshPki,
                                                                          nursery: trio.Nursery) -> None:
    assert running.discovery_address is not None
    contexts = MtlsContexts(pki.svid(TD, "demo", "echo"), pki.bundles())
    stream, _ = await contexts.connect(await trio.open_tcp_stream(*running.discovery_address))
    channel = H2Channel(stream, ping_interval=None)
    await nursery.start(channel.run)
    cases = [
        ("/v1/subscribe", b"{", 400, "node identity: not JSON: Expecting property name enclosed in double quotes: "
                                    "line 1 column 2 (char 1)"),
        ("/v1/subscribe", b'{"cluster": "east"}', 400, "node identity: missing field 'namespace'"),
        ("/v1/ack", b'{"version": 1, "nonce": "x", "ok": true}', 409,
         "no subscription on this connection: POST /v1/subscribe first"),
        ("/v1/ack", b'{"version": "1", "nonce": "x", "ok": true}', 400, "ack: field 'version' has the wrong type; "
                                                                       "found '1'"),
        ("/v2/other", b"{}", 404, "no such path '/v2/other'"),
    ]
    for path, body, status, message in cases:
        got, answer = await channel.request("POST", path, body)
        assert (got, json.loads(answer)["error"]) == (status, message)
    await channel.aclose()


async def test_proxy_waits_for_a_first_valid_config(pki: MeshPki, tree: Path, nursery: trio.Nursery) -> None:
    (tree / "policy.yaml").write_text(POLICY.replace("action: ALLOW", "action: PERMIT"))
    cp = control_plane(pki, tree)
    await nursery.start(cp.run)
    assert cp.status()["config"]["version"] is None and cp.status()["config"]["lastRefusal"] is not None
    proxy = Proxy(pki, cp, ECHO)
    nursery.start_soon(proxy.client.run)
    await until(proxy.client.wait_until, lambda: proxy.client.connected)
    assert proxy.client.version is None
    (tree / "policy.yaml").write_text(POLICY)
    await until(proxy.client.wait_until, lambda: proxy.client.version == "1")
    assert '"allow-demo"' in proxy.applied[0]
