"""state.json: records round-trip, atomic writes, PIDs checked with their start time, stale states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation._state import (
    ClusterRecord, InstanceRecord, MeshState, ProcessRecord, StateError, WorkloadRecord, alive, clean_stale,
    pointer_path, process_start_time, read_state, remember, remembered, resolve_dir, state_path, write_state,
)


def proc(name: str, pid: int | None = None, start: int | None = None) -> ProcessRecord:
    return ProcessRecord(name, pid, start, "running", 0, None, f"/logs/{name}.log")


def sample(tmp_path: Path, supervisor: ProcessRecord, app_pid: int | None = None) -> MeshState:
    cp = proc("east-a/control-plane", 11)
    inst = InstanceRecord("east-a", "demo", "echo", "echo-0", "127.1.1.13", proc("east-a/demo/echo-0/app", app_pid),
                          proc("east-a/demo/echo-0/sidecar", None), (8080,), True, False,
                          "spiffe://east-a.meshfed.local/ns/demo/sa/echo", "3", "2030-01-01T00:00:00+00:00")
    return MeshState(str(tmp_path), supervisor, "running", None, "files",
                     (ClusterRecord("east-a", "east-a.meshfed.local", "127.1.1.0/24", "127.1.1.1", "127.1.1.1:15012",
                                    "127.1.1.1:15014", "127.1.1.1:15053", cp, True),),
                     (WorkloadRecord("east-a", "demo", "echo", 1),), (inst,))


def test_state_round_trips_through_json_with_camel_case_keys(tmp_path: Path) -> None:
    state = sample(tmp_path, proc("supervisor", os.getpid()), 42)
    doc = state.to_json()
    assert doc["format"] == 1
    assert doc["clusters"][0]["controlPlane"]["pid"] == 11
    assert doc["instances"][0]["appReady"] is True and doc["instances"][0]["ports"] == [8080]
    assert MeshState.from_json(json.loads(json.dumps(doc))) == state


def test_pids_lists_apps_sidecars_then_control_planes(tmp_path: Path) -> None:
    state = sample(tmp_path, proc("supervisor", 1), 42)
    assert state.pids() == [42, 11]
    assert not state.ready  # the sidecar is not ready yet
    assert [p.name for p in state.processes()] == ["east-a/demo/echo-0/app", "east-a/demo/echo-0/sidecar",
                                                   "east-a/control-plane"]


def test_write_state_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    state = sample(tmp_path, proc("supervisor", os.getpid()))
    write_state(tmp_path, state)
    write_state(tmp_path, state)
    assert sorted(p.name for p in (tmp_path / ".meshfed").iterdir()) == ["state.json"]
    assert read_state(tmp_path).clusters == state.clusters


def test_missing_state_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(StateError) as info:
        read_state(tmp_path)
    assert str(info.value) == (f"{tmp_path}/.meshfed/state.json: no mesh runs from {tmp_path} "
                               "(start one with 'fedctl up DIR')")


@pytest.mark.parametrize("text, problem", [
    ("{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ('{"format": 7}', "state format 7; expected 1"),
])
def test_damaged_state_is_refused_with_the_reason(tmp_path: Path, text: str, problem: str) -> None:
    state_path(tmp_path).parent.mkdir()
    state_path(tmp_path).write_text(text)
    with pytest.raises(StateError) as info:
        read_state(tmp_path)
    assert str(info.value) == (f"{state_path(tmp_path)}: damaged state file ({problem}); remove it after "
                               "stopping the processes it names")


def test_alive_checks_the_start_time_and_ignores_zombies() -> None:
    me = os.getpid()
    assert alive(me) and alive(me, process_start_time(me))
    assert not alive(me, (process_start_time(me) or 0) + 1)  # the PID now belongs to someone else
    assert not alive(None) and not alive(0)
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not alive(child.pid)  # exited, not reaped yet
    child.wait()
    assert not alive(child.pid)


def test_clean_stale_kills_what_a_dead_supervisor_left_and_removes_the_state(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = sample(tmp_path, proc("supervisor", gone.pid), orphan.pid)
        write_state(tmp_path, state)
        assert clean_stale(tmp_path) == [orphan.pid]
        assert orphan.wait(timeout=5) == -9
        assert not state_path(tmp_path).exists()
    finally:
        orphan.kill()


def test_clean_stale_leaves_a_live_supervisors_state_alone(tmp_path: Path) -> None:
    write_state(tmp_path, sample(tmp_path, proc("supervisor", os.getpid(), process_start_time(os.getpid()))))
    assert clean_stale(tmp_path) == []
    assert state_path(tmp_path).exists()


@pytest.mark.parametrize("environ, expected", [
    ({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}, "/x/state/meshfed/last-up"),
    ({"HOME": "/home/u"}, "/home/u/.local/state/meshfed/last-up"),
    ({"XDG_STATE_HOME": "", "HOME": "/home/u"}, "/home/u/.local/state/meshfed/last-up"),
])
def test_pointer_follows_xdg_state_home(environ: dict, expected: str) -> None:
    assert str(pointer_path(environ)) == expected


def test_last_up_is_remembered_for_commands_run_without_dir(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert remembered(env) is None
    with pytest.raises(StateError, match=r"^no mesh to act on: give DIR, or run 'fedctl up DIR' first"):
        resolve_dir(None, env)
    remember(tmp_path / "mesh", env)
    assert remembered(env) == tmp_path / "mesh"
    assert resolve_dir(None, env) == tmp_path / "mesh"
    assert resolve_dir(str(tmp_path / "other"), env) == tmp_path / "other"


def test_listen_table_shows_control_plane_gateway_and_instances_with_their_pids(tmp_path: Path) -> None:
    from dataclasses import replace

    from federation._progress import listen_table
    state = sample(tmp_path, proc("supervisor", 1), 42)
    cluster = replace(state.clusters[0], gateway=proc("east-a/eastwest-gateway", 77),
                      gateway_address="127.1.1.2:15443")
    lines = listen_table(replace(state, clusters=(cluster,))).splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["CLUSTER", "WHAT", "ADDRESS"], ["east-a", "control", "plane"], ["east-a", "east-west", "gateway"],
        ["east-a", "demo/echo-0", "127.1.1.13"]]
    assert lines[2].split()[3:] == ["127.1.1.2", "mTLS", "passthrough", ":15443", "admin", ":15000", "77"]
    assert lines[3].split()[3:] == ["app", ":8080", "sidecar", "out", ":15001", "in", ":15006", "admin", ":15000",
                                    "42"]
