"""fedctl drill on the linked examples/multi-cluster mesh: every drill kind, its verdict both ways.

One mesh for the module: a copy of examples/multi-cluster with its address blocks moved to
127.80.1-3.0/24, ``XDG_STATE_HOME`` in the temporary folder, east-a, east-b and west linked
pairwise with ``fedctl link``. The finalizer runs ``fedctl down`` and kills by PID whatever
the state recorded that still runs. Drills run in this process (``federation.cli.main``)
with short loads (6-12 s at 10-20 requests/s); each test checks the verdict, the numbers
that justify it, and that the mesh is as it was: no process left stopped, no override
left in istio/, no drill journal left active, every link up.

Traffic is put on the fault's scope where the example would leave it elsewhere: for
west's gateway and links, a DestinationRule sends 80 % of east-a's calls to echo in west
and 20 % to east-b (``localityLbSetting.distribute``), written beside the example's and
removed afterwards, as the no-outlier-detection rule is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import h2.events as h2e
import pytest
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from federation._cli_link import link_rows
from federation._drill_config_faults import config_version, wait_pushed
from federation._link_store import read_links
from federation._state import read_state
from federation.apps import HttpServer, build_handler
from federation.apps import AppEnv
from federation.cli import main
from meshproc import fedctl, kill_leftovers, recorded_pids

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"
BLOCKS = {f"127.1.{n}.0/24": f"127.80.{n}.0/24" for n in (1, 2, 3)}
LINKS = (("east-a", "east-b"), ("east-a", "west"), ("east-b", "west"))
ALL_DIRECTIONS = [pair for a, b in LINKS for pair in ((a, b), (b, a))]
ISTIO_FILES = ["destination-rules.yaml", "peer-authentication.yaml", "service-exports.yaml", "virtual-services.yaml"]
LOAD = ["--service", "echo.demo", "--from", "east-a/client", "--rps", "20", "-q"]

OUTLIER = """    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 30s,
                       maxEjectionPercent: 100}
"""
ECHO_RULE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo.demo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
%s"""
# Without outlier detection Istio turns locality load balancing off; ROUND_ROBIN (not the default
# LEAST_REQUEST, whose choice of two avoids a hung endpoint by itself) keeps sending every third call
# to the stopped endpoint: the VirtualService's retries hide it from the client, but slowly.
NO_OUTLIER = ECHO_RULE % "      simple: ROUND_ROBIN\n      localityLbSetting: {enabled: true}\n"
# 80 % of east-a's calls to west (through its east-west gateway), 20 % to east-b, none local.
WEST_FIRST = ECHO_RULE % ("      localityLbSetting:\n        enabled: true\n        distribute:\n"
                          "        - from: us-east/us-east-1a/*\n"
                          "          to: {us-west/us-west-1a/*: 80, us-east/us-east-1b/*: 20}\n") + OUTLIER


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("drill-mc")
    mesh_dir = base / "multi-cluster"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed"))
    text = (mesh_dir / "mesh.yaml").read_text()
    for old, new in BLOCKS.items():
        text = text.replace(f"addressBlock: {old}", f"addressBlock: {new}")
    (mesh_dir / "mesh.yaml").write_text(text)
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    seen: set[tuple[int, int | None]] = set()
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "120")
        seen.update(recorded_pids(mesh_dir))
        assert up.returncode == 0, up.stdout + up.stderr
        for a, b in LINKS:
            linked = fedctl(env, "link", a, b, "--dir", str(mesh_dir))
            assert linked.returncode == 0, linked.stdout + linked.stderr
        yield mesh_dir, env
    finally:
        seen.update(recorded_pids(mesh_dir))
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def client_address(mesh_dir: Path) -> str:
    return next(i.address for i in read_state(mesh_dir).instances if (i.cluster, i.workload) == ("east-a", "client"))


def link_states(mesh_dir: Path) -> dict[tuple[str, str], str]:
    return {(r["from"], r["to"]): r["state"] for r in link_rows(mesh_dir, read_state(mesh_dir))}


