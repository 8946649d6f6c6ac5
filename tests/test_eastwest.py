"""The east-west gateway: its document, its SNI routing table, the hello reader, and a
client sidecar in one network reaching apps in another through it, mTLS end to end."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gateway._config import load_proxy_config, load_proxy_config_text
from gateway._eastwest import read_hello
from gateway._eastwest_routes import EastWestRoute, EastWestTable, Refusal
from gateway._xfcc import parse as parse_xfcc
from gateway.testing import Site, curl, random_block, start_client, start_site
from trustdomain.testing import MeshPki

DOMAINS = ("east.example", "west.example")
FQDN = "echo.demo.svc.cluster.local"
SNI = f"outbound_.8080_._.{FQDN}"
V1, V2 = {"app": "echo", "version": "v1"}, {"app": "echo", "version": "v2"}
DR = json.dumps([{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                  "metadata": {"name": "echo", "namespace": "demo"},
                  "spec": {"host": FQDN, "subsets": [{"name": n, "labels": {"version": n}} for n in ("v1", "v2", "v3")]}}])


def hello(server_name: str | None) -> bytes:
    """The ClientHello Python's ssl sends first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# -- the document -----------------------------------------------------------------------

GATEWAY_DOC = """apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {name: gw}
spec:
  node: {cluster: west, workload: istio-eastwestgateway, namespace: istio-system, role: eastwest}
  listeners: {eastwest: "127.9.9.2:15443", admin: "127.9.9.2:15000"}
  services:
  - hostname: echo.demo.svc.cluster.local
    namespace: demo
    exported: true
    ports: [{name: http, port: 8080, protocol: http, targetPort: 9080}, {name: tcp, port: 7070, protocol: tcp}]
    endpoints:
    - {address: 127.9.9.10, port: 9080, labels: {version: v1}, cluster: west}
    - {address: 127.9.9.11, port: 9080, labels: {version: v2}, cluster: west}
    - {address: 127.9.9.12, port: 9080, labels: {version: v2}, cluster: west, healthy: false}
    - {address: 127.9.9.13, port: 9080, labels: {version: v1}, proxyPort: 0, cluster: west}
    - {address: 127.7.7.2, port: 15443, gateway: "127.7.7.2:15443", labels: {version: v1}, cluster: south}
    - {address: 127.9.9.10, port: 7070, cluster: west}
  - hostname: secret.demo.svc.cluster.local
    namespace: demo
    ports: [{name: http, port: 8080, protocol: http}]
    endpoints: [{address: 127.9.9.20, port: 8080}]
  resources: %s
""" % DR


def test_a_gateway_document_loads_without_a_certificate() -> None:
    config, diags = load_proxy_config_text(GATEWAY_DOC, "gw.yaml")
    assert config is not None, [str(d) for d in diags]
    assert config.spec.node.role == "eastwest" and config.spec.tls is None
    assert config.spec.eastwest.max_connections == 16384 and config.spec.eastwest.hello_timeout.seconds == 15
    assert [s.exported for s in config.spec.services] == [True, False]


@pytest.mark.parametrize("edit, errors", [
    (("role: eastwest", "role: gateway"),
     [("spec.node.role", "must be one of sidecar, eastwest; found 'gateway'")]),
    (('eastwest: "127.9.9.2:15443", ', ""),
     [("spec.listeners.eastwest", "an east-west gateway (node.role: eastwest) needs its passthrough listener, "
                                  "such as 127.1.2.2:15443; found none")]),
    (("listeners: {", 'listeners: {outbound: "127.9.9.2:15001", '),
     [("spec.listeners.outbound", "an east-west gateway has no outbound listener; found '127.9.9.2:15001'")]),
    ((", role: eastwest", ""),
     [("spec.listeners.eastwest", "only an east-west gateway (node.role: eastwest) opens a passthrough listener; "
                                  "found '127.9.9.2:15443' on role 'sidecar'")]),
    (('eastwest: "127.9.9.2:15443"', 'eastwest: "gateway:15443"'),
     [("spec.listeners.eastwest", "must be an IP address and port such as 127.0.0.1:15001: "
                                  "'gateway' does not appear to be an IPv4 or IPv6 address")]),
    (("  resources:", "  eastwest: {maxConnections: 0, helloTimeout: 0s, maxHelloBytes: 100}\n  resources:"),
     [("spec.eastwest.maxConnections", "must be at least 1; found 0"),
      ("spec.eastwest.maxHelloBytes", "must be between 512 and 16777216; found 100"),
      ("spec.eastwest.helloTimeout", "must be longer than 0s; found 0s")]),
])
def test_gateway_document_errors_name_the_field(edit: tuple[str, str], errors: list[tuple[str, str]]) -> None:
    config, diags = load_proxy_config_text(GATEWAY_DOC.replace(*edit, 1), "gw.yaml")
    assert config is None
    assert [(d.path, d.message) for d in diags if d.is_error] == errors


