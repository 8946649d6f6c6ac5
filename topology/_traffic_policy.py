"""DestinationRule traffic policy: load balancing (with locality), connection pool
(circuit breaking), outlier detection, client TLS, tunnelling.

Field names and the "Defaults to" values are istio/api ``networking/v1``
``destination_rule.proto``; the range and cross-field rules are istioctl's
(pkg/config/validation ``validateTrafficPolicy`` and ``ValidateLocalityLbSetting``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._duration import Duration
from ._istio_checks import (
    check_duration, check_non_negative, check_percent_int, check_port, fqdn_problem,
    has_errors_under, is_ip,
)
from ._istio_types import PortSelector
from ._load_balancer import LoadBalancerSettings


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """SO_KEEPALIVE settings of upstream connections."""

    probes: int | None = None
    """Unanswered probes before the connection is dead. Defaults to the OS's (Linux: 9)."""
    time: Duration | None = None
    """Idle time before probing starts. Defaults to the OS's (Linux: 7200s)."""
    interval: Duration | None = None
    """Time between probes. Defaults to the OS's (Linux: 75s)."""

    def _check(self, c: Check) -> None:
        check_non_negative(c, "probes", self.probes)
        check_duration(c, "time", self.time)
        check_duration(c, "interval", self.interval)


@dataclass(frozen=True, slots=True)
class TCPSettings:
    """Limits common to HTTP and TCP upstream connections."""

    max_connections: int | None = None
    """Maximum connections to one destination host. Defaults to 2^32-1."""
    connect_timeout: Duration | None = None
    """TCP connect timeout; at least 1ms. Defaults to 10s."""
    tcp_keepalive: TcpKeepalive | None = None
    """Enables SO_KEEPALIVE with these settings."""
    max_connection_duration: Duration | None = None
    """Maximum age of a connection; at least 1ms. Defaults to no limit."""
    idle_timeout: Duration | None = None
    """Close TCP connections idle this long; 0s disables. Defaults to 1h."""

    def _check(self, c: Check) -> None:
        check_non_negative(c, "maxConnections", self.max_connections)
        check_duration(c, "connectTimeout", self.connect_timeout)
        check_duration(c, "maxConnectionDuration", self.max_connection_duration)
        check_duration(c, "idleTimeout", self.idle_timeout, zero_ok=True)


class H2UpgradePolicy(enum.Enum):
    DEFAULT = "DEFAULT"
    DO_NOT_UPGRADE = "DO_NOT_UPGRADE"
    UPGRADE = "UPGRADE"


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """Limits of HTTP/1.1, HTTP/2 and gRPC upstream connection pools."""

    http1_max_pending_requests: int | None = None
    """Requests queued while waiting for a connection. Defaults to 2^32-1."""
    http2_max_requests: int | None = None
    """Active requests to a destination. Defaults to 2^32-1."""
    max_requests_per_connection: int | None = None
    """Requests per connection; 1 disables keep-alive. Defaults to 0 (unlimited, up to 2^29)."""
    max_retries: int | None = None
    """Outstanding retries to all hosts of the cluster. Defaults to 2^32-1."""
    idle_timeout: Duration | None = None
    """Close pool connections without active requests this long. Defaults to 1h."""
    h2_upgrade_policy: H2UpgradePolicy | None = None
    """Whether HTTP/1.1 connections are upgraded to HTTP/2. Defaults to DEFAULT (mesh setting)."""
    use_client_protocol: bool | None = None
    """Keep the client's protocol upstream (disables h2UpgradePolicy). Defaults to false."""
    max_concurrent_streams: int | None = None
    """Concurrent streams per HTTP/2 connection. Defaults to 2^31-1."""

    def _check(self, c: Check) -> None:
        for key, value in (("http1MaxPendingRequests", self.http1_max_pending_requests),
                           ("http2MaxRequests", self.http2_max_requests),
                           ("maxRequestsPerConnection", self.max_requests_per_connection),
                           ("maxRetries", self.max_retries), ("maxConcurrentStreams", self.max_concurrent_streams)):
            check_non_negative(c, key, value)
        check_duration(c, "idleTimeout", self.idle_timeout)
        if self.h2_upgrade_policy is H2UpgradePolicy.UPGRADE and self.use_client_protocol:
            c.error("useClientProtocol", "cannot be true when h2UpgradePolicy is UPGRADE")