def assert_mesh_as_it_was(mesh_dir: Path) -> None:
    state = read_state(mesh_dir)
    assert [p.name for p in state.processes() if p.pid is not None and proc_state(p.pid) == "T"] == []
    assert sorted(p.name for p in (mesh_dir / "istio").iterdir()) == ISTIO_FILES
    assert list((mesh_dir / ".meshfed" / "drills" / "active").glob("*.json")) == []
    assert sorted(tuple(sorted(link.clusters)) for link in read_links(mesh_dir).links) == sorted(LINKS)
    deadline = time.monotonic() + 20  # a peer stopped or restarted by the drill is probed up again
    while (states := link_states(mesh_dir)) != {pair: "up" for pair in ALL_DIRECTIONS}:
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def busy(r: dict) -> list[dict]:
    """The seconds of the timeline in which requests were sent."""
    return [e for e in r["timeline"] if e["requests"]]


def drill(mesh_dir: Path, capsys: pytest.CaptureFixture[str], kind: str, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    report = mesh_dir.parent / f"report-{kind}-{time.monotonic_ns()}"
    code = main(["drill", kind, *LOAD, *argv, "--dir", str(mesh_dir), "--report", str(report)])
    out = capsys.readouterr()
    assert (report / "report.html").exists(), out.out + out.err
    return code, json.loads((report / "report.json").read_text())


class override:
    """A rule written into istio/ for one test and removed after it, each time waiting for the push."""

    def __init__(self, mesh_dir: Path, name: str, text: str) -> None:
        self.path, self.text, self.client = mesh_dir / "istio" / name, text, client_address(mesh_dir)

    def __enter__(self) -> None:
        self._write(lambda: self.path.write_text(self.text))

    def __exit__(self, *exc: object) -> None:
        self._write(lambda: self.path.unlink(missing_ok=True))

    def _write(self, change) -> None:
        before = config_version(self.client)
        change()
        assert not wait_pushed({self.client: before}, 30)[1], "the change never reached east-a's client sidecar"


def timeline(r: dict) -> str:
    """What a failed drill assertion shows: the reasons, then the drill's seconds one per line."""
    return "\n".join([*r["reasons"], f"errors by reason: {r['errors_by_reason']}", *r["actions"],
                      *(json.dumps(e, sort_keys=True) for e in r["timeline"])])


def shares(r: dict, cluster: str) -> list[float]:
    return [e["share"].get(cluster, 0.0) for e in r["timeline"]]


# -- failover drills ----------------------------------------------------------------------------


def test_endpoints_down_in_east_a_moves_traffic_to_east_b_with_no_client_error(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "endpoints-down", "--cluster", "east-a", "--duration", "10s",
                    "--max-errors", "0", "--max-failover-seconds", "6", "--failback-wait", "45")
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, []), timeline(r)
    assert r["actions"] == [f"east-a/echo-0 app: stopped (pid {r['actions'][0].split()[-1]}"]
    assert r["timeline"][0]["share"] == {"east-a": 1.0} and r["baseline_share"] == 1.0
    assert max(shares(r, "east-b")) > 0.5  # the same region's other zone took the traffic
    assert r["failover_seconds"] <= 6 and r["detect_seconds"] is not None
    assert r["failback_seconds"] is not None and busy(r)[-1]["share"] == {"east-a": 1.0}  # and it came back
    assert_mesh_as_it_was(mesh_dir)


