"""A ProxyConfig compiled once into everything a request reads: the Snapshot.

Theory of operation. ``compile_snapshot(config)`` does all the work that depends only on
config - the route table, one ``ClusterConfig`` per (service FQDN, subset, port) with its
hosts, balancer, breaker, timeouts and the SNI of Istio's AUTO_PASSTHROUGH convention,
the inbound side's PeerAuthentication, authorizer and app ports, the TLS material read
from disk - and returns an immutable Snapshot, or None and the diagnostics that refuse
the document. The proxy swaps its snapshot in one assignment; each request and each
connection reads the snapshot once, at its start, and finishes on it, so a reload never
changes a request half-way (STYLE 6).

Clusters (``_clusters``) hold per-snapshot counters (balancers, breakers); host
statistics live in a ``StatsStore`` handed to each compile, so they survive reloads.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topology import Diagnostic
from trustdomain import TrustDomainError

from ._actions import qualify_host
from ._authz import Authorizer
from ._balancer import BalancerError
from ._clusters import (H1_ALPN, HTTP_PROTOCOLS, ClusterConfig, HostStats, StatsStore, UpstreamTarget,
                        destination_rule_for, service_clusters)
from ._config import ProxyConfig
from ._limits import HttpLimits
from ._outlier import OutlierEventSink
from ._peerauth import PeerAuthConfig
from ._ratelimits import NO_RATE_LIMITS, RateLimits
from ._route_policy import DEFAULT_ROUTE_CONFIG, RouteConfig, compile_route_configs
from ._routing import RouteDecision, RouteTable
from ._tcproutes import ConnectionInfo, TcpRouteTable
from ._vsselect import ClientWorkload
from ._workload_faults import NO_INBOUND_FAULTS, InboundFaults
from ._xfcc import XfccConfig

if TYPE_CHECKING:
    from trustdomain import BundleSet, X509Svid

_RNG = random.Random()
__all__ = ["ClusterConfig", "H1_ALPN", "HTTP_PROTOCOLS", "HostStats", "InboundConfig", "Snapshot", "StatsStore",
           "TlsMaterial", "UpstreamTarget", "compile_snapshot", "destination_rule_for", "load_tls"]


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """What the inbound listener needs: who may call and which app port a call is for."""

    app_address: str
    app_ports: Mapping[int, str]
    """App port -> protocol (``http``, ``http2``, ``grpc``, ``tcp``)."""
    service_ports: Mapping[tuple[str, int], int]
    """(service FQDN, service port) -> app (target) port, for the SNI of a caller."""
    peer_auth: PeerAuthConfig
    authorizer: Authorizer
    has_authz: bool
    xfcc: XfccConfig | None
    faults: InboundFaults = NO_INBOUND_FAULTS
    """Faults of meshfed ``WorkloadFault`` resources selecting this workload (``_workload_faults``)."""

    @property
    def only_port(self) -> int | None:
        return next(iter(self.app_ports)) if len(self.app_ports) == 1 else None

    def port_for(self, fqdn: str, port: int) -> int | None:
        """The app port a caller naming ``fqdn:port`` (in its SNI) means, or None."""
        target = self.service_ports.get((fqdn, port))
        if target is not None:
            return target
        return port if port in self.app_ports else self.only_port


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    svid: X509Svid
    bundles: BundleSet
    fingerprint: bytes = field(repr=False)
    """Bytes of every file read, to tell a changed certificate from an unchanged one."""


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    config: ProxyConfig
    routes: RouteTable
    tcp_routes: TcpRouteTable
    clusters: Mapping[tuple[str, str, int], ClusterConfig]
    inbound: InboundConfig
    tls: TlsMaterial | None
    limits: HttpLimits
    warnings: tuple[str, ...] = ()
    route_configs: Mapping[RouteDecision, RouteConfig] = field(default_factory=dict, repr=False)
    """Faults, retries, timeouts, mirrors and CORS of each route (``_route_policy``)."""
    ratelimits: RateLimits = NO_RATE_LIMITS
    """Token buckets of meshfed ``RateLimit`` resources (``_ratelimits``)."""
    outlier_clusters: tuple[ClusterConfig, ...] = field(default=(), repr=False)
    """Clusters with outlier detection, for the proxy's sweep task."""

    @property
    def version(self) -> str:
        return self.config.version

    def route_config(self, route: RouteDecision) -> RouteConfig:
        return self.route_configs.get(route, DEFAULT_ROUTE_CONFIG)

    def cluster(self, fqdn: str, subset: str, port: int) -> ClusterConfig | None:
        return self.clusters.get((fqdn, subset, port))

    def tcp_cluster(self, host: str, port: int, rng: random.Random = _RNG) -> ClusterConfig | None:
        """The cluster a CONNECT or a TCP listener for ``host:port`` goes to: the
        VirtualServices' ``tcp`` rules (weights, subsets), else the service itself. The
        client's own SNI inside a CONNECT tunnel is not read, so ``tls`` rules do not apply."""
        decision = self.tcp_routes.route(ConnectionInfo(port, host))
        if decision is None:
            return None
        dest = decision.pick(rng)
        return self.clusters.get((dest.host, dest.subset or "", dest.port_for(port)))

    def __repr__(self) -> str:
        return f"<Snapshot version={self.version!r} {len(self.clusters)} clusters {self.routes!r}>"


