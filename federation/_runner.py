"""The supervisor's loop: run a mesh's processes, probe their readiness, follow the control planes.

``MeshRunner.run`` starts every cluster's control plane, then each instance's app and
sidecar, and ticks every ``TICK`` seconds until cancelled:

1. ``Supervisor.poll`` reaps exits and restarts children whose backoff has passed;
2. each control plane's plan (``cp/<cluster>.json``, written by ``_cpprocess``) is
   followed: instances it no longer lists are stopped, new ones started (``fedctl
   scale`` goes through here: the control plane serves the new endpoints first);
3. readiness is probed: a control plane is ready once its status file names its
   current PID with a config in force and its discovery port accepts; a sidecar once
   its admin ``/ready`` answers 200 (its ``/config_dump`` then gives config version
   and certificate expiry); an app once every port it serves accepts a connection
   (an app without ports once it runs);
4. ``state.json`` is rewritten when anything changed (and every few seconds anyway).

With ``wiring="files"`` the supervisor issues each instance's SVID from the cluster CA
and starts the sidecar once its control plane has written its config document; with
``"discovery"`` it writes a bootstrap token and starts the sidecar at once.

Each cluster with a gateway address also runs its east-west gateway (``<cluster>/gateway``):
a proxy in the eastwest role at the block's ``.2``, configured and certified like a
sidecar (identity ``.../ns/istio-system/sa/istio-eastwestgateway``), ready once its
admin ``/ready`` answers; the mesh is ready only with every gateway ready.

Cancelling ``run`` stops everything in order, shielded from the cancellation: apps
first (they drain), then sidecars, then gateways, then control planes; each group gets
``grace`` seconds after SIGTERM before SIGKILL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import trio

from trustdomain import (
    BootstrapAuthority, BootstrapGrant, CaDirectory, SpiffeId, TrustDomain, TrustDomainError, issue_svid, write_svid,
)
from trustdomain._files import write_private

from ._launch import (
    ADMIN_PORT, DISCOVERY_PORT, DNS_PORT, METRICS_PORT, InstancePlan, Layout, app_spec, control_plane_spec,
    gateway_plan, gateway_spec, sidecar_spec,
)
from ._probe import accepts, http_get
from ._state import (
    ClusterRecord, InstanceRecord, MeshState, ProcessRecord, WorkloadRecord, process_start_time, write_state,
)
from ._supervisor import DEFAULT_GRACE, ProcessSpec, Supervisor, SupervisorError

log = logging.getLogger("meshfed.federation.runner")
TICK = 0.2
PROBE_READY_EVERY = 2.0
DUMP_EVERY = 10.0
HEARTBEAT = 5.0
TOKEN_TTL = dt.timedelta(hours=1)


GATEWAY_PORT = 15443


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    name: str
    trust_domain: str
    address_block: str
    address: str
    gateway_address: str = ""
    """The east-west gateway's address (no gateway process when empty)."""
    locality: str = ""
    network: str = ""


@dataclass(slots=True)
class _Gateway:
    plan: InstancePlan
    started: bool = False
    ready: bool = False
    next_probe: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.plan.cluster}/gateway"


@dataclass(slots=True)
class _Instance:
    plan: InstancePlan
    app_ready: bool = False
    sidecar_ready: bool = False
    sidecar_started: bool = False
    config_version: str | None = None
    cert_not_after: str | None = None
    next_probe: float = 0.0
    next_dump: float = 0.0

    @property
    def app(self) -> str:
        return f"{self.plan.cluster}/{self.plan.name}/app"

    @property
    def sidecar(self) -> str:
        return f"{self.plan.cluster}/{self.plan.name}/sidecar"