# -- the routing table --------------------------------------------------------------------

@pytest.fixture(scope="module")
def table() -> EastWestTable:
    config, diags = load_proxy_config_text(GATEWAY_DOC, "gw.yaml")
    assert config is not None, [str(d) for d in diags]
    return EastWestTable.compile(config)


@pytest.mark.parametrize("sni, refusal", [
    (None, Refusal.NO_SNI),
    ("example.com", Refusal.UNKNOWN_SNI),
    ("outbound_.x_._.echo.demo.svc.cluster.local", Refusal.UNKNOWN_SNI),
    ("outbound_.8080_._.nope.demo.svc.cluster.local", Refusal.UNKNOWN_SERVICE),
    ("outbound_.8080_._.secret.demo.svc.cluster.local", Refusal.NOT_EXPORTED),
    ("outbound_.9999_._.echo.demo.svc.cluster.local", Refusal.UNKNOWN_PORT),
    ("outbound_.8080_.v9_.echo.demo.svc.cluster.local", Refusal.UNKNOWN_SUBSET),
    ("outbound_.8080_.v3_.echo.demo.svc.cluster.local", Refusal.NO_HEALTHY_ENDPOINT),
])
def test_sni_without_a_route_is_refused_with_its_reason(table: EastWestTable, sni: str | None,
                                                         refusal: Refusal) -> None:
    assert table.route(sni) is refusal


@pytest.mark.parametrize("sni, backends", [
    (SNI, ["127.9.9.10:15006", "127.9.9.11:15006"]),
    (f"outbound_.8080_.v1_.{FQDN}", ["127.9.9.10:15006"]),
    (f"outbound_.8080_.v2_.{FQDN}", ["127.9.9.11:15006"]),
    ("outbound_.8080_.v2_.echo.demo.svc.clusterset.local", ["127.9.9.11:15006"]),
    (f"outbound_.7070_._.{FQDN}", ["127.9.9.10:15006"]),
])
def test_sni_maps_to_healthy_local_sidecars_of_the_service_subset_and_port(table: EastWestTable, sni: str,
                                                                          backends: list[str]) -> None:
    route = table.route(sni)
    assert isinstance(route, EastWestRoute)
    # never: the unhealthy one, the one without a sidecar, the one behind another gateway
    assert sorted(b.authority for b in route.backends) == backends


def test_round_robin_alternates_and_skips_what_was_tried(table: EastWestTable) -> None:
    route = table.route(SNI)
    assert isinstance(route, EastWestRoute)
    picks = [route.pick().authority for _ in range(4)]  # type: ignore[union-attr]
    assert picks[0] != picks[1] and picks[:2] == picks[2:]
    assert route.pick(frozenset({"127.9.9.10:15006"})).authority == "127.9.9.11:15006"  # type: ignore[union-attr]


def test_refused_connections_are_labelled_with_the_service_their_sni_names(table: EastWestTable) -> None:
    labels = table.refused_labels_for("outbound_.8080_._.secret.demo.svc.cluster.local").as_dict()
    assert (labels["destination_service"], labels["source_cluster"], labels["destination_cluster"]) == (
        "secret.demo.svc.cluster.local", "west", "unknown")
    assert table.refused_labels_for("example.com").as_dict()["destination_service"] == "unknown"


# -- reading the hello ------------------------------------------------------------------

async def _read(chunks: list[bytes], *, close: bool = False, timeout: float = 5, max_size: int = 65536) -> Any:
    send, receive = trio.testing.memory_stream_one_way_pair()
    for c in chunks:
        await send.send_all(c)
    if close:
        await send.aclose()
    return await read_hello(receive, timeout, max_size)


