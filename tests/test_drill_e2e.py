"""fedctl drill end to end on a one-cluster mesh with two zones (127.40.2.0/24).

echo-a (zone r1-a, the client's) and echo-b (zone r1-b) serve one service ``echo.demo``;
the DestinationRule turns on locality load balancing and outlier detection, the
VirtualService retries. Each drill is short (4 s of load at 10 requests/s) and checks
its verdict and that the mesh is as it was afterwards: no process left stopped, no
override file left in the config.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from federation._state import read_state
from federation.cli import main
from meshproc import mesh_up

MESH = """apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: drill-e2e}
spec:
  clusters:
  - {name: solo, network: net-solo, locality: {region: r1, zone: r1-a}, trustDomain: solo.meshfed.local,
     addressBlock: 127.40.2.0/24}
  workloads:
  - {name: echo-a, namespace: demo, service: echo, serviceAccount: echo, app: echo, cluster: solo,
     ports: [{name: http, port: 8080, protocol: http}]}
  - {name: echo-b, namespace: demo, service: echo, serviceAccount: echo, app: echo, cluster: solo,
     locality: {zone: r1-b}, ports: [{name: http, port: 8080, protocol: http}]}
  - {name: client, namespace: demo, app: sleep, cluster: solo}
"""
OUTLIER = """    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 10s,
                       maxEjectionPercent: 100}
