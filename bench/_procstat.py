"""What the kernel says a process costs, and processes that are always stopped by their PID.

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (fields 14 and 15, clock ticks of
``SC_CLK_TCK``): the difference over a window divided by the window's wall time is the
vCPU the process used. Memory is ``VmRSS`` from ``/proc/<pid>/status``. Both parsers are
pure so that the test suite checks them on captured text.

``Processes`` starts the benchmark's servers (nginx, HAProxy, ``fedctl proxy``) and stops
every one of them by PID on the way out - SIGTERM, a bounded wait, then SIGKILL - whatever
happened in between; the caller holds it in a ``with`` block.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE_SECONDS = 5.0


def parse_stat_ticks(text: str) -> int:
    """``utime + stime`` in clock ticks from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may itself hold spaces and ``)``, so
    the fields are counted from the last ``)``: after it come state (field 3), then
    utime and stime at positions 14 and 15 of the whole line.
    """
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def parse_status_rss_kb(text: str) -> int:
    """``VmRSS`` in kB from the text of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected VmRSS unit {unit!r} in {line!r}")
            return int(value)
    raise ValueError("no VmRSS line (a kernel thread or a zombie?)")


def parse_schedstat(text: str) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) from ``/proc/<pid>/task/<tid>/schedstat``."""
    on_cpu, waiting, _slices = text.split()
    return int(on_cpu), int(waiting)


def runqueue_wait_seconds(pid: int) -> float:
    """Time every thread of ``pid`` spent ready to run while the CPUs did other work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += parse_schedstat((task / "schedstat").read_text())[1]
        except (OSError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    return parse_stat_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    return parse_status_rss_kb(Path(f"/proc/{pid}/status").read_text()) / 1024


def parse_proc_stat_busy(text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores from the ``cpu`` line of ``/proc/stat``."""
    fields = [int(x) for x in text.splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])       # guest time is already inside user and nice
    return total - idle, total


class MachineWindow:
    """Cores busy over a window, whoever used them: with our processes' CPU taken off, the noise."""

    def start(self) -> "MachineWindow":
        self._b0, self._t0 = parse_proc_stat_busy(Path("/proc/stat").read_text())
        self._w0 = time.perf_counter()
        return self

    def stop(self) -> "MachineWindow":
        b1, t1 = parse_proc_stat_busy(Path("/proc/stat").read_text())
        self.fraction = (b1 - self._b0) / max(1, t1 - self._t0)
        self.cores = (b1 - self._b0) / CLOCK_TICKS / max(1e-9, time.perf_counter() - self._w0)
        return self


def machine_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over ``seconds``: the load others put on the machine before we start."""
    window = MachineWindow().start()
    time.sleep(seconds)
    return window.stop().fraction


def parse_autogroup_nice(text: str) -> int:
    """The nice value from ``/proc/<pid>/autogroup`` (``/autogroup-18 nice 0``)."""
    return int(text.split()[-1])


def set_priority(nice: int) -> int | None:
    """Give this process, its children to come and its autogroup the niceness ``nice``.

    With ``kernel.sched_autogroup_enabled`` (Debian's default) the scheduler first shares
    the CPUs fairly between sessions and applies niceness only inside one, so niceness
    alone does not keep a run ahead of other sessions' work; the autogroup's own nice
    value does (sched(7)). Returns the autogroup's previous value for ``restore_autogroup``,
    or None when there is no autogroup.
    """
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    path = Path("/proc/self/autogroup")
    try:
        previous = parse_autogroup_nice(path.read_text())
        path.write_text(str(nice))
    except OSError:
        return None
    return previous


def restore_autogroup(previous: int | None) -> None:
    if previous is not None:
        try:
            Path("/proc/self/autogroup").write_text(str(previous))
        except OSError:
            pass


@dataclass
class CpuWindow:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``, the wall time, and how
    long they waited for a CPU meanwhile (high when other work on the machine starves them)."""

    pids: Sequence[int]
    cpu: float = 0.0
    wall: float = 0.0
    waited: float = 0.0

    def start(self) -> "CpuWindow":
        self._cpu0 = sum(cpu_seconds(p) for p in self.pids)
        self._wait0 = sum(runqueue_wait_seconds(p) for p in self.pids)
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> "CpuWindow":
        self.wall = time.perf_counter() - self._t0
        self.cpu = sum(cpu_seconds(p) for p in self.pids) - self._cpu0
        self.waited = sum(runqueue_wait_seconds(p) for p in self.pids) - self._wait0
        return self

    @property
    def vcpu(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Seconds spent waiting for a CPU per second of the window (summed over the processes)."""
        return self.waited / self.wall if self.wall > 0 else 0.0


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        out = []
        for path in (self.stdout, self.stderr):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out += [f"  {self.name} {path.name}: {line}" for line in text]
        return "\n".join(out)


class Processes:
    """Servers started for one scenario; ``with`` stops each by PID, newest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str]) -> Started:
        out, err = self.folder / f"{name}.stdout", self.folder / f"{name}.stderr"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=self.folder)
        started = Started(name, popen, out, err)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        while self.started:
            stop_pid(self.started.pop().popen)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def stop_pid(popen: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to this one PID, wait at most ``grace`` seconds, then SIGKILL and reap."""
    if popen.poll() is not None:
        return
    try:
        os.kill(popen.pid, signal.SIGTERM)
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(popen.pid, signal.SIGKILL)
        popen.wait(timeout=grace)
    except ProcessLookupError:
        popen.poll()


def wait_listening(started: Started, host: str, port: int, timeout: float = 15.0) -> None:
    """Until ``host:port`` accepts a TCP connection; fails early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started.popen.poll() is not None:
            raise RuntimeError(f"{started.name} exited with {started.popen.returncode} before listening "
                               f"on {host}:{port}\n{started.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{started.name} not listening on {host}:{port} after {timeout:.0f}s\n{started.tail()}")


def wait_for_line(started: Started, prefix: str, timeout: float = 30.0) -> str:
    """The first stdout line starting with ``prefix`` (``fedctl proxy`` prints ``ready ...``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in started.stdout.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if started.popen.poll() is not None:
            raise RuntimeError(f"{started.name} exited with {started.popen.returncode} before "
                               f"printing {prefix!r}\n{started.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{started.name} printed no {prefix!r} line within {timeout:.0f}s\n{started.tail()}")


