"""A ProxyConfig compiled once into everything a request reads: the Snapshot.

Theory of operation. ``compile_snapshot(config)`` does all the work that depends only on
config - the route table, one ``ClusterConfig`` per (service FQDN, subset, port) with its
hosts, balancer, breaker, timeouts and the SNI of Istio's AUTO_PASSTHROUGH convention,
the inbound side's PeerAuthentication, authorizer and app ports, the TLS material read
from disk - and returns an immutable Snapshot, or None and the diagnostics that refuse
the document. The proxy swaps its snapshot in one assignment; each request and each
connection reads the snapshot once, at its start, and finishes on it, so a reload never
changes a request half-way (STYLE 6).

A snapshot's balancers and breakers count requests: they are per-snapshot state, as a
new Envoy cluster starts with fresh counters. Host statistics (``/clusters`` counters)
live in a ``StatsStore`` that outlives snapshots, handed to each compile, so counters
survive reloads.

DestinationRule choice, simplified from pilot ``PushContext.destinationRule``: among the
rules visible to the proxy's namespace (``exportTo``) whose workloadSelector, if any,
selects this workload, the proxy's own namespace wins, then the service's namespace,
then the root namespace, then any other; within one namespace an exact host beats the
longest matching wildcard.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topology import Diagnostic, Resource
from topology._destinationrule import DestinationRule
from topology._hostname import host_matches
from topology._traffic_policy import ClientTLSMode, ConnectionPoolSettings, TrafficPolicy
from trustdomain import Bundle, BundleSet, SpiffeId, TrustDomain, TrustDomainError, X509Svid
from trustdomain._files import read_certificates, read_key
from trustdomain._svid import uri_sans

from ._actions import qualify_host
from ._authz import Authorizer
from ._balancer import Balancer, BalancerError, Host, load_balancer_for, make_balancer, subset_hosts
from ._breaker import UINT32_MAX, CircuitBreaker, CircuitBreakerConfig
from ._config import EndpointSpec, ProxyConfig, ServiceSpec, parse_hostport
from ._delegate import is_exported_to
from ._hashkey import HashPolicy
from ._limits import HttpLimits
from ._peerauth import PeerAuthConfig
from ._routing import RouteTable
from ._sni import outbound_sni
from ._timeouts import TimeoutPolicy
from ._vsselect import ClientWorkload
from ._xfcc import XfccConfig

H1_ALPN = "http/1.1"
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})


class HostStats:
    """Counters of one endpoint of one cluster, as Envoy's ``/clusters`` prints them."""

    __slots__ = ("rq_total", "rq_active", "rq_success", "rq_error", "rq_timeout", "cx_connect_fail")

    def __init__(self) -> None:
        self.rq_total = self.rq_active = self.rq_success = self.rq_error = 0
        self.rq_timeout = self.cx_connect_fail = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"<HostStats rq {self.rq_active}/{self.rq_total} err={self.rq_error}>"


class StatsStore:
    """Host counters by (cluster name, host key); outlives snapshots."""

    def __init__(self) -> None:
        self._hosts: dict[tuple[str, str], HostStats] = {}

    def host(self, cluster: str, key: str) -> HostStats:
        found = self._hosts.get((cluster, key))
        if found is None:
            found = self._hosts[(cluster, key)] = HostStats()
        return found


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamTarget:
    """How one endpoint is reached: through its sidecar (mTLS, SNI), an east-west
    gateway (mTLS, same SNI) or directly (plaintext)."""

    address: str
    """Where to connect."""
    port: int
    tls: bool
    sni: str
    endpoint: EndpointSpec = field(repr=False)
    stats: HostStats = field(repr=False)
    pool_key: tuple[str, int, str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_key", (self.address, self.port, self.sni if self.tls else "",
                                              H1_ALPN if self.tls else ""))

    @property
    def authority(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True, eq=False)
