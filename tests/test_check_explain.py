"""``fedctl check`` and ``fedctl explain``.

Pure tests: the walk runs on real documents (a client sidecar's ProxyConfig, an east-west
gateway's) with canned probe answers, so each failing hop is named without a socket. One
end-to-end test runs a small two-cluster copy of examples/multi-cluster on 127.66.x,
linked with ``fedctl link``, and checks echo (local) and ratings (only in west, through
its gateway), then the gateway hop once west's gateway is stopped with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from federation._check import Client, check
from federation._check_probe import Answer, Handshake
from federation._check_view import compile_view
from federation._explain import explain, explain_text
from gateway._eastwest_testing import Site, client_config
from trustdomain.testing import MeshPki
from meshproc import fedctl, kill_leftovers

EAST, WEST, EVIL = "east.meshfed.local", "west.meshfed.local", "evil.meshfed.local"
FQDN = "echo.demo.svc.cluster.local"
ADMIN, OUTBOUND, GATEWAY = "127.66.1.1:15000", "127.66.1.1:15001", "127.66.2.2:15443"
SNI = f"outbound_.8080_._.{FQDN}"
LOCAL = ("{address: 127.66.1.10, port: 8080, servicePort: 8080, proxyPort: 15006, labels: {app: echo}, "
         "locality: us-east/us-east-1a, cluster: east, network: net-east, serviceAccount: echo}")
REMOTE = ('{address: 127.66.2.2, port: 15443, gateway: "127.66.2.2:15443", servicePort: 8080, labels: {app: echo}, '
          "locality: us-west/us-west-1a, cluster: west, network: net-west, weight: 2, serviceAccount: echo}")
DR = ("[{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: echo, namespace: demo}, "
      "spec: {host: echo.demo.svc.cluster.local, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, "
      "interval: 1s, baseEjectionTime: 30s}}}}]")
SITE = Site("east", "127.66.1", "net-east", "us-east/us-east-1a", EAST)


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(EAST, WEST, EVIL)


def chain_of(pki: MeshPki, domain: str, account: str = "echo") -> tuple[bytes, ...]:
    svid = pki.svid(domain, "demo", account)
    return tuple(c.public_bytes(Encoding.DER) for c in (svid.certificate, *svid.intermediates))


def gateway_doc(folder: Path, exported: bool = True) -> Path:
    path = folder / "eastwest.yaml"
    path.write_text(f"""apiVersion: meshfed.io/v1alpha1
kind: ProxyConfig
metadata: {{name: eastwest-west}}
spec:
  node: {{cluster: west, namespace: istio-system, workload: istio-eastwestgateway, role: eastwest,
          locality: us-west/us-west-1a, network: net-west, trustDomain: {WEST}}}
  listeners: {{eastwest: "{GATEWAY}", admin: "127.66.2.2:15000"}}
  services:
  - hostname: {FQDN}
    namespace: demo
    exported: {str(exported).lower()}
    ports: [{{name: http, port: 8080, protocol: http}}]
    endpoints:
    - {{address: 127.66.2.10, port: 8080, proxyPort: 15006, labels: {{app: echo}}, locality: us-west/us-west-1a,
        cluster: west, network: net-west, serviceAccount: echo}}
