"""``fedctl status``: the supervisor's state joined with each control plane's own report.

JSON (``--output json``)::

    {"dir", "phase", "ready", "wiring", "supervisor": {"processId", "running"},
     "clusters": [{"name", "ready", "dns": "host:port", "pid", "address", "discovery", "metrics",
                   "trustDomain", "addressBlock",
                   "controlPlane": {"state", "restarts", "log", "configVersion", "refusedTotal",
                                    "lastRefusal", "connectedProxies", "certificatesIssued"},
                   "gateway": {"pid", "address", "admin", "ready", "state", "restarts", "log"} | null,
                   "links": [{"from", "to", "state", "lastSync", "exported", "imported", ...}],
                   "workloads": [{"name", "namespace", "ready", "replicas", "address", "addresses",
                                  "pids", "instances": [{"name", "address", "ready", "appReady",
                                  "sidecarReady", "pids", "spiffeId", "configVersion", "ackedVersion", "inSync",
                                  "certificateExpiry", "lastNack", "restarts", "logs"}]}]}]}

``pid`` is the control plane's, a workload's ``pids`` are its apps' and sidecars' (every
instance's); the supervisor's id is ``supervisor.processId``. ``configVersion`` of an
instance is what its sidecar applied (its ``/config_dump``), ``ackedVersion`` what the
control plane recorded as ACKed over discovery.
"""

from __future__ import annotations

import json
from typing import Any

from ._federation_gateway import GATEWAY_ADMIN_PORT
from ._launch import Layout
from ._progress import table
from ._state import InstanceRecord, MeshState, alive


def _cp_report(layout: Layout, cluster: str) -> dict[str, Any]:
    try:
        return json.loads(layout.cp_status(cluster).read_text())
    except (OSError, ValueError):
        return {}


def _pids(i: InstanceRecord) -> list[int]:
    return [p.pid for p in (i.app, i.sidecar) if p.pid is not None]


def status_json(state: MeshState, layout: Layout) -> dict[str, Any]:
    running = alive(state.supervisor.pid, state.supervisor.start_time)
    clusters = []
    for c in state.clusters:
        report = _cp_report(layout, c.name)
        current = report.get("pid") == c.control_plane.pid
        cp = report.get("controlPlane", {}) if current else {}
        config = cp.get("config", {})
        served = {**cp.get("discoveryServer", {}), **cp}  # the discovery server's status, flattened or not
        proxies = {(p.get("namespace"), p.get("instance")): p for p in served.get("proxies", [])}
        workloads = []
        for w in state.workloads:
            if w.cluster != c.name:
                continue
            insts = [i for i in state.instances if i.cluster == c.name and i.namespace == w.namespace
                     and i.workload == w.name]
            rows = []
            for i in insts:
                acked = proxies.get((i.namespace, i.instance), {})
                rows.append({"name": i.instance, "address": i.address, "ready": i.ready, "appReady": i.app_ready,
                             "sidecarReady": i.sidecar_ready, "pids": _pids(i), "spiffeId": i.spiffe_id,
                             "configVersion": i.config_version, "ackedVersion": acked.get("ackedVersion"),
                             "inSync": (report.get("inSync") or {}).get(f"{i.namespace}/{i.instance}") if current
                             else None,
                             "certificateExpiry": i.cert_not_after, "lastNack": acked.get("lastNack"),
                             "restarts": {"app": i.app.restarts, "sidecar": i.sidecar.restarts},
                             "logs": {"app": i.app.log, "sidecar": i.sidecar.log}})
            workloads.append({"name": w.name, "namespace": w.namespace, "replicas": w.replicas,
                              "ready": len(insts) == w.replicas and all(i.ready for i in insts),
                              "address": insts[0].address if insts else None,
                              "addresses": [i.address for i in insts],
                              "pids": [p for i in insts for p in _pids(i)], "instances": rows})
        gw = c.gateway
        gateway = None if gw is None else {"pid": gw.pid, "address": c.gateway_address, "admin": _admin(c.gateway_address),
                                           "ready": c.gateway_ready, "state": gw.state, "restarts": gw.restarts,
                                           "log": gw.log}
        clusters.append({
            "name": c.name, "ready": c.ready and (gw is None or c.gateway_ready) and all(w["ready"] for w in workloads),
            "dns": c.dns, "gateway": gateway,
            "links": (report.get("federation") or {}).get("links", []) if current else [],
            "pid": c.control_plane.pid, "address": c.address, "discovery": c.discovery, "metrics": c.metrics,
            "trustDomain": c.trust_domain, "addressBlock": c.address_block,
            "controlPlane": {"ready": c.ready, "state": c.control_plane.state, "restarts": c.control_plane.restarts,
                             "log": c.control_plane.log, "configVersion": config.get("version"),
                             "refusedTotal": config.get("refusedTotal", 0), "lastRefusal": config.get("lastRefusal"),
                             "connectedProxies": served.get("connectedProxies", served.get("connected")),
                             "certificatesIssued": cp.get("certificates", {}).get("issued")},
            "workloads": workloads})
    return {"dir": state.dir, "phase": state.phase if running else "stale", "wiring": state.wiring,
            "ready": running and state.ready, "updatedAt": state.updated_at,
            "supervisor": {"processId": state.supervisor.pid, "running": running}, "clusters": clusters}


