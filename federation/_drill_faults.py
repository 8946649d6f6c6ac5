"""The drill kinds: each fault injected at its real point of failure, written to the journal first.

``resolve`` turns a ``DrillSpec`` and the running mesh into a ``Target`` (the service's
FQDN and port, the client instance, the endpoints in the fault's scope); ``make_fault``
(``_drill_config_faults``, with the kinds that act through configuration) picks the fault. ``inject`` applies it (after recording how to undo it); ``tick`` lets a
fault act in steps while it is in force; undoing is the journal's.

Points of failure: endpoints-down stops (SIGSTOP) the app of every endpoint of the
service in the scope, so they hang as a wedged process does; control-plane-down stops
the cluster's control plane; gateway-down stops its east-west gateway; link-down takes
every federation link of the cluster out of the links file at once (as ``fedctl unlink``
would, one by one: the peers' endpoints go at once) and puts them back. The kinds acting
through configuration (latency, errors, region-evacuation, trust-rotation) are in
``_drill_config_faults``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from topology import load_paths
from topology._drill import DrillSpec
from topology._mesh import Mesh

from ._drill_journal import Action, Journal, Runner, drills_dir, run_fedctl
from ._drill_links import cluster_links, cut_links, directions, save_cut, wait_links
from ._drill_timeline import Scope
from ._errors import FederationError
from ._link_store import LinkError, LinkSet, links_path, read_links
from ._state import InstanceRecord, MeshState, ProcessRecord, alive


PUSH_TIMEOUT = 10.0
"""Seconds a changed VirtualService may take to reach the client's sidecar."""
RESTART_TIMEOUT = 30.0
"""Seconds the supervisor may take to restart a control plane (trust-rotation)."""


class DrillError(FederationError):
    """A drill that cannot run: unknown service, nothing in the scope, a fault that cannot be applied."""


@dataclass(frozen=True, slots=True)
class Target:
    mesh_dir: Path
    state: MeshState
    mesh: Mesh | None
    fqdn: str
    port: int
    source: InstanceRecord
    scope: Scope
    endpoints: tuple[tuple[InstanceRecord, str], ...]
    """Every instance of the service with its locality (``region/zone``)."""

    def in_scope(self) -> list[InstanceRecord]:
        return [i for i, loc in self.endpoints if self.scope.covers(i.cluster, loc)]


def load_mesh(mesh_dir: Path) -> Mesh | None:
    found = load_paths([mesh_dir]).of_kind("Mesh")
    return found[0].spec if found else None


def service_fqdn(service: str, namespace: str) -> str:
    parts = service.split(".")
    if len(parts) == 1:
        return f"{service}.{namespace}.svc.cluster.local"
    return f"{parts[0]}.{parts[1]}.svc.cluster.local"


def resolve(spec: DrillSpec, mesh_dir: Path, state: MeshState, source: InstanceRecord) -> Target:
    mesh = load_mesh(mesh_dir)
    fqdn = service_fqdn(spec.service, source.namespace)
    svc, ns = fqdn.split(".")[:2]
    workloads = [w for w in (mesh.workloads if mesh else ()) if (w.service or w.name) == svc and w.namespace == ns]
    port = spec.port or next((p.port for w in workloads for p in w.ports), None)
    if not workloads or port is None:
        raise DrillError(f"no workload of the mesh in {mesh_dir} serves {spec.service!r} ({fqdn}) on a port")
    endpoints = []
    for w in workloads:
        for i in state.instances:
            if i.namespace == ns and i.workload == w.name:
                endpoints.append((i, str(mesh.locality_of(w, i.cluster)) if mesh else ""))
    kind, name = spec.scope
    target = Target(mesh_dir, state, mesh, fqdn, port, source, Scope(kind, name), tuple(endpoints))
    if kind == "cluster" and state.cluster(name) is None:
        raise DrillError(f"unknown cluster {name!r}; the clusters are: " + ", ".join(c.name for c in state.clusters))
    return target


def _signal(record: ProcessRecord | None, what: str, journal: Journal, signum: int = signal.SIGSTOP) -> str:
    if record is None or record.pid is None or not alive(record.pid, record.start_time):
        raise DrillError(f"{what}: not running")
    journal.record(Action("signal", what, record.pid, record.start_time, "SIGCONT"))
    try:
        os.killpg(record.pid, signum)
    except (ProcessLookupError, PermissionError):
        os.kill(record.pid, signum)
    return f"{what}: stopped (pid {record.pid})"