""")
    return path


def metrics(status: int, flags: str, cluster: str, count: int) -> bytes:
    labels = (f'destination_service="{FQDN}",reporter="source",response_code="{status}",response_flags="{flags}",'
              f'destination_cluster="{cluster}",destination_workload="echo",'
              f'destination_principal="spiffe://{WEST}/ns/demo/sa/echo"')
    return (f"# TYPE istio_requests_total counter\nistio_requests_total{{{labels}}} {count}.0\n").encode()


@dataclass
class FakeProbes:
    """Canned answers; files are read for real (the documents the walk compiles)."""

    doc: Path
    gateway: Path | None = None
    connect_errors: dict[str, str] = field(default_factory=dict)
    gateway_hung: bool = False
    clusters: dict[str, Any] | None = None
    handshake_answer: Handshake = field(default_factory=Handshake)
    answer: Answer = field(default_factory=lambda: Answer(200, b"{}"))
    flags: str = "-"
    metric_reads: int = 0
    requests: list[str] = field(default_factory=list)

    def admin(self, hostport: str, path: str) -> Answer:
        if hostport == ADMIN:
            if path == "/ready":
                return Answer(200, b"LIVE\n")
            if path == "/config_dump":
                return Answer(200, json.dumps({"version": "1", "file": str(self.doc), "applied": 1, "refused": 0,
                                               "tls": {"spiffe_id": f"spiffe://{EAST}/ns/demo/sa/client"}}).encode())
            if path.startswith("/clusters"):
                return Answer(200, json.dumps({"cluster_statuses": list((self.clusters or {}).values())}).encode())
            if path == "/metrics":
                self.metric_reads += 1
                return Answer(200, metrics(self.answer.status or 0, self.flags, "west", self.metric_reads - 1))
        if hostport == "127.66.2.2:15000":
            if self.gateway_hung:
                return Answer(error="no answer within 2 s", hung=True)
            if path == "/ready":
                return Answer(200, b"LIVE\n")
            if path == "/config_dump" and self.gateway is not None:
                return Answer(200, json.dumps({"version": "1", "file": str(self.gateway)}).encode())
            if path == "/metrics":
                return Answer(200, b'meshfed_eastwest_refused_total{reason="not_exported"} 0.0\n')
        return Answer(error="connection refused")

    def connect(self, hostport: str) -> str | None:
        return self.connect_errors.get(hostport)

    def handshake(self, hostport: str, sni: str, svid: Any | None) -> Handshake:
        assert sni == SNI and svid is not None
        return self.handshake_answer

    def request(self, outbound: str, url: str) -> Answer:
        self.requests.append(url)
        return self.answer

    def read_text(self, path: str) -> str | None:
        return Path(path).read_text()


def client_doc(pki: MeshPki, folder: Path, endpoints: list[str], resources: str = DR) -> Path:
    return client_config(pki, folder, site=SITE, endpoints=endpoints, resources=resources, domains=(EAST, WEST))


CLIENT = Client("east/demo/client (client-0)", ADMIN, OUTBOUND, {"east": EAST, "west": WEST})


def walk(probes: FakeProbes, service: str = "echo.demo") -> Any:
    return check(CLIENT, service, None, probes)


def test_every_hop_ok_through_a_remote_gateway(pki: MeshPki, tmp_path: Path) -> None:
    probes = FakeProbes(client_doc(pki, tmp_path, [REMOTE]), gateway_doc(tmp_path),
                        handshake_answer=Handshake(chain_of(pki, WEST), "http/1.1", client_certificate=True))
    report = walk(probes)
    assert report.ok and report.failed is None
    assert [(h.name, h.status) for h in report.hops] == [
        ("sidecar", "ok"), ("service", "ok"), ("route", "ok"), ("cluster", "ok"), ("endpoint", "ok"),
        ("gateway", "ok"), ("server-sidecar", "ok"), ("trust", "ok"), ("request", "ok")]
    hops = {h.name: h for h in report.hops}
    assert hops["service"].evidence == f"echo.demo -> {FQDN}:8080 (HTTP); endpoints in clusters: west"
    assert hops["route"].evidence == (f"default route (no VirtualService) (path prefix '/') -> "
                                      f"outbound|8080||{FQDN} 100%")
    assert hops["endpoint"].data["sni"] == SNI and hops["endpoint"].data["via"] == GATEWAY
    assert hops["gateway"].evidence == (f"gateway {GATEWAY} of cluster west reachable; it exports {FQDN}:8080 "
                                        "with 1 healthy endpoint(s): 127.66.2.10:15006")
    assert hops["trust"].evidence == (f"server spiffe://{WEST}/ns/demo/sa/echo (service account echo) chains to the "
                                      f"bundle of {WEST}; handshake presenting spiffe://{EAST}/ns/demo/sa/client, "
                                      "ALPN http/1.1")
    assert hops["request"].evidence == (f"GET http://echo.demo:8080/ through {OUTBOUND}: 200, response flags -, "
                                        f"served by echo in cluster west as spiffe://{WEST}/ns/demo/sa/echo")
    assert probes.requests == ["http://echo.demo:8080/"]
    assert report.to_text().endswith("result: every hop ok")
    assert report.to_json()["failed"] is None


GW_UNREACHABLE = {"connect_errors": {GATEWAY: "connection refused"}}


@pytest.mark.parametrize(("service", "endpoints", "options", "hop", "evidence"), [
    ("nope.demo", [LOCAL], {}, "service",
     "unknown service 'nope.demo': no service of that name in the client's document (resolved from namespace "
     "'demo'; 1 services known)"),
    ("echo.demo", [], {}, "cluster", f"outbound|8080||{FQDN}: no endpoints; DestinationRule demo/echo"),
    ("echo.demo", [REMOTE], {"exported": False}, "gateway",
     f"gateway {GATEWAY} of cluster west would refuse SNI {SNI}: not_exported (flag NR)"),
    ("echo.demo", [REMOTE], GW_UNREACHABLE, "gateway",
     f"gateway {GATEWAY} of cluster west unreachable: connection refused"),
    ("echo.demo", [REMOTE], {"gateway_hung": True}, "gateway",
     f"gateway {GATEWAY} of cluster west accepts TCP connections but does not answer: its admin 127.66.2.2:15000 "
     "said nothing (no answer within 2 s)"),
    ("echo.demo", [LOCAL], {"connect_errors": {"127.66.1.10:15006": "connection refused"}}, "server-sidecar",
     "127.66.1.10:15006 unreachable: connection refused"),
])
def test_the_first_failing_hop_is_named(pki: MeshPki, tmp_path: Path, service: str, endpoints: list[str],
                                        options: dict[str, Any], hop: str, evidence: str) -> None:
    options = dict(options)
    gateway = gateway_doc(tmp_path, exported=options.pop("exported", True))
    probes = FakeProbes(client_doc(pki, tmp_path, endpoints), gateway, **options)
    report = walk(probes, service)
    assert report.failed is not None and report.failed.name == hop
    assert report.failed.evidence == evidence
    assert report.hops[-1] is report.failed and report.failed.hint
    assert probes.requests == []  # the walk stopped at the failure
    assert report.to_text().endswith(f"result: FAIL at {hop}")


def test_a_server_of_an_untrusted_trust_domain_fails_the_trust_hop(pki: MeshPki, tmp_path: Path) -> None:
    probes = FakeProbes(client_doc(pki, tmp_path, [REMOTE]), gateway_doc(tmp_path),
                        handshake_answer=Handshake(chain_of(pki, EVIL), "http/1.1"))
    failed = walk(probes).failed
    assert failed is not None and failed.name == "trust"
    assert failed.evidence == (f"the server's certificate is refused: unknown_trust_domain: no bundle for trust domain "
                               f"'{EVIL}' of 'spiffe://{EVIL}/ns/demo/sa/echo' (trusted: {EAST}, {WEST}) "
                               f"(the client trusts: {EAST}, {WEST})")
    assert failed.data == {"reason": "unknown_trust_domain"}


def test_an_identity_of_another_cluster_than_the_endpoints_fails_the_trust_hop(pki: MeshPki, tmp_path: Path) -> None:
    probes = FakeProbes(client_doc(pki, tmp_path, [REMOTE]), gateway_doc(tmp_path),
                        handshake_answer=Handshake(chain_of(pki, EAST), "http/1.1"))
    failed = walk(probes).failed
    assert failed is not None and (failed.name, failed.evidence) == (
        "trust", f"the server presented spiffe://{EAST}/ns/demo/sa/echo, expected trust domain '{WEST}' of cluster west")


def test_a_handshake_the_gateway_closes_fails_the_trust_hop(pki: MeshPki, tmp_path: Path) -> None:
    probes = FakeProbes(client_doc(pki, tmp_path, [REMOTE]), gateway_doc(tmp_path),
                        handshake_answer=Handshake(error="the connection was closed before the handshake completed"))
    failed = walk(probes).failed
    assert failed is not None and failed.evidence == (
        f"TLS handshake with {GATEWAY} (SNI {SNI}) failed: the connection was closed before the handshake completed")


def test_every_endpoint_ejected_by_outlier_detection_fails_the_cluster_hop(pki: MeshPki, tmp_path: Path) -> None:
    clusters = {"c": {"name": f"outbound|8080||{FQDN}",
                      "hosts": [{"address": "127.66.1.10:8080", "health_flags": "/failed_outlier_check"}]}}
    failed = walk(FakeProbes(client_doc(pki, tmp_path, [LOCAL]), clusters=clusters)).failed
    assert failed is not None and failed.evidence == (
        f"outbound|8080||{FQDN}: no healthy endpoint of 1 (1 ejected by outlier detection); DestinationRule demo/echo")
    assert failed.data["ejected"] == ["127.66.1.10:8080"]


def test_a_request_answered_with_a_response_flag_fails_the_request_hop(pki: MeshPki, tmp_path: Path) -> None:
    probes = FakeProbes(client_doc(pki, tmp_path, [LOCAL]), handshake_answer=Handshake(chain_of(pki, EAST)),
                        answer=Answer(503, b"no healthy upstream"), flags="UH")
    failed = walk(probes).failed
    assert failed is not None and failed.name == "request"
    assert failed.evidence == (f"GET http://echo.demo:8080/ through {OUTBOUND}: 503, response flags UH, served by "
                               f"echo in cluster west as spiffe://{WEST}/ns/demo/sa/echo (UH = NoHealthyUpstream): "
                               "no healthy upstream")


def test_explain_orders_priorities_from_the_clients_locality_and_shows_istio_defaults(pki: MeshPki,
                                                                                     tmp_path: Path) -> None:
    path = client_doc(pki, tmp_path, [REMOTE, LOCAL])
    view = compile_view(path.read_text(), str(path))
    doc = explain(view, "echo.demo", None, "east/demo/client (client-0)")
    (route,) = doc["routes"]
    assert route["virtualService"] is None and route["destinations"][0]["weight"] == 100
    assert route["retries"] == {"attempts": 2, "retryOn": ["cancelled", "connect-failure", "refused-stream",
                                                           "retriable-status-codes", "unavailable"],
                                "retriableStatusCodes": [503], "perTryTimeout": None, "retryRemoteLocalities": False,
                                "source": "Istio default"}
    (cluster,) = doc["clusters"]
    policy = cluster["trafficPolicy"]
    assert policy["loadBalancer"]["source"] == "Istio default (LEAST_REQUEST)"
    assert policy["outlierDetection"]["consecutive5xxErrors"] == 3 and policy["outlierDetection"]["source"] == "demo/echo"
    assert policy["localityLbSetting"]["mode"] == "failover"
    assert policy["tls"] == {"mode": "ISTIO_MUTUAL", "source": "Istio default (auto mTLS to endpoints with a sidecar)"}
    assert [(p["priority"], p["reason"], p["load"], [loc["locality"] for loc in p["localities"]])
            for p in cluster["priorities"]] == [(0, "same region/zone/subzone", 100, ["us-east/us-east-1a"]),
                                                (1, "other region", 0, ["us-west/us-west-1a"])]
    remote = cluster["priorities"][1]["localities"][0]["hosts"][0]
    assert (remote["gateway"], remote["endpointsBehind"], remote["health"]) == (GATEWAY, 2, "healthy")
    text = explain_text(doc)
    assert "    P0 same region/zone/subzone: load 100%, health 100%" in text
    assert text.index("P0 same region") < text.index("P1 other region")


# -- end to end ----------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"
MESH = """apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata:
  name: check-explain