async def test_a_hello_fragmented_one_byte_per_read_is_read_whole() -> None:
    data = hello(SNI)
    got = await _read([data[i:i + 1] for i in range(len(data))])
    assert got[0] == data and got[1].server_name == SNI


@pytest.mark.parametrize("chunks, close, refusal", [
    ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], False, Refusal.NOT_TLS),
    ([b"\x16\x03\x01\x00\x06\x02\x00\x00\x02\x03\x03"], False, Refusal.MALFORMED_HELLO),  # a ServerHello
    ([b"\x16\x03\x01\xff\xff"], False, Refusal.MALFORMED_HELLO),  # record longer than 2^14
    ([hello(SNI)[:40]], True, Refusal.CLIENT_CLOSED),
])
async def test_bytes_that_are_no_hello_are_refused(chunks: list[bytes], close: bool, refusal: Refusal) -> None:
    assert await _read(chunks, close=close) is refusal


async def test_a_hello_bigger_than_the_limit_is_malformed() -> None:
    data = hello(".".join(["a" * 60] * 4))
    assert len(data) > 512
    assert await _read([data], max_size=512) is Refusal.MALFORMED_HELLO
    assert (await _read([data], max_size=len(data)))[0] == data


async def test_a_silent_client_times_out_after_hello_timeout(autojump_clock: Any) -> None:
    start = trio.current_time()
    assert await _read([hello(SNI)[:10]], timeout=15) is Refusal.HELLO_TIMEOUT
    assert trio.current_time() - start == 15


# -- on loopback: gateway, sidecars, client ----------------------------------------------

@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(*DOMAINS)


@dataclass
class World:
    west: Site
    client: Any
    proxy_url: str
    log: Path


async def west_site(nursery: trio.Nursery, pki: MeshPki, folder: Path, *, limits: str = "",
                    exported: bool = True, instances: tuple = (("echo-v1", V1), ("echo-v2", V2))) -> tuple[Site, Path]:
    log = folder / "gateway-access.log"
    site = await start_site(nursery, pki, folder / "west", cluster="west", block=random_block(), network="net-west",
                            locality="us-west/zone-a", trust_domain="west.example", domains=DOMAINS,
                            instances=instances, exported=exported, gateway_resources=DR,
                            gateway_limits=f"  telemetry: {{accessLog: {log}}}\n{limits}")
    return site, log


async def start_world(nursery: trio.Nursery, pki: MeshPki, folder: Path, client_resources: list | None = None) -> World:
    west, log = await west_site(nursery, pki, folder)
    east = Site("east", random_block(), "net-east", "us-east/zone-a", "east.example")
    resources = json.loads(DR) + (client_resources or [])
    client = await start_client(nursery, pki, folder / "east", site=east, domains=DOMAINS,
                                endpoints=[west.gateway_entry(V1), west.gateway_entry(V2)],
                                resources=json.dumps(resources))
    return World(west, client, f"http://{east.block}.1:15001", log)


async def get(world: World, *paths: str) -> list[dict]:
    code, out, err = await curl("-w", "\n", "-x", world.proxy_url, *(f"http://{FQDN}:8080{p}" for p in paths))
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def log_lines(path: Path, want: int) -> list[dict]:
    """Access log lines, once at least ``want`` are written (the log flushes every 100 ms)."""
    for _ in range(100):
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want:
            return [json.loads(line) for line in lines]
        await trio.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {want} access log lines")