# -- compiling ------------------------------------------------------------------------

def compile_snapshot(config: ProxyConfig, *, stats: StatsStore | None = None, rng: random.Random | None = None,
                     outlier_sink: OutlierEventSink | None = None, adopt: bool = True
                     ) -> tuple[Snapshot | None, list[Diagnostic]]:
    """Compile ``config``; None and the errors when it cannot be served. ``outlier_sink``
    receives the ejections and returns of every cluster's outlier detector; ``stats`` keeps
    them for the next compile once the snapshot is known to be served (``adopt=False``: the
    caller says so with ``stats.adopt``)."""
    stats = stats or StatsStore()
    snap, diags = _compile(config, stats, rng, outlier_sink)
    if adopt:
        stats.adopt(snap is not None)
    return snap, diags


def _compile(config: ProxyConfig, stats: StatsStore, rng: random.Random | None,
             outlier_sink: OutlierEventSink | None) -> tuple[Snapshot | None, list[Diagnostic]]:
    rng = rng or random.Random()
    spec = config.spec
    node = spec.node
    diags: list[Diagnostic] = []
    file = config.file

    def error(path: str, message: str) -> None:
        diags.append(Diagnostic(file, 0, path, message))

    tls = None
    if spec.tls is not None:
        try:
            tls = load_tls(spec.tls, Path(file).parent if file and not file.startswith("<") else Path("."),
                           node.trust_domain, node.trust_domain_aliases)
        except (TrustDomainError, ValueError, OSError) as exc:
            error("spec.tls", str(exc))
    resources = config.resources
    client = ClientWorkload(node.namespace, dict(node.labels))
    try:
        routes = RouteTable.compile(resources, config.registry, client)
        tcp_routes = TcpRouteTable.compile(resources, config.registry, client)
    except ValueError as exc:  # RouteCompileError, MatchCompileError
        error("spec.resources", f"routing table: {exc}")
    drs = [r for r in resources if r.kind == "DestinationRule"]
    clusters: dict[tuple[str, str, int], ClusterConfig] = {}
    needs_tls = False
    for i, svc in enumerate(spec.services):
        for port in svc.ports:
            try:
                built = service_clusters(svc, port.port, port.target_port or port.port, port.protocol.upper(),
                                          drs, config, stats, rng, outlier_sink)
            except BalancerError as exc:
                error(f"spec.services[{i}]", f"load balancer for port {port.port}: {exc}")
                continue
            for c in built:
                clusters[(c.fqdn, c.subset, c.port)] = c
                needs_tls = needs_tls or any(h.endpoint.tls for h in c.hosts)
    if needs_tls and spec.tls is None and node.role != "eastwest":  # a gateway holds no workload key
        error("spec.tls", "endpoints behind sidecars are reached over mTLS, but no certificate is configured "
                          "(set spec.tls, or proxyPort: 0 on endpoints without a sidecar)")
    for i, t in enumerate(spec.listeners.tcp):
        if config.registry.lookup(t.host, node.namespace) is None:
            error(f"spec.listeners.tcp[{i}].host", f"no service {t.host!r} in spec.services")
    if any(d.is_error for d in diags):
        return None, _located(diags, config)
    inbound = _inbound(config, tls)
    ratelimits = RateLimits.compile(resources, namespace=node.namespace, labels=node.labels,
                                    domain=config.registry.domain)
    return Snapshot(config, routes, tcp_routes, clusters, inbound, tls, spec.limits,
                    tuple(routes.warnings) + tuple(routes.conflicts), compile_route_configs(routes, config.registry),
                    ratelimits, tuple(c for c in clusters.values() if c.outlier is not None)), diags