"""
ISTIO = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo.demo.svc.cluster.local
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: true}}
%s---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - route: [{destination: {host: echo.demo.svc.cluster.local}}]
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "connect-failure,reset,gateway-error"}
"""
LOAD = ["--service", "echo.demo", "--from", "solo/client", "--duration", "4s", "--rps", "10", "-q"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("drill")
    mesh_dir = base / "mesh"
    (mesh_dir / "istio").mkdir(parents=True)
    (mesh_dir / "mesh.yaml").write_text(MESH)
    (mesh_dir / "istio" / "echo.yaml").write_text(ISTIO % OUTLIER)
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    with mesh_up(mesh_dir, env, "--timeout", "90"):
        yield mesh_dir, env


def config_version(address: str) -> str | None:
    conn = http.client.HTTPConnection(address, 15000, timeout=5)
    try:
        conn.request("GET", "/config_dump")
        return json.loads(conn.getresponse().read()).get("version")
    finally:
        conn.close()


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def assert_mesh_as_it_was(mesh_dir: Path) -> None:
    state = read_state(mesh_dir)
    stopped = [p.name for p in state.processes() if p.pid is not None and proc_state(p.pid) == "T"]
    assert stopped == []
    assert sorted(p.name for p in (mesh_dir / "istio").iterdir()) == ["echo.yaml"]
    assert list((mesh_dir / ".meshfed" / "drills" / "active").glob("*.json")) == []


def drill(mesh_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    report = mesh_dir.parent / f"report-{argv[0]}-{time.monotonic_ns()}"
    code = main(["drill", argv[0], *LOAD, *argv[1:], "--dir", str(mesh_dir), "--report", str(report),
                 "--failback-wait", "15"])
    out = capsys.readouterr()
    assert (report / "report.html").exists(), out.out + out.err
    return code, json.loads((report / "report.json").read_text())


def test_endpoints_down_of_the_local_zone_moves_traffic_with_no_client_error(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "endpoints-down", "--zone", "r1-a", "--max-errors", "0",
                    "--max-failover-seconds", "3", "--duration", "8s")
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, [])
    assert r["requests"] >= 30 and r["actions"] == [f"solo/echo-a-0 app: stopped (pid {r['actions'][0].split()[-1]}"]
    assert max(e["share_locality"].get("r1/r1-b", 0) for e in r["timeline"]) >= 0.8  # traffic went to r1-b
    assert r["timeline"][0]["share_locality"] == {"r1/r1-a": 1.0} and r["failback_seconds"] is not None
    assert_mesh_as_it_was(mesh_dir)


def test_control_plane_down_passes_with_zero_errors(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "control-plane-down", "--cluster", "solo", "--max-errors", "0")
    assert (code, r["verdict"], r["client_errors"], r["failover_seconds"]) == (0, "pass", 0, None)
    assert r["actions"][0].startswith("solo control plane: stopped")
    assert_mesh_as_it_was(mesh_dir)


def test_latency_fault_slows_the_service_and_is_removed(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "latency", "--cluster", "solo", "--delay", "300ms", "--max-errors", "0")
    assert (code, r["verdict"]) == (0, "pass")
    assert r["latency_ms"]["during"]["p99_ms"] >= 300 > r["latency_ms"]["before"]["p50_ms"]
    assert_mesh_as_it_was(mesh_dir)


def test_errors_fault_fails_its_slo_and_is_removed(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "errors", "--cluster", "solo", "--http-status", "503", "--max-errors", "0")
    assert (code, r["verdict"]) == (1, "fail")
    assert r["errors_by_reason"]["503"] == r["client_errors"] > 0
    assert r["reasons"][0].startswith(f"{r['client_errors']} of {r['requests']} requests failed as seen by the "
                                      "client, more than --max-errors 0")
    assert_mesh_as_it_was(mesh_dir)


def test_drill_run_runs_a_scenario_file(mesh, capsys, tmp_path: Path) -> None:
    mesh_dir, _ = mesh
    scenario = tmp_path / "drill.yaml"
    scenario.write_text("apiVersion: meshfed.io/v1alpha1\nkind: Drill\nmetadata: {name: cp}\nspec:\n"
                        "  type: control-plane-down\n  service: echo.demo\n  cluster: solo\n  from: solo/client\n"
                        "  duration: 3s\n  rps: 5\n  slo: {maxErrors: 0}\n")
    capsys.readouterr()
    assert main(["drill", "run", str(scenario), "--dir", str(mesh_dir), "-q"]) == 0
    assert "control-plane-down-" in capsys.readouterr().out
    assert main(["drill", "list", "--dir", str(mesh_dir), "--output", "json"]) == 0
    assert [d["drill"]["type"] for d in json.loads(capsys.readouterr().out)][-1] == "control-plane-down"


def _wait_stopped(mesh_dir: Path, proc: subprocess.Popen[str]) -> None:
    app = next(i.app.pid for i in read_state(mesh_dir).instances if i.workload == "echo-a")
    deadline = time.monotonic() + 30
    while proc_state(app) != "T":
        assert time.monotonic() < deadline and proc.poll() is None, "the fault was never injected"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_an_interrupted_drill_leaves_the_mesh_as_it_was(mesh, capsys, how: str) -> None:
    mesh_dir, env = mesh
    proc = subprocess.Popen([sys.executable, "-m", "federation", "drill", "endpoints-down", "--zone", "r1-a",
                             "--service", "echo.demo", "--from", "solo/client", "--duration", "20s", "--rps", "10",
                             "--dir", str(mesh_dir)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_stopped(mesh_dir, proc)
        proc.send_signal(getattr(signal, how))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == "SIGINT":
        assert proc.returncode == 130, err
        assert "FAILED: the drill was interrupted (SIGINT); the fault was undone" in out
    else:  # nothing ran in the drill: the next drill command replays its journal
        assert proc.returncode == -signal.SIGKILL
        capsys.readouterr()
        assert main(["drill", "list", "--dir", str(mesh_dir)]) == 0
        assert "undid what an interrupted drill left" in capsys.readouterr().err
    assert_mesh_as_it_was(mesh_dir)


def test_without_outlier_detection_endpoints_down_fails_and_says_why(mesh, capsys) -> None:
    mesh_dir, env = mesh
    rule = mesh_dir / "istio" / "echo.yaml"
    client = next(i.address for i in read_state(mesh_dir).instances if i.workload == "client")
    version = config_version(client)
    # without outlier detection Istio turns locality load balancing off; round robin then keeps
    # sending every other request to the hung endpoint (retries hide it from the client, slowly)
    rule.write_text((ISTIO % "").replace("loadBalancer: {localityLbSetting: {enabled: true}}",
                                         "loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}"))
    try:
        deadline = time.monotonic() + 30
        while config_version(client) == version:
            assert time.monotonic() < deadline, "the new config never reached the client's sidecar"
            time.sleep(0.2)
        code, r = drill(mesh_dir, capsys, "endpoints-down", "--zone", "r1-a", "--max-errors", "0",
                        "--max-failover-seconds", "3", "--duration", "8s")
    finally:
        rule.write_text(ISTIO % OUTLIER)
    assert (code, r["verdict"]) == (1, "fail")  # retries hide the errors; the traffic never moved
    assert any(reason.startswith("traffic never moved") and reason.endswith(
        "the client's sidecar ejected no endpoint (is outlierDetection set for the service?)") for reason in r["reasons"])
    assert_mesh_as_it_was(mesh_dir)
