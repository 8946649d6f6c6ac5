"""The networking.istio.io Gateway kind: the ports, hosts and TLS a gateway proxy
(ingress, egress or east-west) listens with. Routing is left to VirtualServices bound to
the gateway; AUTO_PASSTHROUGH routes by SNI alone (the east-west gateway's mode).

Checks are istioctl's ``ValidateGateway`` / ``validateServer`` / ``validateTLSOptions``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import (
    HTTP_PROTOCOLS, TLS_PROTOCOLS, check_port, is_ip, namespaced_host_problem, protocol_of,
)
from ._istio_types import Port

UNIX_PREFIX = "unix://"
# BoringSSL cipher names Envoy accepts (istio pkg/config/security IsValidCipherSuite).
CIPHER_SUITES = frozenset({
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA", "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA", "AES256-SHA", "PSK-AES128-CBC-SHA", "PSK-AES256-CBC-SHA", "DES-CBC3-SHA",
})


class ServerTLSMode(enum.Enum):
    PASSTHROUGH = "PASSTHROUGH"
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    AUTO_PASSTHROUGH = "AUTO_PASSTHROUGH"
    ISTIO_MUTUAL = "ISTIO_MUTUAL"
    OPTIONAL_MUTUAL = "OPTIONAL_MUTUAL"


class TLSProtocol(enum.Enum):
    TLS_AUTO = "TLS_AUTO"
    TLSV1_0 = "TLSV1_0"
    TLSV1_1 = "TLSV1_1"
    TLSV1_2 = "TLSV1_2"
    TLSV1_3 = "TLSV1_3"


_TLS_ORDER = {p: i for i, p in enumerate((TLSProtocol.TLSV1_0, TLSProtocol.TLSV1_1, TLSProtocol.TLSV1_2,
                                           TLSProtocol.TLSV1_3))}


@dataclass(frozen=True, slots=True)
class TLSCertificate:
    """One certificate/key pair of a server (RSA or ECDSA)."""

    server_certificate: str | None = None
    """Certificate file. Required."""
    private_key: str | None = None
    """Key file. Required."""
    ca_certificates: str | None = None
    """CA bundle verifying client certificates."""


@dataclass(frozen=True, slots=True)
class ServerTLSSettings:
    """TLS a gateway server terminates or passes through."""

    https_redirect: bool = False
    """Answer plain HTTP with a 301 to https. Defaults to false."""
    mode: ServerTLSMode | None = None
    """PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL or OPTIONAL_MUTUAL.
    Defaults to PASSTHROUGH."""
    server_certificate: str | None = None
    """Server certificate file (SIMPLE/MUTUAL without credentialName)."""
    private_key: str | None = None
    """Server key file (SIMPLE/MUTUAL without credentialName)."""
    ca_certificates: str | None = None
    """CA bundle verifying client certificates (MUTUAL)."""
    ca_crl: str | None = None
    """Certificate revocation list for client certificates."""
    credential_name: str | None = None
    """Secret holding the key, certificate and CA (instead of files)."""
    credential_names: tuple[str, ...] = ()
    """Up to two such secrets (RSA and ECDSA)."""
    tls_certificates: tuple[TLSCertificate, ...] = ()
    """Up to two certificate/key file pairs."""
    subject_alt_names: tuple[str, ...] = ()
    """SANs accepted in client certificates."""
    verify_certificate_spki: tuple[str, ...] = ()
    """Accepted client certificate SPKI hashes (base64 SHA-256)."""
    verify_certificate_hash: tuple[str, ...] = ()
    """Accepted client certificate hashes (hex SHA-256)."""
    min_protocol_version: TLSProtocol | None = None
    """Lowest TLS version accepted. Defaults to TLSV1_2."""
    max_protocol_version: TLSProtocol | None = None
    """Highest TLS version accepted. Defaults to TLSV1_3."""
    cipher_suites: tuple[str, ...] = ()
    """Cipher suites offered. Defaults to Envoy's."""

    @property
    def effective_mode(self) -> ServerTLSMode:
        return self.mode or ServerTLSMode.PASSTHROUGH

    def _check(self, c: Check) -> None:
        mode = self.effective_mode
        bad = sorted({s for s in self.cipher_suites if s not in CIPHER_SUITES})
        if bad:
            c.warning("cipherSuites", f"ignoring invalid cipher suites: {', '.join(bad)}")
        low, high = self.min_protocol_version, self.max_protocol_version
        if low in (TLSProtocol.TLSV1_0, TLSProtocol.TLSV1_1) and not self.cipher_suites:
            c.warning("minProtocolVersion", "TLS versions below TLSV1_2 need compatible cipherSuites set")
        if low in _TLS_ORDER and high in _TLS_ORDER and _TLS_ORDER[low] > _TLS_ORDER[high]:
            c.error("minProtocolVersion", f"is above maxProtocolVersion; found {low.value} > {high.value}")
        files = {"serverCertificate": self.server_certificate, "privateKey": self.private_key,
                 "caCertificates": self.ca_certificates}
        if mode is ServerTLSMode.ISTIO_MUTUAL:
            for key, value in {**files, "credentialName": self.credential_name,
                               "credentialNames": self.credential_names,
                               "tlsCertificates": self.tls_certificates}.items():
                if value:
                    c.error(key, "ISTIO_MUTUAL uses the mesh certificates; remove this field")
            return
        if mode in (ServerTLSMode.PASSTHROUGH, ServerTLSMode.AUTO_PASSTHROUGH):
            if any(files.values()) or self.ca_crl or self.credential_name or self.credential_names \
                    or self.tls_certificates:
                c.warning("mode", f"{mode.value} does not terminate TLS; the certificates are ignored")
            return
        sources = [bool(self.server_certificate and self.private_key), bool(self.credential_name),
                   bool(self.credential_names), bool(self.tls_certificates)]
        if sum(sources) > 1:
            c.error("", "only one of credentialName, credentialNames, serverCertificate/privateKey and "
                        "tlsCertificates may be set")
        prefix = "SIMPLE TLS" if mode is ServerTLSMode.SIMPLE else "MUTUAL TLS"
        if self.ca_crl and self.credential_name:
            c.error("caCrl", "is not supported with credentialName; put the CRL in the credential")
        if self.ca_crl and mode is ServerTLSMode.SIMPLE:
            c.error("caCrl", "is not supported with SIMPLE TLS")
        if self.credential_name or self.credential_names:
            return
        if mode is not ServerTLSMode.SIMPLE and not self.ca_certificates:
            c.error("caCertificates", f"{prefix} needs caCertificates (the client CA bundle) or credentialName")
        pairs = self.tls_certificates or (TLSCertificate(self.server_certificate, self.private_key),)
        for pair in pairs:
            if not pair.server_certificate:
                c.error("serverCertificate", f"{prefix} needs serverCertificate (or credentialName)")
            if not pair.private_key:
                c.error("privateKey", f"{prefix} needs privateKey (or credentialName)")