@dataclass(frozen=True, slots=True)
class ConnectionPoolSettings:
    """Circuit-breaker limits per upstream host."""

    tcp: TCPSettings | None = None
    """Limits of TCP connections (HTTP included). Defaults to Envoy's (effectively unlimited)."""
    http: HTTPSettings | None = None
    """Limits of HTTP requests. Defaults to Envoy's (effectively unlimited)."""

    def _check(self, c: Check) -> None:
        if self.tcp is None and self.http is None:
            c.error("", "connectionPool needs tcp or http settings")


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Ejects hosts that keep failing from the load-balancing pool for a while."""

    consecutive_errors: int | None = None
    """Deprecated; use consecutive5xxErrors or consecutiveGatewayErrors."""
    split_external_local_origin_errors: bool = False
    """Count local failures (connect errors, timeouts) apart from upstream 5xx. Defaults to false."""
    consecutive_local_origin_failures: int | None = None
    """Local failures before ejection (needs splitExternalLocalOriginErrors). Defaults to 5."""
    consecutive_gateway_errors: int | None = None
    """502/503/504 (or connect failures) before ejection; 0 disables. Defaults to disabled."""
    consecutive_5xx_errors: int | None = None
    """5xx (or TCP connect failures) before ejection; 0 disables. Defaults to 5."""
    interval: Duration | None = None
    """Time between ejection sweeps; at least 1ms. Defaults to 10s."""
    base_ejection_time: Duration | None = None
    """Minimum ejection time, multiplied by the number of ejections. Defaults to 30s."""
    max_ejection_percent: int | None = None
    """Most hosts of the pool that may be ejected, in percent. Defaults to 10."""
    min_health_percent: int | None = None
    """Outlier detection is off while fewer hosts than this percentage are healthy. Defaults to 0."""

    def _check(self, c: Check) -> None:
        if self.consecutive_errors is not None:
            c.warning("consecutiveErrors", "'consecutiveErrors' is deprecated; use consecutive5xxErrors or "
                                           "consecutiveGatewayErrors")
        for key, value in (("consecutiveLocalOriginFailures", self.consecutive_local_origin_failures),
                           ("consecutiveGatewayErrors", self.consecutive_gateway_errors),
                           ("consecutive5xxErrors", self.consecutive_5xx_errors)):
            check_non_negative(c, key, value)
        if not self.split_external_local_origin_errors and (self.consecutive_local_origin_failures or 0) > 0:
            c.error("consecutiveLocalOriginFailures", "has no effect unless splitExternalLocalOriginErrors is true")
        check_duration(c, "interval", self.interval)
        check_duration(c, "baseEjectionTime", self.base_ejection_time)
        for key, value in (("maxEjectionPercent", self.max_ejection_percent),
                           ("minHealthPercent", self.min_health_percent)):
            if value is not None:
                check_percent_int(c, key, value)


class ClientTLSMode(enum.Enum):
    DISABLE = "DISABLE"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"


@dataclass(frozen=True, slots=True)
class ClientTLSSettings:
    """TLS the client side originates towards the upstream."""

    mode: ClientTLSMode = ClientTLSMode.DISABLE
    """DISABLE, SIMPLE (TLS), MUTUAL (client certificate) or ISTIO_MUTUAL (mesh mTLS).
    Defaults to DISABLE."""
    client_certificate: str | None = None
    """Client certificate file; required for MUTUAL without credentialName."""
    private_key: str | None = None
    """Client key file; required for MUTUAL without credentialName."""
    ca_certificates: str | None = None
    """CA bundle that verifies the server. Defaults to the OS trust store."""
    credential_name: str | None = None
    """Secret holding the client certificate, key and CA (instead of files)."""
    subject_alt_names: tuple[str, ...] = ()
    """SANs accepted in the server certificate. Defaults to the ServiceEntry's or none."""
    sni: str | None = None
    """SNI sent. Defaults to the request's authority for SIMPLE and MUTUAL."""
    insecure_skip_verify: bool | None = None
    """Skip verifying the server certificate's CA and SAN. Defaults to false."""
    ca_crl: str | None = None
    """Certificate revocation list file."""

    def _check(self, c: Check) -> None:
        mode = self.mode
        if self.insecure_skip_verify:
            if mode is ClientTLSMode.SIMPLE and (self.ca_certificates or self.credential_name or self.subject_alt_names):
                c.error("insecureSkipVerify", "cannot be true with caCertificates, credentialName or subjectAltNames")
            if mode is ClientTLSMode.MUTUAL and (self.ca_certificates or self.subject_alt_names):
                c.error("insecureSkipVerify", "cannot be true with caCertificates or subjectAltNames")
        if mode in (ClientTLSMode.SIMPLE, ClientTLSMode.MUTUAL) and self.credential_name:
            if self.client_certificate or self.private_key or self.ca_certificates or self.ca_crl:
                c.error("credentialName", "cannot be combined with clientCertificate, privateKey, "
                                          "caCertificates or caCrl")
            return
        if mode is ClientTLSMode.MUTUAL:
            for key, value in (("clientCertificate", self.client_certificate), ("privateKey", self.private_key)):
                if not value:
                    c.error("", f"MUTUAL TLS needs {key} (or credentialName)")


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """Tunnel TCP to the upstream through HTTP CONNECT or POST."""

    protocol: str | None = None
    """CONNECT or POST. Defaults to CONNECT."""
    target_host: str = opt(required=True)
    """FQDN or IP the connection is tunnelled to. Required."""
    target_port: int = opt(required=True)
    """Port the connection is tunnelled to. Required."""

    def _check(self, c: Check) -> None:
        if self.protocol is not None and self.protocol not in ("CONNECT", "POST"):
            c.error("protocol", f"must be 'CONNECT' or 'POST'; found {describe(self.protocol)}")
        if fqdn_problem(self.target_host) and not is_ip(self.target_host):
            c.error("targetHost", f"must be an FQDN or an IP address; found {describe(self.target_host)}")
        check_port(c, "targetPort", self.target_port)


