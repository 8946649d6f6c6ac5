"""What ``fedctl up`` runs for each instance and cluster, and where its files live.

Pure: placements in, ``InstancePlan`` and ``ProcessSpec`` out. An ``InstancePlan`` is a
placement made serialisable - everything needed to start the instance's app and
sidecar - because the cluster's control plane publishes the plan it serves (after
``fedctl scale``) and the supervisor runs exactly that.

Layout of ``DIR/.meshfed``::

    state.json  scale.json                      supervisor state; scale overrides
    links.json                                  fedctl link / apply (kept across runs, see _link_store)
    ca/                                         root, <cluster>/ (Istio cacerts), <cluster>/bootstrap-secret
    cp/<cluster>.json                           the control plane's status and plan, rewritten every second
    proxies/<cluster>/<namespace>.<instance>/   config.json, cert.pem, key.pem, chain.pem, token
    logs/<cluster>/<name>.log                   control-plane, <namespace>.<instance>, ...sidecar
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from topology import Placement
from topology._mesh import Mesh, Workload
from trustdomain._files import write_private

from ._state import state_dir
from ._supervisor import ProcessSpec

OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT = 15001, 15006, 15000
DISCOVERY_PORT, METRICS_PORT, DNS_PORT = 15012, 15014, 15053
WIRINGS = ("files", "discovery")


@dataclass(frozen=True, slots=True)
class AppPort:
    port: int
    """Service port callers use."""
    target: int
    """Port the app listens on at its own address."""
    protocol: str


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """One instance to run: identity, address, and the app (built-in demo or the user's command)."""

    cluster: str
    namespace: str
    workload: str
    instance: str
    address: str
    service_account: str
    trust_domain: str
    locality: str = ""
    network: str = ""
    version: str | None = None
    app: str | None = None
    """Built-in demo app name, or None for the user's ``command``."""
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[AppPort, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cluster, self.namespace, self.instance)

    @property
    def name(self) -> str:
        """``<namespace>.<instance>``: unique in the cluster, used for files and logs."""
        return f"{self.namespace}.{self.instance}"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "namespace": self.namespace, "workload": self.workload,
                "instance": self.instance, "address": self.address, "serviceAccount": self.service_account,
                "trustDomain": self.trust_domain, "locality": self.locality, "network": self.network,
                "version": self.version, "app": self.app,
                "command": list(self.command) if self.command is not None else None, "env": dict(self.env),
                "ports": [{"port": p.port, "targetPort": p.target, "protocol": p.protocol} for p in self.ports]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "InstancePlan":
        command = doc.get("command")
        return cls(doc["cluster"], doc["namespace"], doc["workload"], doc["instance"], doc["address"],
                   doc["serviceAccount"], doc["trustDomain"], doc.get("locality", ""), doc.get("network", ""),
                   doc.get("version"), doc.get("app"), tuple(command) if command is not None else None,
                   dict(doc.get("env") or {}),
                   tuple(AppPort(p["port"], p["targetPort"], p["protocol"]) for p in doc.get("ports") or ()))


def plan_of(p: Placement, mesh: Mesh) -> InstancePlan | None:
    """The plan of a Mesh workload's instance; None for Kubernetes workloads (nothing to run)."""
    w = p.source
    if not isinstance(w, Workload):
        return None
    cluster = mesh.cluster_named(p.cluster)
    trust_domain = (cluster.trust_domain if cluster is not None else None) or "cluster.local"
    ports = tuple(AppPort(wp.port, wp.target_port or wp.port, wp.protocol.value if wp.protocol else "http")
                  for wp in w.ports)
    return InstancePlan(p.cluster, p.namespace, p.workload, p.instance, p.address, p.service_account, trust_domain,
                        str(p.locality), p.network, w.version, w.app.value if w.app is not None else None,
                        tuple(w.command) if w.command is not None else None, dict(w.env), ports)


def plans_of(placements: tuple[Placement, ...], mesh: Mesh | None, cluster: str | None = None) -> list[InstancePlan]:
    if mesh is None:
        return []
    out = [plan_of(p, mesh) for p in placements if cluster is None or p.cluster == cluster]
    return [p for p in out if p is not None]


class Layout:
    """Paths under ``DIR/.meshfed``."""

    def __init__(self, mesh_dir: str | os.PathLike[str]) -> None:
        self.mesh_dir = Path(mesh_dir).resolve()
        self.root = state_dir(self.mesh_dir)

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    def bootstrap_secret(self, cluster: str) -> Path:
        return self.ca / cluster / "bootstrap-secret"

    def log(self, cluster: str, name: str) -> Path:
        return self.root / "logs" / cluster / f"{name}.log"

    def cp_status(self, cluster: str) -> Path:
        return self.root / "cp" / f"{cluster}.json"

    def proxy_dir(self, plan: InstancePlan | Placement) -> Path:
        return self.root / "proxies" / plan.cluster / f"{plan.namespace}.{plan.instance}"

    def proxy_config(self, plan: InstancePlan | Placement) -> Path:
        return self.proxy_dir(plan) / "config.json"


def bootstrap_secret(layout: Layout, cluster: str) -> bytes:
    """The cluster's bootstrap-token secret, created (0600) on first use."""
    path = layout.bootstrap_secret(cluster)
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    write_private(path, data)
    return data


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment children inherit: the caller's, without proxy settings that would send
    an app around its sidecar."""
    env = dict(os.environ if environ is None else environ)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        env.pop(name, None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def app_environment(plan: InstancePlan, base: Mapping[str, str]) -> dict[str, str]:
    proxy = f"http://{plan.address}:{OUTBOUND_PORT}"
    env = {**base, **plan.env}
    env.update({
        "MESHFED_CLUSTER": plan.cluster, "MESHFED_NAMESPACE": plan.namespace, "MESHFED_WORKLOAD": plan.workload,
        "MESHFED_INSTANCE": plan.instance, "MESHFED_ADDRESS": plan.address, "MESHFED_LOCALITY": plan.locality,
        "MESHFED_SERVICE_ACCOUNT": plan.service_account, "MESHFED_SPIFFE_ID": plan.spiffe_id,
        "HTTP_PROXY": proxy, "http_proxy": proxy,
    })
    if plan.version:
        env["MESHFED_VERSION"] = plan.version
    if plan.ports:
        env["MESHFED_PORT"] = str(plan.ports[0].target)
    return env


def app_spec(plan: InstancePlan, layout: Layout, base: Mapping[str, str]) -> ProcessSpec:
    if plan.app is not None:
        argv = [sys.executable, "-m", "federation.apps", plan.app]
        for port in dict.fromkeys(p.target for p in plan.ports):
            argv += ["--listen", f"{plan.address}:{port}"]
    else:
        argv = list(plan.command or ())
    return ProcessSpec(f"{plan.cluster}/{plan.name}/app", tuple(argv), layout.log(plan.cluster, plan.name),
                       app_environment(plan, base), str(layout.mesh_dir))


def sidecar_spec(plan: InstancePlan, layout: Layout, base: Mapping[str, str], wiring: str,
                 control_plane: str) -> ProcessSpec:
    if wiring == "discovery":
        folder = layout.proxy_dir(plan)
        argv = [sys.executable, "-m", "federation._sidecar", "--discovery", f"{control_plane}:{DISCOVERY_PORT}",
                "--token-file", str(folder / "token"), "--bundle", str(layout.ca / plan.cluster / "root-cert.pem"),
                "--cluster", plan.cluster, "--namespace", plan.namespace, "--workload", plan.workload,
                "--instance", plan.instance, "--service-account", plan.service_account,
                "--trust-domain", plan.trust_domain, "--state-dir", str(folder)]
    else:
        argv = [sys.executable, "-m", "federation", "proxy", "--config", str(layout.proxy_config(plan))]
    return ProcessSpec(f"{plan.cluster}/{plan.name}/sidecar", tuple(argv),
                       layout.log(plan.cluster, f"{plan.name}.sidecar"), dict(base), str(layout.mesh_dir))


GATEWAY_NAMESPACE, GATEWAY_WORKLOAD = "istio-system", "istio-eastwestgateway"


def gateway_plan(cluster: str, address: str, trust_domain: str, locality: str = "", network: str = "") -> InstancePlan:
    """The east-west gateway of a cluster as an instance without an app: its proxy runs
    ``node.role: eastwest`` (see ``_federation_gateway``), configured like a sidecar."""
    return InstancePlan(cluster, GATEWAY_NAMESPACE, GATEWAY_WORKLOAD, f"{GATEWAY_WORKLOAD}-0", address,
                        GATEWAY_WORKLOAD, trust_domain, locality, network)


def gateway_spec(plan: InstancePlan, layout: Layout, base: Mapping[str, str], wiring: str,
                 control_plane: str) -> ProcessSpec:
    spec = sidecar_spec(plan, layout, base, wiring, control_plane)
    return ProcessSpec(f"{plan.cluster}/gateway", spec.argv, layout.log(plan.cluster, "eastwest-gateway"),
                       spec.env, spec.cwd)


def control_plane_spec(cluster: str, address: str, layout: Layout, base: Mapping[str, str],
                       wiring: str) -> ProcessSpec:
    argv = (sys.executable, "-m", "federation._cpprocess", "--dir", str(layout.mesh_dir), "--cluster", cluster,
            "--host", address, "--wiring", wiring)
    return ProcessSpec(f"{cluster}/control-plane", argv, layout.log(cluster, "control-plane"), dict(base),
                       str(layout.mesh_dir))
