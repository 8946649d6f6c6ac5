"""Clusters: the compiled upstream side of a config, one per (service FQDN, subset, port).

A ``ClusterConfig`` is Envoy's cluster ``outbound|<port>|<subset>|<fqdn>``: its endpoints
as balancer ``Host``s (each carrying an ``UpstreamTarget`` that says how it is reached:
through its sidecar over mTLS, through an east-west gateway, or directly), the balancer
over the healthy ones, the SNI of Istio's AUTO_PASSTHROUGH convention, the circuit
breaker and the timeouts of the DestinationRule in force. Balancers and breakers count
requests: they are per-compile state, as a new Envoy cluster starts with fresh counters;
host statistics live in a ``StatsStore`` that outlives compiles.

DestinationRule choice, simplified from pilot ``PushContext.destinationRule``: among the
rules visible to the proxy's namespace (``exportTo``) whose workloadSelector, if any,
selects this workload, the proxy's own namespace wins, then the service's namespace,
then the root namespace, then any other; within one namespace an exact host beats the
longest matching wildcard. Traffic-policy fields merge as Istio merges them: a subset's
over the rule's, a ``portLevelSettings`` entry over the level it sits in.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from topology import Resource
from topology._destinationrule import DestinationRule
from topology._hostname import host_matches
from topology._traffic_policy import ClientTLSMode, ConnectionPoolSettings, TrafficPolicy

from ._actions import qualify_host
from ._balancer import Balancer, Host, load_balancer_for, make_balancer, subset_hosts
from ._breaker import UINT32_MAX, CircuitBreaker, CircuitBreakerConfig
from ._config import EndpointSpec, ProxyConfig, ServiceSpec, parse_hostport
from ._conngate import ConnectionGate
from ._delegate import is_exported_to
from ._hashkey import HashPolicy
from ._hostpick import HostPicker
from ._locality_lb import LocalityLb
from ._locality_levels import LocalityLbError, LocalityMode, panic_threshold_for
from ._outlier import OutlierDetector, OutlierEventSink
from ._outlier_config import OutlierConfig
from ._sni import outbound_sni
from ._timeouts import TimeoutPolicy
from ._upstream import UpstreamOptions

H1_ALPN = "http/1.1"
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
H2_UPSTREAM_PROTOCOLS = frozenset({"HTTP2", "GRPC"})
"""Ports whose requests go upstream over HTTP/2 whatever the client spoke (``_h2relay.H2_PROTOCOLS``)."""


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
    """Host counters by (cluster name, host key) and outlier detectors by cluster; outlives snapshots."""

    def __init__(self) -> None:
        self._hosts: dict[tuple[str, str], HostStats] = {}
        self._outliers: dict[str, OutlierDetector] = {}
        self._pending: list[tuple[str, OutlierDetector, list[str]]] = []
        self._retired: dict[str, frozenset[str]] = {}

    def outlier(self, cluster: str, config: OutlierConfig, hosts: list[str], sink: OutlierEventSink | None,
                rng: random.Random) -> OutlierDetector:
        """The cluster's detector of the snapshot in force while its outlierDetection is unchanged
        (its hosts brought up to date by ``adopt``), a new one otherwise.

        Envoy keeps a cluster across config updates that do not change it, and endpoint
        updates keep the remaining hosts' outlier state: an ejected host stays ejected for
        its whole ejection time whatever else the control plane pushes meanwhile (a link's
        health, a policy of the namespace, another service's endpoints). Nothing changes
        here until ``adopt``: a refused config leaves the detectors as they were."""
        found = self._outliers.get(cluster)
        if found is None or found.config != config or found.sink is not sink:
            found = OutlierDetector(config, cluster=cluster, hosts=hosts, sink=sink, rng=rng)
        self._pending.append((cluster, found, hosts))
        return found

    def adopt(self, accepted: bool) -> None:
        """The snapshot compiled since the last call is served (``accepted``) or refused.

        A host the new snapshot no longer has stays a member for one more snapshot: requests
        begun under the previous one still end, and retry, there - a connection refused by
        an endpoint that just went away must still eject it for their retries to go
        elsewhere (the detector ignores results of hosts it does not hold)."""
        pending, self._pending = self._pending, []
        if not accepted:
            return
        for cluster, detector, hosts in pending:
            self._outliers[cluster] = detector
            wanted = set(hosts)
            retired = self._retired.get(cluster, frozenset())
            gone = [h for h in detector.hosts if h not in wanted]
            for host in gone:
                if host in retired:
                    detector.remove_host(host)
            self._retired[cluster] = frozenset(h for h in gone if h not in retired)
            for host in hosts:
                detector.add_host(host)

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
    picker: HostPicker = field(default=None, repr=False)  # type: ignore[assignment]
    """The balancer gated by outlier detection (and locality); built from ``balancer`` when not given."""
    gate: ConnectionGate = field(default=None, repr=False)  # type: ignore[assignment]
    """The connection half of the breaker (maxConnections, http1MaxPendingRequests)."""
    limits_requests: bool = field(init=False, repr=False)
    """The breaker bounds requests (Istio's default 2^32-1 does not): only then is it asked."""
    limits_retries: bool = field(init=False, repr=False)
    speaks_h2: bool = field(init=False, repr=False)
    """Requests go upstream over the HTTP/2 pool: an http2/grpc port, or ``h2UpgradePolicy: UPGRADE``."""

    def __post_init__(self) -> None:
        cfg = self.breaker.config
        object.__setattr__(self, "limits_requests", cfg.max_requests < UINT32_MAX)
        object.__setattr__(self, "limits_retries", cfg.max_retries < UINT32_MAX or cfg.retry_budget is not None)
        if self.picker is None:
            object.__setattr__(self, "picker", HostPicker(self.name, self.balancer))
        if self.gate is None:
            object.__setattr__(self, "gate", ConnectionGate(self.breaker, self.name))
        object.__setattr__(self, "speaks_h2", self.protocol in H2_UPSTREAM_PROTOCOLS or (
            self.gate.options.h2_upgrade and self.protocol in HTTP_PROTOCOLS))

    @property
    def outlier(self) -> OutlierDetector | None:
        return self.picker.outlier

    def priority_of(self, key: str) -> int:
        """The locality priority of host ``key`` (0 without locality load balancing)."""
        locality = self.picker.locality
        found = locality.priority_of(key) if locality is not None else None
        return found or 0

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def healthy(self) -> int:
        return sum(1 for h in self.hosts if h.endpoint.endpoint.healthy)

    def __repr__(self) -> str:
        return f"<ClusterConfig {self.name} [{self.healthy} healthy of {len(self.hosts)}]>"


def _serves(e: EndpointSpec, port: int, target_port: int) -> bool:
    if e.service_port:
        return e.service_port == port
    return e.gateway is not None or e.port == target_port  # a gateway entry: every port (see EndpointSpec)


def service_clusters(svc: ServiceSpec, port: int, target_port: int, protocol: str, drs: list[Resource],
                      config: ProxyConfig, stats: StatsStore, rng: random.Random,
                      sink: OutlierEventSink | None = None) -> list[ClusterConfig]:
    spec = config.spec
    fqdn = qualify_host(svc.hostname, svc.namespace, config.registry.domain)
    dr_res = destination_rule_for(drs, fqdn, svc.namespace, spec.node.namespace, spec.node.labels,
                                  spec.node.root_namespace, config.registry.domain)
    dr: DestinationRule | None = dr_res.spec if dr_res is not None else None
    dr_key = f"{dr_res.namespace}/{dr_res.name}" if dr_res is not None else ""
    endpoints = [e for e in svc.endpoints if _serves(e, port, target_port)]
    keys = host_keys(endpoints)
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
        for e, key in zip(endpoints, keys):
            target = _target(e, sni, plaintext, stats.host(name, key))
            hosts.append(Host(key, e.weight, e.locality, e.labels, target, e.weight if e.gateway is not None else 1))
        chosen = subset_hosts(hosts, labels) if subset else tuple(hosts)
        healthy = [h for h in chosen if h.endpoint.endpoint.healthy]
        lb = load_balancer_for(rule_policy, port, subset_policy)
        balancer = make_balancer(lb, healthy, rng) if healthy else None
        pool: ConnectionPoolSettings | None = _at_port(rule_policy, subset_policy, port, "connection_pool")
        od = _at_port(rule_policy, subset_policy, port, "outlier_detection")
        breaker = CircuitBreaker(CircuitBreakerConfig.from_istio(pool), name)
        picker = _picker(name, healthy, balancer, lb, od, dr is not None, spec.node, rng, sink, stats)
        out.append(ClusterConfig(
            name, fqdn, subset, port, protocol, tuple(chosen), balancer, sni, breaker,
            TimeoutPolicy.from_istio(None, pool), HashPolicy.compile(lb.consistent_hash if lb is not None else None),
            dr_key, picker, ConnectionGate(breaker, name, options=UpstreamOptions.from_istio(pool))))
    return out


def _picker(name: str, healthy: list[Host], balancer: Balancer[Host] | None, lb: Any, od: Any, has_rule: bool,
            node: Any, rng: random.Random, sink: OutlierEventSink | None, stats: StatsStore) -> HostPicker:
    """Outlier detection when the rule configures it; locality load balancing when the rule
    turns it on (Istio: failover needs outlierDetection; ``distribute`` works alone) and the
    hosts span more than one locality or priority - else the plain balancer."""
    config = OutlierConfig.from_istio(od)
    outlier = None
    if config is not None and balancer is not None:
        outlier = stats.outlier(name, config, [h.key for h in healthy], sink, rng)
    locality = None
    setting = lb.locality_lb_setting if lb is not None else None
    if has_rule and healthy and (od is not None or setting is not None):
        try:
            built = LocalityLb.compile(setting, node.locality, healthy, od is not None, client_labels=node.labels,
                                       lb=lb, rng=rng, panic_threshold=panic_threshold_for(od),
                                       active=balancer.active if balancer is not None else None)  # type: ignore[attr-defined]
        except LocalityLbError:
            built = None
        if (built is not None and built.mode is not LocalityMode.OFF
                and (len(built.levels) > 1 or any(len(lvl.groups) > 1 for lvl in built.levels))):
            locality = built
    return HostPicker(name, balancer, outlier, locality)


def _key(e: EndpointSpec) -> str:
    return f"[{e.address}]:{e.port}" if ":" in e.address else f"{e.address}:{e.port}"


def host_keys(endpoints: list[EndpointSpec]) -> list[str]:
    """A distinct balancer key per endpoint: ``ip:port``; for an entry standing for a
    group of endpoints behind an east-west gateway (its address is the gateway's),
    ``<gateway>@<cluster>/<locality>`` plus its labels and service account, as several
    groups share the gateway's address. A repeated key gets ``#2``, ``#3``."""
    out: list[str] = []
    seen: set[str] = set()
    for e in endpoints:
        key = _key(e)
        if e.gateway is not None and key == _key_of(e.gateway):
            labels = ",".join(f"{k}={v}" for k, v in sorted(e.labels.items()))
            key = (f"{e.gateway}@{e.cluster}/{e.locality}" + (f"{{{labels}}}" if labels else "")
                   + (f"/sa={e.service_account}" if e.service_account else ""))
        base, n = key, 1
        while key in seen:
            n += 1
            key = f"{base}#{n}"
        seen.add(key)
        out.append(key)
    return out


def _key_of(hostport: str) -> str:
    host, port = parse_hostport(hostport)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