async def test_a_request_through_the_gateway_reaches_the_app_with_mtls_end_to_end(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    world = await start_world(nursery, pki, tmp_path)
    gateway = world.west.gateway
    assert gateway.server_mtls is None and gateway.client_mtls is None  # the gateway holds no workload key
    [seen] = await get(world, "/hello")
    assert seen["app"] in ("echo-v1", "echo-v2") and seen["target"] == "/hello"
    [xfcc] = parse_xfcc(seen["headers"]["x-forwarded-client-cert"])
    assert xfcc["uri"] == ["spiffe://east.example/ns/demo/sa/client"]  # the client sidecar's own identity
    assert xfcc["by"] == [f"spiffe://west.example/ns/demo/sa/{seen['app']}"]
    assert gateway.metrics.value("istio_tcp_connections_opened_total", source_cluster="west",
                                 destination_cluster="west", destination_service=FQDN) == 1
    assert gateway.metrics.value("meshfed_eastwest_refused_total") == 0


async def test_the_subset_chosen_at_the_client_travels_in_the_sni(nursery: trio.Nursery, pki: MeshPki,
                                                                  tmp_path: Path) -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "echo", "namespace": "demo"},
          "spec": {"hosts": [FQDN], "http": [{"route": [{"destination": {"host": FQDN, "subset": "v2"}}]}]}}
    world = await start_world(nursery, pki, tmp_path, [vs])
    seen = await get(world, "/a", "/b", "/c", "/d")
    assert [s["app"] for s in seen] == ["echo-v2"] * 4
    world.client.stop()  # closes the pooled connection: the gateway logs it
    [line] = await log_lines(world.log, 1)
    assert line["requested_server_name"] == f"outbound_.8080_.v2_.{FQDN}"
    assert line["upstream_host"] == f"{world.west.instances[1].address}:15006"
    assert line["upstream_cluster"] == f"outbound|8080|v2|{FQDN}" and line["response_flags"] == "-"


async def connect(site: Site) -> trio.SocketStream:
    host, port = site.gateway_address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def closed_by_peer(stream: trio.SocketStream, limit: float = 5) -> bytes:
    """What the gateway sent before it closed the connection (it must, within ``limit``)."""
    got = b""
    with trio.fail_after(limit):
        try:
            while data := await stream.receive_some(65536):
                got += data
        except trio.BrokenResourceError:  # reset: it closed with our bytes unread
            pass
    await stream.aclose()
    return got