class MeshRunner:
    """Runs one topology's processes; ``on_state(state)`` sees every state written."""

    def __init__(self, layout: Layout, clusters: list[ClusterInfo], plans: list[InstancePlan],
                 workloads: Mapping[tuple[str, str, str], int], *, wiring: str = "files",
                 supervisor: Supervisor | None = None, environ: Mapping[str, str] | None = None,
                 on_state: Callable[[MeshState], None] | None = None, grace: float = DEFAULT_GRACE) -> None:
        self.layout = layout
        self.clusters = {c.name: c for c in clusters}
        self.wiring = wiring
        self.sup = supervisor or Supervisor()
        self.env = dict(os.environ if environ is None else environ)
        self.on_state = on_state
        self.grace = grace
        self.workloads = dict(workloads)
        self.instances: dict[tuple[str, str, str], _Instance] = {}
        self.cp_ready: dict[str, bool] = {c.name: False for c in clusters}
        self.cp_config: dict[str, bool] = {}
        """Cluster -> its control plane's status file says a config is in force."""
        self.acked: dict[tuple[str, Any, Any], str] = {}
        """(cluster, namespace, instance) -> the config version the control plane says that sidecar ACKed."""
        self.plan_versions: dict[str, tuple[Any, ...]] = {}
        self.phase = "starting"
        self.error: str | None = None
        self.me = ProcessRecord("supervisor", os.getpid(), process_start_time(os.getpid()), "running")
        self._initial = plans
        self.gateways = {c.name: _Gateway(gateway_plan(c.name, c.gateway_address, c.trust_domain, c.locality,
                                                       c.network))
                         for c in clusters if c.gateway_address}
        self._written: tuple[str, float] | None = None
        self._cas: dict[str, Any] = {}
        self._stopping: set[str] = set()
        self._replacing: dict[tuple[str, str, str], InstancePlan | None] = {}
        """Instances being stopped -> the plan to start once they are gone (None: none)."""

    # -- state -----------------------------------------------------------------------------

    def _record(self, name: str) -> ProcessRecord:
        child = self.sup.children.get(name)
        if child is None:
            return ProcessRecord(name, state="waiting")
        return child.record()

    def state(self) -> MeshState:
        clusters = tuple(ClusterRecord(
            c.name, c.trust_domain, c.address_block, c.address, f"{c.address}:{DISCOVERY_PORT}",
            f"{c.address}:{METRICS_PORT}", f"{c.address}:{DNS_PORT}", self._record(f"{c.name}/control-plane"),
            self.cp_ready[c.name], self._record(f"{c.name}/gateway") if c.name in self.gateways else None,
            f"{c.gateway_address}:{GATEWAY_PORT}" if c.name in self.gateways else "",
            self.gateways[c.name].ready if c.name in self.gateways else False) for c in self.clusters.values())
        workloads = tuple(WorkloadRecord(*k, n) for k, n in sorted(self.workloads.items()))
        instances = tuple(InstanceRecord(
            i.plan.cluster, i.plan.namespace, i.plan.workload, i.plan.instance, i.plan.address,
            self._record(i.app), self._record(i.sidecar), tuple(p.target for p in i.plan.ports), i.app_ready,
            i.sidecar_ready, i.plan.spiffe_id, i.config_version, i.cert_not_after)
            for i in self.instances.values())
        return MeshState(str(self.layout.mesh_dir), self.me, self.phase, self.error, self.wiring, clusters,
                         workloads, instances)

    def publish_state(self, force: bool = False) -> MeshState:
        state = self.state()
        text = json.dumps(replace(state, updated_at="").to_json(), sort_keys=True)
        now = trio.current_time()
        if force or self._written is None or self._written[0] != text or now - self._written[1] >= HEARTBEAT:
            write_state(self.layout.mesh_dir, state)
            self._written = (text, now)
            if self.on_state is not None:
                self.on_state(state)
        return state

    # -- starting --------------------------------------------------------------------------

    def _ca(self, cluster: str) -> Any:
        if cluster not in self._cas:
            self._cas[cluster] = CaDirectory(self.layout.ca).load_cluster(cluster)
        return self._cas[cluster]

    def _credentials(self, plan: InstancePlan) -> None:
        folder = self.layout.proxy_dir(plan)
        folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        if self.wiring == "discovery":
            secret = self.layout.bootstrap_secret(plan.cluster).read_bytes()
            grant = BootstrapGrant(TrustDomain(plan.trust_domain), ((plan.namespace, plan.service_account),),
                                   now + TOKEN_TTL)
            write_private(folder / "token", BootstrapAuthority(secret).mint(grant).encode())
        else:
            svid = issue_svid(self._ca(plan.cluster), SpiffeId.parse(plan.spiffe_id), now)
            write_svid(folder, svid)

    def start_control_plane(self, cluster: ClusterInfo) -> None:
        self._start(control_plane_spec(cluster.name, cluster.address, self.layout, self.env, self.wiring))

    def add_instance(self, plan: InstancePlan) -> None:
        inst = _Instance(plan)
        self.instances[plan.key] = inst
        try:
            self._credentials(plan)
        except (OSError, TrustDomainError) as exc:  # shown as not ready; the rest of the mesh runs on
            log.error("%s/%s: no credentials for its sidecar: %s", plan.cluster, plan.name, exc)
            inst.sidecar_started = True
        self._start(app_spec(plan, self.layout, self.env))
        self._maybe_start_sidecar(inst)

    def _start(self, spec: ProcessSpec) -> None:
        try:
            self.sup.start(spec)
        except SupervisorError as exc:  # recorded as failed; the rest of the mesh runs on
            log.error("%s", exc)

    def _maybe_start_sidecar(self, inst: _Instance) -> None:
        if inst.sidecar_started:
            return
        if self.wiring == "files" and not self.layout.proxy_config(inst.plan).exists():
            return  # its control plane has not written its config yet
        if self.wiring == "discovery" and not self.cp_ready[inst.plan.cluster]:
            return  # started once its control plane answers: before, it would only back off
        cp = self.clusters[inst.plan.cluster].address
        inst.sidecar_started = True
        self._start(sidecar_spec(inst.plan, self.layout, self.env, self.wiring, cp))

    def _maybe_start_gateway(self, gw: _Gateway) -> None:
        if gw.started:
            return
        if self.wiring == "files" and not self.layout.proxy_config(gw.plan).exists():
            return
        if self.wiring == "discovery" and not self.cp_ready[gw.plan.cluster]:
            return
        gw.started = True
        try:
            self._credentials(gw.plan)
        except (OSError, TrustDomainError) as exc:
            log.error("%s: no credentials for the east-west gateway: %s", gw.plan.cluster, exc)
            return
        self._start(gateway_spec(gw.plan, self.layout, self.env, self.wiring, self.clusters[gw.plan.cluster].address))

    async def probe_gateway(self, gw: _Gateway, now: float) -> None:
        child = self.sup.children.get(gw.name)
        if child is None or child.state != "running":
            gw.ready = False
        elif not gw.ready or now >= gw.next_probe:
            status, _ = await http_get(gw.plan.address, ADMIN_PORT, "/ready")
            gw.ready = status == 200
            gw.next_probe = now + PROBE_READY_EVERY

    async def stop_instance(self, inst: _Instance) -> None:
        """App first, then its sidecar; forgotten once reaped (if cancelled, ``shutdown`` kills them)."""
        names = [inst.app, inst.sidecar]
        self._stopping.update(names)
        await self.stop_children([inst.app])
        await self.stop_children([inst.sidecar])
        for name in names:
            self.sup.children.pop(name, None)
            self._stopping.discard(name)

    async def stop_children(self, names: list[str]) -> None:
        names = [n for n in names if n in self.sup.children]
        self.sup.terminate(names)
        with trio.move_on_after(self.grace):
            while self.sup.running(names):
                await trio.sleep(0.05)
                self.sup.poll()
        self.sup.kill(names)

    # -- following the control planes ------------------------------------------------------

    def follow_plans(self, nursery: trio.Nursery) -> None:
        for name in self.clusters:
            child = self.sup.children.get(f"{name}/control-plane")
            try:
                doc = json.loads(self.layout.cp_status(name).read_text())
            except (OSError, ValueError):
                continue
            if child is None or doc.get("pid") != child.pid:
                continue  # a previous control plane's file
            self.cp_status_seen(name, doc)
            plan = doc.get("plan")
            if not plan:
                continue
            marker = (plan.get("version"), json.dumps(plan.get("instances"), sort_keys=True))
            if self.plan_versions.get(name) == marker:
                continue
            self.plan_versions[name] = marker
            try:
                plans = [InstancePlan.from_json(p) for p in plan.get("instances") or ()]
            except (KeyError, TypeError, ValueError) as exc:
                log.error("%s: unreadable plan from the control plane: %r", name, exc)
                continue
            self.reconcile(name, plans, nursery)

    def cp_status_seen(self, name: str, doc: Mapping[str, Any]) -> None:
        self.cp_config[name] = bool(doc.get("ready"))
        cp = doc.get("controlPlane") or {}
        served = {**(cp.get("discoveryServer") or {}), **cp}
        for p in served.get("proxies") or ():
            if isinstance(p, Mapping) and p.get("ackedVersion") is not None:
                self.acked[(name, p.get("namespace"), p.get("instance"))] = str(p["ackedVersion"])

    def _behind(self, inst: _Instance) -> bool:
        """Whether the control plane says the sidecar ACKed a version its last dump did not show:
        the status then reads its /config_dump again at once instead of up to DUMP_EVERY later."""
        acked = self.acked.get((inst.plan.cluster, inst.plan.namespace, inst.plan.instance))
        return acked is not None and acked != inst.config_version

    def reconcile(self, cluster: str, plans: list[InstancePlan], nursery: trio.Nursery) -> None:
        """Stop the instances ``plans`` no longer lists (or lists differently), start the new ones.
        An instance whose plan changed is started again once its old processes are gone."""
        wanted = {p.key: p for p in plans}
        for key, inst in list(self.instances.items()):
            if key[0] == cluster and wanted.get(key) != inst.plan:
                del self.instances[key]
                self._replacing[key] = None
                nursery.start_soon(self._replace, inst)
        counts: dict[tuple[str, str, str], int] = {k: 0 for k in self.workloads if k[0] == cluster}
        for plan in plans:
            wkey = (plan.cluster, plan.namespace, plan.workload)
            counts[wkey] = counts.get(wkey, 0) + 1
            if plan.key in self._replacing:
                self._replacing[plan.key] = plan  # started when its predecessor is gone
            elif plan.key not in self.instances:
                log.info("starting %s/%s at %s", plan.cluster, plan.name, plan.address)
                self.add_instance(plan)
        for key in [k for k in self._replacing if k[0] == cluster and k not in wanted]:
            self._replacing[key] = None
        self.workloads.update(counts)

    async def _replace(self, inst: _Instance) -> None:
        try:
            await self.stop_instance(inst)
        finally:
            plan = self._replacing.pop(inst.plan.key, None)
        if plan is not None and self.phase in ("starting", "running"):
            log.info("starting %s/%s at %s", plan.cluster, plan.name, plan.address)
            self.add_instance(plan)

    # -- probing ---------------------------------------------------------------------------

    async def probe_control_plane(self, name: str) -> None:
        child = self.sup.children.get(f"{name}/control-plane")
        ready = (child is not None and child.state == "running" and self.cp_config.get(name, False)
                 and await accepts(self.clusters[name].address, DISCOVERY_PORT))
        self.cp_ready[name] = bool(ready)

    async def probe_instance(self, inst: _Instance, now: float) -> None:
        try:
            await self._probe_instance(inst, now)
        except Exception:  # noqa: BLE001 - a probe bug costs that instance's readiness, not the mesh
            log.exception("probing %s/%s failed", inst.plan.cluster, inst.plan.name)
            inst.app_ready = inst.sidecar_ready = False

    async def _probe_instance(self, inst: _Instance, now: float) -> None:
        app, sidecar = self.sup.children.get(inst.app), self.sup.children.get(inst.sidecar)
        if app is None or app.state != "running":
            inst.app_ready = False
        elif not inst.app_ready or now >= inst.next_probe:
            ports = [p.target for p in inst.plan.ports]
            inst.app_ready = all([await accepts(inst.plan.address, port) for port in dict.fromkeys(ports)])
        if sidecar is None or sidecar.state != "running":
            inst.sidecar_ready = False
        elif not inst.sidecar_ready or now >= inst.next_probe:
            status, _ = await http_get(inst.plan.address, ADMIN_PORT, "/ready")
            was, inst.sidecar_ready = inst.sidecar_ready, status == 200
            if inst.sidecar_ready and (not was or now >= inst.next_dump or self._behind(inst)):
                inst.next_dump = now + DUMP_EVERY
                await self._dump(inst)
        if inst.app_ready and inst.sidecar_ready and now >= inst.next_probe:
            inst.next_probe = now + PROBE_READY_EVERY

    async def _dump(self, inst: _Instance) -> None:
        status, body = await http_get(inst.plan.address, ADMIN_PORT, "/config_dump")
        if status != 200:
            return
        try:
            dump = json.loads(body)
        except ValueError:
            return
        inst.config_version = dump.get("version")
        inst.cert_not_after = (dump.get("tls") or {}).get("not_after")

    async def probe_all(self) -> None:
        now = trio.current_time()
        async with trio.open_nursery() as nursery:
            for name in self.clusters:
                nursery.start_soon(self.probe_control_plane, name)
            for inst in list(self.instances.values()):
                nursery.start_soon(self.probe_instance, inst, now)
            for gw in self.gateways.values():
                nursery.start_soon(self.probe_gateway, gw, now)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for cluster in self.clusters.values():
                    self.start_control_plane(cluster)
                for plan in self._initial:
                    self.add_instance(plan)
                self.publish_state(force=True)
                task_status.started()
                while True:
                    self.tick(nursery)
                    await self.probe_all()
                    if self.phase == "starting" and self.state().ready:
                        self.phase = "running"
                    self.publish_state()
                    await trio.sleep(TICK)
        finally:
            with trio.CancelScope(shield=True):
                await self.shutdown()

    def tick(self, nursery: trio.Nursery) -> None:
        for child in self.sup.poll():
            if child.spec.name not in self._stopping and child.state in ("backoff", "failed"):
                log.warning("%s exited with %s; %s", child.spec.name, child.exit_code,
                            "giving up" if child.state == "failed" else f"restart #{child.restarts + 1} soon")
        self.follow_plans(nursery)
        for inst in self.instances.values():
            self._maybe_start_sidecar(inst)
        for gw in self.gateways.values():
            self._maybe_start_gateway(gw)

    async def shutdown(self) -> None:
        self.phase = "stopping"
        self.publish_state(force=True)
        for child in self.sup.children.values():
            child.restart_at = None  # nothing restarts from here on
        apps = [i.app for i in self.instances.values()]
        sidecars = [i.sidecar for i in self.instances.values()]
        await self.stop_children(apps)
        await self.stop_children(sidecars)
        await self.stop_children([gw.name for gw in self.gateways.values()])
        await self.stop_children([f"{c}/control-plane" for c in self.clusters])
        self.sup.kill(list(self.sup.children))
        self.phase = "stopped"
        self.publish_state(force=True)