def _located(diags: list[Diagnostic], config: ProxyConfig) -> list[Diagnostic]:
    """Point diagnostics without a line at the line of their path in the document, if known."""
    lines = config.lines
    out = []
    for d in diags:
        line = d.line or _nearest(lines, d.path)
        out.append(Diagnostic(d.file, line, d.path, d.message, d.severity) if line != d.line else d)
    return out


def _nearest(lines: Mapping[str, int], path: str) -> int:
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return lines.get("", 0)


def _inbound(config: ProxyConfig, tls: TlsMaterial | None) -> InboundConfig:
    spec = config.spec
    node = spec.node
    app_ports = {p.port: p.protocol for p in spec.app.ports}
    service_ports: dict[tuple[str, int], int] = {}
    for svc in spec.services:
        fqdn = qualify_host(svc.hostname, svc.namespace, config.registry.domain)
        for p in svc.ports:
            target = p.target_port or p.port
            if target in app_ports:
                service_ports[(fqdn, p.port)] = target
    peer_auth = PeerAuthConfig.compile(config.resources, namespace=node.namespace, labels=node.labels,
                                       root_namespace=node.root_namespace)
    authorizer = Authorizer.compile(config.resources, namespace=node.namespace, labels=node.labels,
                                    root_namespace=node.root_namespace, trust_domain=node.trust_domain,
                                    trust_domain_aliases=node.trust_domain_aliases)
    xfcc = XfccConfig.for_identity(tls.svid.spiffe_id) if tls is not None else None
    faults = InboundFaults.compile(config.resources, namespace=node.namespace, labels=node.labels,
                                   cluster=node.cluster, locality=node.locality)
    return InboundConfig(spec.app.address, app_ports, service_ports, peer_auth, authorizer,
                         bool(authorizer.policies), xfcc, faults)


def load_tls(tls: Any, base: Path, trust_domain: str, aliases: tuple[str, ...] = ()) -> TlsMaterial:
    """The SVID and bundles named by ``spec.tls``; paths are relative to the config file."""
    # cryptography (~9 MB resident) only for a proxy that has a certificate
    from trustdomain import Bundle, BundleSet, SpiffeId, TrustDomain, X509Svid
    from trustdomain._files import read_certificates, read_key
    from trustdomain._svid import uri_sans

    def path(p: str) -> Path:
        return Path(p) if os.path.isabs(p) else base / p

    certs = read_certificates(path(tls.cert))
    key = read_key(path(tls.key))
    chain = read_certificates(path(tls.chain)) if tls.chain else []
    sans = uri_sans(certs[0])
    if len(sans) != 1:
        raise ValueError(f"{tls.cert}: a workload certificate carries exactly one URI SAN (its SPIFFE ID); "
                         f"found {len(sans)}")
    svid = X509Svid(SpiffeId.parse(sans[0]), certs[0], tuple(certs[1:]) + tuple(chain), key)
    bundles = []
    fingerprint = [path(tls.cert).read_bytes(), path(tls.key).read_bytes()]
    for domain, file in sorted(tls.bundles.items()):
        data = path(file).read_bytes()
        fingerprint.append(data)
        bundles.append(Bundle.from_pem(TrustDomain(domain), data))
    if not bundles:
        raise ValueError("spec.tls.bundles names no trust domain: no peer could be verified")
    bundle_set = BundleSet.of(*bundles)
    if aliases:
        bundle_set = bundle_set.with_aliases(TrustDomain(trust_domain), [TrustDomain(a) for a in aliases])
    return TlsMaterial(svid, bundle_set, b"\0".join(fingerprint))
