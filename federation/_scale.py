"""``fedctl scale``: per-cluster replica counts laid over a config version, addresses kept stable.

The Mesh says how many instances a workload has per cluster (``replicas``); ``fedctl
scale CLUSTER/WORKLOAD --replicas N`` overrides that for one cluster. The overrides
live in ``DIR/.meshfed/scale.json`` (``{"east-a/demo/echo": 0}``), written by the
command and read by the cluster's control plane (which serves the scaled placements and
endpoints) and by the supervisor (which runs the scaled set of processes).

Re-running ``topology.placements`` with other replica counts would hand every later
instance of the cluster a new address, so scaling is applied to the placements instead:
instances below N keep the place ``placements`` gave them, instances beyond the
workload's own count take the lowest addresses of the cluster's block no placement of
the version uses. Pure: a version and the overrides in, a version out.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from topology import Endpoint, Labels, Placement, ServiceRegistry
from topology._hostname import service_fqdn
from topology._mesh import FIRST_WORKLOAD_OFFSET, Mesh, Workload
from topology._registry_build import _registry_locality

from ._configsource import ConfigVersion
from ._errors import FederationError
from ._state import state_dir, write_atomic

SCALE_FILE = "scale.json"
ScaleKey = tuple[str, str, str]
"""(cluster, namespace, workload)."""
Overrides = Mapping[ScaleKey, int]


class ScaleError(FederationError):
    """A scale request that names no workload of the cluster, or asks for an impossible count."""


def key_text(key: ScaleKey) -> str:
    return "/".join(key)


def scale_path(mesh_dir: str | os.PathLike[str]) -> Path:
    return state_dir(mesh_dir) / SCALE_FILE


def read_overrides(mesh_dir: str | os.PathLike[str]) -> dict[ScaleKey, int]:
    """The overrides in force; a missing or unreadable file is none."""
    try:
        doc = json.loads(scale_path(mesh_dir).read_text())
    except (OSError, ValueError):
        return {}
    out: dict[ScaleKey, int] = {}
    for text, n in (doc.items() if isinstance(doc, dict) else ()):
        parts = str(text).split("/")
        if len(parts) == 3 and isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            out[(parts[0], parts[1], parts[2])] = n
    return out


def write_overrides(mesh_dir: str | os.PathLike[str], overrides: Overrides) -> None:
    doc = {key_text(k): n for k, n in sorted(overrides.items())}
    write_atomic(scale_path(mesh_dir), json.dumps(doc, indent=1).encode() + b"\n")


def mesh_workload(mesh: Mesh | None, cluster: str, namespace: str, name: str) -> Workload | None:
    if mesh is None:
        return None
    return next((w for w in mesh.workloads
                 if w.namespace == namespace and w.name == name and cluster in w.cluster_names), None)


def find_workload(mesh: Mesh | None, cluster: str, name: str, namespace: str | None = None) -> Workload:
    """The Mesh workload ``name`` of ``cluster`` (in ``namespace`` when several namespaces have one)."""
    known = [w for w in (mesh.workloads if mesh is not None else ()) if cluster in w.cluster_names]
    if mesh is None or mesh.cluster_named(cluster) is None:
        names = ", ".join(c.name for c in mesh.clusters) if mesh is not None else "none"
        raise ScaleError(f"unknown cluster {cluster!r}; the clusters are: {names}")
    found = [w for w in known if w.name == name and (namespace is None or w.namespace == namespace)]
    if not found:
        raise ScaleError(f"cluster {cluster!r} runs no workload {name!r}; its workloads are: "
                         + ", ".join(sorted(f"{w.namespace}/{w.name}" for w in known)))
    if len(found) > 1:
        raise ScaleError(f"workload {name!r} exists in several namespaces of cluster {cluster!r} ("
                         + ", ".join(w.namespace for w in found) + "): say CLUSTER/NAMESPACE/WORKLOAD")
    return found[0]


def _template(mesh: Mesh, w: Workload, cluster: str) -> Placement:
    c = mesh.cluster_named(cluster)
    assert c is not None
    return Placement(cluster, c.network or cluster, _registry_locality(mesh.locality_of(w, cluster)), w.namespace,
                     w.name, 0, "", Labels(w.labels), w.service_account or w.name, w)


def scale_placements(placed: tuple[Placement, ...], overrides: Overrides, mesh: Mesh | None) -> tuple[Placement, ...]:
    """``placed`` with each overridden (cluster, namespace, workload) at its new count."""
    if not overrides or mesh is None:
        return placed
    used: dict[str, set[str]] = {}
    counts: dict[ScaleKey, int] = {}
    out: list[Placement] = []
    for p in placed:
        used.setdefault(p.cluster, set()).add(p.address)
        key = (p.cluster, p.namespace, p.workload)
        counts[key] = counts.get(key, 0) + 1
        wanted = overrides.get(key)
        if wanted is None or p.index < wanted:
            out.append(p)
    for key in sorted(overrides):
        cluster, namespace, name = key
        w = mesh_workload(mesh, cluster, namespace, name)
        block = mesh.cluster_named(cluster).block if mesh.cluster_named(cluster) is not None else None
        if w is None or block is None:
            continue  # the workload left the config: nothing to add
        template = _template(mesh, w, cluster)
        free = (str(block[i]) for i in range(FIRST_WORKLOAD_OFFSET, block.num_addresses - 1)
                if str(block[i]) not in used.setdefault(cluster, set()))
        for index in range(counts.get(key, 0), overrides[key]):
            address = next(free, None)
            if address is None:
                raise ScaleError(f"cluster {cluster!r}: address block {block} has no address left for "
                                 f"instance {name}-{index}")
            used[cluster].add(address)
            out.append(replace(template, index=index, address=address))
    return tuple(out)


def _endpoints(w: Workload, placed: list[Placement]) -> list[Endpoint]:
    return [Endpoint(p.address, wp.target_port or wp.port, p.labels, p.locality, p.cluster, p.network,
                     service_account=p.service_account, instance=p.instance, service_port=wp.port)
            for p in placed for wp in w.ports]


def scale_registry(registry: ServiceRegistry, mesh: Mesh | None, before: tuple[Placement, ...],
                   after: tuple[Placement, ...], overrides: Overrides) -> ServiceRegistry:
    """``registry`` with each overridden Mesh workload's endpoints those of its ``after`` instances."""
    for key in sorted(overrides):
        cluster, namespace, name = key
        w = mesh_workload(mesh, cluster, namespace, name)
        if w is None or not w.ports:
            continue
        host = service_fqdn(w.service or w.name, namespace)
        if host not in registry:
            continue
        gone = {p.address for p in before if (p.cluster, p.namespace, p.workload) == key}
        kept = [e for e in registry.get(host).endpoints if e.cluster == cluster and e.address not in gone]
        mine = [p for p in after if (p.cluster, p.namespace, p.workload) == key]
        registry = registry.with_endpoints(host, cluster, kept + _endpoints(w, mine))
    return registry


def scaled_version(version: ConfigVersion, overrides: Overrides) -> ConfigVersion:
    """``version`` as the overrides change it; the same object when they change nothing."""
    relevant = {k: n for k, n in overrides.items() if mesh_workload(version.mesh, *k) is not None}
    if not relevant:
        return version
    after = scale_placements(version.placements, relevant, version.mesh)
    registry = scale_registry(version.registry, version.mesh, version.placements, after, relevant)
    return replace(version, placements=after, registry=registry)


def replica_counts(placed: tuple[Placement, ...], mesh: Mesh | None) -> dict[ScaleKey, int]:
    """Instances per (cluster, namespace, workload), zero counts included for Mesh workloads."""
    counts: dict[ScaleKey, int] = {}
    for w in mesh.workloads if mesh is not None else ():
        for c in w.cluster_names:
            counts[(c, w.namespace, w.name)] = 0
    for p in placed:
        key = (p.cluster, p.namespace, p.workload)
        counts[key] = counts.get(key, 0) + 1
    return counts
