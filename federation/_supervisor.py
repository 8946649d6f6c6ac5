"""Process supervision: start children, restart them with backoff, stop them by PID.

``RestartPolicy`` is the decision alone (how long to wait before the next start, when
to give up) and takes uptimes, never reads a clock. ``Supervisor`` owns the children:
each is started in a session of its own (so it leads its process group and a signal to
the group reaches whatever it forked: nothing is orphaned), with its stdout and stderr
appended to its log file, and is reaped by ``poll()``, which also restarts the ones
that exited unexpectedly once their backoff has passed. Time comes from an injected
``clock`` (monotonic seconds), so tests drive restarts without sleeping.

A child that exits while being stopped is not restarted. ``stop`` sends SIGTERM to the
group, waits up to ``grace`` seconds for the leader to exit, then sends SIGKILL to the
group and reaps it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ._errors import FederationError
from ._state import ProcessRecord, process_start_time

DEFAULT_GRACE = 5.0
"""Seconds a child gets to exit after SIGTERM before SIGKILL. Defaults to 5."""


class SupervisorError(FederationError):
    """A child could not be started (its program is missing, its log unwritable)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Exponential backoff between restarts, bounded in delay and in consecutive failures."""

    initial: float = 0.5
    """Seconds before the first restart. Defaults to 0.5."""
    maximum: float = 30.0
    """Longest wait between restarts, in seconds. Defaults to 30."""
    multiplier: float = 2.0
    stable_after: float = 10.0
    """A child that ran this long before exiting starts a fresh series of failures. Defaults to 10 s."""
    max_failures: int | None = 10
    """Consecutive failures after which the child is given up (state ``failed``); None never gives up."""

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.multiplier >= 1 and self.stable_after >= 0):
            raise ValueError(f"restart policy out of range: {self!r}")

    def failures_after(self, failures: int, uptime: float) -> int:
        """Consecutive failures counting the exit that just happened after ``uptime`` seconds."""
        return 1 if uptime >= self.stable_after else failures + 1

    def delay(self, failures: int) -> float | None:
        """Seconds to wait before restarting after ``failures`` consecutive failures; None: give up."""
        if failures < 1:
            return 0.0
        if self.max_failures is not None and failures > self.max_failures:
            return None
        return min(self.maximum, self.initial * self.multiplier ** min(failures - 1, 64))


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run: ``name`` is unique among the supervisor's children (``east-a/echo-0/app``)."""

    name: str
    argv: tuple[str, ...]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """The whole environment of the child (nothing is inherited implicitly)."""
    cwd: str | None = None


@dataclass(slots=True)
class Child:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    start_time: int | None = None
    started_at: float = 0.0
    state: str = "starting"
    failures: int = 0
    restarts: int = 0
    exit_code: int | None = None
    restart_at: float | None = None
    stopping: bool = False

    def record(self) -> ProcessRecord:
        return ProcessRecord(self.spec.name, self.pid, self.start_time, self.state, self.restarts, self.exit_code,
                             str(self.spec.log))


Spawn = Callable[..., "subprocess.Popen[bytes]"]