@dataclass
class Fault:
    target: Target
    spec: DrillSpec
    drill_id: str
    run: Runner = run_fedctl
    moves_traffic: bool = True
    reasons: list[str] = field(default_factory=list)
    """SLO breaches the fault itself found (region-evacuation's rollback)."""

    def check(self) -> None:
        """Raise DrillError before any load when the fault cannot be applied."""

    def inject(self, journal: Journal) -> list[str]:
        raise NotImplementedError

    def settle(self) -> list[str]:
        """Called right after ``inject``: wait until the fault has taken effect where it takes a while
        (the injection time stays the moment it was applied); lines saying what was seen."""
        return []

    def tick(self, journal: Journal, progress: float, errors: int) -> list[str]:
        """Called about every second while the fault is in force (``progress`` 0..1)."""
        return []


class EndpointsDown(Fault):
    def check(self) -> None:
        if not self.target.in_scope():
            where = sorted({f"{i.cluster} ({loc})" for i, loc in self.target.endpoints}) or ["nowhere"]
            raise DrillError(f"no endpoint of {self.target.fqdn} in {self.target.scope}; it runs in "
                             + ", ".join(where))

    def inject(self, journal: Journal) -> list[str]:
        return [_signal(i.app, f"{i.cluster}/{i.instance} app", journal) for i in self.target.in_scope()]


class ControlPlaneDown(Fault):
    def inject(self, journal: Journal) -> list[str]:
        c = self.target.state.cluster(self.target.scope.name)
        assert c is not None
        return [_signal(c.control_plane, f"{c.name} control plane", journal)]


def gateway_record(state: MeshState, cluster: str) -> ProcessRecord | None:
    """The cluster's east-west gateway process, as issue 7's state records it (``gateway``)."""
    c = state.cluster(cluster)
    rec = getattr(c, "gateway", None) if c is not None else None
    return rec if isinstance(rec, ProcessRecord) else None


class GatewayDown(Fault):
    def check(self) -> None:
        if gateway_record(self.target.state, self.target.scope.name) is None:
            raise DrillError(f"cluster {self.target.scope.name!r} runs no east-west gateway (none recorded "
                             "in the mesh state)")

    def inject(self, journal: Journal) -> list[str]:
        rec = gateway_record(self.target.state, self.target.scope.name)
        return [_signal(rec, f"{self.target.scope.name} east-west gateway", journal)]


class LinkDown(Fault):
    """Every federation link of the cluster cut at once, restored at the end (``_drill_links``)."""

    pairs: list[tuple[str, str]] = []
    """The (importer, exporter) directions cut, once injected."""

    def cut(self) -> LinkSet:
        try:
            return cluster_links(read_links(self.target.mesh_dir), self.target.scope.name)
        except LinkError as exc:
            raise DrillError(str(exc)) from None

    def check(self) -> None:
        cut = self.cut()
        if not cut.links and not cut.applied:
            raise DrillError(f"cluster {self.target.scope.name!r} has no federation link to cut "
                             "(see 'fedctl link list')")

    def inject(self, journal: Journal) -> list[str]:
        cut = self.cut()
        saved = drills_dir(self.target.mesh_dir) / self.drill_id / "links-cut.json"
        save_cut(cut, saved)
        journal.record(Action("links", f"links of {self.target.scope.name}",
                              path=str(links_path(self.target.mesh_dir)), backup=str(saved)))
        cut_links(self.target.mesh_dir, cut)
        self.pairs = directions(cut)
        return [f"link {'-'.join(link.clusters)}: cut" for link in cut.links] + \
               [f"applied link {x.cluster} <- {x.peer.cluster}: cut" for x in cut.applied]

    def settle(self) -> list[str]:
        began = time.monotonic()
        missing = wait_links(self.target.mesh_dir, self.pairs, gone=True)
        if missing:
            return ["links not yet dropped by the control planes: " + "; ".join(missing)]
        return [f"the control planes dropped the links after {time.monotonic() - began:.1f} s"]
