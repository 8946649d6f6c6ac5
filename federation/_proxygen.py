"""Proxy documents: one ``ProxyConfig`` (gateway/_config.py) per workload instance, from a version.

Pure: a ``ConfigVersion`` and a ``Placement`` in, the JSON text the proxy decodes with
``gateway._config.load_proxy_config_text`` out (JSON is YAML).

Theory of operation. Only a document's head (node, listeners, app ports, TLS files: a
few hundred bytes) is the proxy's own. The rest - every service it sees with
its endpoints, and the Istio resources that apply to it - is the same for every proxy
of one network whose namespace sees the same services, and the same for every proxy of
one namespace, respectively. ``ProxyGenerator`` encodes those shared parts once per
version and class and keeps them as bytes; a document is a tuple of parts (head,
service buckets, resources, version tail), so a hundred 2 MB documents cost one
encoding and a hundred small heads, and are written to the wire part by part without
ever being joined. Encoded services are also reused across versions: the fragment of a
service whose declaration and endpoints did not change is taken from the previous
generator.

Parts are what makes pushes incremental. Services fall into ``BUCKETS`` buckets by a
stable hash of their hostname, one part per bucket, and every part has an ``id`` (a
hash of its bytes). The discovery server sends a proxy only the parts it does not hold
already (see ``gateway/_discovery_wire.py``), so an edited VirtualService costs each
proxy a few kilobytes, and a changed service its bucket - not the whole document.

A document's ``digest`` covers everything but the version, so a proxy whose document
did not change between versions can be left alone (no push).

Visibility, as Istio without Sidecar resources: every service of the registry view but
ServiceEntry hosts whose ``exportTo`` excludes the proxy's namespace; VirtualServices,
DestinationRules and ServiceEntries by ``exportTo`` (empty is ``*``, ``.`` the
resource's namespace; a DestinationRule with a workloadSelector only in its own);
PeerAuthentications and AuthorizationPolicies of the proxy's namespace and the root
namespace (the proxy matches their selectors); meshfed's RateLimits (per destination:
every namespace; per workload: its own) and WorkloadFaults of the proxy's namespace (the
proxy matches their selector, cluster and locality).

Endpoints carry Istio's topology labels (``topology.istio.io/cluster``,
``topology.kubernetes.io/region``, ...) so that subsets - a global VirtualService's
split across regions - can select by them. Endpoints on another network are not listed
one by one: they are grouped behind their cluster's east-west gateway (the block's
``.2`` on :15443, or the gateway a linked peer announced: ``registry.gateways``), one
entry per cluster, locality and label set weighted by its healthy endpoints
(``_federation_model.gateway_groups``). Each cluster's gateway is a placement of its
own (``_federation_gateway``) whose document has ``node.role: eastwest``.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from topology import Endpoint, Placement, Resource, Service, ServiceRegistry
from topology._hostname import canonical

from ._configsource import ConfigVersion
from ._federation_gateway import (
    exported_names, gateway_listeners, gateway_placements, is_gateway, local_services,
)
from ._federation_model import gateway_groups, topology_labels

OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT, GATEWAY_PORT = 15001, 15006, 15000, 15443  # DESIGN.md ports
ROOT_NAMESPACE = "istio-system"  # Istio's rootNamespace default
DEFAULT_TRUST_DOMAIN = "cluster.local"
VISIBLE_BY_EXPORT = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})
NAMESPACE_POLICIES = frozenset({"PeerAuthentication", "AuthorizationPolicy"})
_APP_PROTOCOLS = {"HTTP": "http", "HTTP2": "http2", "GRPC": "grpc", "GRPC-WEB": "http2", "UNSUPPORTED": "http"}


BUCKETS = 64
"""Parts the services list is cut into: one changed service re-sends ~1/64 of it."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def part_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the proxy keeps its SVID and trust bundles (decided by whoever starts it)."""

    cert: str
    key: str
    chain: str | None = None
    bundles: Mapping[str, str] = field(default_factory=dict)
    """Trust domain -> PEM file of its roots."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cert": self.cert, "key": self.key, "bundles": dict(self.bundles)}
        if self.chain:
            out["chain"] = self.chain
        return out


TlsPaths = Callable[[Placement], "TlsFiles | None"]


@dataclass(frozen=True, slots=True)
class ProxyDocument:
    """One proxy's ProxyConfig as bytes in parts; ``digest`` ignores the version."""

    instance: str
    version: int
    digest: str
    parts: tuple[bytes, ...] = field(repr=False)
    ids: tuple[str, ...] = field(repr=False)
    """``part_id`` of each part."""

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)

    def text(self) -> str:
        return b"".join(self.parts).decode()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(b"".join(self.parts))


