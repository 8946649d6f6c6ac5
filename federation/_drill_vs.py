"""Resources a drill writes: for ``latency`` and ``errors`` a meshfed ``WorkloadFault`` that
the service's own sidecars in the scope apply (``workload_faults``); for
``region-evacuation`` a copy of the service's VirtualService with shifted weights. Pure but
for reading YAML.

The control plane keeps the last resource of each namespace/name in file order (as
``kubectl apply`` replaces), so the evacuation's copy keeps the original's name and
namespace and is written beside it under a name that sorts after it: removing the copy
gives the original back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import yaml

from topology._loader import iter_yaml_files

OVERRIDE_PREFIX = "zzzz-meshfed-drill-"


def host_names(fqdn: str) -> set[str]:
    """The names a VirtualService may use for the service ``<svc>.<ns>.svc.cluster.local``."""
    svc, ns = fqdn.split(".")[:2]
    return {fqdn, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.clusterset.local"}


def _covers(doc: Any, fqdn: str) -> bool:
    if not isinstance(doc, dict) or doc.get("kind") != "VirtualService":
        return False
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    svc, ns = fqdn.split(".")[:2]
    names = host_names(fqdn) | ({svc} if meta.get("namespace", "default") == ns else set())
    return not spec.get("gateways") and any(h in names for h in spec.get("hosts") or ())


def find_virtual_service(mesh_dir: str | Path, fqdn: str) -> tuple[Path, dict] | None:
    """The file and document of the VirtualService in force for ``fqdn`` (the last in file order)."""
    found = None
    for path in iter_yaml_files(mesh_dir):
        if Path(path).name.startswith(OVERRIDE_PREFIX):
            continue
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        for doc in docs:
            if _covers(doc, fqdn):
                found = (Path(path), doc)
    return found


def override_path(mesh_dir: str | Path, found: tuple[Path, dict] | None, drill_id: str) -> Path:
    folder = found[0].parent if found else Path(mesh_dir)
    return folder / f"{OVERRIDE_PREFIX}{drill_id}.yaml"


def fault_block(kind: str, percent: float, delay_seconds: float, http_status: int) -> dict:
    """Istio's HTTPFaultInjection for a ``latency`` or ``errors`` drill."""
    pct = {"value": float(percent)}
    if kind == "latency":
        return {"delay": {"percentage": pct, "fixedDelay": f"{delay_seconds:g}s"}}
    return {"abort": {"percentage": pct, "httpStatus": int(http_status)}}


def workload_faults(fqdn: str, labels: dict[str, str], scope: tuple[str, str], localities: Sequence[str],
                    fault: dict, drill_id: str) -> list[dict]:
    """The ``WorkloadFault`` documents that put ``fault`` on the service's instances in the scope:
    one for a cluster or a region, one per ``region/zone`` locality for a zone (a zone's name
    alone does not say its region). ``labels`` select the service's workloads."""
    svc, ns = fqdn.split(".")[:2]
    kind, name = scope
    if kind == "cluster":
        wheres = [{"cluster": name}]
    elif kind == "region":
        wheres = [{"locality": name}]
    else:
        wheres = [{"locality": loc} for loc in sorted(set(localities))]
    docs = []
    for i, where in enumerate(wheres):
        suffix = f"-{i}" if len(wheres) > 1 else ""
        docs.append({"apiVersion": "meshfed.io/v1alpha1", "kind": "WorkloadFault",
                     "metadata": {"name": f"drill-{drill_id}{suffix}".lower(), "namespace": ns},
                     "spec": {"workloadSelector": {"matchLabels": dict(sorted(labels.items()))}, **where,
                              "fault": copy.deepcopy(fault)}})
    return docs


def dump(doc: dict, comment: str) -> str:
    return f"# {comment}\n" + yaml.safe_dump(doc, sort_keys=False)


# -- region evacuation ------------------------------------------------------------------------


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; equal split if all are 0)."""
    if not weights:
        return []
    base = list(weights) if sum(weights) > 0 else [1] * len(weights)
    raw = [total * w / sum(base) for w in base]
    out = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def evacuation_steps(weights: Sequence[int], in_region: Sequence[bool], steps: int) -> list[list[int]]:
    """Weights after each of ``steps`` shifts taking the region's destinations linearly to 0.

    The total is kept (Istio wants 100), the rest is shared in proportion to the other
    destinations' weights. Raises ValueError when there is no destination outside the region.
    """
    if len(weights) != len(in_region) or steps < 1:
        raise ValueError("one region flag per weight and at least one step")
    if all(in_region):
        raise ValueError("every destination is in the region: there is nowhere to move traffic")
    total = sum(weights)
    inside = [w for w, r in zip(weights, in_region) if r]
    outside = [w for w, r in zip(weights, in_region) if not r]
    out = []
    for k in range(1, steps + 1):
        keep = round(sum(inside) * (steps - k) / steps)
        ins, outs = iter(_apportion(keep, inside)), iter(_apportion(total - keep, outside))
        out.append([next(ins) if r else next(outs) for r in in_region])
    return out


def weighted_destinations(doc: dict) -> list[dict]:
    """The destinations of the first HTTP route (a global VirtualService's split)."""
    routes = (doc.get("spec") or {}).get("http") or []
    if not routes or not routes[0].get("route"):
        raise ValueError("the VirtualService has no http route with destinations to shift")
    return routes[0]["route"]


def with_weights(doc: dict, weights: Sequence[int]) -> dict:
    out = copy.deepcopy(doc)
    for dest, w in zip(weighted_destinations(out), weights):
        dest["weight"] = int(w)
    return out
