"""``fedctl link`` end to end on a copy of examples/multi-cluster (address blocks 127.30.11-13.0/24).

Linked, east-a's client reaches ratings, which only west runs, through west's east-west
gateway with end-to-end mTLS (the app sees east-a's SPIFFE ID); echo stays in east-a
while it has an endpoint there; scaled to zero in east-a, echo answers from west within
seconds; unlinked, ratings is gone from east-a at once; west's link document applied to east-a
(``link export`` / ``link apply``) brings it back. Every process started is stopped
in the finalizer (``fedctl down``, then SIGKILL by recorded PID).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from meshproc import fedctl, kill_leftovers, recorded_pids as recorded

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    base = tmp_path_factory.mktemp("fed-e2e")
    mesh_dir = base / "multi-cluster"
    shutil.copytree(EXAMPLE, mesh_dir, ignore=shutil.ignore_patterns(".meshfed", "drills"))
    text = (mesh_dir / "mesh.yaml").read_text()
    (mesh_dir / "mesh.yaml").write_text(re.sub(r"127\.1\.(\d)\.0/24", lambda m: f"127.30.1{m.group(1)}.0/24", text))
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    seen: set[tuple[int, int | None]] = set()
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "150", timeout=200)
        seen |= recorded(mesh_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        yield mesh_dir, env
    finally:
        seen |= recorded(mesh_dir)
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)


def curl(mesh: tuple[Path, dict[str, str]], url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    mesh_dir, env = mesh
    return fedctl(env, "curl", "--dir", str(mesh_dir), "-m", "10", *flags, "east-a/client", url, timeout=30)


def echo_cluster(mesh: tuple[Path, dict[str, str]]) -> str | None:
    out = curl(mesh, "http://echo.demo:8080/")
    try:
        return json.loads(out.stdout).get("cluster")
    except ValueError:
        return None


def test_link_cross_cluster_call_failover_and_unlink(mesh: tuple[Path, dict[str, str]]) -> None:
    mesh_dir, env = mesh
    status = json.loads(fedctl(env, "status", str(mesh_dir), "--output", "json").stdout)
    assert [(c["name"], c["gateway"]["address"], c["gateway"]["admin"], c["gateway"]["ready"])
            for c in status["clusters"]] == [
        ("east-a", "127.30.11.2:15443", "127.30.11.2:15000", True),
        ("east-b", "127.30.12.2:15443", "127.30.12.2:15000", True),
        ("west", "127.30.13.2:15443", "127.30.13.2:15000", True)]

    linked = fedctl(env, "link", "east-a", "west", "--dir", str(mesh_dir))
    assert linked.returncode == 0, linked.stdout + linked.stderr
    assert linked.stdout.startswith("linked east-a <-> west: east-a imports 3 service(s) from west")
    rows = json.loads(fedctl(env, "link", "list", "--output", "json", "--dir", str(mesh_dir)).stdout)["links"]
    assert sorted((r["from"], r["to"], r["state"]) for r in rows) == [("east-a", "west", "up"),
                                                                     ("west", "east-a", "up")]

    ratings = curl(mesh, "http://ratings.bookinfo:9080/ratings/0", "-f")
    assert ratings.returncode == 0 and json.loads(ratings.stdout)["id"] == 0, ratings.stderr
    assert echo_cluster(mesh) == "east-a", "echo stays local while east-a has an endpoint"

    scaled = fedctl(env, "scale", "east-a/echo", "--replicas", "0", "--dir", str(mesh_dir))
    assert scaled.returncode == 0, scaled.stderr
    deadline, seen = time.monotonic() + 30, None
    while time.monotonic() < deadline and seen != "west":
        seen = echo_cluster(mesh)
    assert seen == "west"
    answer = json.loads(curl(mesh, "http://echo.demo:8080/").stdout)
    assert "URI=spiffe://east-a.meshfed.local/ns/demo/sa/client" in answer["headers"]["x-forwarded-client-cert"]

    unlinked = fedctl(env, "unlink", "east-a", "west", "--dir", str(mesh_dir))
    assert unlinked.returncode == 0, unlinked.stderr
    assert curl(mesh, "http://ratings.bookinfo:9080/ratings/0", "-f").returncode == 22
    rows = json.loads(fedctl(env, "link", "list", "--output", "json", "--dir", str(mesh_dir)).stdout)["links"]
    assert rows == []

    exported = fedctl(env, "link", "export", "--cluster", "west", "--dir", str(mesh_dir))
    assert exported.returncode == 0, exported.stderr
    (mesh_dir.parent / "west.link").write_text(exported.stdout)
    applied = fedctl(env, "link", "apply", str(mesh_dir.parent / "west.link"), "--cluster", "east-a", "--dir",
                     str(mesh_dir))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "ok    trust: same root CA: west.meshfed.local chains to this mesh's root" in applied.stdout
    assert curl(mesh, "http://ratings.bookinfo:9080/ratings/0", "-f").returncode == 0