def exported_to(res: Resource, namespace: str) -> bool:
    """Istio's exportTo: empty or ``*`` all, ``.`` the resource's namespace, ``~`` none, else names."""
    export = getattr(res.spec, "export_to", ())
    if not export or "*" in export:
        return True
    return ("." in export and res.namespace == namespace) or namespace in export


def cluster_view(registry: ServiceRegistry, cluster: str) -> ServiceRegistry:
    """The registry as one cluster's control plane knows it before any link: only its endpoints."""
    for other in registry.clusters:
        if other != cluster:
            registry = registry.without_cluster(other)
    return registry


class ProxyGenerator:
    """Documents of one version; shared parts cached (see the module docstring)."""

    def __init__(self, version: ConfigVersion, *, registry: ServiceRegistry | None = None,
                 tls: TlsPaths | None = None, root_namespace: str = ROOT_NAMESPACE,
                 previous: "ProxyGenerator | None" = None) -> None:
        self.version = version
        self.registry = registry if registry is not None else version.registry
        self.tls = tls
        self.root_namespace = root_namespace
        self._by_key: dict[tuple[str, str, str], Placement]
        if previous is not None and previous.version.placements is version.placements:
            self._by_key = previous._by_key  # the registry was reused: so were the placements
        else:
            self._by_key = {(p.cluster, p.namespace, p.instance): p for p in version.placements}
            for p in gateway_placements(version.mesh):
                self._by_key[(p.cluster, p.namespace, p.instance)] = p
        self._gateways: dict[str, str] = {}
        self._network_gateways: dict[str, str] = {}
        self._trust_domains: dict[str, str] = {}
        self._aliases: dict[str, list[str]] = {}
        for c in version.mesh.clusters if version.mesh is not None else ():
            self._trust_domains[c.name] = c.trust_domain or DEFAULT_TRUST_DOMAIN
            if version.mesh.trust_domain_aliases:  # Mesh trustDomainAliases, as Istio's meshConfig
                self._aliases[c.name] = list(version.mesh.aliases_of(c.name))
            if c.gateway_address:
                self._gateways[c.name] = f"{c.gateway_address}:{GATEWAY_PORT}"
                self._network_gateways.setdefault(c.network or c.name, self._gateways[c.name])
        self._gateways.update(getattr(self.registry, "gateways", None) or {})  # announced by linked peers
        self._limited = self._export_limits()
        self._hidden: dict[str, frozenset[str]] = {}
        self._services: dict[tuple[str, frozenset[str]], tuple[tuple[bytes, ...], tuple[str, ...]]] = {}
        self._resources: dict[str, tuple[bytes, str]] = {}
        prev = previous if previous is not None and previous._gateways == self._gateways else None
        self._prev_service_json = prev._service_json if prev is not None else {}
        self._service_json: dict[tuple[Service, str], bytes] = {}
        self._prev_resource_json = prev._resource_json if prev is not None else {}
        if prev is not None and prev.registry is self.registry:  # only Istio resources changed
            self._services, self._service_json = prev._services, prev._service_json
        self._resource_json: dict[int, tuple[Resource, bytes]] = {}

    def __repr__(self) -> str:
        return (f"<ProxyGenerator version {self.version.number}: {len(self._by_key)} placements, "
                f"{len(self._services)} service classes, {len(self._resources)} namespaces encoded>")

    def placement(self, cluster: str, namespace: str, instance: str) -> Placement | None:
        return self._by_key.get((cluster, namespace, instance))

    # -- shared parts ------------------------------------------------------------------

    def _export_limits(self) -> dict[str, list[Resource]]:
        """ServiceEntry hosts (registry keys) every entry of which limits exportTo, with the entries."""
        by_host: dict[str, list[Resource]] = {}
        for r in self.version.resources:
            if r.kind == "ServiceEntry":
                for host in r.spec.hosts:
                    by_host.setdefault(canonical(host.lower(), self.registry.domain), []).append(r)
        return {h: rs for h, rs in by_host.items() if all(r.spec.export_to and "*" not in r.spec.export_to
                                                          for r in rs)}

    def _hidden_in(self, namespace: str) -> frozenset[str]:
        hidden = self._hidden.get(namespace)
        if hidden is None:
            hidden = self._hidden[namespace] = frozenset(
                h for h, rs in self._limited.items() if not any(exported_to(r, namespace) for r in rs))
        return hidden

    def _services_part(self, network: str, namespace: str) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        """The services list as bucket parts: ``[`` is in the head and ``]`` in the part after."""
        key = (network, self._hidden_in(namespace))
        part = self._services.get(key)
        if part is None:
            hidden, domain = key[1], self.registry.domain  # a host a cluster declares too stays visible
            buckets: list[list[bytes]] = [[] for _ in range(BUCKETS)]
            for s in self.registry.services:
                if s.declared_in or canonical(s.hostname.name, domain) not in hidden:
                    buckets[zlib.crc32(s.hostname.name.encode()) % BUCKETS].append(self._service_piece(s, network))
            chunks, first = [], True
            for pieces in buckets:
                if pieces:  # JSON needs a comma before every element but the first
                    chunks.append((b"" if first else b",") + b",".join(pieces))
                    first = False
            part = self._services[key] = (tuple(chunks), tuple(part_id(c) for c in chunks))
        return part

    def _service_piece(self, svc: Service, network: str) -> bytes:
        key = (svc, network)
        piece = self._service_json.get(key) or self._prev_service_json.get(key)
        if piece is None:
            local = [e for e in svc.endpoints if not (e.network and network and e.network != network)]
            remote = [e for e in svc.endpoints if e.network and network and e.network != network]
            out: dict[str, Any] = {"hostname": svc.hostname.name, "namespace": svc.namespace, "name": svc.name,
                                   "ports": self._ports(svc),
                                   "endpoints": [self._endpoint(e, network) for e in local]}
            if remote:
                out["endpoints"] += gateway_groups(remote, self._gateway_by_cluster(remote))
            if svc.is_external:
                out["external"] = True
            piece = _dumps(out)
        self._service_json[key] = piece
        return piece

    @staticmethod
    def _ports(svc: Service) -> list[dict[str, Any]]:
        return [{"name": p.name, "port": p.port, "protocol": p.protocol.lower(), "targetPort": p.target_port}
                for p in svc.ports]

    def _gateway_by_cluster(self, endpoints: list[Endpoint]) -> dict[str, str]:
        out = {}
        for e in endpoints:
            gateway = self._gateways.get(e.cluster) or self._network_gateways.get(e.network)
            if gateway:
                out[e.cluster] = gateway
        return out

    def _endpoint(self, e: Endpoint, network: str) -> dict[str, Any]:
        """EndpointSpec fields, defaults left out (weight 1, healthy, empty strings)."""
        out: dict[str, Any] = {"address": e.address, "port": e.port,
                               "proxyPort": INBOUND_PORT if e.instance else 0}  # an instance has a sidecar
        out.update((k, v) for k, v in (
            ("labels", topology_labels(e) if e.cluster else dict(e.labels)), ("locality", str(e.locality)),
            ("cluster", e.cluster),
            ("network", e.network), ("serviceAccount", e.service_account), ("instance", e.instance),
            ("weight", e.weight if e.weight != 1 else 0), ("healthy", False if not e.healthy else None),
            ("servicePort", e.service_port)) if v or v is False)
        return out

    def applies(self, res: Resource, namespace: str) -> bool:
        """Whether ``res`` goes into the documents of proxies in ``namespace``."""
        if res.kind in VISIBLE_BY_EXPORT:
            if res.kind == "DestinationRule" and res.spec.workload_selector is not None:
                return res.namespace == namespace
            return exported_to(res, namespace)
        if res.kind == "RateLimit":  # per destination: every caller; per workload: its namespace
            return res.spec.target_ref is not None or res.namespace == namespace
        if res.kind == "WorkloadFault":
            return res.namespace == namespace
        return res.kind in NAMESPACE_POLICIES and res.namespace in (namespace, self.root_namespace)

    def _resources_part(self, namespace: str) -> tuple[bytes, str]:
        part = self._resources.get(namespace)
        if part is None:
            pieces = [self._resource_piece(r) for r in self.version.resources if self.applies(r, namespace)]
            data = b'],"resources":[' + b",".join(pieces) + b"]"
            part = self._resources[namespace] = (data, part_id(data))
        return part

    def _resource_piece(self, res: Resource) -> bytes:
        found = self._resource_json.get(id(res)) or self._prev_resource_json.get(id(res))
        if found is None or found[0] is not res:
            raw = self.version.raw_of(res)
            meta = dict(raw.get("metadata") or {}) if isinstance(raw, dict) else {}
            meta = {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}
            meta.update(name=res.name, namespace=res.namespace)
            spec = raw.get("spec") if isinstance(raw, dict) else None
            found = (res, _dumps({"apiVersion": res.api_version, "kind": res.kind, "metadata": meta,
                                  "spec": spec if spec is not None else {}}))
        self._resource_json[id(res)] = found
        return found[1]

    # -- one proxy ---------------------------------------------------------------------

    def _head(self, p: Placement, role: str = "sidecar") -> bytes:
        source = p.source
        if role != "sidecar":
            ports: list[dict[str, Any]] = []
        elif hasattr(source, "ports") and hasattr(source, "cluster_names"):  # a Mesh Workload
            ports = [{"port": wp.target_port, "protocol": wp.protocol.value} for wp in source.ports]
        else:  # a Kubernetes workload: the ports its Services' endpoints give it
            ports = [{"port": e.port, "protocol": _APP_PROTOCOLS.get(proto, "tcp")}
                     for e, proto in self._endpoints_at(p)]
        addr = p.address
        spec: dict[str, Any] = {
            "node": {"cluster": p.cluster, "namespace": p.namespace, "workload": p.workload,
                     "instance": p.instance, "serviceAccount": p.service_account, "labels": dict(p.labels),
                     "locality": str(p.locality), "network": p.network,
                     "trustDomain": self._trust_domains.get(p.cluster, DEFAULT_TRUST_DOMAIN),
                     "rootNamespace": self.root_namespace},
            "listeners": {"outbound": f"{addr}:{OUTBOUND_PORT}", "inbound": f"{addr}:{INBOUND_PORT}",
                          "admin": f"{addr}:{ADMIN_PORT}"},
            "app": {"address": addr, "ports": ports},
        }
        if self._aliases.get(p.cluster):
            spec["node"]["trustDomainAliases"] = self._aliases[p.cluster]
        if role != "sidecar":
            spec["node"]["role"] = role
            spec["listeners"] = gateway_listeners(p)
        tls = self.tls(p) if self.tls is not None else None
        if tls is not None:
            spec["tls"] = tls.to_json()
        envelope = _dumps({"apiVersion": "meshfed.io/v1alpha1", "kind": "ProxyConfig",
                           "metadata": {"name": p.instance}, "spec": spec})
        return envelope[:-2] + b',"services":['  # reopen the spec object for the shared parts

    def _endpoints_at(self, p: Placement) -> list[tuple[Endpoint, str]]:
        seen: dict[int, tuple[Endpoint, str]] = {}
        for svc in self.version.registry.services:
            for e in svc.endpoints:
                if e.address == p.address and e.cluster == p.cluster and e.port not in seen:
                    port = next((sp for sp in svc.ports if e.serves(sp)), None)
                    seen[e.port] = (e, port.protocol if port is not None else "TCP")
        return list(seen.values())

    def _gateway_parts(self, p: Placement) -> tuple[bytes, bytes]:
        """An east-west gateway's services (its cluster's, local endpoints only) and resources
        (the DestinationRules, for subsets); see ``_federation_gateway``."""
        exported = exported_names(self.version.resources)
        pieces = []
        for svc, eps in local_services(self.registry, p.cluster):
            out: dict[str, Any] = {"hostname": svc.hostname.name, "namespace": svc.namespace, "name": svc.name,
                                   "ports": self._ports(svc), "endpoints": [self._endpoint(e, p.network) for e in eps]}
            if (svc.namespace, svc.name) in exported:
                out["exported"] = True
            pieces.append(_dumps(out))
        rules = [self._resource_piece(r) for r in self.version.resources if r.kind == "DestinationRule"]
        return b",".join(pieces), b'],"resources":[' + b",".join(rules) + b"]"

    def document(self, p: Placement) -> ProxyDocument:
        if is_gateway(p):
            return self._gateway_document(p)
        head = self._head(p)
        services, service_ids = self._services_part(p.network, p.namespace)
        resources, resources_id = self._resources_part(p.namespace)
        head_id = part_id(head)
        content = (head_id, *service_ids, resources_id)
        digest = hashlib.sha256(" ".join(content).encode()).hexdigest()
        tail = b',"version":' + _dumps(str(self.version.number)) + b"}}"
        return ProxyDocument(p.instance, self.version.number, digest, (head, *services, resources, tail),
                             (*content, part_id(tail)))


    def _gateway_document(self, p: Placement) -> ProxyDocument:
        head = self._head(p, role="eastwest")
        services, resources = self._gateway_parts(p)
        content = tuple(part_id(x) for x in (head, services, resources))
        digest = hashlib.sha256(" ".join(content).encode()).hexdigest()
        tail = b',"version":' + _dumps(str(self.version.number)) + b"}}"
        return ProxyDocument(p.instance, self.version.number, digest, (head, services, resources, tail),
                             (*content, part_id(tail)))


def proxy_config(version: ConfigVersion, placement: Placement, *, registry: ServiceRegistry | None = None,
                 tls: TlsPaths | None = None) -> dict[str, Any]:
    """One proxy's document as a dict (tests, ``fedctl`` dumps); the server uses ``ProxyGenerator``."""
    return ProxyGenerator(version, registry=registry, tls=tls).document(placement).to_dict()
