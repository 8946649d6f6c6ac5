"""What every test that runs ``fedctl up`` shares: fedctl in a subprocess, the PIDs a mesh
recorded in its state file, and the last resort that kills those still alive.

``fedctl down`` stops a mesh by its PIDs; when it fails (or the supervisor died with the
test), ``kill_leftovers`` makes sure no process outlives the test: each recorded PID is
killed only while it is still the process that was recorded (same start time), so a PID
the kernel has given to something else is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from federation._state import StateError, alive, read_state


def fedctl(env: dict[str, str], *argv: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``fedctl ARGV...`` run as ``python -m federation`` (the tested tree, not whatever is on PATH)."""
    return subprocess.run([sys.executable, "-m", "federation", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


def recorded_pids(mesh_dir: Path) -> set[tuple[int, int | None]]:
    """(pid, start time) of the supervisor and every process the mesh's state file lists."""
    try:
        state = read_state(mesh_dir)
    except StateError:
        return set()
    return {(p.pid, p.start_time) for p in (state.supervisor, *state.processes()) if p.pid is not None}


def kill_leftovers(seen: Iterable[tuple[int, int | None]]) -> None:
    """SIGKILL the process group, then the process, of every recorded PID still alive."""
    for pid, start in seen:
        if alive(pid, start):
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@contextlib.contextmanager
def mesh_up(mesh_dir: Path, env: dict[str, str], *up_args: str, timeout: float = 150) -> Iterator[None]:
    """``fedctl up DIR --detach UP_ARGS`` for the body of the ``with``; then ``fedctl down`` and
    ``kill_leftovers`` of every PID the mesh recorded, also when ``up`` or the body failed."""
    seen: set[tuple[int, int | None]] = set()
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", *up_args, timeout=timeout)
        seen |= recorded_pids(mesh_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        yield
    finally:
        seen |= recorded_pids(mesh_dir)
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)
