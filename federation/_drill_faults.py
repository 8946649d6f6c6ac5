"""The drill kinds: each fault injected at its real point of failure, written to the journal first.

``resolve`` turns a ``DrillSpec`` and the running mesh into a ``Target`` (the service's
FQDN and port, the client instance, the endpoints in the fault's scope); ``make_fault``
picks the fault. ``inject`` applies it (after recording how to undo it); ``tick`` lets a
fault act in steps while it is in force; undoing is the journal's.

Points of failure: endpoints-down stops (SIGSTOP) the app of every endpoint of the
service in the scope, so they hang as a wedged process does; control-plane-down stops
the cluster's control plane; gateway-down stops its east-west gateway; link-down takes
every federation link of the cluster out of the links file at once (as ``fedctl unlink``
would, one by one: the peers' endpoints go at once) and puts them back; latency and errors write a copy of
the service's VirtualService with an Istio ``fault``; region-evacuation rewrites the
global VirtualService's weights in steps; trust-rotation signs a new intermediate CA for
the cluster and restarts its control plane on it.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from topology import load_paths
from topology._drill import DrillSpec, DrillType
from topology._mesh import Mesh

from ._drill_journal import Action, Journal, Runner, drills_dir, run_fedctl
from ._drill_links import cluster_links, cut_links, directions, save_cut, wait_links
from ._drill_timeline import Scope
from ._drill_vs import (
    dump, evacuation_steps, fault_block, find_virtual_service, fresh_virtual_service, override_path,
    weighted_destinations, with_fault, with_weights,
)
from ._errors import FederationError
from ._launch import ADMIN_PORT
from ._link_store import LinkError, LinkSet, links_path, read_links
from ._state import InstanceRecord, MeshState, ProcessRecord, alive, read_state


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


def config_version(address: str, timeout: float = 2.0) -> str | None:
    """The config version a proxy applied (its admin ``/config_dump``), None when it cannot say."""
    conn = http.client.HTTPConnection(address, ADMIN_PORT, timeout=timeout)
    try:
        conn.request("GET", "/config_dump")
        version = json.loads(conn.getresponse().read()).get("version")
        return None if version is None else str(version)
    except (OSError, ValueError, http.client.HTTPException, AttributeError):
        return None
    finally:
        conn.close()


def wait_pushed(address: str, before: str | None, timeout: float = PUSH_TIMEOUT) -> float | None:
    """Seconds until the proxy at ``address`` applied a config other than ``before``; None if it did not."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        now = config_version(address)
        if now is not None and now != before:
            return time.monotonic() - began
        time.sleep(0.1)
    return None


class VirtualServiceFault(Fault):
    """latency and errors: the service's VirtualService with an Istio fault on every route."""

    version_before: str | None = None

    def settle(self) -> list[str]:
        took = wait_pushed(self.target.source.address, self.version_before)
        if took is None:
            return [f"the client's sidecar did not apply the fault within {PUSH_TIMEOUT:g} s"]
        return [f"the client's sidecar applied the fault after {took:.1f} s"]

    def inject(self, journal: Journal) -> list[str]:
        self.version_before = config_version(self.target.source.address)
        found = find_virtual_service(self.target.mesh_dir, self.target.fqdn)
        doc = found[1] if found else fresh_virtual_service(self.target.fqdn)
        f = self.spec.fault
        fault = fault_block(self.spec.type.value, f.percent, f.delay.nanos / 1e9, f.http_status)
        path = override_path(self.target.mesh_dir, found, self.drill_id)
        journal.record(Action("file", f"{self.spec.type.value} fault on {self.target.fqdn}", path=str(path)))
        path.write_text(dump(with_fault(doc, fault), f"fedctl drill {self.drill_id}: removed when the drill ends"))
        return [f"{self.spec.type.value}: {json.dumps(fault)} on {self.target.fqdn} ({path.name})"]


