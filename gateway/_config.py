"""The proxy's config document: everything one proxy needs, in one file.

``fedctl proxy --config FILE`` runs a proxy from it, as ``envoy -c`` does, and the control
plane pushes the same document later. It is YAML (or JSON) of kind ``ProxyConfig``,
apiVersion ``meshfed.io/v1alpha1``, decoded with topology's Decoder, so a bad document is
refused with ``file:line: spec.field: message`` and the previous one stays in force.

    apiVersion: meshfed.io/v1alpha1
    kind: ProxyConfig
    metadata: {name: reviews-v1-0}
    spec:
      version: "7"                      # opaque; echoed in /config_dump and ACKs
      node:                             # who this proxy serves
        cluster: east-a
        namespace: bookinfo
        workload: reviews-v1
        instance: reviews-v1-0
        serviceAccount: bookinfo-reviews
        labels: {app: reviews, version: v1}
        locality: us-east/us-east-1a
        network: network-east-a
        trustDomain: east-a.meshfed.local
      listeners:                        # host:port; omit one to not open it
        outbound: 127.1.1.10:15001
        inbound: 127.1.1.10:15006
        admin: 127.1.1.10:15000
      app:                              # the local app behind the inbound listener
        address: 127.1.1.10
        ports: [{port: 9080, protocol: http}]
      tls:                              # PEM files; bundles keyed by trust domain
        cert: certs/cert.pem
        key: certs/key.pem
        chain: certs/chain.pem
        bundles: {east-a.meshfed.local: certs/root.pem}
      services:                         # the registry, as the control plane computed it
      - hostname: reviews.bookinfo.svc.cluster.local
        ports: [{name: http, port: 9080, protocol: http}]
        endpoints:
        - {address: 127.1.1.11, port: 9080, labels: {version: v1}, locality: us-east/us-east-1a,
           cluster: east-a, network: network-east-a, serviceAccount: bookinfo-reviews}
      resources: []                     # Istio resources inline (VirtualService, DestinationRule, ...)
      limits: {idleTimeout: 1h}         # HttpLimits: Envoy's defaults, every one configurable
      pool: {maxIdlePerKey: 64, idleTimeout: 60s, connectTimeout: 10s}

``listeners.tcp`` adds per-port outbound listeners for TCP services
(``{address: 127.1.1.10:3306, host: mysql.db.svc.cluster.local, port: 3306}``). ``gateway``
compiles the document into a Snapshot (``_snapshot``); README.md "Proxy config document"
is the user's description of the format.

An endpoint behind a sidecar is reached at ``address:proxyPort`` (the remote sidecar's
inbound listener, 15006) over mTLS, with SNI ``outbound_.<port>_.<subset>_.<fqdn>`` telling
that sidecar which app port is meant; ``proxyPort: 0`` means a plain endpoint reached at
``address:port`` directly. Endpoints in another network are one entry per (remote
cluster, locality, label set) whose ``address``/``port`` and ``gateway`` are that network's
east-west gateway and whose ``weight`` is the number of healthy endpoints behind it.

An east-west gateway's document has ``node.role: eastwest``, ``listeners.eastwest``
(15443) and ``admin`` only, no ``tls`` (it holds no workload key), its own cluster's
services with their local endpoints, ``exported: true`` on those other networks may
reach, the DestinationRules that define subsets in ``resources``, and its connection
limits in ``eastwest`` (``EastWestSpec``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any

from topology import Check, Decoder, Diagnostic, Duration, LoadResult, Resource, opt
from topology._endpoint import Endpoint, Labels, Locality, Service, ServicePort
from topology._hostname import Hostname
from topology._loader import _load_document
from topology._registry import RegistryBuilder, ServiceRegistry
from topology._yaml import Document, LineList, load_documents

from ._limits import HttpLimits

API_VERSION = "meshfed.io/v1alpha1"
KIND = "ProxyConfig"
INBOUND_PORT = 15006
EASTWEST_PORT = 15443
ROLES = ("sidecar", "eastwest")
"""``spec.node.role``: a sidecar beside a workload, or a network's east-west gateway."""


