"""The drill kinds that act through configuration: latency and errors (a meshfed
``WorkloadFault`` that the service's sidecars in the scope apply), region-evacuation (the global VirtualService's weights
rewritten in steps) and trust-rotation (a new intermediate CA, the control plane restarted on
it) - and ``make_fault``, which picks any kind's fault.

They wait on what the mesh reports, not on the clock: a fault is in force once the sidecars
of the scope's instances show a new version in ``/config_dump``, a rotation once the supervisor has
restarted the control plane and it is ready again.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Mapping

import yaml
from topology import load_paths
from topology._drill import DrillSpec, DrillType

from ._drill_faults import (PUSH_TIMEOUT, RESTART_TIMEOUT, ControlPlaneDown, DrillError, EndpointsDown, Fault,
                            GatewayDown, LinkDown, Target)
from ._drill_journal import Action, Journal, Runner, run_fedctl
from ._drill_vs import (
    OVERRIDE_PREFIX, dump, evacuation_steps, fault_block, find_virtual_service, override_path, weighted_destinations,
    with_weights, workload_faults,
)
from ._errors import FederationError
from ._launch import ADMIN_PORT
from ._state import InstanceRecord, alive, read_state


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


def wait_pushed(before: Mapping[str, str | None], timeout: float = PUSH_TIMEOUT) -> tuple[float, list[str]]:
    """Wait until each proxy (admin address -> the version it had) applied another config: the
    seconds waited and the proxies that did not within ``timeout``."""
    began = time.monotonic()
    waiting = dict(before)
    while True:
        for address, version in list(waiting.items()):
            now = config_version(address)
            if now is not None and now != version:
                del waiting[address]
        if not waiting or time.monotonic() - began >= timeout:
            return time.monotonic() - began, sorted(waiting)
        time.sleep(0.1)


class WorkloadFaultDrill(Fault):
    """latency and errors: a ``WorkloadFault`` on the service's instances in the scope, applied by
    their own sidecars, so that only the answers from the scope are slow or failing and the
    clients' retries, outlier detection and locality failover meet them as they would a bad zone."""

    versions_before: dict[str, str | None] | None = None

    def in_scope(self) -> list[InstanceRecord]:
        found = self.target.in_scope()
        if not found:
            raise DrillError(f"no instance of {self.target.fqdn} in {self.target.scope}: nothing to "
                             f"{'slow' if self.spec.type is DrillType.LATENCY else 'fail'}")
        return found

    def check(self) -> None:
        self.in_scope()

    def settle(self) -> list[str]:
        before = self.versions_before or {}
        took, late = wait_pushed(before)
        if late:
            return [f"the sidecars at {', '.join(late)} did not apply the fault within {PUSH_TIMEOUT:g} s"]
        return [f"the sidecars of {len(before)} instance{'s' if len(before) != 1 else ''} in {self.target.scope} "
                f"applied the fault after {took:.1f} s"]

    def inject(self, journal: Journal) -> list[str]:
        instances = self.in_scope()
        self.versions_before = {i.address: config_version(i.address) for i in instances}
        f = self.spec.fault
        fault = fault_block(self.spec.type.value, f.percent, f.delay.nanos / 1e9, f.http_status)
        scope = self.target.scope
        localities = [loc for i, loc in self.target.endpoints if scope.covers(i.cluster, loc)]
        docs = workload_faults(self.target.fqdn, self.selector(), (scope.kind, scope.name), localities, fault,
                               self.drill_id)
        path = self.target.mesh_dir / f"{OVERRIDE_PREFIX}{self.drill_id}.yaml"
        journal.record(Action("file", f"{self.spec.type.value} fault on {self.target.fqdn} in {scope}", path=str(path)))
        path.write_text(f"# fedctl drill {self.drill_id}: removed when the drill ends\n"
                        + yaml.safe_dump_all(docs, sort_keys=False))
        names = ", ".join(f"{i.cluster}/{i.instance}" for i in instances)
        return [f"{self.spec.type.value}: {json.dumps(fault)} on {self.target.fqdn} in {scope} ({names})"]

    def selector(self) -> dict[str, str]:
        """The labels every workload of the service carries (``app: <service>`` at least)."""
        svc, ns = self.target.fqdn.split(".")[:2]
        mesh = self.target.mesh
        sets = [dict(w.labels) for w in (mesh.workloads if mesh else ())
                if (w.service or w.name) == svc and w.namespace == ns]
        if not sets:
            return {"app": svc}
        common = {k: v for k, v in sets[0].items() if all(s.get(k) == v for s in sets[1:])}
        return common or {"app": svc}


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
    DrillType.LATENCY: (WorkloadFaultDrill, False), DrillType.ERRORS: (WorkloadFaultDrill, True),
    DrillType.REGION_EVACUATION: (RegionEvacuation, True), DrillType.TRUST_ROTATION: (TrustRotation, False),
}


def make_fault(spec: DrillSpec, target: Target, drill_id: str, run: Runner = run_fedctl) -> Fault:
    cls, moves = KINDS[spec.type]
    return cls(target, spec, drill_id, run, moves)
