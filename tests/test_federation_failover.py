"""Issue 7's "Must show" on one running copy of examples/multi-cluster (blocks 127.50.1-3.0/24).

One ``fedctl up`` for the module (it costs 30-60 s), linked east-a <-> east-b, east-b <->
west with the default probe settings and east-a <-> west with short ones (probe 0.5 s, 2
failures, TTL 6 s) so that a link expiring takes seconds. Requests go the way an app sends
them: absolute-form HTTP/1.1 to east-a's client sidecar (``<client>:15001``) over one
keep-alive connection. The tests run in file order and each leaves the mesh as it found it:
the global VirtualService's 80/20 split; failover zone -> region -> back with no failed
request while a bounded loop runs throughout; a stopped remote gateway (consul#9811); a link
flap shorter than the TTL, a link down past it, a re-link with new settings, an unlink.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from federation._cli_link import link_rows
from federation._state import read_state
from meshproc import fedctl, kill_leftovers, recorded_pids as recorded

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"
TTL, INTERVAL, THRESHOLD = 6.0, 0.5, 2


@dataclass
class Mesh:
    dir: Path
    env: dict[str, str]
    status: dict[str, Any] = field(default_factory=dict)

    def run(self, *argv: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        out = fedctl(self.env, *argv, "--dir", str(self.dir), timeout=timeout)
        assert out.returncode == 0, f"fedctl {' '.join(argv)}: {out.stdout}{out.stderr}"
        return out

    def refresh(self) -> dict[str, Any]:
        out = fedctl(self.env, "status", str(self.dir), "--output", "json")
        self.status = json.loads(out.stdout)
        return self.status

    def cluster(self, name: str) -> dict[str, Any]:
        return next(c for c in self.status["clusters"] if c["name"] == name)

    def address(self, cluster: str, namespace: str, workload: str) -> str:
        return next(w["addresses"][0] for w in self.cluster(cluster)["workloads"]
                    if (w["namespace"], w["name"]) == (namespace, workload))

    def link(self, a: str, b: str) -> dict[str, Any] | None:
        """The (a -> b) row as a's control plane last reported it (its status file, rewritten every second)."""
        return next((r for r in link_rows(self.dir, read_state(self.dir)) if (r["from"], r["to"]) == (a, b)), None)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("fed-failover")
    mesh_dir = base / "multi-cluster"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed", "drills"))
    text = (mesh_dir / "mesh.yaml").read_text()
    (mesh_dir / "mesh.yaml").write_text(re.sub(r"127\.1\.(\d)\.0/24", r"127.50.\1.0/24", text))
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    seen: set[tuple[int, int | None]] = set()
    stopped: list[int] = []
    m = Mesh(mesh_dir, env)
    m.stopped = stopped  # type: ignore[attr-defined]
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "150", timeout=200)
        seen |= recorded(mesh_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        m.run("link", "east-a", "east-b")
        m.run("link", "east-b", "west")
        m.run("link", "east-a", "west", "--probe-interval", str(INTERVAL), "--failure-threshold", str(THRESHOLD),
              "--ttl", str(TTL))
        m.refresh()
        yield m
    finally:
        for pid in stopped:  # a test that failed between SIGSTOP and SIGCONT
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        seen |= recorded(mesh_dir)
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)


# -- a client that keeps one connection to its sidecar -----------------------------------------

class Client:
    """HTTP/1.1 through a sidecar's outbound listener, reconnecting after a broken connection."""

    def __init__(self, sidecar: str) -> None:
        self.sidecar = sidecar
        self.conn = http.client.HTTPConnection(sidecar, 15001, timeout=15)

    def get(self, url: str) -> tuple[int, bytes]:
        try:
            self.conn.request("GET", url)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.sidecar, 15001, timeout=15)
            return 0, repr(exc).encode()

    def close(self) -> None:
        self.conn.close()


def answered_by(status: int, body: bytes, key: str = "cluster") -> str:
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        return str(json.loads(body).get(key))
    except ValueError:
        return f"not JSON: {body[:300]!r}"


