"""The config source: a watched directory of mesh YAML, compiled into immutable versions.

Theory of operation. ``poll()`` walks the directory (the embedded default store: no
etcd, no Kubernetes API) and reloads only the files that changed (``_configfiles``).
The whole set is then validated as ``fedctl validate`` does and compiled (placements,
service registry). Any error refuses the change: the previous ``ConfigVersion`` stays
in force and the refusal (its ``file:line: path: message`` lines and when) is kept for
``fedctl status``. A fixed file, or the bad one removed, yields the next version.

Compiling is what a 10,000-endpoint topology pays for, so the registry and placements
are rebuilt only when a resource they read changed: an edited VirtualService reuses
them. ``analyze`` (which builds a registry of its own) runs after a quiet second, off
the push path: its findings are warnings, and its one error ("cannot place the
workloads") our own registry build raises first, so deferring it never turns a refusal
into an acceptance. Its warnings appear in ``status()`` once computed.

Apply order. A resource (group, kind, namespace, name) defined in several files is the
one of the file changed last, as the last ``kubectl apply`` replaces the object: copying
``virtual-service-reviews-90-10.yaml`` in after ``virtual-service-reviews-v3.yaml`` puts
the 90/10 split in force whatever the file names. Files are read in the order their
content last changed (path order among those of one poll, e.g. at start), and of the
resources sharing an identity only the last is kept.

Versions are numbered 1, 2, 3... in the order accepted (from ``first_version``: a
restarted control plane goes on from the number it served last); content equal to what
was last accepted or refused is not evaluated again. ``changed_at`` is when the change was made
as far as the source can tell: the earliest mtime among the changed files, but never
before the last poll that saw the tree unchanged (a file copied with an old mtime
"changed" when it appeared). Push latency is measured from it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import trio

from topology import Diagnostic, LoadResult, Placement, RegistryError, Resource, ServiceRegistry
from topology import RegistryBuilder, build_registry, placements
from topology._analyze import analyze
from topology._mesh import Mesh
from topology._registry_build import _serviceentry_services, find_mesh

from ._configfiles import RACY_NS, FileState, load_file_state, stat_tree

log = logging.getLogger("meshfed.federation.config")

DEFAULT_POLL_INTERVAL = 0.1
"""Seconds between two walks of the directory."""
ANALYZE_DELAY = 1.0
"""Quiet seconds after a new version before ``analyze`` runs on it."""
MAX_REFUSALS_KEPT = 16
PLACEMENT_KINDS = frozenset({"Mesh", "Service", "Deployment", "StatefulSet"})
"""Kinds the workloads and their services come from (``placements``, most of ``build_registry``)."""
ENTRY_KINDS = frozenset({"ServiceEntry", "WorkloadEntry"})
"""Kinds merged into that registry afterwards; a change of any other kind reuses the registry."""

Check = Callable[[LoadResult, Mesh | None], list[Diagnostic]]
"""An extra validation a caller adds (the control plane checks its own cluster is there)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One accepted config: what every proxy document of this version is computed from."""

    number: int
    resources: tuple[Resource, ...]
    registry: ServiceRegistry
    """The whole topology's registry (every cluster's endpoints)."""
    mesh: Mesh | None
    placements: tuple[Placement, ...]
    files: Mapping[str, str]
    """Path -> sha256 of its bytes: the content this version was built from."""
    raw: Mapping[tuple[str, int], Any] = field(repr=False)
    """(file, line) of a resource -> its mapping as written, to embed in proxy documents."""
    created_at: dt.datetime = field(default_factory=_utcnow)
    changed_at: dt.datetime = field(default_factory=_utcnow)

    def raw_of(self, res: Resource) -> Any:
        return self.raw.get((res.file, res.line))

    def __repr__(self) -> str:
        return (f"<ConfigVersion {self.number}: {len(self.resources)} resources, {len(self.files)} files, "
                f"{self.registry!r}>")


@dataclass(frozen=True, slots=True)
class ConfigRefusal:
    """A change that was not applied, and why."""

    at: dt.datetime
    messages: tuple[str, ...]
    """``file:line: path: message``, errors only."""
    files: tuple[str, ...]
    """The files that changed."""

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "messages": list(self.messages), "files": list(self.files)}


def last_applied(resources: list[Resource]) -> list[Resource]:
    """``resources`` (in apply order) without those a later one of the same identity replaces."""
    last = {(r.group, *r.key): i for i, r in enumerate(resources)}
    kept = [r for i, r in enumerate(resources) if last[(r.group, *r.key)] == i]
    if len(kept) != len(resources):
        replaced = [r for i, r in enumerate(resources) if last[(r.group, *r.key)] != i]
        log.info("replaced by a file applied later: %s", ", ".join(f"{r.kind} {r.namespace}/{r.name} of "
                                                                    f"{r.file}:{r.line}" for r in replaced))
    return kept


class ConfigSource:
    """Watches ``directory``; ``current`` is the version in force, ``refusal`` the last refused change."""

    def __init__(self, directory: str | os.PathLike[str], *, interval: float = DEFAULT_POLL_INTERVAL,
                 clock: Callable[[], dt.datetime] = _utcnow, kube_cluster: str | None = None,
                 checks: tuple[Check, ...] = (), first_version: int = 1, in_thread: bool = True,
                 analyze_delay: float = ANALYZE_DELAY) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self.clock = clock
        self.kube_cluster = kube_cluster
        self.checks = checks
        self.in_thread = in_thread
        self.analyze_delay = analyze_delay
        self.current: ConfigVersion | None = None
        self.refusal: ConfigRefusal | None = None
        """The last refused change, cleared when a later change is accepted."""
        self.refusals: list[ConfigRefusal] = []
        self.refused_total = 0
        self._next = first_version
        self._files: dict[str, FileState] = {}
        self._stamps: dict[str, tuple[int, int]] | None = None
        self._polls = 0
        self._applied: dict[str, int] = {}
        """Path -> the poll that last saw its content change (the apply order)."""
        self._evaluated: dict[str, str] | None = None
        """Path -> digest of the content last accepted or refused: it is not evaluated twice."""
        self._last_quiet = self.clock()
        self._listeners: list[Callable[[ConfigVersion], None]] = []
        self._refusal_listeners: list[Callable[[ConfigRefusal], None]] = []
        self._base_cache: tuple[tuple[Resource, ...], Any] | None = None
        self._registry_cache: tuple[tuple[Resource, ...], Any] | None = None
        self._pending_analysis: tuple[ConfigVersion, LoadResult] | None = None
        self._analysis_lock = threading.Lock()
        self.warnings: tuple[int, tuple[str, ...]] = (0, ())
        """(version number, analyze's warnings for it)."""

    def __repr__(self) -> str:
        state = f"version {self.current.number}" if self.current else "no version"
        return f"<ConfigSource {self.directory} {state}, {self.refused_total} refused>"

    def on_version(self, fn: Callable[[ConfigVersion], None]) -> None:
        self._listeners.append(fn)

    def on_refusal(self, fn: Callable[[ConfigRefusal], None]) -> None:
        self._refusal_listeners.append(fn)

    # -- polling ---------------------------------------------------------------------

    def poll(self) -> ConfigVersion | ConfigRefusal | None:
        """Look once; the new version, the refusal, or None when nothing changed."""
        now = self.clock()
        stamps = stat_tree(self.directory)
        fs_now = time.time_ns()  # the files' clock, whatever ``clock`` says
        racy = {p for p, (mtime, _) in stamps.items() if fs_now - mtime < RACY_NS}
        if stamps == self._stamps and not racy:
            self._last_quiet = now
            return None
        self._stamps = stamps
        for path in stamps:
            self._files[path] = load_file_state(path, stamps[path], self._files.get(path), path in racy)
        for path in list(self._files):
            if path not in stamps:
                del self._files[path]
        digests = {p: self._files[p].digest for p in stamps}
        if digests == self._evaluated:
            self._last_quiet = now
            return None
        before = self._evaluated or {}
        changed = sorted(p for p in digests.keys() | before.keys() if digests.get(p) != before.get(p))
        self._evaluated = digests
        self._polls += 1
        for path in changed:
            if path in digests:
                self._applied[path] = self._polls
            else:
                self._applied.pop(path, None)
        mtimes = [stamps[p][0] for p in changed if p in stamps]
        changed_at = now
        if self.current is not None and mtimes:
            first = dt.datetime.fromtimestamp(min(mtimes) / 1e9, dt.timezone.utc)
            changed_at = min(now, max(first, self._last_quiet))
        self._last_quiet = now
        if self.current is not None and digests == dict(self.current.files):
            self.refusal = None  # back to the content in force
            return None
        return self._compile(digests, changed, now, changed_at)

    def _compile(self, digests: dict[str, str], changed: list[str], now: dt.datetime,
                 changed_at: dt.datetime) -> ConfigVersion | ConfigRefusal:
        result = LoadResult()
        raw: dict[tuple[str, int], Any] = {}
        for path in sorted(digests, key=lambda p: (self._applied.get(p, 0), p)):
            state = self._files[path]
            result.extend(state.result)
            raw.update(((path, line), data) for line, data in state.raw.items())
        result.resources = last_applied(result.resources)
        errors = [d for d in result.diagnostics if d.is_error]
        if not errors:
            mesh = next((r.spec for r in result.of_kind("Mesh")), None)
            errors = [d for check in self.checks for d in check(result, mesh) if d.is_error]
        compiled = None
        if not errors:
            try:
                compiled = self._registry(result)
            except RegistryError as exc:
                meshes = result.of_kind("Mesh")
                where = (meshes[0].file, meshes[0].line) if meshes else (str(self.directory), 0)
                errors = [Diagnostic(where[0], where[1], "", f"cannot place the workloads: {exc}")]
        if errors or compiled is None:
            return self._refuse(tuple(str(d) for d in errors), changed, now)
        mesh, registry, placed = compiled
        version = ConfigVersion(self._next, tuple(result.resources), registry, mesh, placed, digests, raw,
                                now, changed_at)
        self._next += 1
        self.current = version
        self.refusal = None
        with self._analysis_lock:
            self._pending_analysis = (version, result)
        log.info("config version %d accepted (%d files changed)", version.number, len(changed))
        return version

    def _registry(self, result: LoadResult) -> tuple[Mesh | None, ServiceRegistry, tuple[Placement, ...]]:
        """Placements and registry, rebuilt only from what changed: the workloads' part (Mesh and
        Kubernetes objects) and the ServiceEntries' part, merged as ``build_registry`` merges them."""
        def same(cached: tuple[tuple[Resource, ...], Any] | None, inputs: tuple[Resource, ...]) -> bool:
            return cached is not None and len(cached[0]) == len(inputs) and all(
                a is b for a, b in zip(cached[0], inputs))  # unchanged files keep their Resource objects
        mesh = find_mesh(result)
        base = tuple(r for r in result.resources if r.kind in PLACEMENT_KINDS)
        if not same(self._base_cache, base):
            workloads = LoadResult(resources=list(base))
            self._base_cache = (base, (placements(workloads, mesh, kube_cluster=self.kube_cluster),
                                       build_registry(workloads, mesh, kube_cluster=self.kube_cluster)))
            self._registry_cache = None
        placed, workloads_registry = self._base_cache[1]
        entries = tuple(r for r in result.resources if r.kind in ENTRY_KINDS)
        if not same(self._registry_cache, entries):
            registry = workloads_registry
            if entries:
                b = RegistryBuilder(registry.domain)
                for svc in registry.services:
                    b.add_service(svc)
                _serviceentry_services(b, result, mesh, placed)
                registry = b.build()
            self._registry_cache = (entries, registry)
        assert self._registry_cache is not None
        return mesh, self._registry_cache[1], placed

    def _refuse(self, messages: tuple[str, ...], changed: list[str], now: dt.datetime) -> ConfigRefusal:
        refusal = ConfigRefusal(now, messages, tuple(changed))
        self.refusal = refusal
        self.refusals = [*self.refusals, refusal][-MAX_REFUSALS_KEPT:]
        self.refused_total += 1
        in_force = f"version {self.current.number} stays in force" if self.current else "no config in force"
        log.warning("config change refused (%s): %s", in_force, "; ".join(messages[:3]))
        return refusal

    def analyze_pending(self) -> None:
        """Run ``analyze`` on the version accepted last (see the module docstring)."""
        with self._analysis_lock:  # poll (another thread) may set a newer one meanwhile
            pending, self._pending_analysis = self._pending_analysis, None
        if pending is not None:
            version, result = pending
            self.warnings = (version.number, tuple(str(d) for d in analyze(result) if not d.is_error))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll every ``interval`` seconds until cancelled; started after the first poll.

        Listeners are called here, in trio's thread, even when the poll ran in a worker.
        ``analyze`` waits for ``analyze_delay`` seconds without a change, so that its CPU
        (it builds a registry of its own) does not compete with the pushes of a version,
        and runs beside the polls, never delaying the next change."""
        accepted_at = trio.current_time()
        analyzing = False

        async def analyze_task() -> None:
            nonlocal analyzing
            try:
                await self._run(self.analyze_pending)
            finally:
                analyzing = False
        async with trio.open_nursery() as nursery:
            await self._step()
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                if isinstance(await self._step(), ConfigVersion):
                    accepted_at = trio.current_time()
                elif (self._pending_analysis is not None and not analyzing
                      and trio.current_time() - accepted_at >= self.analyze_delay):
                    analyzing = True
                    nursery.start_soon(analyze_task)

    async def _step(self) -> ConfigVersion | ConfigRefusal | None:
        outcome = await self._run(self.poll)
        self.notify(outcome)
        return outcome

    async def _run(self, fn: Callable[[], Any]) -> Any:
        if self.in_thread:  # a large reload must not stall the pushes and ACKs in flight
            return await trio.to_thread.run_sync(fn)
        return fn()

    def notify(self, outcome: ConfigVersion | ConfigRefusal | None) -> None:
        """Hand a poll's outcome to the listeners."""
        if isinstance(outcome, ConfigVersion):
            for on_version in self._listeners:
                on_version(outcome)
        elif isinstance(outcome, ConfigRefusal):
            for on_refusal in self._refusal_listeners:
                on_refusal(outcome)

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {"directory": str(self.directory),
                "version": cur.number if cur else None,
                "versionCreatedAt": cur.created_at.isoformat() if cur else None,
                "warnings": list(self.warnings[1]) if cur and self.warnings[0] == cur.number else [],
                "refusedTotal": self.refused_total,
                "lastRefusal": self.refusal.to_json() if self.refusal else None}