spec:
  clusters:
  - {name: east-a, network: network-east-a, locality: {region: us-east, zone: us-east-1a},
     trustDomain: east-a.meshfed.local, addressBlock: 127.66.1.0/24}
  - {name: west, network: network-west, locality: {region: us-west, zone: us-west-1a},
     trustDomain: west.meshfed.local, addressBlock: 127.66.3.0/24}
  workloads:
  - {name: ratings-v1, namespace: bookinfo, service: ratings, serviceAccount: bookinfo-ratings, app: ratings,
     version: v1, cluster: west, ports: [{name: http, port: 9080, protocol: http}]}
  - {name: echo, namespace: demo, app: echo, clusters: [east-a, west],
     ports: [{name: http2, port: 8080, protocol: http2}]}
  - {name: client, namespace: demo, app: sleep, clusters: [east-a]}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    from federation._state import StateError, read_state
    base = tmp_path_factory.mktemp("check")
    mesh_dir = base / "mesh"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed", "drills", "*.md"))
    (mesh_dir / "mesh.yaml").write_text(MESH)
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    seen: set[tuple[int, int | None]] = set()

    def record() -> None:
        try:
            state = read_state(mesh_dir)
        except StateError:
            return
        seen.update((p.pid, p.start_time) for p in (state.supervisor, *state.processes()) if p.pid is not None)

    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "60")
        record()
        assert up.returncode == 0, up.stdout + up.stderr
        link = fedctl(env, "link", "east-a", "west", "--dir", str(mesh_dir), "--timeout", "30")
        assert link.returncode == 0, link.stdout + link.stderr
        yield mesh_dir, env
    finally:
        record()
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)