class ClusterConfig:
    """One Envoy cluster: ``outbound|<port>|<subset>|<fqdn>``."""

    name: str
    fqdn: str
    subset: str
    port: int
    protocol: str
    """Istio protocol of the service port (HTTP, HTTP2, GRPC, TCP, ...)."""
    hosts: tuple[Host, ...]
    """Every endpoint (``Host.endpoint`` is its UpstreamTarget), healthy or not."""
    balancer: Balancer[Host] | None = field(repr=False)
    """Over the healthy hosts; None when there are none."""
    sni: str = ""
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker, repr=False)
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    hash_policy: HashPolicy | None = None
    destination_rule: str = ""
    """``namespace/name`` of the DestinationRule in force, empty for none."""
    limits_requests: bool = field(init=False, repr=False)
    """The breaker bounds requests (Istio's default 2^32-1 does not): only then is it asked."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits_requests", self.breaker.config.max_requests < UINT32_MAX)

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def healthy(self) -> int:
        return sum(1 for h in self.hosts if h.endpoint.endpoint.healthy)

    def __repr__(self) -> str:
        return f"<ClusterConfig {self.name} [{self.healthy} healthy of {len(self.hosts)}]>"


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
    clusters: Mapping[tuple[str, str, int], ClusterConfig]
    inbound: InboundConfig
    tls: TlsMaterial | None
    limits: HttpLimits
    warnings: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        return self.config.version

    def cluster(self, fqdn: str, subset: str, port: int) -> ClusterConfig | None:
        return self.clusters.get((fqdn, subset, port))

    def tcp_cluster(self, authority_host: str, port: int) -> ClusterConfig | None:
        """The cluster a CONNECT or a TCP listener for ``host:port`` goes to (TCP/TLS route
        tables are not compiled yet: the service itself, no subset)."""
        svc = self.config.registry.lookup(authority_host, self.config.spec.node.namespace)
        if svc is None:
            return None
        return self.clusters.get((svc.hostname.name, "", port))

    def __repr__(self) -> str:
        return f"<Snapshot version={self.version!r} {len(self.clusters)} clusters {self.routes!r}>"


# -- compiling ------------------------------------------------------------------------

def compile_snapshot(config: ProxyConfig, *, stats: StatsStore | None = None,
                     rng: random.Random | None = None) -> tuple[Snapshot | None, list[Diagnostic]]:
    """Compile ``config``; None and the errors when it cannot be served."""
    stats = stats or StatsStore()
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
    try:
        routes = RouteTable.compile(resources, config.registry, ClientWorkload(node.namespace, dict(node.labels)))
    except ValueError as exc:  # RouteCompileError, MatchCompileError
        error("spec.resources", f"routing table: {exc}")
    drs = [r for r in resources if r.kind == "DestinationRule"]
    clusters: dict[tuple[str, str, int], ClusterConfig] = {}
    needs_tls = False
    for i, svc in enumerate(spec.services):
        for port in svc.ports:
            try:
                built = _service_clusters(svc, port.port, port.target_port or port.port, port.protocol.upper(),
                                          drs, config, stats, rng)
            except BalancerError as exc:
                error(f"spec.services[{i}]", f"load balancer for port {port.port}: {exc}")
                continue
            for c in built:
                clusters[(c.fqdn, c.subset, c.port)] = c
                needs_tls = needs_tls or any(h.endpoint.tls for h in c.hosts)
    if needs_tls and spec.tls is None:
        error("spec.tls", "endpoints behind sidecars are reached over mTLS, but no certificate is configured "
                          "(set spec.tls, or proxyPort: 0 on endpoints without a sidecar)")
    for i, t in enumerate(spec.listeners.tcp):
        if config.registry.lookup(t.host, node.namespace) is None:
            error(f"spec.listeners.tcp[{i}].host", f"no service {t.host!r} in spec.services")
    if any(d.is_error for d in diags):
        return None, _located(diags, config)
    inbound = _inbound(config, tls)
    return Snapshot(config, routes, clusters, inbound, tls, spec.limits,
                    tuple(routes.warnings) + tuple(routes.conflicts)), diags


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


def _serves(e: EndpointSpec, port: int, target_port: int) -> bool:
    return e.service_port == port if e.service_port else e.port == target_port


def _service_clusters(svc: ServiceSpec, port: int, target_port: int, protocol: str, drs: list[Resource],
                      config: ProxyConfig, stats: StatsStore, rng: random.Random) -> list[ClusterConfig]:
    spec = config.spec
    fqdn = qualify_host(svc.hostname, svc.namespace, config.registry.domain)
    dr_res = destination_rule_for(drs, fqdn, svc.namespace, spec.node.namespace, spec.node.labels,
                                  spec.node.root_namespace, config.registry.domain)
    dr: DestinationRule | None = dr_res.spec if dr_res is not None else None
    dr_key = f"{dr_res.namespace}/{dr_res.name}" if dr_res is not None else ""
    endpoints = [e for e in svc.endpoints if _serves(e, port, target_port)]
    subsets: list[tuple[str, Mapping[str, str], TrafficPolicy | None]] = [("", {}, None)]
    if dr is not None:
        subsets += [(s.name, s.labels, s.traffic_policy) for s in dr.subsets]
    rule_policy = dr.traffic_policy if dr is not None else None
    out = []
    for subset, labels, subset_policy in subsets:
        name = f"outbound|{port}|{subset}|{fqdn}"
        sni = outbound_sni(port, subset, fqdn)
        tls_mode = _at_port(rule_policy, subset_policy, port, "tls")
        plaintext = tls_mode is not None and tls_mode.mode is ClientTLSMode.DISABLE
        hosts = []
        for e in endpoints:
            target = _target(e, sni, plaintext, stats.host(name, _key(e)))
            hosts.append(Host(_key(e), e.weight, e.locality, e.labels, target))
        chosen = subset_hosts(hosts, labels) if subset else tuple(hosts)
        healthy = [h for h in chosen if h.endpoint.endpoint.healthy]
        lb = load_balancer_for(rule_policy, port, subset_policy)
        balancer = make_balancer(lb, healthy, rng) if healthy else None
        pool: ConnectionPoolSettings | None = _at_port(rule_policy, subset_policy, port, "connection_pool")
        out.append(ClusterConfig(
            name, fqdn, subset, port, protocol, tuple(chosen), balancer, sni,
            CircuitBreaker(CircuitBreakerConfig.from_istio(pool), name), TimeoutPolicy.from_istio(None, pool),
            HashPolicy.compile(lb.consistent_hash if lb is not None else None), dr_key))
    return out


def _key(e: EndpointSpec) -> str:
    return f"[{e.address}]:{e.port}" if ":" in e.address else f"{e.address}:{e.port}"


def _target(e: EndpointSpec, sni: str, plaintext: bool, stats: HostStats) -> UpstreamTarget:
    if e.gateway is not None:
        host, port = parse_hostport(e.gateway)
        return UpstreamTarget(host, port, True, sni, e, stats)
    if e.proxy_port:
        return UpstreamTarget(e.address, e.proxy_port, not plaintext, sni, e, stats)
    return UpstreamTarget(e.address, e.port, False, "", e, stats)


def _at_port(rule: TrafficPolicy | None, subset: TrafficPolicy | None, port: int, name: str) -> Any:
    """A traffic-policy field as Istio merges it: the subset's (or its entry for the port)
    over the rule's (or its entry for the port); port-level entries do not inherit."""
    for policy in (subset, rule):
        if policy is None:
            continue
        for entry in policy.port_level_settings:
            if entry.port is not None and entry.port.number == port:
                return getattr(entry, name)
        value = getattr(policy, name)
        if value is not None:
            return value
    return None


