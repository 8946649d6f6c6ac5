"""One test per users' complaint of issue 7 (Istio, Linkerd, Cilium, Consul), named for it.

Each is shown where it is shown most cheaply and exactly: the pure policies (link health,
gateway groups, the client's compiled cluster), ``fedctl validate``, two ``Federation``
objects over real mTLS on loopback, or sites on loopback with real east-west gateways
(``gateway.testing.start_site``). The full mesh shows the same on examples/multi-cluster
in tests/test_federation_failover.py (failover, a stopped gateway, TTL, flap, rotation).
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from federation._cplistener import ControlPlaneListener
from federation._federation import Federation
from federation._federation_model import ExportedService, ExportSet, gateway_groups
from federation._federation_peers import Peer
from federation._link_health import LinkHealth, ProbePolicy
from gateway._config import load_proxy_config
from gateway._discovery_wire import control_plane_id
from gateway._snapshot import compile_snapshot
from gateway._xfcc import parse as parse_xfcc
from gateway.testing import Instance, Site, client_config, curl, random_block, start_client, start_site
from topology import Endpoint, Labels
from topology._endpoint import Locality, ServicePort
from trustdomain import MtlsContexts, issue_svid
from trustdomain.testing import MeshPki

DOMAINS = ("east.example", "west.example")
FQDN = "echo.demo.svc.cluster.local"
REGION = "topology.kubernetes.io/region"
OD = {"consecutive5xxErrors": 1, "consecutiveGatewayErrors": 1, "interval": "100ms", "baseEjectionTime": "30s",
      "maxEjectionPercent": 100}
RETRIES = {"attempts": 3, "perTryTimeout": "2s", "retryOn": "connect-failure,refused-stream,reset,gateway-error"}


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(*DOMAINS)


def resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": "echo", "namespace": "demo"},
            "spec": spec}


async def three_sites(nursery: trio.Nursery, pki: MeshPki, folder: Path,
                      gateway_resources: str = "[]") -> tuple[Site, Site, Site]:
    """home (r1/z1, no gateway: the client's own network), zone (r1/z2) and region (r2/z1),
    the last two other networks behind their own east-west gateways; one echo each, labelled
    with its region as every endpoint is. The gateways resolve subsets from ``gateway_resources``."""
    async def one(cluster: str, locality: str, trust_domain: str, gateway: bool) -> Site:
        labels = {"app": "echo", REGION: locality.split("/")[0]}
        return await start_site(nursery, pki, folder / cluster, cluster=cluster, block=random_block(),
                                network=f"net-{cluster}", locality=locality, trust_domain=trust_domain,
                                domains=DOMAINS, instances=((f"{cluster}-app", labels),), gateway=gateway,
                                gateway_resources=gateway_resources)
    return (await one("home", "r1/z1", "east.example", False), await one("zone", "r1/z2", "west.example", True),
            await one("region", "r2/z1", "west.example", True))


def entries(home: Site, zone: Site, region: Site) -> list[str]:
    return [home.local_entry(home.instances[0]), zone.gateway_entry(), region.gateway_entry()]


async def answered_by(url: str, n: int) -> list[str]:
    """``n`` requests over one keep-alive connection (one curl); the app of each answer."""
    code, out, err = await curl("-s", "-w", "\n", "-x", url, *[f"http://{FQDN}:8080/"] * n)
    apps = []
    for line in out.splitlines():
        if line.strip():
            try:
                apps.append(json.loads(line)["app"])
            except ValueError:
                apps.append(f"error: {line[:200]}")
    return apps


async def until_answered_by(url: str, app: str, limit: int = 100) -> None:
    for _ in range(limit):
        if await answered_by(url, 1) == [app]:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"no request answered by {app} in {limit}")


# -- istio#19257, #12961: failover never triggers without outlier detection -------------------------

def test_istio_19257_failover_without_outlier_detection_is_a_validate_warning_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "dr.yaml").write_text("""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo.demo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: us-east, to: us-west}]
""")
    out = subprocess.run([sys.executable, "-m", "federation", "validate", "--quiet", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # a warning, as Istio's analyzer: the config is valid
    assert out.stdout.strip() == (
        f"{tmp_path / 'dr.yaml'}:8: spec.trafficPolicy.loadBalancer.localityLbSetting: warning: locality failover "
        "does nothing without outlierDetection in the same policy; add outlierDetection so unhealthy endpoints "
        "are detected")
    strict = subprocess.run([sys.executable, "-m", "federation", "validate", "--strict", "--quiet", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1


async def test_istio_19257_with_outlier_detection_a_dead_local_endpoint_fails_over_without_a_failed_request(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    home, zone, region = await three_sites(nursery, pki, tmp_path)
    resources = [resource("DestinationRule", {"host": FQDN, "trafficPolicy": {"outlierDetection": OD}}),
                 resource("VirtualService", {"hosts": [FQDN], "http": [{"route": [{"destination": {"host": FQDN}}],
                                                                        "retries": RETRIES}]})]
    await start_client(nursery, pki, tmp_path / "client", site=home, domains=DOMAINS,
                       endpoints=entries(home, zone, region), resources=json.dumps(resources))
    url = f"http://{home.block}.1:15001"
    assert await answered_by(url, 3) == ["home-app"] * 3
    home.instances[0].sidecar.stop()  # the endpoint stays in the client's document: only outlier detection sees it
    assert await answered_by(url, 6) == ["zone-app"] * 6  # the first one retried: no failure seen


# -- istio#35124: weights and failover combined --------------------------------------------------------

async def test_istio_35124_an_80_20_split_across_regions_holds_while_each_share_fails_over_within_its_region(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    subsets = [{"name": r, "labels": {REGION: r}} for r in ("r1", "r2")]
    dr = resource("DestinationRule", {"host": FQDN, "subsets": subsets, "trafficPolicy": {
        "outlierDetection": OD, "loadBalancer": {"localityLbSetting": {"failover": [{"from": "r1", "to": "r2"}]}}}})
    home, zone, region = await three_sites(nursery, pki, tmp_path, json.dumps([dr]))  # gateways resolve the subsets
    vs = resource("VirtualService", {"hosts": [FQDN], "http": [{"retries": RETRIES, "route": [
        {"destination": {"host": FQDN, "subset": "r1"}, "weight": 80},
        {"destination": {"host": FQDN, "subset": "r2"}, "weight": 20}]}]})
    await start_client(nursery, pki, tmp_path / "client", site=home, domains=DOMAINS,
                       endpoints=[home.local_entry(home.instances[0]), zone.gateway_entry({REGION: "r1"}),
                                  region.gateway_entry({REGION: "r2"})], resources=json.dumps([dr, vs]))
    url = f"http://{home.block}.1:15001"
    n, sigma = 100, (100 * 0.8 * 0.2) ** 0.5
    before = Counter(await answered_by(url, n))
    assert set(before) == {"home-app", "region-app"} and abs(before["home-app"] - 80) <= 4 * sigma, before
    home.instances[0].sidecar.stop()  # r1's nearest endpoint dies: r1's share fails over to r1's other zone
    await until_answered_by(url, "zone-app")
    after = Counter(await answered_by(url, n))
    assert set(after) == {"zone-app", "region-app"} and abs(after["zone-app"] - 80) <= 4 * sigma, after


# -- istio#45010: opaque cross-network TLS / 503 errors ----------------------------------------------

async def test_istio_45010_a_refusal_at_the_gateway_is_logged_there_with_the_sni_and_the_reason(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    log = tmp_path / "gateway-access.log"
    west = await start_site(nursery, pki, tmp_path / "west", cluster="west", block=random_block(), network="net-west",
                            locality="r2/z1", trust_domain="west.example", domains=DOMAINS, exported=False,
                            gateway_limits=f"  telemetry: {{accessLog: {log}}}\n")
    east = Site("east", random_block(), "net-east", "r1/z1", "east.example")
    await start_client(nursery, pki, tmp_path / "east", site=east, domains=DOMAINS, endpoints=[west.gateway_entry()])
    code, out, _ = await curl("-s", "-i", "-x", f"http://{east.block}.1:15001", f"http://{FQDN}:8080/")
    assert out.startswith("HTTP/1.1 503 ") and "reset reason: connection failure" in out  # Envoy's UF reply
    assert west.gateway.metrics.value("meshfed_eastwest_refused_total", reason="not_exported") >= 1
    for _ in range(100):  # the access log flushes every 100 ms
        if log.exists() and log.read_text().strip():
            break
        await trio.sleep(0.05)
    line = json.loads(log.read_text().splitlines()[0])
    assert (line["requested_server_name"], line["response_flags"], line["connection_termination_details"]) == (
        f"outbound_.8080_._.{FQDN}", "NR", "not_exported")


async def test_istio_45010_a_server_of_an_untrusted_domain_is_refused_naming_its_identity_and_why(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    west = await start_site(nursery, pki, tmp_path / "west", cluster="west", block=random_block(), network="net-west",
                            locality="r2/z1", trust_domain="west.example", domains=DOMAINS)
    east = Site("east", random_block(), "net-east", "r1/z1", "east.example")
    await start_client(nursery, pki, tmp_path / "east", site=east, domains=("east.example",),  # west's bundle missing
                       endpoints=[west.gateway_entry()])
    with caplog.at_level(logging.WARNING):
        code, out, _ = await curl("-s", "-i", "-x", f"http://{east.block}.1:15001", f"http://{FQDN}:8080/")
    assert out.startswith("HTTP/1.1 503 ")
    assert ("refused TLS server spiffe://west.example/ns/demo/sa/echo: unknown_trust_domain: no bundle for trust "
            "domain 'west.example' of 'spiffe://west.example/ns/demo/sa/echo' (trusted: east.example)") in caplog.text


# -- istio#39712: traffic to the wrong gateway ---------------------------------------------------------

def test_istio_39712_each_gateway_group_is_built_for_and_dialled_at_its_own_clusters_gateway() -> None:
    def ep(cluster: str, n: int) -> Endpoint:
        return Endpoint(f"10.{n}.0.1", 8080, Labels({"app": "echo"}), Locality.parse(f"r{n}/z1"), cluster, f"net-{cluster}")
    gateways = {"zone": "127.61.2.2:15443", "region": "127.61.3.2:15443"}
    groups = gateway_groups([ep("zone", 1), ep("region", 2), ep("region", 2), ep("orphan", 3)], gateways)
    assert sorted((g["cluster"], g["gateway"], g["address"], g["port"], g["weight"]) for g in groups) == [
        ("region", "127.61.3.2:15443", "127.61.3.2", 15443, 2), ("zone", "127.61.2.2:15443", "127.61.2.2", 15443, 1)]
    # a cluster whose gateway is unknown is left out, never sent to some other cluster's gateway


async def test_istio_39712_requests_reach_each_cluster_through_its_own_gateway_only(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    _, zone, region = await three_sites(nursery, pki, tmp_path)
    east = Site("east", random_block(), "net-east", "r1/z1", "east.example")
    await start_client(nursery, pki, tmp_path / "east", site=east, domains=DOMAINS,
                       endpoints=[zone.gateway_entry(), region.gateway_entry()])  # no locality rules: both used
    seen = Counter(await answered_by(f"http://{east.block}.1:15001", 40))
    assert set(seen) == {"zone-app", "region-app"}, seen
    for site in (zone, region):
        m = site.gateway.metrics
        assert m.value("meshfed_eastwest_refused_total") == 0  # no SNI for another cluster reached it
        assert m.value("istio_tcp_connections_opened_total", destination_cluster=site.cluster) >= 1


# -- istio#39204: shared root, different trust domains -------------------------------------------------

async def test_istio_39204_a_shared_root_with_a_trust_domain_per_cluster_works_end_to_end(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    west = await start_site(nursery, pki, tmp_path / "west", cluster="west", block=random_block(), network="net-west",
                            locality="r2/z1", trust_domain="west.example", domains=DOMAINS)
    east = Site("east", random_block(), "net-east", "r1/z1", "east.example")
    await start_client(nursery, pki, tmp_path / "east", site=east, domains=DOMAINS, endpoints=[west.gateway_entry()])
    code, out, err = await curl("-s", "-x", f"http://{east.block}.1:15001", f"http://{FQDN}:8080/")
    assert code == 0, err
    [xfcc] = parse_xfcc(json.loads(out)["headers"]["x-forwarded-client-cert"])
    assert (xfcc["uri"], xfcc["by"]) == (["spiffe://east.example/ns/demo/sa/client"],
                                         ["spiffe://west.example/ns/demo/sa/echo"])


# -- federation over mTLS on loopback: stale endpoints, TTL, races -----------------------------------

FAST = ProbePolicy(interval=0.1, failure_threshold=2, ttl=2.0, timeout=0.5)
SECRET = {"east-a": b"e" * 32, "west": b"w" * 32}


@dataclass
class Side:
    name: str
    federation: Federation
    address: tuple[str, int]
    frozen: list[trio.Event] = field(default_factory=list)
    """While it holds an unset event, this side's federation API accepts requests and answers none
    (a control plane under SIGSTOP: the connection stays open, nothing comes back)."""

    def peer(self, **changes: Any) -> Peer:
        return replace(Peer(self.name, f"{self.name}.example", self.address, f"{self.address[0]}:15443", probe=FAST),
                       **changes)

    def freeze(self) -> None:
        self.frozen.append(trio.Event())

    def thaw(self) -> None:
        self.frozen.pop().set()


FED_PKI = MeshPki.shared_root("east-a.example", "west.example")


async def start_side(name: str, nursery: trio.Nursery) -> Side:
    td = f"{name}.example"
    contexts = MtlsContexts(issue_svid(FED_PKI.ca(td), control_plane_id(td), FED_PKI.now), FED_PKI.bundles(),
                            alpn=("h2",))
    fed = Federation(name, contexts, SECRET[name])
    side = Side(name, fed, ("", 0))

    def gated(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def handle(req: Any) -> None:
            while side.frozen:
                await side.frozen[-1].wait()
            await handler(req)
        return handle
    listener = ControlPlaneListener(contexts, {path: gated(h) for path, h in fed.routes.items()})
    await nursery.start(fed.run)
    side.address = await nursery.start(listener.serve, random_block() + ".1", 0)
    return side


def export(cluster: str, n: int, block: str = "127.62.3") -> ExportSet:
    eps = tuple(Endpoint(f"{block}.{10 + i}", 8080, cluster=cluster, network=f"net-{cluster}", service_port=8080)
                for i in range(n))
    svc = ExportedService(FQDN, "demo", "echo", (ServicePort("http", 8080, "HTTP"),), eps)
    return ExportSet(cluster, f"net-{cluster}", "r2/z1", f"{cluster}.example", f"{block}.2:15443", (svc,), f"r{n}")


def imported(side: Side) -> list[str]:
    return sorted(e.address for x in side.federation.imports() for s in x.services for e in s.endpoints)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def linked(nursery: trio.Nursery) -> tuple[Side, Side]:
    east, west = await start_side("east-a", nursery), await start_side("west", nursery)
    west.federation.set_export(export("west", 2))
    west.federation.set_peers({"east-a": east.peer()})
    east.federation.set_peers({"west": west.peer()})
    await until(lambda: len(imported(east)) == 2)
    return east, west


async def test_istio_36365_unlinking_removes_the_peers_endpoints_at_once(nursery: trio.Nursery) -> None:
    east, _ = await linked(nursery)
    east.federation.set_peers({})
    assert imported(east) == [] and east.federation.status() == []


async def test_istio_61043_a_rotated_link_keeps_the_old_imports_until_it_syncs_then_holds_only_the_new_ones(
        nursery: trio.Nursery) -> None:
    east, west = await linked(nursery)
    west.freeze()  # the new link cannot sync yet
    west.federation.set_export(export("west", 1, block="127.62.4"))  # the peer moved meanwhile
    east.federation.set_peers({"west": west.peer(probe=replace(FAST, interval=0.2))})  # rotation: new settings
    await trio.sleep(0.3)
    assert imported(east) == ["127.62.3.10", "127.62.3.11"], "make-before-break: the old imports stay"
    west.thaw()
    await until(lambda: imported(east) == ["127.62.4.10"])  # the new sync replaces them: nothing stale is left


async def test_cilium_19217_a_silent_peer_loses_its_endpoints_after_the_ttl_not_before_and_gets_them_back(
        nursery: trio.Nursery) -> None:
    east, west = await linked(nursery)
    west.freeze()  # its connection stays open; nothing answers (SIGSTOP)
    frozen_at = trio.current_time()
    await until(lambda: imported(east) == [], timeout=FAST.ttl + 5)
    row = east.federation.status()[0]
    assert row["state"] == "expired" and row["secondsSinceContact"] >= FAST.ttl - 0.05
    assert trio.current_time() - frozen_at >= FAST.ttl - FAST.interval - 0.1  # never before the TTL
    west.thaw()  # back: a fresh connection re-reads the whole export, with no long poll to wait out
    await until(lambda: len(imported(east)) == 2, timeout=5)


async def test_linkerd2_4549_a_blip_shorter_than_the_ttl_never_withdraws_the_endpoints(nursery: trio.Nursery) -> None:
    east, west = await linked(nursery)
    states = []
    west.freeze()
    with trio.move_on_after(FAST.ttl / 2):  # 1 s: past the failure threshold, well short of the TTL
        while True:
            states.append((east.federation.status()[0]["state"], len(imported(east))))
            await trio.sleep(0.05)
    west.thaw()
    assert {n for _, n in states} == {2} and {"degraded", "down"} & {s for s, _ in states}, states
    await until(lambda: east.federation.status()[0]["state"] == "up")
    assert len(imported(east)) == 2


@pytest.mark.parametrize("events, now, keeps", [
    # an export arriving while probes fail counts as contact: the link is up again
    ([(0, "ok"), (1, "x"), (1.5, "x"), (2, "ok"), (2.5, "x")], 9.9, True),
    # probes failing past the threshold while the export is fresh: down, endpoints kept until the TTL
    ([(0, "ok"), (1, "x"), (2, "x"), (3, "x"), (4, "x")], 9.9, True),
    ([(0, "ok"), (1, "x"), (2, "x"), (3, "x"), (4, "x")], 10.0, False),
    # a late success after the TTL brings them back
    ([(0, "ok"), (11, "ok")], 11.0, True),
])
def test_linkerd2_4549_probe_and_export_results_in_any_order_decide_only_by_the_last_contact(
        events: list[tuple[float, str]], now: float, keeps: bool) -> None:
    health = LinkHealth(ProbePolicy(interval=1.0, failure_threshold=3, ttl=10.0), 0.0)
    for t, what in events:
        health.success(t) if what == "ok" else health.failure(t, what)
    assert health.keeps_imports(now) is keeps


# -- istio#52435: one gateway endpoint per cluster breaks outlier detection ------------------------

def test_istio_52435_a_gateway_stands_for_one_entry_per_locality_and_label_set_each_ejected_alone(
        pki: MeshPki, tmp_path: Path) -> None:
    home = Site("home", "127.63.1", "net-home", "r1/z1", "east.example")
    home.instances = [Instance("home-0", "127.63.1.10", 9080, {"app": "echo"}, None, None, Path())]
    west = Site("west", "127.63.3", "net-west", "r2/z1", "west.example")
    v1, v2 = {"app": "echo", "version": "v1"}, {"app": "echo", "version": "v2"}
    path = client_config(pki, tmp_path, site=home, domains=DOMAINS, endpoints=[
        home.local_entry(home.instances[0]), west.gateway_entry(v1, weight=1), west.gateway_entry(v2, weight=3)],
        resources=json.dumps([resource("DestinationRule", {"host": FQDN, "trafficPolicy": {"outlierDetection": OD}})]))
    config, diags = load_proxy_config(str(path))
    assert config is not None, [str(d) for d in diags]
    snap, diags = compile_snapshot(config, rng=random.Random(3))
    assert snap is not None, [str(d) for d in diags]
    cluster = snap.cluster(FQDN, "", 8080)
    assert cluster is not None and cluster.outlier is not None and cluster.picker.locality is not None
    local, g1, g2 = "127.63.1.10:9080", "127.63.3.2:15443@west/r2/z1{app=echo,version=v1}", \
        "127.63.3.2:15443@west/r2/z1{app=echo,version=v2}"
    assert {h.key: (h.endpoint.authority, h.weight) for h in cluster.hosts} == {
        local: ("127.63.1.10:15006", 1), g1: ("127.63.3.2:15443", 1), g2: ("127.63.3.2:15443", 3)}
    lb = cluster.picker.locality
    health = {local: False, g1: False}  # the local endpoint and the gateway's v1 group ejected
    [p0, p1] = lb.priorities(health)
    assert (p1.healthy, p1.hosts, p1.load) == (3, 4, 100)  # 75 % healthy x 1.4: no panic, all of the load
    assert {lb.pick(healthy=health).key for _ in range(200)} == {g2}  # the same gateway, its other group


# -- consul#9811: failover ignoring a gateway outage -------------------------------------------------

async def test_consul_9811_a_dead_gateway_moves_its_clusters_traffic_to_the_next_locality(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    home, zone, region = await three_sites(nursery, pki, tmp_path)
    resources = [resource("DestinationRule", {"host": FQDN, "trafficPolicy": {"outlierDetection": OD}}),
                 resource("VirtualService", {"hosts": [FQDN], "http": [{"route": [{"destination": {"host": FQDN}}],
                                                                        "retries": RETRIES}]})]
    await start_client(nursery, pki, tmp_path / "client", site=home, domains=DOMAINS,
                       endpoints=entries(home, zone, region)[1:], resources=json.dumps(resources))
    url = f"http://{home.block}.1:15001"
    assert await answered_by(url, 3) == ["zone-app"] * 3
    zone.gateway.stop()  # zone's app is healthy; its gateway is gone
    assert await answered_by(url, 6) == ["region-app"] * 6  # retried, then ejected: no failure seen
