"""One drill on the running mesh: load, inject, observe, undo, judge.

The timeline of a drill of ``duration`` D: a quarter of D with no fault (the baseline),
half of D with the fault in force, a quarter after it was undone; then, for faults
that move traffic, the load goes on until traffic is back on the scope or
``failback_wait`` more seconds have passed. The phases are timed from when the fault
was actually applied and undone: cutting links or restoring them takes seconds, and a
fault window that shrank by that much would judge nothing. Load and schedule are
bounded (the load by ``D + failback_wait + ACTION_SLACK``), so the drill ends by itself. Three helper tasks run beside the script: the load generator, an
observer reading the client sidecar's ``/clusters`` (ejections) twice a second, and a
progress line once a second. SIGINT, SIGTERM and SIGHUP cancel the script; the journal
is undone in a shielded ``finally`` whatever happened, and a report is still written,
failed, saying the drill was interrupted.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from topology._drill import DrillSpec

from ._drill_faults import Fault, Target
from ._drill_journal import Journal
from ._drill_load import REQUEST_TIMEOUT, LoadGenerator, LoadSchedule, Sample, tcp_opener
from ._drill_report import build_report
from ._drill_timeline import Ejections, Second, build_timeline, prompt_threshold
from ._drill_verdict import Slo, Window, failback_at, baseline_share, judge
from ._launch import ADMIN_PORT, OUTBOUND_PORT
from ._probe import http_get

OBSERVE_EVERY = 0.5
DEFAULT_FAILBACK_WAIT = 60.0
ACTION_SLACK = 120.0
"""Seconds the load may run beyond its plan while a fault is applied and undone (the script stops it)."""

Progress = Callable[[str, bool], None]
"""(line, final): the live status line; ``final`` for lines that should stay (phase changes)."""


def _utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def ejected_hosts(doc: Any, fqdn: str) -> Ejections | None:
    """Hosts of ``fqdn``'s clusters ejected by outlier detection, from ``/clusters?format=json``."""
    if not isinstance(doc, dict):
        return None
    hosts: dict[str, str] = {}
    for c in doc.get("cluster_statuses") or []:
        if not isinstance(c, dict) or not str(c.get("name", "")).endswith(f"|{fqdn}"):
            continue
        for h in c.get("hosts") or []:
            if isinstance(h, dict) and "failed_outlier_check" in str(h.get("health_flags", "")):
                hosts[str(h.get("address"))] = str(h.get("locality", ""))
    return Ejections(0.0, len(hosts), tuple(sorted(set(hosts.values()))))


def drill_meta(spec: DrillSpec, target: Target) -> dict[str, Any]:
    kind, name = spec.scope
    meta: dict[str, Any] = {
        "type": spec.type.value, "service": spec.service, "fqdn": target.fqdn, "port": target.port,
        "path": spec.path, "scope": {kind: name}, "from": spec.from_,
        "duration_seconds": spec.duration.nanos / 1e9, "rps": spec.rps,
        "slo": {"max_errors": spec.slo.max_errors, "max_failover_seconds": spec.slo.max_failover_seconds}}
    if spec.type.value in ("latency", "errors", "region-evacuation"):
        f = spec.fault
        meta["fault"] = {"delay_seconds": f.delay.nanos / 1e9, "percent": f.percent, "http_status": f.http_status,
                         "steps": f.steps}
    return meta