def test_without_outlier_detection_endpoints_down_fails_its_slo_and_says_why(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    with override(mesh_dir, "zz-echo-no-outlier.yaml", NO_OUTLIER):
        code, r = drill(mesh_dir, capsys, "endpoints-down", "--cluster", "east-a", "--duration", "6s",
                        "--max-errors", "0", "--max-failover-seconds", "6", "--failback-wait", "2")
    assert (code, r["verdict"]) == (1, "fail")  # the retries hide the errors; the traffic never moved
    never = [reason for reason in r["reasons"] if reason.startswith("traffic never moved: at best ")]
    assert len(never) == 1 and never[0].endswith(
        "and the client's sidecar ejected no endpoint (is outlierDetection set for the service?)"), r["reasons"]
    assert max(e["ejections"] for e in r["timeline"]) == 0
    assert_mesh_as_it_was(mesh_dir)


def test_link_down_of_west_serves_its_share_from_us_east_and_brings_it_back(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    with override(mesh_dir, "zz-echo-west-first.yaml", WEST_FIRST):
        code, r = drill(mesh_dir, capsys, "link-down", "--cluster", "west", "--duration", "6s",
                        "--max-errors", "0", "--max-failover-seconds", "4", "--failback-wait", "15")
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, []), timeline(r)
    assert r["actions"][:2] == ["link east-a-west: cut", "link east-b-west: cut"]
    assert r["actions"][2].startswith("the control planes dropped the links after ")
    assert r["undone"][0].startswith("links of west: restored links east-a-west, east-b-west; up again after ")
    assert r["baseline_share"] > 0.5 and min(shares(r, "west")) == 0.0  # served from us-east while cut
    assert r["failover_seconds"] <= 4 and r["failback_seconds"] is not None
    assert_mesh_as_it_was(mesh_dir)


def test_gateway_down_of_west_moves_the_traffic_sent_through_it_to_east_b(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    gateway = read_state(mesh_dir).cluster("west").gateway
    with override(mesh_dir, "zz-echo-west-first.yaml", WEST_FIRST):
        code, r = drill(mesh_dir, capsys, "gateway-down", "--cluster", "west", "--duration", "10s",
                        "--max-errors", "0", "--max-failover-seconds", "6", "--failback-wait", "0")
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, []), timeline(r)
    assert r["actions"] == [f"west east-west gateway: stopped (pid {gateway.pid})"]
    assert r["baseline_share"] > 0.5 and max(shares(r, "east-b")) == 1.0
    assert r["failover_seconds"] <= 6 and max(e["ejections"] for e in r["timeline"]) == 1  # the gateway hop
    assert proc_state(gateway.pid) in ("S", "R")
    assert_mesh_as_it_was(mesh_dir)


def _wait_until(proc: subprocess.Popen[str], injected, what: str) -> None:
    deadline = time.monotonic() + 30
    while not injected():
        assert time.monotonic() < deadline and proc.poll() is None, f"{what} never happened"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["link-down", "gateway-down"])