class ProxyProtocolVersion(enum.Enum):
    V1 = "V1"
    V2 = "V2"


@dataclass(frozen=True, slots=True)
class ProxyProtocol:
    """PROXY protocol header sent on upstream connections."""

    version: ProxyProtocolVersion = ProxyProtocolVersion.V1
    """PROXY protocol version sent upstream. Defaults to V1."""


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """Policy for one port of the destination; replaces (does not merge with) the
    destination-level policy for that port."""

    port: PortSelector | None = None
    """The port this policy applies to. Required."""
    load_balancer: LoadBalancerSettings | None = None
    """As TrafficPolicy.loadBalancer, for this port."""
    connection_pool: ConnectionPoolSettings | None = None
    """As TrafficPolicy.connectionPool, for this port."""
    outlier_detection: OutlierDetection | None = None
    """As TrafficPolicy.outlierDetection, for this port."""
    tls: ClientTLSSettings | None = None
    """As TrafficPolicy.tls, for this port."""

    def _check(self, c: Check) -> None:
        if self.port is None:
            c.error("", "a port-level policy needs a port")
        if not (self.load_balancer or self.connection_pool or self.outlier_detection or self.tls):
            c.error("", "a port-level policy needs loadBalancer, connectionPool, outlierDetection or tls")
        _check_failover_detection(c, self.load_balancer, self.outlier_detection)


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Policies applied to traffic for the destination, across all its ports."""

    load_balancer: LoadBalancerSettings | None = None
    """Load-balancing algorithm and locality settings."""
    connection_pool: ConnectionPoolSettings | None = None
    """Connection and request limits (circuit breaking)."""
    outlier_detection: OutlierDetection | None = None
    """Ejection of failing hosts."""
    tls: ClientTLSSettings | None = None
    """TLS towards the upstream."""
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    """Per-port policies overriding these ones."""
    tunnel: TunnelSettings | None = None
    """Tunnelling of TCP/TLS traffic."""
    proxy_protocol: ProxyProtocol | None = None
    """PROXY protocol sent upstream."""

    def _check(self, c: Check) -> None:
        if not (self.load_balancer or self.connection_pool or self.outlier_detection or self.tls
                or self.port_level_settings or self.tunnel or self.proxy_protocol):
            c.error("", "a traffic policy needs at least one field")
        if self.tunnel is not None and self.proxy_protocol is not None:
            c.error("proxyProtocol", "tunnel and proxyProtocol cannot be set together")
        _check_failover_detection(c, self.load_balancer, self.outlier_detection)


def _check_failover_detection(c: Check, lb: LoadBalancerSettings | None, od: OutlierDetection | None) -> None:
    """Istio: failover "should be used together with OutlierDetection ... otherwise has no effect"."""
    loc = lb.locality_lb_setting if lb else None
    if loc is not None and (loc.failover or loc.failover_priority) and od is None \
            and not has_errors_under(c, "loadBalancer"):
        c.warning("loadBalancer.localityLbSetting",
                  "locality failover does nothing without outlierDetection in the same policy; "
                  "add outlierDetection so unhealthy endpoints are detected")