class Loop:
    """Requests to ``url`` back to back on a thread (at most ``limit`` of them, 20 ms apart) until
    stopped: every answer is kept, so that a test can say none failed."""

    def __init__(self, client: Client, url: str, limit: int = 6000) -> None:
        self.client, self.url, self.limit = client, url, limit
        self.answers: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.answers) < self.limit:
            self.answers.append(answered_by(*self.client.get(self.url)))
            time.sleep(0.02)

    def __enter__(self) -> "Loop":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def until(self, cluster: str, limit: float = 60) -> None:
        """Until the last 10 answers all came from ``cluster`` (bounded)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if len(self.answers) >= 10 and set(self.answers[-10:]) == {cluster}:
                return
            assert self.thread.is_alive(), f"the loop ended early: {Counter(self.answers)}"
            time.sleep(0.1)
        raise AssertionError(f"traffic did not move to {cluster}: last {self.answers[-10:]}")

    def failed(self) -> list[str]:
        return [a for a in self.answers if a not in ("east-a", "east-b", "west")]


def wait(predicate: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def client(mesh: Mesh) -> Iterator[Client]:
    c = Client(mesh.address("east-a", "demo", "client"))
    yield c
    c.close()


# -- the global VirtualService -------------------------------------------------------------------

def test_the_global_virtualservice_splits_reviews_80_20_across_regions_within_binomial_tolerance(
        mesh: Mesh, client: Client) -> None:
    n = 200
    seen = Counter(answered_by(*client.get("http://reviews.bookinfo.svc.clusterset.local:9080/reviews/0"),
                               key="clustername") for _ in range(n))
    east, west = seen["east-a"] + seen["east-b"], seen["west"]
    assert east + west == n, seen
    sigma = math.sqrt(n * 0.8 * 0.2)  # 5.7 requests
    assert abs(east - 0.8 * n) <= 4 * sigma, seen  # within 4 sigma: a false alarm once in ~16000 runs
    # the us-east share goes to the nearest healthy us-east endpoint: east-a's own reviews-v1
    assert seen["east-b"] == 0, seen
    # the plain cluster name keeps the default: the nearest locality only
    plain = Counter(answered_by(*client.get("http://reviews.bookinfo:9080/reviews/0"), key="clustername")
                    for _ in range(20))
    assert plain == {"east-a": 20}


# -- failover ----------------------------------------------------------------------------------

def test_every_local_echo_gone_moves_traffic_to_the_other_zone_then_the_other_region_and_back_without_a_failure(
        mesh: Mesh, client: Client) -> None:
    with Loop(client, "http://echo.demo:8080/") as loop:
        loop.until("east-a")
        mesh.run("scale", "east-a/echo", "--replicas", "0")
        loop.until("east-b")
        mesh.run("scale", "east-b/echo", "--replicas", "0")
        loop.until("west")
        mesh.run("scale", "east-a/echo", "--replicas", "1")
        mesh.run("scale", "east-b/echo", "--replicas", "1")
        loop.until("east-a", limit=90)
    assert loop.failed() == [], Counter(loop.answers)
    order = [a for i, a in enumerate(loop.answers) if i == 0 or a != loop.answers[i - 1]]
    assert order[:3] == ["east-a", "east-b", "west"] and order[-1] == "east-a", order


def test_consul_9811_a_stopped_remote_gateway_is_ejected_and_traffic_moves_on_without_a_failure(
        mesh: Mesh, client: Client) -> None:
    gateway = mesh.cluster("east-b")["gateway"]["pid"]
    with Loop(client, "http://echo.demo:8080/") as loop:
        mesh.run("scale", "east-a/echo", "--replicas", "0")
        loop.until("east-b")
        os.kill(gateway, signal.SIGSTOP)  # east-b's echo is fine; the way to it is not
        mesh.stopped.append(gateway)  # type: ignore[attr-defined]
        try:
            loop.until("west")
            clusters = get_json(f"http://{client.sidecar}:15000/clusters?format=json")["cluster_statuses"]
            hosts = [h for c in clusters if c["name"] == "outbound|8080||echo.demo.svc.cluster.local" for h in c["hosts"]]
            flags = {h["via"]: h["health_flags"] for h in hosts}
            assert flags[mesh.cluster("east-b")["gateway"]["address"]] == "/failed_outlier_check", flags
            assert flags[mesh.cluster("west")["gateway"]["address"]] == "healthy", flags
        finally:
            os.kill(gateway, signal.SIGCONT)
            mesh.stopped.remove(gateway)  # type: ignore[attr-defined]
        mesh.run("scale", "east-a/echo", "--replicas", "1")
        loop.until("east-a", limit=90)
    assert loop.failed() == [], Counter(loop.answers)


def get_json(url: str) -> Any:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


# -- links: flap, TTL, rotation, unlink ----------------------------------------------------------

def west_control_plane(mesh: Mesh) -> int:
    return mesh.cluster("west")["pid"]


def settled(mesh: Mesh) -> None:
    wait(lambda: (r := mesh.link("east-a", "west")) is not None and r["state"] == "up" and r["imported"] == 3
         and (r["secondsSinceContact"] or 0) < 1.5, 30, "east-a -> west is not up")


def test_a_link_flap_shorter_than_the_ttl_keeps_the_imported_endpoints(mesh: Mesh, client: Client) -> None:
    settled(mesh)
    pid = west_control_plane(mesh)
    os.kill(pid, signal.SIGSTOP)  # west's control plane is silent; its gateway and apps run on
    mesh.stopped.append(pid)  # type: ignore[attr-defined]
    rows = []
    try:
        deadline = time.monotonic() + TTL / 3
        while time.monotonic() < deadline:
            rows.append(mesh.link("east-a", "west"))
            time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
        mesh.stopped.remove(pid)  # type: ignore[attr-defined]
    assert {r["imported"] for r in rows} == {3}, rows
    assert "expired" not in {r["state"] for r in rows}
    assert answered_by(*client.get("http://ratings.bookinfo:9080/ratings/0"), key="id") == "0"  # only west runs it
    settled(mesh)


def gone_seen(rows: list[tuple[float, dict[str, Any]]]) -> bool:
    return bool(rows) and rows[-1][1]["imported"] == 0


def test_a_link_down_past_its_ttl_loses_its_endpoints_after_the_ttl_not_before_and_regains_them(
        mesh: Mesh, client: Client) -> None:
    settled(mesh)
    pid = west_control_plane(mesh)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    mesh.stopped.append(pid)  # type: ignore[attr-defined]
    rows: list[tuple[float, dict[str, Any]]] = []
    try:
        while time.monotonic() - stopped < TTL + 10:
            row = mesh.link("east-a", "west")
            rows.append((time.monotonic() - stopped, row))
            if row["imported"] == 0:
                break
            time.sleep(0.2)
        # the status file and the push to east-a's sidecars are separate steps: give the push a
        # bounded moment (it is debounced, then ACKed) before saying the endpoints are still used
        push_deadline = time.monotonic() + 5
        ratings_gone = client.get("http://ratings.bookinfo:9080/ratings/0")
        while ratings_gone[0] == 200 and gone_seen(rows) and time.monotonic() < push_deadline:
            time.sleep(0.1)
            ratings_gone = client.get("http://ratings.bookinfo:9080/ratings/0")
    finally:
        os.kill(pid, signal.SIGCONT)
        mesh.stopped.remove(pid)  # type: ignore[attr-defined]
    kept = [(t, r) for t, r in rows if r["imported"] == 3]
    gone = [(t, r) for t, r in rows if r["imported"] == 0]
    assert gone, f"still imported {TTL + 10:g} s after the peer went silent: {rows[-1]}"
    assert ratings_gone[0] in (404, 503), ratings_gone  # only west runs ratings: nothing answers it now
    # never before the TTL: by the control plane's own clock, and half the TTL after the stop
    assert gone[0][1]["state"] == "expired" and gone[0][1]["secondsSinceContact"] >= TTL - 0.05, gone[0]
    # (secondsSinceContact is rounded to 0.1 s: 5.96 s of silence reads 6.0 and is not yet expired)
    assert all(r["state"] != "expired" and r["secondsSinceContact"] <= TTL for _, r in kept), kept[-3:]
    assert kept and kept[-1][0] >= TTL / 2, (kept[-1] if kept else rows[0])
    assert {r["state"] for _, r in kept} >= {"down"}, "down, then expired: endpoints kept while only down"
    # back: the next sync brings the endpoints back (a fresh connection re-reads the whole export)
    wait(lambda: (r := mesh.link("east-a", "west")) is not None and r["imported"] == 3, 30,
         f"imports not back: {mesh.link('east-a', 'west')}")
    wait(lambda: client.get("http://ratings.bookinfo:9080/ratings/0")[0] == 200, 20, "ratings not back")


def test_relinking_with_new_settings_keeps_the_imports_until_the_new_link_syncs(mesh: Mesh, client: Client) -> None:
    settled(mesh)
    rows: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        for _ in range(600):
            if stop.is_set():
                return
            rows.append(mesh.link("east-a", "west"))
            time.sleep(0.05)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        mesh.run("link", "east-a", "west", "--probe-interval", "0.4", "--failure-threshold", str(THRESHOLD),
                 "--ttl", str(TTL))
    finally:
        stop.set()
        watcher.join(30)
    assert rows and {r["imported"] for r in rows if r is not None} == {3}, "make-before-break: never 0 imports"
    assert None not in rows, "the link never vanished from the report"
    # the status file is rewritten every second: the new settings show by the next write
    wait(lambda: (r := mesh.link("east-a", "west")) is not None and r["probe"]["interval"] == 0.4, 5,
         f"the new probe interval never showed: {mesh.link('east-a', 'west')}")
    assert answered_by(*client.get("http://ratings.bookinfo:9080/ratings/0"), key="id") == "0"


def test_unlink_removes_the_imported_endpoints_at_once(mesh: Mesh, client: Client) -> None:
    settled(mesh)
    mesh.run("unlink", "east-a", "west")  # returns once both control planes dropped each other
    assert mesh.link("east-a", "west") is None and mesh.link("west", "east-a") is None
    # east-b imports from west but never re-exports what it imported: ratings is gone from east-a
    wait(lambda: client.get("http://ratings.bookinfo:9080/ratings/0")[0] == 404, 10, "ratings still served")