@pytest.mark.parametrize("payload, reason, flag", [pytest.param(p, r, f, id=r) for p, r, f in [
    (b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n", "not_tls", "DPE"),
    (b"\x16\x03\x01\x00\x06\x02\x00\x00\x02\x03\x03", "malformed_hello", "DPE"),
    (hello(None), "no_sni", "NR"),
    (hello("example.com"), "unknown_sni", "NR"),
    (hello("outbound_.8080_._.ratings.demo.svc.cluster.local"), "unknown_service", "NR"),
    (hello(f"outbound_.8080_.v9_.{FQDN}"), "unknown_subset", "NR"),
    (hello(f"outbound_.8080_.v3_.{FQDN}"), "no_healthy_endpoint", "UH"),
]])
async def test_connections_without_a_route_are_closed_counted_and_logged(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, payload: bytes, reason: str, flag: str) -> None:
    site, log = await west_site(nursery, pki, tmp_path)
    stream = await connect(site)
    for i in range(0, len(payload), 50):  # fragmented over several segments
        await stream.send_all(payload[i:i + 50])
    assert await closed_by_peer(stream) == b""
    metrics = site.gateway.metrics
    assert metrics.value("meshfed_eastwest_refused_total", reason=reason) == 1
    assert metrics.value("meshfed_eastwest_refused_total") == 1
    assert metrics.value("istio_tcp_connections_closed_total", response_flags=flag) == 1
    [line] = await log_lines(log, 1)
    assert (line["response_flags"], line["connection_termination_details"]) == (flag, reason)


async def test_a_service_not_exported_is_refused(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    site, _ = await west_site(nursery, pki, tmp_path, exported=False)
    stream = await connect(site)
    await stream.send_all(hello(SNI))
    assert await closed_by_peer(stream) == b""
    assert site.gateway.metrics.value("meshfed_eastwest_refused_total", reason="not_exported") == 1


async def test_a_new_document_that_stops_exporting_takes_effect_on_the_next_connection(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    site, _ = await west_site(nursery, pki, tmp_path)
    assert site.gateway_config is not None
    text = site.gateway_config.read_text().replace("exported: true", "exported: false")
    config, diags = load_proxy_config_text(text, str(site.gateway_config))
    assert config is not None, diags
    site.gateway.apply(config)
    stream = await connect(site)
    await stream.send_all(hello(SNI))
    assert await closed_by_peer(stream) == b""
    assert site.gateway.metrics.value("meshfed_eastwest_refused_total", reason="not_exported") == 1


async def server_answers(site: Site, sni: str, piece: int = 1000) -> bytes:
    """Send a hello for ``sni`` in pieces; the first bytes the far side answers."""
    stream = await connect(site)
    data = hello(sni)
    for i in range(0, len(data), piece):
        await stream.send_all(data[i:i + piece])
        await trio.sleep(0)
    with trio.fail_after(5):
        answer = await stream.receive_some(5)
    await stream.aclose()
    return answer


async def test_a_fragmented_hello_is_replayed_to_the_sidecar_which_answers_it(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    site, log = await west_site(nursery, pki, tmp_path)
    answer = await server_answers(site, f"outbound_.8080_.v1_.{FQDN}", piece=1)
    assert answer[:3] == b"\x16\x03\x03"  # the sidecar's ServerHello record: it got the whole hello
    [line] = await log_lines(log, 1)
    assert line["upstream_host"] == f"{site.instances[0].address}:15006" and line["bytes_received"] > 200
    metrics = site.gateway.metrics
    assert metrics.value("istio_tcp_received_bytes_total", destination_cluster="west") == line["bytes_received"]
    assert metrics.value("istio_tcp_sent_bytes_total", destination_cluster="west") == line["bytes_sent"] > 0


async def test_a_spliced_connection_idle_past_the_idle_timeout_is_closed(nursery: trio.Nursery, pki: MeshPki,
                                                                        tmp_path: Path) -> None:
    site, log = await west_site(nursery, pki, tmp_path, limits="  eastwest: {idleTimeout: 300ms}\n")
    stream = await connect(site)
    await stream.send_all(hello(SNI))
    assert (await closed_by_peer(stream))[:1] == b"\x16"  # the sidecar's answer, then nothing moves
    [line] = await log_lines(log, 1)
    assert (line["connection_termination_details"], line["response_flags"]) == ("idle", "-")
    assert line["duration"] >= 300


async def test_a_connect_failure_moves_to_the_next_endpoint_and_all_failing_is_uf(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    site, _ = await west_site(nursery, pki, tmp_path, instances=(("echo-a", V1), ("echo-b", V1)))
    site.instances[0].sidecar.stop()
    for _ in range(4):  # round robin reaches the stopped one at least once
        assert (await server_answers(site, SNI))[:1] == b"\x16"
    metrics = site.gateway.metrics
    assert metrics.value("meshfed_eastwest_connect_failures_total") >= 1
    assert metrics.value("istio_tcp_connections_opened_total", response_flags="-") == 4
    site.instances[1].sidecar.stop()
    stream = await connect(site)
    await stream.send_all(hello(SNI))
    assert await closed_by_peer(stream) == b""
    assert metrics.value("meshfed_eastwest_refused_total", reason="connect_failed") == 1
    assert metrics.value("istio_tcp_connections_closed_total", response_flags="UF") == 1


async def test_a_silent_connection_is_closed_after_the_hello_timeout(nursery: trio.Nursery, pki: MeshPki,
                                                                     tmp_path: Path) -> None:
    site, _ = await west_site(nursery, pki, tmp_path, limits="  eastwest: {helloTimeout: 200ms}\n")
    stream = await connect(site)
    assert await closed_by_peer(stream) == b""
    metrics = site.gateway.metrics
    assert metrics.value("meshfed_eastwest_refused_total", reason="hello_timeout") == 1
    assert metrics.value("istio_tcp_connections_closed_total", response_flags="SI") == 1


async def test_a_connection_over_max_connections_is_closed_at_once(nursery: trio.Nursery, pki: MeshPki,
                                                                   tmp_path: Path) -> None:
    site, _ = await west_site(nursery, pki, tmp_path, limits="  eastwest: {maxConnections: 1}\n")
    first = await connect(site)
    await first.send_all(hello(SNI)[:20])  # held: the gateway waits for the rest of the hello
    for _ in range(100):
        if site.gateway.eastwest.active == 1:
            break
        await trio.sleep(0.01)
    second = await connect(site)
    assert await closed_by_peer(second) == b""
    metrics = site.gateway.metrics
    assert metrics.value("meshfed_eastwest_refused_total", reason="overflow") == 1
    assert metrics.value("istio_tcp_connections_closed_total", response_flags="UO") == 1
    assert site.gateway.eastwest.active == 1
    await first.aclose()


def test_the_gateway_document_helper_writes_a_document_fedctl_proxy_accepts(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY_DOC)
    config, diags = load_proxy_config(str(path))
    assert config is not None and not [d for d in diags if d.is_error]