@dataclass
class DrillRun:
    spec: DrillSpec
    target: Target
    fault: Fault
    drill_id: str
    progress: Progress = lambda line, final: None
    failback_wait: float = DEFAULT_FAILBACK_WAIT
    request_timeout: float = REQUEST_TIMEOUT
    ejections: list[Ejections] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    undone: list[str] = field(default_factory=list)
    interrupted: str | None = None
    injected: float | None = None
    removed: float | None = None
    phase: str = "baseline"

    @property
    def duration(self) -> float:
        return self.spec.duration.nanos / 1e9

    def timeline(self, samples: list[Sample], until: float | None = None) -> list[Second]:
        edges = [self.injected] if self.injected is not None else []
        prompt = prompt_threshold(samples, self.injected) if self.injected is not None else None
        return build_timeline(samples, self.ejections, self.target.scope, until, edges, prompt)

    async def run(self) -> dict[str, Any]:
        """Run the drill; the report document (the caller writes it)."""
        self.fault.check()
        started_at = _utc()
        d = self.duration
        wait = self.failback_wait if self.fault.moves_traffic else 0.0
        src = self.target.source
        url = f"http://{self.spec.service}:{self.target.port}{self.spec.path}"
        mesh = self.target.mesh
        localities = {c.name: str(c.locality) for c in mesh.clusters if c.locality is not None} if mesh else {}
        gen = LoadGenerator(tcp_opener(src.address, OUTBOUND_PORT), url, f"{self.spec.service}:{self.target.port}",
                            LoadSchedule(self.spec.rps, d + wait + ACTION_SLACK), timeout=self.request_timeout,
                            localities=localities)
        journal = Journal.open(self.target.mesh_dir, self.drill_id)
        t0 = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                helpers = trio.CancelScope()
                script = trio.CancelScope()
                load_done = trio.Event()

                async def load() -> None:
                    try:
                        await gen.run(t0)
                    finally:
                        load_done.set()

                async def run_helpers() -> None:
                    with helpers:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(self._observe, t0)
                            inner.start_soon(self._signals, script)
                            inner.start_soon(self._show, gen, t0)

                nursery.start_soon(load)
                nursery.start_soon(run_helpers)
                try:
                    with script:
                        await self._script(journal, gen, t0, d, wait)
                finally:
                    with trio.CancelScope(shield=True):
                        if not journal.undone:
                            self.undone += await trio.to_thread.run_sync(journal.undo_all)
                            if self.removed is None and self.injected is not None:
                                self.removed = trio.current_time() - t0
                gen.stop()
                if self.interrupted:
                    nursery.cancel_scope.cancel()
                with trio.move_on_after(self.request_timeout + 1):
                    await load_done.wait()
                helpers.cancel()
        finally:
            if not journal.undone:  # cancelled from outside: undo before anything else
                self.undone += journal.undo_all()
        samples = list(gen.samples)
        end = trio.current_time() - t0
        timeline = self.timeline(samples, end)
        window = Window(self.injected if self.injected is not None else d / 4, self.removed,
                        self.fault.moves_traffic, str(self.target.scope),
                        prompt_threshold(samples, self.injected) if self.injected is not None else None)
        verdict = judge(timeline, window, Slo(self.spec.slo.max_errors, self.spec.slo.max_failover_seconds),
                        interrupted=self.interrupted, extra_reasons=self.fault.reasons)
        return build_report(drill_id=self.drill_id, drill=drill_meta(self.spec, self.target), verdict=verdict,
                            window=window, timeline=timeline, samples=samples, started_at=started_at,
                            finished_at=_utc(), actions=self.actions, undone=self.undone)

    async def _script(self, journal: Journal, gen: LoadGenerator, t0: float, d: float, wait: float) -> None:
        await trio.sleep_until(t0 + d / 4)
        self.phase = "fault"
        lines = await trio.to_thread.run_sync(self.fault.inject, journal)
        self.injected = trio.current_time() - t0
        self.actions += lines
        for line in lines:
            self.progress(f"injected at {self.injected:.1f} s: {line}", True)
        lines = await trio.to_thread.run_sync(self.fault.settle)
        self.actions += lines
        for line in lines:
            self.progress(f"{trio.current_time() - t0:.1f} s: {line}", True)
        fault_end = t0 + self.injected + d / 2
        while trio.current_time() < fault_end - 1e-3:
            await trio.sleep(min(1.0, fault_end - trio.current_time()))
            errors = sum(1 for s in gen.samples if not s.ok and s.sent >= self.injected)
            progress = (trio.current_time() - t0 - self.injected) / (d / 2)
            for line in self.fault.tick(journal, min(1.0, progress), errors):
                self.actions.append(line)
                self.progress(f"{trio.current_time() - t0:.1f} s: {line}", True)
        self.phase = "recovery"
        # the fault stops being in force when its undo starts (a restored link carries traffic
        # before the undo has seen both control planes report it up); the quarter after is
        # timed from the end of the undo
        lifted = trio.current_time() - t0
        self.undone += await trio.to_thread.run_sync(journal.undo_all)
        self.removed = lifted
        done = trio.current_time() - t0
        for line in self.undone:
            self.progress(f"undone at {done:.1f} s: {line}", True)
        await trio.sleep_until(t0 + done + d / 4)
        if wait <= 0:
            return
        self.phase = "failback"
        while trio.current_time() < t0 + done + d / 4 + wait:
            now = trio.current_time() - t0
            timeline = self.timeline([s for s in gen.samples if s.sent < math.floor(now) - 1])
            window = Window(self.injected, self.removed, True)
            if failback_at(timeline, window, baseline_share(timeline, self.injected)) is not None:
                return
            await trio.sleep(1.0)

    async def _observe(self, t0: float) -> None:
        src = self.target.source
        while True:
            status, body = await http_get(src.address, ADMIN_PORT, "/clusters?format=json")
            if status == 200:
                try:
                    found = ejected_hosts(json.loads(body), self.target.fqdn)
                except ValueError:
                    found = None
                if found is not None:
                    self.ejections.append(Ejections(trio.current_time() - t0, found.hosts, found.localities))
            await trio.sleep(OBSERVE_EVERY)

    async def _signals(self, script: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                self.interrupted = signal.Signals(signum).name
                self.progress(f"{self.interrupted}: undoing the fault and stopping", True)
                script.cancel()
                return

    async def _show(self, gen: LoadGenerator, t0: float) -> None:
        while True:
            await trio.sleep(1.0)
            now = trio.current_time() - t0
            recent = [s for s in gen.samples if now - 2 <= s.sent < now - 1] or \
                     [s for s in gen.samples if s.sent >= now - 2]
            share: dict[str, int] = {}
            for s in recent:
                if s.ok:
                    share[s.cluster or "?"] = share.get(s.cluster or "?", 0) + 1
            total = len(recent) or 1
            split = " ".join(f"{k} {v / total:.0%}" for k, v in sorted(share.items())) or "-"
            failed = sum(1 for s in gen.samples if not s.ok)
            latest = sorted(s.latency_ms for s in recent)
            p99 = f"{latest[min(len(latest) - 1, int(0.99 * len(latest)))]:.0f} ms" if latest else "-"
            self.progress(f"[{now:5.1f}s/{self.duration:g}s] {self.phase:<8} sent {gen.sent} failed {failed} "
                          f"in flight {gen.in_flight} | {split} | p99 {p99}", False)