def parse_hostport(text: str) -> tuple[str, int]:
    """``"127.1.1.10:15001"`` -> ``("127.1.1.10", 15001)``; ``[::1]:80`` for IPv6."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, found {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)
    n = int(port)
    if not 0 <= n <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, n


def _check_hostport(c: Check, rel: str, value: str | None) -> None:
    if value is None:
        return
    try:
        parse_hostport(value)
    except ValueError as exc:
        c.error(rel, f"must be an IP address and port such as 127.0.0.1:15001: {exc}")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """The workload instance this proxy stands beside."""

    cluster: str = opt(required=True)
    workload: str = opt(required=True)
    namespace: str = "default"
    instance: str = ""
    """Instance (pod) name; defaults to the workload name."""
    service_account: str = "default"
    labels: dict[str, str] = opt(factory=dict)
    locality: str = ""
    """``region/zone/subzone``."""
    network: str = ""
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    root_namespace: str = "istio-system"
    """Namespace whose policies apply mesh-wide (Istio's rootNamespace)."""
    role: str = "sidecar"
    """``sidecar`` (outbound + inbound beside one workload) or ``eastwest`` (the network's
    SNI passthrough gateway: ``listeners.eastwest`` and ``admin`` only). Defaults to sidecar."""

    def _check(self, c: Check) -> None:
        if self.role not in ROLES:
            c.error("role", f"must be one of {', '.join(ROLES)}; found {self.role!r}")

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True)
class ListenersSpec:
    outbound: str | None = None
    """Explicit-proxy listener (``HTTP_PROXY``); Istio's 15001."""
    inbound: str | None = None
    """mTLS listener for callers from the mesh; Istio's 15006."""
    admin: str | None = None
    """``/ready``, ``/metrics``, ``/config_dump``, ``/clusters``; Istio's 15000."""
    tcp: tuple["TcpListenerSpec", ...] = ()
    """Per-port outbound listeners for TCP services (no HTTP proxy protocol to name them)."""
    eastwest: str | None = None
    """SNI passthrough listener of an east-west gateway (``role: eastwest``); Istio's 15443."""

    def _check(self, c: Check) -> None:
        for rel in ("outbound", "inbound", "admin", "eastwest"):
            _check_hostport(c, rel, getattr(self, rel))


@dataclass(frozen=True, slots=True)
class TcpListenerSpec:
    address: str = opt(required=True)
    """Where the app connects, ``host:port``."""
    host: str = opt(required=True)
    """Service the connections go to (FQDN)."""
    port: int = opt(required=True)
    """Service port."""

    def _check(self, c: Check) -> None:
        _check_hostport(c, "address", self.address)


@dataclass(frozen=True, slots=True)
class AppPortSpec:
    port: int = opt(required=True)
    protocol: str = "http"
    """http, http2, grpc or tcp: how the inbound sidecar speaks to the app."""

    def _check(self, c: Check) -> None:
        if self.protocol not in ("http", "http2", "grpc", "tcp"):
            c.error("protocol", f"must be one of http, http2, grpc, tcp; found {self.protocol!r}")
        if not 1 <= self.port <= 65535:
            c.error("port", f"must be 1..65535; found {self.port}")


