"""What a running drill injected, on disk, so that the mesh is restored even if the drill dies.

Every fault is written down (``DIR/.meshfed/drills/active/<id>.json``, atomically)
*before* it is applied, with what undoes it: a signal to send back (SIGCONT to a process
recorded with its kernel start time, so a recycled PID is never touched), a file to
remove or restore, a ``fedctl`` command to run. Undoing is idempotent (SIGCONT to a
running process, removing a missing file, re-linking linked clusters are no-ops), so a
journal replayed after a crash mid-injection is safe. The drill undoes its own journal
when it ends, however it ends; a journal whose drill process is gone (SIGKILL, a
crash, a reboot) is replayed by the next ``fedctl drill`` (and, with the hook, by
``fedctl status``): ``recover(mesh_dir)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ._state import alive, process_start_time, state_dir, write_atomic

DRILLS_DIR = "drills"
ACTIVE_DIR = "active"
COMMAND_TIMEOUT = 60.0


def drills_dir(mesh_dir: str | os.PathLike[str]) -> Path:
    return state_dir(mesh_dir) / DRILLS_DIR


@dataclass(frozen=True, slots=True)
class Action:
    """One injected change and how to take it back."""

    op: str
    """``signal`` (send ``undo_signal`` to ``pid``'s group), ``file`` (remove ``path``, or put ``backup``
    back over it), ``links`` (put the links saved in ``backup`` back into the links file ``path``
    and wait until they are up) or ``command`` (run ``fedctl`` with ``argv``)."""
    what: str
    pid: int | None = None
    start_time: int | None = None
    undo_signal: str = "SIGCONT"
    path: str | None = None
    backup: str | None = None
    argv: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: dict) -> "Action":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        if "argv" in known:
            known["argv"] = tuple(known["argv"])
        return cls(**known)


Runner = Callable[[tuple[str, ...]], tuple[int, str]]


def run_fedctl(argv: tuple[str, ...]) -> tuple[int, str]:
    """Run ``fedctl ARGV`` in a child process: (exit code, its output)."""
    try:
        done = subprocess.run([sys.executable, "-m", "federation", *argv], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def undo(action: Action, run: Runner = run_fedctl) -> str:
    """Take ``action`` back; a line saying what was done (never raises)."""
    if action.op == "signal":
        if action.pid is None or not alive(action.pid, action.start_time):
            return f"{action.what}: process {action.pid} is gone; nothing to resume"
        signum = getattr(signal, action.undo_signal, signal.SIGCONT)
        try:
            os.killpg(action.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(action.pid, signum)
            except OSError as exc:
                return f"{action.what}: cannot send {action.undo_signal} to {action.pid}: {exc}"
        return f"{action.what}: sent {action.undo_signal} to {action.pid}"
    if action.op == "file" and action.path:
        try:
            if action.backup and Path(action.backup).exists():
                write_atomic(Path(action.path), Path(action.backup).read_bytes())  # readers never see half
                return f"{action.what}: restored {action.path}"
            Path(action.path).unlink(missing_ok=True)
            return f"{action.what}: removed {action.path}"
        except OSError as exc:
            return f"{action.what}: cannot undo {action.path}: {exc}"
    if action.op == "links" and action.path and action.backup:
        from ._drill_links import restore_links
        try:
            return f"{action.what}: " + restore_links(action.path, action.backup)
        except Exception as exc:  # noqa: BLE001 - an undo never raises; the line says what went wrong
            return f"{action.what}: cannot restore the links from {action.backup}: {exc}"
    if action.op == "command" and action.argv:
        code, out = run(action.argv)
        tail = f": {out.splitlines()[-1]}" if out else ""
        return f"{action.what}: fedctl {' '.join(action.argv)} exited {code}{tail}"
    return f"{action.what}: nothing to undo"


@dataclass
class Journal:
    """The faults one drill has in force."""

    path: Path
    drill_id: str
    actions: list[Action] = field(default_factory=list)
    undone: bool = False

    @classmethod
    def open(cls, mesh_dir: str | os.PathLike[str], drill_id: str) -> "Journal":
        journal = cls(drills_dir(mesh_dir) / ACTIVE_DIR / f"{drill_id}.json", drill_id)
        journal._write()
        return journal

    def _write(self) -> None:
        me = os.getpid()
        doc = {"id": self.drill_id, "pid": me, "startTime": process_start_time(me),
               "actions": [asdict(a) for a in self.actions]}
        write_atomic(self.path, json.dumps(doc, indent=1).encode() + b"\n")

    def record(self, action: Action) -> None:
        """Write ``action`` down; call before applying it."""
        self.actions.append(action)
        self._write()

    def undo_all(self, run: Runner = run_fedctl) -> list[str]:
        """Undo every action, newest first, then forget the journal."""
        lines = [undo(a, run) for a in reversed(self.actions)]
        self.actions.clear()
        self.undone = True
        self.path.unlink(missing_ok=True)
        return lines


def recover(mesh_dir: str | os.PathLike[str], run: Runner = run_fedctl) -> list[str]:
    """Undo the journals of drills whose process is gone; a line per action undone."""
    folder = drills_dir(mesh_dir) / ACTIVE_DIR
    lines: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            doc = json.loads(path.read_text())
            actions = [Action.from_json(a) for a in doc.get("actions", [])]
            owner, started = doc.get("pid"), doc.get("startTime")
        except (OSError, ValueError, TypeError, AttributeError):
            path.unlink(missing_ok=True)
            lines.append(f"{path.name}: unreadable drill journal removed")
            continue
        if isinstance(owner, int) and alive(owner, started):
            continue  # that drill still runs and will undo its own faults
        for action in reversed(actions):
            lines.append(f"drill {doc.get('id', path.stem)}: " + undo(action, run))
        path.unlink(missing_ok=True)
    return lines