class Supervisor:
    """The children of one ``fedctl up``; call ``poll()`` regularly (every few hundred ms)."""

    def __init__(self, policy: RestartPolicy = RestartPolicy(), *, clock: Callable[[], float] = time.monotonic,
                 spawn: Spawn = subprocess.Popen) -> None:
        self.policy = policy
        self.clock = clock
        self.spawn = spawn
        self.children: dict[str, Child] = {}

    def __repr__(self) -> str:
        running = sum(1 for c in self.children.values() if c.state == "running")
        return f"<Supervisor {running}/{len(self.children)} running>"

    def start(self, spec: ProcessSpec) -> Child:
        """Start ``spec`` now (replacing a stopped child of the same name)."""
        old = self.children.get(spec.name)
        if old is not None and old.proc is not None and old.proc.poll() is None:
            raise SupervisorError(f"{spec.name}: already running as pid {old.pid}", spec.name)
        child = Child(spec)
        self.children[spec.name] = child
        self._launch(child)
        return child

    def _launch(self, child: Child) -> None:
        spec = child.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as log:
            stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            log.write(f"--- {stamp} starting: {' '.join(spec.argv)}\n".encode())
            log.flush()
            try:
                proc = self.spawn(list(spec.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(spec.env), cwd=spec.cwd, start_new_session=True, close_fds=True)
            except OSError as exc:
                child.state, child.pid, child.proc = "failed", None, None
                raise SupervisorError(f"{spec.name}: cannot start {spec.argv[0]!r}: {exc.strerror or exc}",
                                      spec.name) from None
        child.proc, child.pid = proc, proc.pid
        child.start_time = process_start_time(proc.pid)
        child.started_at = self.clock()
        child.state, child.exit_code, child.restart_at = "running", None, None

    def poll(self) -> list[Child]:
        """Reap exits and restart what is due; the children whose state changed."""
        changed: list[Child] = []
        now = self.clock()
        for child in list(self.children.values()):
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                changed.append(child)
                self._exited(child, proc.returncode, now)
            if child.restart_at is not None and now >= child.restart_at and not child.stopping:
                child.restarts += 1
                try:
                    self._launch(child)
                except SupervisorError:
                    child.failures += 1
                    delay = self.policy.delay(child.failures)
                    child.state = "backoff" if delay is not None else "failed"
                    child.restart_at = now + delay if delay is not None else None
                if child not in changed:
                    changed.append(child)
        return changed

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.proc, child.exit_code = None, code
        if child.stopping:
            child.state = "stopped"
            return
        child.failures = self.policy.failures_after(child.failures, now - child.started_at)
        delay = self.policy.delay(child.failures)
        if delay is None:
            child.state, child.restart_at = "failed", None
        else:
            child.state, child.restart_at = "backoff", now + delay

    def next_deadline(self) -> float | None:
        """The earliest pending restart (clock seconds), for a caller that sleeps between polls."""
        due = [c.restart_at for c in self.children.values() if c.restart_at is not None]
        return min(due) if due else None

    # -- stopping -------------------------------------------------------------------------

    def terminate(self, names: Iterable[str], signum: int = signal.SIGTERM) -> list[Child]:
        """Mark children as stopping and signal their process groups; no waiting."""
        out = []
        for name in names:
            child = self.children.get(name)
            if child is None:
                continue
            child.stopping, child.restart_at = True, None
            if child.proc is not None and child.proc.poll() is None:
                _signal_group(child.proc.pid, signum)
            elif child.proc is not None:
                self._exited(child, child.proc.returncode, self.clock())
            else:
                child.state = "stopped"
            out.append(child)
        return out

    def kill(self, names: Iterable[str]) -> None:
        """SIGKILL the groups of children still running, and reap them."""
        for name in names:
            child = self.children.get(name)
            if child is None:
                continue
            child.stopping, child.restart_at = True, None
            proc = child.proc
            if proc is not None:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                self._exited(child, proc.returncode, self.clock())
                _signal_group(proc.pid, signal.SIGKILL)  # a group member that outlived its leader

    def running(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` whose process has not been reaped yet."""
        return [n for n in names if (c := self.children.get(n)) is not None and c.proc is not None]

    def stop(self, names: Iterable[str], grace: float = DEFAULT_GRACE,
             sleep: Callable[[float], None] = time.sleep) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL the stragglers' groups; every child reaped."""
        names = [c.spec.name for c in self.terminate(list(names))]
        groups = [c.proc.pid for n in names if (c := self.children[n]).proc is not None]
        deadline = self.clock() + grace
        while self.running(names) and self.clock() < deadline:
            sleep(0.05)
            self.poll()
        self.kill(names)
        for pgid in groups:  # members of a group whose leader exited on SIGTERM
            _signal_group(pgid, signal.SIGKILL)

    def remove(self, name: str) -> None:
        """Forget a stopped child."""
        child = self.children.get(name)
        if child is not None and child.proc is not None and child.proc.poll() is None:
            raise SupervisorError(f"{name}: still running as pid {child.pid}; stop it first", name)
        self.children.pop(name, None)

    def stop_all(self, grace: float = DEFAULT_GRACE, sleep: Callable[[float], None] = time.sleep) -> None:
        self.stop(list(self.children), grace, sleep)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