def _admin(address: str) -> str | None:
    """The gateway's admin listener (/ready, /clusters, /metrics): its address's host on :15000."""
    host = address.rpartition(":")[0]
    return f"{host}:{GATEWAY_ADMIN_PORT}" if host else None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def status_text(doc: dict[str, Any]) -> str:
    sup = doc["supervisor"]
    head = (f"mesh {doc['dir']}: {doc['phase']}, {'ready' if doc['ready'] else 'not ready'} "
            f"(supervisor pid {sup['processId']}{'' if sup['running'] else ', gone'}; config by {doc['wiring']})")
    rows = [("CLUSTER", "READY", "CONTROL PLANE", "PID", "CONFIG", "DNS", "REFUSED", "GATEWAY", "LINKS")]
    for c in doc["clusters"]:
        cp = c["controlPlane"]
        gw = c.get("gateway")
        links = ", ".join(f"{l['to']} {l['state']}" for l in c.get("links") or []) or "-"
        rows.append((c["name"], _yes(c["ready"]), c["discovery"], str(c["pid"] or "-"),
                     f"v{cp['configVersion']}" if cp["configVersion"] is not None else "-", c["dns"],
                     str(cp["refusedTotal"]),
                     f"{gw['address']} {'ready' if gw['ready'] else 'not ready'}" if gw else "-", links))
    wrows = [("CLUSTER", "WORKLOAD", "INSTANCE", "ADDRESS", "READY", "APP/SIDECAR PIDS", "CONFIG", "CERT EXPIRES")]
    for c in doc["clusters"]:
        for w in c["workloads"]:
            if not w["instances"]:
                wrows.append((c["name"], f"{w['namespace']}/{w['name']}", "(0 replicas)", "-", _yes(w["ready"]),
                              "-", "-", "-"))
            for i in w["instances"]:
                version = i["configVersion"] or i["ackedVersion"]
                wrows.append((c["name"], f"{w['namespace']}/{w['name']}", i["name"], i["address"],
                              _yes(i["ready"]) if i["ready"] else
                              f"no ({'app' if not i['appReady'] else ''}{' ' if not i['appReady'] and not i['sidecarReady'] else ''}{'sidecar' if not i['sidecarReady'] else ''})",
                              " ".join(map(str, i["pids"])) or "-", f"v{version}" if version else "-",
                              (i["certificateExpiry"] or "-")[:19]))
    out = [head, "", table(rows), "", table(wrows)]
    for c in doc["clusters"]:
        refusal = c["controlPlane"]["lastRefusal"]
        if refusal:
            out += ["", f"last refused config in {c['name']} ({refusal.get('at')}); the previous version stays:"]
            out += [f"  {m}" for m in refusal.get("messages", [])]
        nacks = [(w, i) for w in c["workloads"] for i in w["instances"] if i.get("lastNack")]
        for w, i in nacks:
            n = i["lastNack"]
            out.append(f"{c['name']}/{i['name']}: rejected config v{n.get('version')}: {n.get('reason')}")
    return "\n".join(out)