@dataclass(frozen=True, slots=True)
class Server:
    """One listener of the gateway."""

    port: Port = opt(required=True)
    """Port, protocol and name the gateway listens with. Required."""
    bind: str | None = None
    """Address (or unix:// socket) to bind. Defaults to all addresses."""
    hosts: tuple[str, ...] = ()
    """Hosts exposed, ``[namespace/]dnsName``; ``*`` for all. At least one is required."""
    tls: ServerTLSSettings | None = None
    """TLS settings; required for HTTPS and TLS ports."""
    default_endpoint: str | None = None
    """Loopback endpoint traffic is forwarded to (sidecar-style gateways)."""
    name: str | None = None
    """Name of the server, for stats."""

    def _check(self, c: Check) -> None:
        if not self.hosts:
            c.error("hosts", "a server needs at least one host")
        for i, host in enumerate(self.hosts):
            problem = namespaced_host_problem(host, gateway=True)
            if problem:
                c.error(f"hosts[{i}]", f"invalid host {host!r}: {problem}")
        port, unix = self.port, (self.bind or "").startswith(UNIX_PREFIX)
        protocol = protocol_of(port.protocol)
        if protocol is None:
            c.error("port.protocol", f"unsupported protocol; found {describe(port.protocol)}; supported are HTTP, "
                                     "HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS")
        if port.number is None and not unix:
            c.error("port", "missing required field 'number'")
        elif port.number is not None and (port.number or not unix):
            check_port(c, "port.number", port.number)
        if port.target_port:
            c.error("port.targetPort", "targetPort has no effect on a Gateway; remove it")
        if not port.name:
            c.error("port", "missing required field 'name'")
        if unix and port.number:
            c.error("port.number", f"must be 0 for a unix domain socket bind; found {describe(port.number)}")
        elif self.bind and not unix and not is_ip(self.bind):
            c.error("bind", f"must be an IP address or unix:// path; found {describe(self.bind)}")
        if protocol in TLS_PROTOCOLS and self.tls is None:
            c.error("tls", f"{protocol} servers need tls settings")
        elif protocol is not None and protocol not in TLS_PROTOCOLS and self.tls is not None:
            tls = self.tls
            passthrough = tls.effective_mode in (ServerTLSMode.PASSTHROUGH, ServerTLSMode.AUTO_PASSTHROUGH)
            if protocol not in HTTP_PROTOCOLS:
                c.error("tls", f"{protocol} servers cannot have tls settings")
            elif not passthrough or tls.ca_certificates or tls.private_key or tls.server_certificate:
                c.error("tls", f"plain-text {protocol} servers can only use tls.httpsRedirect")
        if self.tls is not None and self.tls.https_redirect and protocol not in HTTP_PROTOCOLS:
            c.warning("tls.httpsRedirect", "httpsRedirect only applies to HTTP servers")


@dataclass(frozen=True, slots=True)
class Gateway:
    """A load balancer at the edge of the mesh: what it listens on, for which hosts."""

    servers: tuple[Server, ...] = ()
    """Listeners of the gateway. At least one is required."""
    selector: dict[str, str] = opt(factory=dict)
    """Labels of the gateway workloads this applies to (any namespace, unless restricted
    mesh-wide)."""

    def _check(self, c: Check) -> None:
        if not self.servers:
            c.error("servers", "a Gateway needs at least one server")
        names: dict[str, int] = {}
        for i, server in enumerate(self.servers):
            name = server.port.name if server.port is not None else None
            if not name:
                continue
            if name in names:
                c.error(f"servers[{i}].port.name", f"duplicate port name {name!r}; servers[{names[name]}] "
                                                   "uses it already (names must be unique)")
            else:
                names[name] = i