class RegionEvacuation(Fault):
    """Shift the global VirtualService's weights off a region in steps; roll back when errors exceed the SLO."""

    plan: list[list[int]] | None = None
    step: int = 0
    rolled_back: bool = False

    def _prepare(self) -> tuple[tuple[Path, dict], list[list[int]]]:
        found = find_virtual_service(self.target.mesh_dir, self.target.fqdn)
        if found is None:
            raise DrillError(f"no VirtualService for {self.target.fqdn}: region-evacuation shifts a global "
                             "VirtualService's weights")
        try:
            dests = weighted_destinations(found[1])
            regions = [self.destination_region(d) for d in dests]
            weights = [int(d.get("weight", 0 if len(dests) > 1 else 100)) for d in dests]
            plan = evacuation_steps(weights, [r == self.target.scope.name for r in regions], self.spec.fault.steps)
        except ValueError as exc:
            raise DrillError(f"{found[0]}: {exc}") from None
        return found, plan

    def destination_region(self, dest: dict) -> str | None:
        """A destination's region from its subset's labels (``topology.kubernetes.io/region``, or the
        region of ``topology.istio.io/cluster``), as a global VirtualService's subsets name them."""
        subset = (dest.get("destination") or {}).get("subset")
        mesh = self.target.mesh
        for res in load_paths([self.target.mesh_dir]).of_kind("DestinationRule"):
            for s in res.spec.subsets:
                if s.name != subset:
                    continue
                labels = dict(s.labels)
                if "topology.kubernetes.io/region" in labels:
                    return labels["topology.kubernetes.io/region"]
                cluster = mesh.cluster_named(labels.get("topology.istio.io/cluster", "")) if mesh else None
                if cluster is not None and cluster.locality is not None:
                    return cluster.locality.region
        return None

    def check(self) -> None:
        self._prepare()

    def _write(self, journal: Journal, weights: list[int]) -> str:
        found, _ = self._prepare()
        path = override_path(self.target.mesh_dir, found, self.drill_id)
        if not journal.actions:
            journal.record(Action("file", f"evacuation of {self.target.scope}", path=str(path)))
        path.write_text(dump(with_weights(found[1], weights), f"fedctl drill {self.drill_id}: evacuation step"))
        return f"weights {weights}"

    def inject(self, journal: Journal) -> list[str]:
        _, self.plan = self._prepare()
        self.step = 1
        return [f"step 1/{len(self.plan)}: " + self._write(journal, self.plan[0])]

    def tick(self, journal: Journal, progress: float, errors: int) -> list[str]:
        if self.plan is None or self.rolled_back:
            return []
        budget = self.spec.slo.max_errors
        if budget is not None and errors > budget:
            self.rolled_back = True
            self.reasons.append(f"rolled back at step {self.step}/{len(self.plan)}: {errors} client errors "
                                f"exceeded --max-errors {budget}")
            return journal.undo_all(self.run)
        due = min(len(self.plan), 1 + int(progress * len(self.plan)))
        if due > self.step:
            self.step = due
            return [f"step {due}/{len(self.plan)}: " + self._write(journal, self.plan[due - 1])]
        return []


class TrustRotation(Fault):
    """A new intermediate for the cluster, signed by the shared root; its control plane restarts on it.
    Workload certificates of the old intermediate stay valid (same root) until they are renewed."""

    def inject(self, journal: Journal) -> list[str]:
        from trustdomain import CaDirectory, TrustDomain, create_intermediate
        from ._launch import Layout
        name = self.target.scope.name
        c = self.target.state.cluster(name)
        assert c is not None
        cadir = CaDirectory(Layout(self.target.mesh_dir).ca)
        backup = self.target.mesh_dir / ".meshfed" / "drills" / self.drill_id / "ca-before"
        shutil.copytree(cadir.cluster_path(name), backup, dirs_exist_ok=True)
        new = create_intermediate(cadir.load_root(), TrustDomain.parse(c.trust_domain), name,
                                  dt.datetime.now(dt.timezone.utc))
        cadir.save_cluster(name, new)
        self.old_pid = c.control_plane.pid
        if c.control_plane.pid is not None:
            os.kill(c.control_plane.pid, signal.SIGTERM)  # the supervisor restarts it on the new CA
        return [f"{name}: new intermediate CA {new.certificate.serial_number:x} (old one kept in {backup}); "
                "control plane restarting"]

    old_pid: int | None = None

    def settle(self) -> list[str]:
        """Wait for the supervisor's restart of the control plane: a rotation that leaves the cluster
        without one fails the drill whatever the clients saw."""
        name = self.target.scope.name
        began = time.monotonic()
        while time.monotonic() - began < RESTART_TIMEOUT:
            try:
                c = read_state(self.target.mesh_dir).cluster(name)
            except FederationError:
                c = None
            cp = c.control_plane if c is not None else None
            if cp is not None and cp.pid not in (None, self.old_pid) and alive(cp.pid, cp.start_time) and c.ready:
                return [f"{name}: control plane back on the new CA after {time.monotonic() - began:.1f} s "
                        f"(pid {cp.pid})"]
            time.sleep(0.2)
        self.reasons.append(f"the control plane of {name} did not come back within {RESTART_TIMEOUT:g} s "
                            "after the rotation")
        return [self.reasons[-1]]


KINDS: dict[DrillType, tuple[type[Fault], bool]] = {
    DrillType.ENDPOINTS_DOWN: (EndpointsDown, True), DrillType.GATEWAY_DOWN: (GatewayDown, True),
    DrillType.LINK_DOWN: (LinkDown, True), DrillType.CONTROL_PLANE_DOWN: (ControlPlaneDown, False),
    DrillType.LATENCY: (VirtualServiceFault, False), DrillType.ERRORS: (VirtualServiceFault, False),
    DrillType.REGION_EVACUATION: (RegionEvacuation, True), DrillType.TRUST_ROTATION: (TrustRotation, False),
}


def make_fault(spec: DrillSpec, target: Target, drill_id: str, run: Runner = run_fedctl) -> Fault:
    cls, moves = KINDS[spec.type]
    return cls(target, spec, drill_id, run, moves)