def destination_rule_for(drs: list[Resource], fqdn: str, service_ns: str, client_ns: str,
                         labels: Mapping[str, str], root_ns: str, domain: str) -> Resource | None:
    """The DestinationRule in force for ``fqdn`` seen from the client (module docstring)."""
    best: tuple[int, int, str] | None = None
    found = None
    for r in drs:
        dr: DestinationRule = r.spec
        if not is_exported_to(dr.export_to, r.namespace, client_ns):
            continue
        sel = dr.workload_selector
        if sel is not None and sel.match_labels and (
                r.namespace != client_ns or any(labels.get(k) != v for k, v in sel.match_labels.items())):
            continue
        host = qualify_host(dr.host, r.namespace, domain)
        if host == fqdn:
            specificity = 1 << 20
        elif host.startswith("*") and host_matches(host, fqdn):
            specificity = len(host)
        else:
            continue
        ns_rank = 0 if r.namespace == client_ns else 1 if r.namespace == service_ns else \
            2 if r.namespace == root_ns else 3
        key = (ns_rank, -specificity, f"{r.namespace}/{r.name}")
        if best is None or key < best:
            best, found = key, r
    return found


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
    return InboundConfig(spec.app.address, app_ports, service_ports, peer_auth, authorizer,
                         bool(authorizer.policies), xfcc)


def load_tls(tls: Any, base: Path, trust_domain: str, aliases: tuple[str, ...] = ()) -> TlsMaterial:
    """The SVID and bundles named by ``spec.tls``; paths are relative to the config file."""
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
