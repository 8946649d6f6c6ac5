"""``fedctl up examples/multi-cluster --detach`` end to end: every cluster up, calls through the
sidecars with mTLS, the caller's SPIFFE ID at the app, and ``fedctl down`` leaving no process.

The mesh is started once for the module from a temporary copy of the example, with
``XDG_STATE_HOME`` pointing into the temporary folder so that commands run without DIR
find it (and the user's own pointer is left alone). The finalizer runs ``fedctl down``
and then kills by PID whatever the state recorded that still runs, so a failing test
never leaves processes behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import dns.message
import dns.query
import pytest

from federation._state import alive
from federation.cli import main
from meshproc import fedctl, mesh_up, recorded_pids

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"
CLUSTERS = ("east-a", "east-b", "west")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("up")
    mesh_dir = base / "multi-cluster"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed"))
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    with mesh_up(mesh_dir, env, "--timeout", "90"):
        yield mesh_dir, env


def status(mesh_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", str(mesh_dir), "--output", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def curl(mesh_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["curl", "--dir", str(mesh_dir), "-m", "10", *argv])
    return code, capsys.readouterr().out


def test_every_cluster_and_workload_is_ready(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    doc = status(mesh_dir, capsys)
    assert [c["name"] for c in doc["clusters"]] == list(CLUSTERS)
    for n, c in enumerate(doc["clusters"], start=1):
        assert c["ready"], c
        assert c["dns"] == f"127.1.{n}.1:15053" and isinstance(c["pid"], int)
        assert c["controlPlane"]["configVersion"] == 1
        for w in c["workloads"]:
            assert w["ready"] and len(w["pids"]) == 2 * w["replicas"], (c["name"], w)
            assert w["address"].startswith(f"127.1.{n}.")
    assert doc["wiring"] == "discovery"
    east_a = {w["name"]: w for w in doc["clusters"][0]["workloads"]}
    assert set(east_a) == {"productpage-v1", "details-v1", "reviews-v1", "echo", "client"}
    echo = east_a["echo"]["instances"][0]
    assert echo["spiffeId"] == "spiffe://east-a.meshfed.local/ns/demo/sa/echo"
    assert (echo["configVersion"], echo["ackedVersion"], echo["lastNack"]) == ("1", "1", None)
    assert echo["certificateExpiry"] > doc["updatedAt"]
    control_plane = doc["clusters"][0]["controlPlane"]  # every sidecar and the east-west gateway subscribed,
    assert (control_plane["connectedProxies"], control_plane["certificatesIssued"]) == (6, 6)  # each SVID by CSR
    gateway = doc["clusters"][0]["gateway"]
    assert (gateway["address"], gateway["ready"], isinstance(gateway["pid"], int)) == ("127.1.1.2:15443", True, True)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_echo_answers_from_its_own_cluster_and_sees_the_callers_spiffe_id(mesh, capsys, cluster: str) -> None:
    mesh_dir, _ = mesh
    code, out = curl(mesh_dir, capsys, f"{cluster}/client", "http://echo.demo:8080/")
    assert code == 0, out
    answer = json.loads(out)
    assert (answer["cluster"], answer["instance"]) == (cluster, "echo-0")
    xfcc = answer["headers"].get("x-forwarded-client-cert", "")
    assert f"URI=spiffe://{cluster}.meshfed.local/ns/demo/sa/client" in xfcc, answer["headers"]


def test_bookinfo_calls_details_and_reviews_through_the_sidecars(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, out = curl(mesh_dir, capsys, "-f", "east-a/client", "http://productpage.bookinfo:9080/productpage")
    assert code == 0
    assert "ISBN-10" in out and "Reviews served by" in out and "reviews-v1-0" in out


def test_curl_f_on_a_404_exits_22(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    assert curl(mesh_dir, capsys, "-f", "west/client", "http://echo.demo:8080/status/404")[0] == 22


def a_records(server: str, name: str) -> list[str]:
    query = dns.message.make_query(name, "A")
    host, port = server.rsplit(":", 1)
    answer = dns.query.udp(query, host, port=int(port), timeout=2)
    return sorted(r.address for rrset in answer.answer for r in rrset)


def test_scale_to_zero_and_back_moves_the_endpoints(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    dns_server = status(mesh_dir, capsys)["clusters"][0]["dns"]
    assert a_records(dns_server, "echo.demo.svc.cluster.local.") == ["127.1.1.13"]
    assert main(["scale", "east-a/echo", "--replicas", "0", "--dir", str(mesh_dir)]) == 0
    assert capsys.readouterr().out == "east-a/demo/echo scaled from 1 to 0 instance(s) (none)\n"
    assert a_records(dns_server, "echo.demo.svc.cluster.local.") == []
    code, out = curl(mesh_dir, capsys, "-i", "east-a/client", "http://echo.demo:8080/")
    assert code == 0 and out.startswith("HTTP/1.1 503 ")  # no endpoint left in the cluster (not linked yet)
    assert main(["scale", "east-a/demo/echo", "--replicas", "1", "--dir", str(mesh_dir)]) == 0
    assert a_records(dns_server, "echo.demo.svc.cluster.local.") == ["127.1.1.13"]
    code, out = curl(mesh_dir, capsys, "east-a/client", "http://echo.demo:8080/")
    assert code == 0 and out.startswith("{"), out
    assert json.loads(out)["cluster"] == "east-a"


def test_a_second_up_of_a_running_mesh_is_refused(mesh) -> None:
    mesh_dir, env = mesh
    again = fedctl(env, "up", str(mesh_dir), "--detach")
    assert again.returncode == 1
    assert again.stderr.startswith(f"fedctl: error: a mesh is already running from {mesh_dir} (supervisor pid ")


def test_down_without_dir_leaves_no_process_behind(mesh, capsys) -> None:
    mesh_dir, env = mesh
    doc = status(mesh_dir, capsys)
    pids = [doc["supervisor"]["processId"]] + [c["pid"] for c in doc["clusters"]]
    pids += [p for c in doc["clusters"] for w in c["workloads"] for p in w["pids"]]
    pids += [c["gateway"]["pid"] for c in doc["clusters"]]  # each cluster's east-west gateway
    assert len(pids) == 1 + 3 + 2 * 13 + 3
    down = fedctl(env, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.endswith("stopped 32 process(es) of 3 cluster(s)\n")
    assert [p for p in pids if alive(p)] == []
    assert not (mesh_dir / ".meshfed" / "state.json").exists()


def test_an_invalid_topology_is_refused_with_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLE, bad, ignore=shutil.ignore_patterns(".meshfed"))
    text = (bad / "mesh.yaml").read_text()
    (bad / "mesh.yaml").write_text(text.replace("addressBlock: 127.1.2.0/24", "addressBlock: 10.1.2.0/24"))
    assert main(["up", str(bad), "--detach"]) == 1
    assert capsys.readouterr().err == (
        f"fedctl up: {bad} does not validate; nothing was started:\n"
        f"{bad}/mesh.yaml:20: spec.clusters[1].addressBlock: must lie inside the loopback range 127.0.0.0/8; "
        "found string '10.1.2.0/24'\n")
    assert not (bad / ".meshfed").exists()


def test_files_wiring_runs_the_same_mesh_without_discovery(tmp_path: Path, capsys) -> None:
    mesh_dir = tmp_path / "multi-cluster"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed"))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--wiring", "files", "--timeout", "90")
        assert up.returncode == 0, up.stdout + up.stderr
        doc = status(mesh_dir, capsys)
        assert doc["wiring"] == "files" and doc["ready"]
        assert doc["clusters"][2]["controlPlane"]["certificatesIssued"] == 0  # fedctl up issued them
        code, out = curl(mesh_dir, capsys, "west/client", "http://echo.demo:8080/")
        assert code == 0 and out.startswith("{"), out
        answer = json.loads(out)
        assert answer["cluster"] == "west"
        assert "URI=spiffe://west.meshfed.local/ns/demo/sa/client" in answer["headers"]["x-forwarded-client-cert"]
    finally:
        pids = recorded_pids(mesh_dir)
        down = fedctl(env, "down", str(mesh_dir))
        assert down.returncode == 0, down.stderr
        assert [p for p, start in pids if alive(p, start)] == []