def test_sigint_during_a_drill_leaves_the_linked_mesh_as_it_was(mesh, kind: str) -> None:
    mesh_dir, env = mesh
    gateway = read_state(mesh_dir).cluster("west").gateway
    injected = {"link-down": lambda: not any(l.has("west") for l in read_links(mesh_dir).links),
                "gateway-down": lambda: proc_state(gateway.pid) == "T"}[kind]
    proc = subprocess.Popen([sys.executable, "-m", "federation", "drill", kind, "--cluster", "west",
                             "--service", "echo.demo", "--from", "east-a/client", "--duration", "12s", "--rps", "10",
                             "--dir", str(mesh_dir)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until(proc, injected, f"the {kind} fault")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "FAILED: the drill was interrupted (SIGINT); the fault was undone" in out
    assert_mesh_as_it_was(mesh_dir)


# -- faults that must not move traffic ----------------------------------------------------------


def test_control_plane_down_keeps_the_data_plane_serving(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "control-plane-down", "--cluster", "east-a", "--duration", "6s",
                    "--max-errors", "0")
    assert (code, r["verdict"], r["client_errors"], r["failover_seconds"]) == (0, "pass", 0, None)
    assert r["actions"][0].startswith("east-a control plane: stopped (pid ")
    assert {cluster for e in busy(r) for cluster in e["share"]} == {"east-a"}
    assert_mesh_as_it_was(mesh_dir)


def test_latency_in_east_a_slows_its_answers_and_passes_an_error_slo(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "latency", "--cluster", "east-a", "--duration", "6s", "--delay", "300ms",
                    "--max-errors", "0")
    assert (code, r["verdict"], r["client_errors"]) == (0, "pass", 0), timeline(r)
    assert r["latency_ms"]["during"]["p50_ms"] >= 300 > r["latency_ms"]["before"]["p50_ms"]
    assert r["actions"][0].endswith(" on echo.demo.svc.cluster.local in cluster east-a (east-a/echo-0)")
    assert r["actions"][1].startswith("the sidecars of 1 instance in cluster east-a applied the fault after ")
    assert_mesh_as_it_was(mesh_dir)


def test_latency_in_west_slows_only_the_answers_from_west(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    with override(mesh_dir, "zz-echo-west-first.yaml", WEST_FIRST):  # 80 % to west, 20 % to east-b
        code, r = drill(mesh_dir, capsys, "latency", "--cluster", "west", "--duration", "8s", "--delay", "300ms",
                        "--max-errors", "0")
    assert (code, r["verdict"], r["client_errors"]) == (0, "pass", 0), timeline(r)
    by_cluster = r["latency_ms"]["during_by_cluster"]
    assert set(by_cluster) == {"west", "east-b"}, by_cluster
    # every answer from west waited 300 ms; east-b's did not (its p50: one slow second of a loaded
    # machine can reach 300 ms at the tail of a few requests)
    assert by_cluster["west"]["p50_ms"] >= 300 > by_cluster["east-b"]["p50_ms"], by_cluster
    assert by_cluster["west"]["p50_ms"] - by_cluster["east-b"]["p50_ms"] >= 250, by_cluster
    assert_mesh_as_it_was(mesh_dir)


def test_errors_in_east_a_are_ejected_at_the_first_503_and_no_client_sees_one(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "errors", "--cluster", "east-a", "--duration", "8s", "--percent", "100",
                    "--max-errors", "0", "--max-failover-seconds", "2", "--failback-wait", "45")
    # east-a's sidecar answers 503 to every call; the echo DestinationRule's consecutiveGatewayErrors: 1
    # ejects it at the first one, and the retry (Istio's default, on 503) finds east-b
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, []), timeline(r)
    assert max(e["ejections"] for e in r["timeline"]) == 1 and r["baseline_share"] == 1.0
    assert r["failover_seconds"] <= 2 and max(shares(r, "east-b")) == 1.0, timeline(r)
    assert r["failback_seconds"] is not None and busy(r)[-1]["share"] == {"east-a": 1.0}  # back after the ejection
    assert_mesh_as_it_was(mesh_dir)


NO_RETRIES = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http: [{route: [{destination: {host: echo.demo.svc.cluster.local}}], retries: {attempts: 0}}]
"""


def test_errors_in_east_a_without_retries_reach_a_client_and_fail_the_slo(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    short = ECHO_RULE % "      localityLbSetting: {enabled: true}\n" + OUTLIER.replace("30s", "4s")
    with override(mesh_dir, "zz-echo-no-retries.yaml", NO_RETRIES), override(mesh_dir, "zz-echo-short.yaml", short):
        code, r = drill(mesh_dir, capsys, "errors", "--cluster", "east-a", "--duration", "8s", "--percent", "100",
                        "--max-errors", "0", "--failback-wait", "20")
    assert (code, r["verdict"]) == (1, "fail"), timeline(r)
    # the 503 that ejects east-a has no retry to hide it: the client sees it (and the few calls
    # already on their way to east-a), in the second of the injection and, if east-a comes back
    # after its 4 s while the fault is still in force, in that second - never for longer
    assert r["client_errors"] >= 1 and r["errors_by_reason"] == {"503": r["client_errors"]}, timeline(r)
    assert len([e for e in r["timeline"] if e["errors"]]) <= 2, timeline(r)
    assert r["reasons"] == [f"{r['client_errors']} of {r['requests']} requests failed as seen by the client, more "
                            f"than --max-errors 0 {r['reasons'][0].split('--max-errors 0 ', 1)[1]}"]
    assert r["failover_seconds"] is not None and r["failback_seconds"] is not None, timeline(r)
    assert_mesh_as_it_was(mesh_dir)


# -- a planned move ---------------------------------------------------------------------------


EVACUATE = ["--service", "reviews.bookinfo.svc.clusterset.local", "--path", "/reviews/0", "--region", "us-east",
            "--duration", "12s", "--rps", "10", "--steps", "2", "--max-errors", "0", "--failback-wait", "10"]


def test_region_evacuation_shifts_reviews_global_to_us_west_and_back(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    code, r = drill(mesh_dir, capsys, "region-evacuation", *EVACUATE)
    assert (code, r["verdict"], r["client_errors"], r["reasons"]) == (0, "pass", 0, []), timeline(r)
    assert r["actions"] == ["step 1/2: weights [40, 60]", "step 2/2: weights [0, 100]"]
    assert 0.5 < r["baseline_share"] < 1.0  # the 80/20 split, loosely: 10 requests a second
    assert r["failover_seconds"] is not None and r["failback_seconds"] is not None
    assert {"us-east/us-east-1a", "us-west/us-west-1a"} <= set(r["localities"])
    assert_mesh_as_it_was(mesh_dir)


def test_region_evacuation_rolls_back_when_the_other_region_cannot_serve(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    capsys.readouterr()
    assert main(["scale", "west/reviews-v3", "--replicas", "0", "--dir", str(mesh_dir)]) == 0
    try:
        code, r = drill(mesh_dir, capsys, "region-evacuation", *EVACUATE, "--duration", "6s")
    finally:
        assert main(["scale", "west/reviews-v3", "--replicas", "1", "--dir", str(mesh_dir)]) == 0
    assert (code, r["verdict"]) == (1, "fail")
    assert any(reason.startswith("rolled back at step 1/2: ") and reason.endswith("exceeded --max-errors 0")
               for reason in r["reasons"])
    assert_mesh_as_it_was(mesh_dir)


# -- last: it restarts east-a's control plane -------------------------------------------------


def test_trust_rotation_under_load_restarts_the_control_plane_with_no_client_error(mesh, capsys) -> None:
    mesh_dir, _ = mesh
    before = read_state(mesh_dir).cluster("east-a").control_plane.pid
    code, r = drill(mesh_dir, capsys, "trust-rotation", "--cluster", "east-a", "--duration", "8s",
                    "--max-errors", "0")
    assert (code, r["verdict"], r["client_errors"]) == (0, "pass", 0)
    after = read_state(mesh_dir).cluster("east-a").control_plane.pid
    assert after != before and r["actions"][0].startswith("east-a: new intermediate CA ")
    assert r["actions"][1].startswith("east-a: control plane back on the new CA after ")
    assert_mesh_as_it_was(mesh_dir)


# -- the echo app under a drill ---------------------------------------------------------------


async def test_echo_h2_answers_the_other_streams_when_one_is_reset_in_the_same_read(nursery: trio.Nursery) -> None:
    """A stopped app resumed (endpoints-down's undo) reads a request's END_STREAM and the caller's
    RST_STREAM for it at once: that stream is skipped, the connection and its other streams live."""
    env = AppEnv(app="echo", cluster="east-a", locality="us-east/us-east-1a", version="v1", instance="echo-0",
                 namespace="demo", workload="echo")
    server = HttpServer(build_handler(env), grace=2.0)  # type: ignore[arg-type]
    host, port = await nursery.start(server.serve, "127.80.1.250", 0)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"echo"), (b":path", b"/")]
    conn.send_headers(1, head, end_stream=True)
    conn.reset_stream(1, ErrorCodes.CANCEL)
    conn.send_headers(3, head, end_stream=True)
    events: list[h2e.Event] = []
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(conn.data_to_send())
            while not any(isinstance(e, (h2e.StreamEnded, h2e.ConnectionTerminated)) for e in events):
                data = await stream.receive_some(65536)
                if not data:
                    break
                events += conn.receive_data(data)
                await stream.send_all(conn.data_to_send())
    kinds = [(type(e).__name__, getattr(e, "stream_id", None)) for e in events
             if isinstance(e, (h2e.ResponseReceived, h2e.StreamEnded, h2e.StreamReset, h2e.ConnectionTerminated))]
    assert kinds == [("ResponseReceived", 3), ("StreamEnded", 3)]