def test_check_and_explain_on_a_linked_two_cluster_mesh(mesh: tuple[Path, dict[str, str]]) -> None:
    from federation._state import read_state, signal_process
    mesh_dir, env = mesh
    echo = fedctl(env, "check", "echo.demo", "--from", "east-a/client", "--dir", str(mesh_dir))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert "  ok    request         GET http://echo.demo:8080/ through 127.66.1." in echo.stdout
    ratings = fedctl(env, "check", "ratings.bookinfo", "--from", "east-a/client", "--dir", str(mesh_dir),
                     "--output", "json")
    assert ratings.returncode == 0, ratings.stdout + ratings.stderr
    hops = {h["hop"]: h for h in json.loads(ratings.stdout)["hops"]}
    assert hops["endpoint"]["data"]["gateway"] == "127.66.3.2:15443"
    assert hops["endpoint"]["data"]["sni"] == "outbound_.9080_._.ratings.bookinfo.svc.cluster.local"
    assert hops["trust"]["data"]["spiffeId"] == "spiffe://west.meshfed.local/ns/bookinfo/sa/bookinfo-ratings"
    assert hops["request"]["data"]["flags"] == "-"

    explained = fedctl(env, "explain", "echo.demo", "--from", "east-a/client", "--dir", str(mesh_dir))
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    p0 = lines.index("    P0 same region/zone/subzone: load 100%, health 100%")
    assert lines[p0 + 1].startswith("       us-east/us-east-1a 100% (1/1 healthy, weight 1): 127.66.1.")
    assert lines[p0 + 2] == "    P1 other region: load 0%, health 100%"
    assert "gateway 127.66.3.2:15443 (west, 1 endpoint(s)) weight 1 healthy" in lines[p0 + 3]

    west = read_state(mesh_dir).cluster("west")
    assert west is not None and west.gateway is not None
    assert signal_process(west.gateway, signal.SIGSTOP)
    try:
        stopped = fedctl(env, "check", "ratings.bookinfo", "--from", "east-a/client", "--dir", str(mesh_dir),
                         "--timeout", "1")
    finally:
        signal_process(west.gateway, signal.SIGCONT)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert ("  FAIL  gateway   gateway 127.66.3.2:15443 of cluster west accepts TCP connections but does not answer: "
            "its admin 127.66.3.2:15000 said nothing (no answer within 1 s)") in stopped.stdout
    assert stopped.stdout.endswith("result: FAIL at gateway\n")
