"""VirtualService overrides a drill writes: a copy of the service's VirtualService with a fault
(``latency``, ``errors``) or with shifted weights (``region-evacuation``). Pure but for reading YAML.

The control plane keeps the last resource of each namespace/name in file order (as
``kubectl apply`` replaces), so the copy keeps the original's name and namespace and is
written beside it under a name that sorts after it: removing the copy gives the
original back. Without a VirtualService for the service a fresh one routes to it.
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


def fresh_virtual_service(fqdn: str) -> dict:
    svc, ns = fqdn.split(".")[:2]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": svc, "namespace": ns},
            "spec": {"hosts": [fqdn], "http": [{"route": [{"destination": {"host": fqdn}}]}]}}


def with_fault(doc: dict, fault: dict) -> dict:
    """``doc`` with ``fault`` on every HTTP route (a route's own fault is replaced)."""
    out = copy.deepcopy(doc)
    routes = (out.get("spec") or {}).get("http") or []
    if not routes:
        raise ValueError(f"VirtualService {doc.get('metadata', {}).get('name')!r} has no http routes to fault")
    for route in routes:
        route["fault"] = copy.deepcopy(fault)
    return out


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
