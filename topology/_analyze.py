"""Cross-resource analysis: findings no single resource can show, as ``istioctl analyze``.

Each rule reads the whole loaded set and reports warnings (never errors: the config is
valid on its own terms, it just probably does not do what its author meant):

- a route (or mirror) to a subset that no DestinationRule of that host defines - Istio
  answers such requests 503 NR at run time;
- a route or DestinationRule for a host that no workload, Kubernetes Service or
  ServiceEntry in the set provides (only when the set provides any host at all, so
  validating a lone VirtualService file stays quiet about hosts defined elsewhere).

Locality failover without outlierDetection is checked per policy where it is written
(``_traffic_policy``), since the two must sit in the same policy to take effect.
"""

from __future__ import annotations

from typing import Iterator

from ._errors import Diagnostic, RegistryError, Severity
from ._hostname import canonical, wildcard_keys
from ._loader import LoadResult
from ._registry import ServiceRegistry
from ._registry_build import build_registry
from ._resource import Resource

_DOMAIN = "cluster.local"


def analyze(result: LoadResult) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    meshes = result.of_kind("Mesh")
    for extra in meshes[1:]:
        out.append(_warn(extra, "kind", f"a second Mesh resource (the first is at {meshes[0].file}:"
                                        f"{meshes[0].line}); `fedctl up` runs a directory with exactly one"))
    mesh = meshes[0].spec if meshes else None
    # Validation only asks which hosts exist, so Kubernetes objects beside a multi-cluster
    # Mesh are placed in its first cluster rather than refused as `fedctl up` would.
    kube_cluster = mesh.clusters[0].name if mesh is not None and mesh.clusters else None
    try:
        registry: ServiceRegistry | None = build_registry(result, mesh, kube_cluster=kube_cluster)
    except RegistryError as exc:
        out.append(Diagnostic(meshes[0].file if meshes else "", meshes[0].line if meshes else 0, "",
                              f"cannot place the workloads: {exc}", Severity.ERROR))
        registry = None
    if registry is not None and len(registry) == 0:
        registry = None
    subsets = _subsets_by_host(result)
    for res in result.resources:
        if res.kind == "VirtualService":
            for path, host, subset in _destinations(res):
                fqdn = _fqdn(host, res.namespace)
                if registry is not None and registry.lookup(host, res.namespace) is None:
                    out.append(_warn(res, f"{path}.host", _unprovided(host, fqdn)))
                if subset is not None:
                    defined = _defined_subsets(subsets, fqdn)
                    if subset not in defined:
                        known = ", ".join(sorted(defined)) or "none"
                        out.append(_warn(res, f"{path}.subset",
                                         f"subset {subset!r} of host {host!r} is not defined by any "
                                         f"DestinationRule (defined subsets: {known}); requests to it fail with 503"))
        elif res.kind == "DestinationRule" and registry is not None:
            host = res.spec.host
            if "*" not in host and registry.lookup(host, res.namespace) is None:
                out.append(_warn(res, "spec.host", _unprovided(host, _fqdn(host, res.namespace))))
    return out


def _unprovided(host: str, fqdn: str) -> str:
    resolved = f" (resolved as {fqdn!r})" if fqdn != host else ""
    return f"host {host!r} is not provided by any workload, Service or ServiceEntry in this config{resolved}"


def _fqdn(host: str, namespace: str) -> str:
    """Istio's rule for hosts in routing config: a name without dots is a short name of the
    rule's namespace; anything else is taken as written."""
    host = host.lower().rstrip(".")
    if "." not in host and host != "*":
        return f"{host}.{namespace}.svc.{_DOMAIN}"
    return canonical(host, _DOMAIN)


def _subsets_by_host(result: LoadResult) -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for res in result.resources:
        if res.kind == "DestinationRule":
            names = table.setdefault(_fqdn(res.spec.host, res.namespace), set())
            names.update(s.name for s in res.spec.subsets)
    return table


def _defined_subsets(table: dict[str, set[str]], fqdn: str) -> set[str]:
    found = set(table.get(fqdn, ()))
    for key in wildcard_keys(fqdn):
        found |= table.get(key, set())
    return found


def _destinations(vs: Resource) -> Iterator[tuple[str, str, str | None]]:
    spec = vs.spec
    for i, rule in enumerate(spec.http):
        for j, rd in enumerate(rule.route):
            if rd.destination is not None:
                yield f"spec.http[{i}].route[{j}].destination", rd.destination.host, rd.destination.subset
        if rule.mirror is not None:
            yield f"spec.http[{i}].mirror", rule.mirror.host, rule.mirror.subset
        for k, m in enumerate(rule.mirrors):
            if m.destination is not None:
                yield f"spec.http[{i}].mirrors[{k}].destination", m.destination.host, m.destination.subset
    for kind in ("tcp", "tls"):
        for i, rule in enumerate(getattr(spec, kind)):
            for j, rd in enumerate(rule.route):
                if rd.destination is not None:
                    yield f"spec.{kind}[{i}].route[{j}].destination", rd.destination.host, rd.destination.subset


def _warn(res: Resource, path: str, message: str) -> Diagnostic:
    return Diagnostic(res.file, res.line_of(path), path, message, Severity.WARNING, res.kind, res.name)
