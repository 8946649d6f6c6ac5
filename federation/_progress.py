"""What ``fedctl up`` prints: progress lines from successive states, the listen table, failure reports.

Pure: every function reads ``MeshState`` values (from the runner in the foreground, from
``state.json`` when detached), so both modes print the same lines.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from ._launch import InstancePlan, Layout
from ._state import InstanceRecord, MeshState, ProcessRecord

LOG_LINES = 5


class Progress:
    """Announces each control plane, workload and cluster once, as it becomes ready, and each
    process that exits unexpectedly."""

    def __init__(self, mesh_dir: Path, started: float, *, timeout: float,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.mesh_dir = mesh_dir
        self.started = started
        self.timeout = timeout
        self.write = write or (lambda line: print(line, flush=True))
        self.clock = clock
        self.announced: set[tuple[str, ...]] = set()
        self.exits: dict[str, str] = {}
        self.table_shown = False

    def intro(self, clusters: Iterable[object], plans: list[InstancePlan], layout: Layout) -> str:
        names = [getattr(c, "name") for c in clusters]
        return (f"fedctl up: {len(names)} cluster(s) ({', '.join(names)}), {len(plans)} instance(s) from "
                f"{self.mesh_dir}; logs in {layout.root / 'logs'}")

    def _say(self, text: str) -> None:
        self.write(f"  [{self.clock() - self.started:5.1f}s] {text}")

    def lines(self, state: MeshState) -> None:
        for c in state.clusters:
            if c.ready and ("cp", c.name) not in self.announced:
                self.announced.add(("cp", c.name))
                self._say(f"{c.name:<8} control plane ready on {c.address} (discovery :{c.discovery.rsplit(':')[1]}, "
                          f"dns :{c.dns.rsplit(':')[1]}, metrics :{c.metrics.rsplit(':')[1]})")
        for w in state.workloads:
            insts = state.instances_of(w.cluster, w.name)
            insts = [i for i in insts if i.namespace == w.namespace]
            key = ("w", w.cluster, w.namespace, w.name, str(len(insts)))
            if len(insts) == w.replicas and all(i.ready for i in insts) and key not in self.announced:
                self.announced.add(key)
                where = ", ".join(i.address for i in insts) or "no instances"
                self._say(f"{w.cluster:<8} {w.namespace}/{w.name} ready ({len(insts)}/{w.replicas}: {where})")
        for c in state.clusters:
            insts = [i for i in state.instances if i.cluster == c.name]
            if c.ready and all(i.ready for i in insts) and ("c", c.name) not in self.announced:
                self.announced.add(("c", c.name))
                self._say(f"{c.name:<8} cluster ready: {len(insts)} instance(s)")
        for p in state.processes():  # the first unexpected exit of each process, and giving up
            if p.state in ("backoff", "failed") and self.exits.get(p.name) not in (p.state, "failed"):
                then = "given up" if p.state == "failed" else "restarting with backoff"
                if p.state == "failed" or p.name not in self.exits:
                    self._say(f"{p.name} exited (code {p.exit_code}); {then} - see {p.log}")
                self.exits[p.name] = p.state
        if state.ready and ("mesh",) not in self.announced:
            self.announced.add(("mesh",))
            self._say(f"mesh ready: {len(state.clusters)} cluster(s), {len(state.instances)} instance(s)")

    def foreground(self, state: MeshState) -> None:
        self.lines(state)
        if state.ready and not self.table_shown:
            self.table_shown = True
            self.write(listen_table(state))
            self.write("Ctrl-C stops everything.")
        elif not state.ready and not self.table_shown and self.clock() - self.started > self.timeout \
                and ("late",) not in self.announced:
            self.announced.add(("late",))
            self._say(f"not ready after {self.timeout:g} s (still trying):\n{not_ready_report(state)}")

    def detached(self, state: MeshState) -> None:
        self.lines(state)


def _pids(*records: ProcessRecord) -> str:
    return " ".join(str(p.pid) for p in records if p.pid is not None) or "-"


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def listen_table(state: MeshState) -> str:
    rows = [("CLUSTER", "WHAT", "ADDRESS", "LISTENS", "PIDS")]
    for c in state.clusters:
        rows.append((c.name, "control plane", c.address,
                     f"discovery+CA :{c.discovery.rsplit(':')[1]}  metrics :{c.metrics.rsplit(':')[1]}  "
                     f"dns :{c.dns.rsplit(':')[1]} (udp+tcp)", _pids(c.control_plane)))
        if c.gateway is not None and c.gateway_address:
            host, _, port = c.gateway_address.rpartition(":")
            rows.append((c.name, "east-west gateway", host, f"mTLS passthrough :{port}  admin :15000",
                         _pids(c.gateway)))
        for i in state.instances:
            if i.cluster != c.name:
                continue
            app = "  ".join(f"app :{p}" for p in i.ports) or "app (no port)"
            rows.append((c.name, f"{i.namespace}/{i.instance}", i.address,
                         f"{app}  sidecar out :15001 in :15006 admin :15000", _pids(i.app, i.sidecar)))
    return table(rows)


def tail(path: str, n: int = LOG_LINES) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return list(deque((line.rstrip("\n") for line in f), maxlen=n))
    except OSError:
        return []


def _why(i: InstanceRecord) -> list[tuple[str, ProcessRecord]]:
    out = []
    if not i.app_ready:
        out.append(("app", i.app))
    if not i.sidecar_ready:
        out.append(("sidecar", i.sidecar))
    return out


def not_ready_report(state: MeshState) -> str:
    lines = []
    for c in state.clusters:
        if not c.ready:
            p = c.control_plane
            lines.append(f"{c.name}: control plane not ready ({p.state}, {p.restarts} restart(s)); {p.log}:")
            lines += [f"    | {line}" for line in tail(p.log)]
    for i in state.instances:
        for what, p in _why(i):
            lines.append(f"{i.cluster}/{i.namespace}/{i.instance}: {what} not ready ({p.state}, {p.restarts} "
                         f"restart(s)); {p.log or 'not started'}:")
            lines += [f"    | {line}" for line in tail(p.log)] if p.log else []
    return "\n".join(lines) or "every process is ready"
