"""Locality-aware load balancing at the client sidecar over local endpoints and east-west
gateway entries: priorities, distribute, gateway weights, health in endpoints, failover on
loopback through real gateways and back."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway._admin import clusters_json
from gateway._balancer import PickContext
from gateway._clusters import ClusterConfig
from gateway._config import load_proxy_config, load_proxy_config_text
from gateway._snapshot import compile_snapshot
from gateway.testing import Instance, Site, client_config, curl, random_block, start_client, start_site
from trustdomain.testing import MeshPki

DOMAINS = ("east.example", "west.example")
FQDN = "echo.demo.svc.cluster.local"
OD = {"consecutive5xxErrors": 1, "interval": "100ms", "baseEjectionTime": "1s", "maxEjectionPercent": 100}


def dr(traffic_policy: dict[str, Any]) -> str:
    return json.dumps([{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "echo", "namespace": "demo"},
                        "spec": {"host": FQDN, "trafficPolicy": traffic_policy}}])


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(*DOMAINS)


# -- compiled at the client, no sockets ------------------------------------------------

def paper_site(cluster: str, block: str, locality: str, network: str, n: int = 1) -> Site:
    site = Site(cluster, block, network, locality, "west.example")
    site.instances = [Instance(f"{cluster}-{i}", f"{block}.{10 + i}", 9080, {"app": "echo"}, None, None, Path())
                      for i in range(n)]
    return site


HOME = paper_site("home", "127.60.1", "r1/z1", "net-home", 2)
ZONE = paper_site("zone", "127.60.2", "r1/z2", "net-zone")
ZONE2 = paper_site("zone2", "127.60.4", "r1/z2", "net-zone2")
REGION = paper_site("region", "127.60.3", "r2/z1", "net-region")


def cluster_of(pki: MeshPki, tmp_path: Path, endpoints: list[str], policy: dict[str, Any] | None) -> ClusterConfig:
    path = client_config(pki, tmp_path, site=HOME, endpoints=endpoints, resources=dr(policy) if policy else "[]",
                         domains=DOMAINS)
    config, diags = load_proxy_config(str(path))
    assert config is not None, [str(d) for d in diags]
    snap, diags = compile_snapshot(config, rng=random.Random(7))
    assert snap is not None, [str(d) for d in diags]
    found = snap.cluster(FQDN, "", 8080)
    assert found is not None
    return found


def shares(cluster: ClusterConfig, n: int = 4000, context: PickContext = PickContext()) -> dict[str, float]:
    counts = Counter()
    for _ in range(n):
        host = cluster.picker.pick(context)
        assert host is not None
        counts[host.endpoint.endpoint.cluster] += 1
    return {k: v / n for k, v in sorted(counts.items())}


def test_gateway_entries_get_distinct_keys_priorities_and_weight_in_endpoints(pki: MeshPki, tmp_path: Path) -> None:
    c = cluster_of(pki, tmp_path, [HOME.local_entry(i) for i in HOME.instances] + [
        ZONE.gateway_entry({"version": "v1"}, weight=3), ZONE.gateway_entry({"version": "v2"}, weight=2),
        REGION.gateway_entry(weight=4)], {"outlierDetection": OD})
    rows = {h.key: (c.priority_of(h.key), h.weight, h.members, h.endpoint.authority) for h in c.hosts}
    assert rows == {
        "127.60.1.10:9080": (0, 1, 1, "127.60.1.10:15006"),
        "127.60.1.11:9080": (0, 1, 1, "127.60.1.11:15006"),
        "127.60.2.2:15443@zone/r1/z2{version=v1}": (1, 3, 3, "127.60.2.2:15443"),
        "127.60.2.2:15443@zone/r1/z2{version=v2}": (1, 2, 2, "127.60.2.2:15443"),
        "127.60.3.2:15443@region/r2/z1": (2, 4, 4, "127.60.3.2:15443"),
    }
    assert {h.endpoint.sni for h in c.hosts} == {f"outbound_.8080_._.{FQDN}"}


def test_without_locality_rules_or_outlier_detection_the_plain_balancer_picks(pki: MeshPki, tmp_path: Path) -> None:
    c = cluster_of(pki, tmp_path, [HOME.local_entry(HOME.instances[0]), REGION.gateway_entry(weight=3)], None)
    assert c.picker.locality is None and type(c.picker.balancer).__name__ == "LeastRequestBalancer"
    assert shares(c) == {"home": 0.25, "region": 0.75}  # weighted: a gateway entry of 3 endpoints


@pytest.mark.parametrize("simple", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
def test_the_weight_of_a_gateway_entry_is_honoured(pki: MeshPki, tmp_path: Path, simple: str) -> None:
    c = cluster_of(pki, tmp_path, [ZONE.gateway_entry(weight=3), ZONE2.gateway_entry(weight=1)],
                   {"loadBalancer": {"simple": simple}})
    got = shares(c)
    assert abs(got["zone"] - 0.75) < 0.04 and abs(got["zone2"] - 0.25) < 0.04


def test_failover_sends_everything_to_the_local_zone_while_it_is_healthy(pki: MeshPki, tmp_path: Path) -> None:
    c = cluster_of(pki, tmp_path, [HOME.local_entry(HOME.instances[0]), ZONE.gateway_entry(),
                                   REGION.gateway_entry()], {"outlierDetection": OD})
    assert shares(c, 500) == {"home": 1.0}


def test_distribute_weights_are_measured_within_tolerance(pki: MeshPki, tmp_path: Path) -> None:
    setting = {"distribute": [{"from": "r1/z1/*", "to": {"r1/z1/*": 70, "r1/z2/*": 20, "r2/*": 10}}]}
    c = cluster_of(pki, tmp_path, [HOME.local_entry(HOME.instances[0]), ZONE.gateway_entry(weight=5),
                                   REGION.gateway_entry(weight=2)], {"loadBalancer": {"localityLbSetting": setting}})
    got = shares(c, 10000)
    assert abs(got["home"] - 0.70) < 0.03 and abs(got["zone"] - 0.20) < 0.03 and abs(got["region"] - 0.10) < 0.03


def test_an_ejected_gateway_entry_takes_its_endpoints_out_of_its_priority(pki: MeshPki, tmp_path: Path) -> None:
    # priority 0: two clusters in the client's zone, 7 and 3 endpoints behind their gateways
    near_a = paper_site("near-a", "127.60.5", "r1/z1", "net-a")
    near_b = paper_site("near-b", "127.60.6", "r1/z1", "net-b")
    c = cluster_of(pki, tmp_path, [near_a.gateway_entry(weight=7), near_b.gateway_entry(weight=3),
                                   ZONE.gateway_entry(weight=10)], {"outlierDetection": OD})
    lb = c.picker.locality
    assert lb is not None
    ejected = {"127.60.5.2:15443@near-a/r1/z1": False}
    [p0, p1] = lb.priorities(ejected)
    # 3 of 10 endpoints healthy: health 1.4 x 30 % = 42 (counting entries, 1 of 2, would say 70)
    assert (p0.healthy, p0.hosts, p0.health, p0.load, p1.load) == (3, 10, 42, 42, 58)


def test_retry_remote_localities_moves_a_retry_to_another_priority(pki: MeshPki, tmp_path: Path) -> None:
    c = cluster_of(pki, tmp_path, [HOME.local_entry(HOME.instances[0]), ZONE.gateway_entry(),
                                   REGION.gateway_entry()], {"outlierDetection": OD})
    local = "127.60.1.10:9080"
    assert shares(c, 200, PickContext(exclude=frozenset({local}))) == {"home": 1.0}  # Envoy: previous host only
    assert shares(c, 200, PickContext(exclude=frozenset({local}), other_priorities=True)) == {"zone": 1.0}


def test_endpoints_without_locality_keep_the_plain_balancer_even_with_outlier_detection(
        pki: MeshPki, tmp_path: Path) -> None:
    text = client_config(pki, tmp_path, site=HOME, domains=DOMAINS, resources=dr({"outlierDetection": OD}),
                         endpoints=["{address: 127.60.1.10, port: 9080, servicePort: 8080}",
                                    "{address: 127.60.1.11, port: 9080, servicePort: 8080}"]).read_text()
    config, diags = load_proxy_config_text(text.replace("locality: r1/z1,", ""), str(tmp_path / "client.yaml"))
    assert config is not None, [str(d) for d in diags]
    snap, _ = compile_snapshot(config)
    assert snap is not None
    c = snap.cluster(FQDN, "", 8080)
    assert c is not None and c.picker.locality is None and c.outlier is not None


# -- on loopback: failover through gateways and back ----------------------------------

async def sites(nursery: trio.Nursery, pki: MeshPki, folder: Path) -> tuple[Site, Site, Site]:
    async def one(cluster: str, locality: str, trust_domain: str, gateway: bool) -> Site:
        return await start_site(nursery, pki, folder / cluster, cluster=cluster, block=random_block(),
                                network=f"net-{cluster}", locality=locality, trust_domain=trust_domain,
                                domains=DOMAINS, instances=((f"{cluster}-app", {"app": "echo"}),), gateway=gateway)
    home = await one("home", "us-east/zone-a", "east.example", False)
    zone = await one("zone", "us-east/zone-b", "west.example", True)
    region = await one("region", "us-west/zone-a", "west.example", True)
    return home, zone, region


async def answered_by(url: str, n: int = 1) -> list[str]:
    code, out, err = await curl("-w", "\n", "-x", url, *[f"http://{FQDN}:8080/"] * n)
    assert code == 0, err
    return [json.loads(line)["app"] for line in out.splitlines() if line.strip()]


async def until_answered_by(url: str, app: str, limit: int = 60) -> int:
    """Requests sent until one is answered by ``app`` (bounded)."""
    for i in range(limit):
        if (await answered_by(url)) == [app]:
            return i
        await trio.sleep(0.05)
    raise AssertionError(f"no request answered by {app} in {limit}")


async def test_failover_moves_to_the_other_zone_then_the_other_region_and_back(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    home, zone, region = await sites(nursery, pki, tmp_path)
    client = await start_client(nursery, pki, tmp_path / "client", site=home, domains=DOMAINS,
                                endpoints=[home.local_entry(home.instances[0]), zone.gateway_entry(),
                                           region.gateway_entry()], resources=dr({"outlierDetection": OD}))
    url = f"http://{home.block}.1:15001"
    assert await answered_by(url, 5) == ["home-app"] * 5

    home.instances[0].sidecar.stop()  # every local endpoint gone
    await until_answered_by(url, "zone-app")
    assert await answered_by(url, 5) == ["zone-app"] * 5  # the same region's other zone, behind its gateway
    c = client.snapshot.cluster(FQDN, "", 8080)
    rows = {h["address"]: h for entry in clusters_json(client)["cluster_statuses"] if entry["name"] == c.name
            for h in entry["hosts"]}
    local = rows[f"{home.instances[0].address}:{home.instances[0].app_port}"]
    assert (local["priority"], local["health_flags"], local["gateway"]) == (0, "/failed_outlier_check", None)
    via_zone = rows[f"{zone.gateway_address}@zone/us-east/zone-b"]
    assert (via_zone["priority"], via_zone["weight"], via_zone["gateway"], via_zone["locality"]) == (
        1, 1, zone.gateway_address, "us-east/zone-b")

    zone.instances[0].sidecar.stop()  # behind a healthy gateway, nothing answers: the gateway entry is ejected
    await until_answered_by(url, "region-app")
    assert await answered_by(url, 5) == ["region-app"] * 5
    assert zone.gateway.metrics.value("meshfed_eastwest_refused_total", reason="connect_failed") >= 1

    inst = home.instances[0]  # the local endpoint comes back; once its ejection ends, traffic returns
    from gateway.testing import start_proxy
    inst.sidecar = await start_proxy(nursery, inst.config)
    await until_answered_by(url, "home-app", limit=200)
    assert await answered_by(url, 5) == ["home-app"] * 5


async def test_endpoints_marked_unhealthy_by_a_new_document_fail_over_at_once(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    home, zone, region = await sites(nursery, pki, tmp_path)
    endpoints = [home.local_entry(home.instances[0]), zone.gateway_entry(), region.gateway_entry()]
    client = await start_client(nursery, pki, tmp_path / "client", site=home, domains=DOMAINS, endpoints=endpoints,
                                resources=dr({"outlierDetection": OD}))
    url = f"http://{home.block}.1:15001"
    assert await answered_by(url, 3) == ["home-app"] * 3

    def apply(eps: list[str], version: str) -> None:
        path = client_config(pki, tmp_path / "client", site=home, domains=DOMAINS, endpoints=eps, version=version,
                             resources=dr({"outlierDetection": OD}))
        config, diags = load_proxy_config(str(path))
        assert config is not None, diags
        assert not [d for d in client.apply(config) if d.is_error]

    down = endpoints[0][:-1] + ", healthy: false}"
    apply([down, *endpoints[1:]], "2")
    assert await answered_by(url, 4) == ["zone-app"] * 4
    apply([down, endpoints[2]], "3")  # the zone's gateway withdrawn
    assert await answered_by(url, 4) == ["region-app"] * 4
    apply(endpoints, "4")
    assert await answered_by(url, 4) == ["home-app"] * 4