@dataclass(frozen=True, slots=True)
class AppSpec:
    address: str = "127.0.0.1"
    ports: tuple[AppPortSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsSpec:
    cert: str = opt(required=True)
    key: str = opt(required=True)
    chain: str | None = None
    """Intermediates above the leaf, issuer first, without the root."""
    bundles: dict[str, str] = opt(factory=dict)
    """Trust domain -> PEM file of its roots. Verification picks the bundle by the peer's domain."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    port: int = opt(required=True)
    name: str = ""
    protocol: str = "http"
    target_port: int = 0


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    address: str = opt(required=True)
    port: int = opt(required=True)
    """The app's port on that address (the service's target port)."""
    proxy_port: int = INBOUND_PORT
    """The sidecar inbound port at ``address``; 0 when the endpoint has no sidecar."""
    gateway: str | None = None
    """East-west gateway ``host:port`` for an endpoint in another network. Such an entry
    (``address``/``port`` the gateway's, ``weight`` the healthy endpoints behind it) serves
    the service port ``servicePort`` names, or every port of the service without it."""
    labels: dict[str, str] = opt(factory=dict)
    locality: str = ""
    cluster: str = ""
    network: str = ""
    weight: int = 1
    healthy: bool = True
    service_account: str = ""
    instance: str = ""
    service_port: int = 0

    def _check(self, c: Check) -> None:
        _check_hostport(c, "gateway", self.gateway)
        if self.weight < 1:
            c.error("weight", f"must be at least 1; found {self.weight}")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    hostname: str = opt(required=True)
    namespace: str = "default"
    name: str = ""
    ports: tuple[PortSpec, ...] = ()
    endpoints: tuple[EndpointSpec, ...] = ()
    external: bool = False
    exported: bool = False
    """An east-west gateway forwards to this service from other networks only when true
    (the cluster exports it). Defaults to false."""


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    access_log: str = "off"
    """``stdout``, ``off`` or a file path: JSON lines with Envoy's response flags."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint (``http://127.0.0.1:4318/v1/traces``); none by default."""
    sampling: float = 1.0
    """Percent of new traces sampled when spans are exported (a caller's decision is kept),
    0..100. Defaults to 1, Istio's ``tracing.sampling``."""

    def _check(self, c: Check) -> None:
        if not 0.0 <= self.sampling <= 100.0:
            c.error("sampling", f"must be between 0 and 100; found {self.sampling!r}")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith("http://"):
            c.error("otlpEndpoint", f"must be an http:// URL (OTLP/HTTP); found {self.otlp_endpoint!r}")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Pooled upstream connections (to other sidecars and to the local app)."""

    max_idle_per_key: int = 64
    """Idle connections kept per (address, port, SNI, ALPN); more are closed. Defaults to 64."""
    idle_timeout: Duration = Duration.of_seconds(60)
    """Close a pooled connection unused this long, unless a DestinationRule sets
    ``connectionPool.http.idleTimeout`` for its cluster. Defaults to 60s (shorter than
    the 1h downstream idle timeout of the sidecar at the other end, so that end never
    closes a connection this pool still counts on)."""
    connect_timeout: Duration = Duration.of_seconds(10)
    """Opening a connection to the local app. Defaults to 10s (Istio's connectTimeout)."""

    def _check(self, c: Check) -> None:
        if self.max_idle_per_key < 0:
            c.error("maxIdlePerKey", f"must not be negative; found {self.max_idle_per_key}")


@dataclass(frozen=True, slots=True)
class EastWestSpec:
    """Limits of the east-west gateway's passthrough listener (``role: eastwest``)."""

    max_connections: int = 16384
    """Connections spliced or being sniffed at once; one more is closed at once (flag UO).
    Defaults to 16384 (Envoy has no limit unless the overload manager sets one)."""
    idle_timeout: Duration = Duration.of_seconds(3600)
    """Close a spliced connection on which no byte moved this long. Defaults to 1h
    (Envoy tcp_proxy ``idle_timeout``)."""
    hello_timeout: Duration = Duration.of_seconds(15)
    """Time a client has to send its whole ClientHello. Defaults to 15s (Envoy
    ``listener_filters_timeout``)."""
    connect_timeout: Duration = Duration.of_seconds(10)
    """Opening a connection to an endpoint's sidecar. Defaults to 10s (Istio connectTimeout)."""
    connect_attempts: int = 3
    """Endpoints tried, each a different one, before the connection is refused (flag UF).
    Defaults to 3."""
    max_hello_bytes: int = 65536
    """Largest ClientHello accepted, record headers included. Defaults to 64 KiB (Envoy
    tls_inspector's cap)."""

    def _check(self, c: Check) -> None:
        for rel, value in (("maxConnections", self.max_connections), ("connectAttempts", self.connect_attempts)):
            if value < 1:
                c.error(rel, f"must be at least 1; found {value}")
        if not 512 <= self.max_hello_bytes <= 1 << 24:
            c.error("maxHelloBytes", f"must be between 512 and 16777216; found {self.max_hello_bytes}")
        for rel, d in (("idleTimeout", self.idle_timeout), ("helloTimeout", self.hello_timeout),
                       ("connectTimeout", self.connect_timeout)):
            if d.seconds <= 0:
                c.error(rel, f"must be longer than 0s; found {d}")


@dataclass(frozen=True, slots=True)
class ProxyConfigSpec:
    node: NodeSpec = opt(required=True)
    version: str = "0"
    listeners: ListenersSpec = opt(factory=ListenersSpec)
    app: AppSpec = opt(factory=AppSpec)
    tls: TlsSpec | None = None
    services: tuple[ServiceSpec, ...] = ()
    resources: Any = None
    """Istio resources inline; decoded by topology's loader (same messages as ``fedctl validate``)."""
    telemetry: TelemetrySpec = opt(factory=TelemetrySpec)
    limits: HttpLimits = opt(factory=HttpLimits)
    """Header sizes, timeouts and HTTP/2 protections of every listener; Envoy's defaults."""
    pool: PoolSpec = opt(factory=PoolSpec)
    eastwest: EastWestSpec = opt(factory=EastWestSpec)
    """Limits of the passthrough listener; read only when ``node.role`` is eastwest."""

    def _check(self, c: Check) -> None:
        ls = self.listeners
        if self.node.role == "eastwest":
            if ls.eastwest is None:
                c.error("listeners.eastwest", "an east-west gateway (node.role: eastwest) needs its passthrough "
                                              "listener, such as 127.1.2.2:15443; found none")
            for rel in ("outbound", "inbound"):
                if getattr(ls, rel) is not None:
                    c.error(f"listeners.{rel}", f"an east-west gateway has no {rel} listener; "
                                                f"found {getattr(ls, rel)!r}")
            if ls.tcp:
                c.error("listeners.tcp", f"an east-west gateway has no TCP listeners; found {len(ls.tcp)}")
        elif self.node.role == "sidecar" and ls.eastwest is not None:
            c.error("listeners.eastwest", f"only an east-west gateway (node.role: eastwest) opens a passthrough "
                                          f"listener; found {ls.eastwest!r} on role {self.node.role!r}")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A decoded, checked document: the spec plus its resources and registry, typed."""

    spec: ProxyConfigSpec
    resources: tuple[Resource, ...]
    registry: ServiceRegistry
    file: str
    lines: dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """Line of every field path of the document, for diagnostics found after decoding."""

    @property
    def version(self) -> str:
        return self.spec.version

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        return tuple(r for r in self.resources if r.kind == kind)


def load_proxy_config_text(text: str, file: str = "<config>") -> tuple[ProxyConfig | None, list[Diagnostic]]:
    """Decode a document; None and the reasons when anything in it is wrong."""
    docs, diags = load_documents(text, file)
    if diags:
        return None, diags
    if len(docs) != 1:
        return None, [Diagnostic(file, 0, "", f"expected exactly one {KIND} document; found {len(docs)}")]
    doc = docs[0]
    data = doc.data
    dec = Decoder(file, kind=KIND)
    dec.lines[""] = doc.line
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("apiVersion") != API_VERSION:
        found = data.get("kind") if isinstance(data, dict) else data
        return None, [Diagnostic(file, doc.line, "", f"expected apiVersion {API_VERSION} kind {KIND}; found {found!r}")]
    for key in data:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            dec.error(str(key), f"unknown field {str(key)!r} at the top level of a {KIND}",
                      line=data.key_lines.get(key) if hasattr(data, "key_lines") else None)
    spec = dec.decode(ProxyConfigSpec, data.get("spec"), "spec")
    if dec.has_errors:
        return None, dec.diagnostics
    inline = LoadResult()
    raw = data["spec"].get("resources") or []
    lines = raw.item_lines if isinstance(raw, LineList) else [doc.line] * len(raw)
    for i, (item, line) in enumerate(zip(raw, lines)):
        one = LoadResult()
        _load_document(Document(file, 0, line, item), one)
        one.diagnostics = [dataclasses.replace(d, path=f"spec.resources[{i}].{d.path}".rstrip("."))
                           for d in one.diagnostics]
        inline.extend(one)
    errors = [d for d in inline.diagnostics if d.is_error]
    if errors:
        return None, errors
    try:
        registry = _registry(spec)
    except (ValueError, Exception) as exc:  # topology's RegistryError subclasses carry the reason
        return None, [Diagnostic(file, dec.line_of("spec.services"), "spec.services", str(exc))]
    return (ProxyConfig(spec, tuple(inline.resources), registry, file, dict(dec.lines)),
            dec.diagnostics + inline.diagnostics)


def load_proxy_config(path: str) -> tuple[ProxyConfig | None, list[Diagnostic]]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic(path, 0, "", f"cannot read config: {exc}")]
    return load_proxy_config_text(text, path)


def _registry(spec: ProxyConfigSpec) -> ServiceRegistry:
    b = RegistryBuilder()
    for s in spec.services:
        host = Hostname.parse(s.hostname)
        ports = tuple(ServicePort(p.name or str(p.port), p.port, p.protocol, p.target_port or p.port)
                      for p in s.ports)
        b.add_service(Service(host, s.namespace, s.name or host.name.split(".")[0], ports,
                              is_external=s.external))
        by_cluster: dict[str, list[Endpoint]] = {}
        for e in s.endpoints:
            # An entry behind a gateway without servicePort stands for every port of the service.
            serves = [e.service_port] if e.gateway is None or e.service_port else [p.port for p in ports] or [0]
            for service_port in serves:
                by_cluster.setdefault(e.cluster, []).append(Endpoint(
                    e.address, e.port, Labels(e.labels), Locality.parse(e.locality) if e.locality else Locality(),
                    e.cluster, e.network, e.weight, e.healthy, e.service_account, e.instance, service_port))
        for cluster, eps in by_cluster.items():
            b.add_endpoints(host, cluster, eps)
    return b.build()
