"""The Sidecar kind: narrows what a sidecar listens for (ingress) and which services it
learns about and can reach (egress), and its outbound traffic policy.

Checks are istioctl's ``ValidateSidecar``, minus the unix-socket corner cases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import check_port, is_ip, namespaced_host_problem, protocol_of
from ._istio_gateway import ServerTLSMode, ServerTLSSettings
from ._istio_types import Destination, Port, WorkloadSelector
from ._traffic_policy import ConnectionPoolSettings


class CaptureMode(enum.Enum):
    DEFAULT = "DEFAULT"
    IPTABLES = "IPTABLES"
    NONE = "NONE"


class OutboundTrafficPolicyMode(enum.Enum):
    REGISTRY_ONLY = "REGISTRY_ONLY"
    ALLOW_ANY = "ALLOW_ANY"


def _check_port(c: Check, port: Port) -> None:
    if port.number is None:
        c.error("port", "missing required field 'number'")
    else:
        check_port(c, "port.number", port.number)
    if port.protocol and protocol_of(port.protocol) is None:
        c.error("port.protocol", f"unsupported protocol; found {describe(port.protocol)}")
    if port.target_port:
        c.error("port.targetPort", "targetPort has no effect on a Sidecar; remove it")


@dataclass(frozen=True, slots=True)
class IstioIngressListener:
    """A port the sidecar accepts inbound traffic on."""

    port: Port = opt(required=True)
    """Port, protocol and name. Required."""
    bind: str | None = None
    """Address to bind. Defaults to the workload's addresses."""
    capture_mode: CaptureMode | None = None
    """How traffic reaches the listener. Defaults to DEFAULT."""
    default_endpoint: str | None = None
    """Where traffic goes: ``127.0.0.1:<port>``, ``0.0.0.0:<port>``, ``[::1]:<port>`` or
    ``unix://path``. Defaults to the workload on the same port."""
    tls: ServerTLSSettings | None = None
    """TLS terminated by the sidecar on this port."""
    connection_pool: ConnectionPoolSettings | None = None
    """Limits of connections to the workload on this port."""

    def _check(self, c: Check) -> None:
        _check_port(c, self.port)
        if self.bind and not is_ip(self.bind):
            c.error("bind", f"must be an IP address; found {describe(self.bind)}")
        ep = self.default_endpoint
        if ep and not ep.startswith("unix://"):
            host, _, port = ep.rpartition(":")
            if host not in ("", "127.0.0.1", "0.0.0.0", "[::1]", "[::]") or not port.isdigit() \
                    or not 1 <= int(port) <= 65535:
                c.error("defaultEndpoint", f"must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> "
                                           f"or unix://<path>; found {describe(ep)}")
        if self.tls is not None:
            if self.tls.effective_mode in (ServerTLSMode.ISTIO_MUTUAL, ServerTLSMode.AUTO_PASSTHROUGH):
                c.error("tls.mode", f"{self.tls.effective_mode.value} is not supported in sidecar ingress tls")
            if self.tls.https_redirect or self.tls.credential_name or self.tls.subject_alt_names:
                c.error("tls", "httpsRedirect, credentialName and subjectAltNames are not supported here")
            if protocol_of(self.port.protocol) not in ("HTTPS", "TLS"):
                c.error("tls", f"tls needs an HTTPS or TLS port; found {describe(self.port.protocol)}")


@dataclass(frozen=True, slots=True)
class IstioEgressListener:
    """Services the sidecar learns about, optionally on one port."""

    port: Port | None = None
    """Port to listen on; none catches all ports (only the last listener may omit it)."""
    bind: str | None = None
    """Address to bind."""
    capture_mode: CaptureMode | None = None
    """How traffic reaches the listener. Defaults to DEFAULT."""
    hosts: tuple[str, ...] = ()
    """``namespace/dnsName`` entries (``*``, ``.`` or ``~`` as namespace). Required."""

    def _check(self, c: Check) -> None:
        if self.port is not None:
            _check_port(c, self.port)
        if self.bind and not self.bind.startswith("unix://") and not is_ip(self.bind):
            c.error("bind", f"must be an IP address or unix:// path; found {describe(self.bind)}")
        if not self.hosts:
            c.error("hosts", "an egress listener needs at least one host")
        for i, host in enumerate(self.hosts):
            problem = namespaced_host_problem(host, gateway=False)
            if problem:
                c.error(f"hosts[{i}]", f"invalid host {host!r}: {problem}")


@dataclass(frozen=True, slots=True)
class OutboundTrafficPolicy:
    """What happens to traffic for destinations the sidecar does not know."""

    mode: OutboundTrafficPolicyMode = OutboundTrafficPolicyMode.REGISTRY_ONLY
    """REGISTRY_ONLY (only known services) or ALLOW_ANY (pass unknown destinations
    through). Defaults to REGISTRY_ONLY when this block is given; the mesh default is ALLOW_ANY."""
    egress_proxy: Destination | None = None
    """Where unknown destinations go (ALLOW_ANY only)."""

    def _check(self, c: Check) -> None:
        if self.egress_proxy is not None:
            if self.mode is not OutboundTrafficPolicyMode.ALLOW_ANY:
                c.error("egressProxy", "needs mode ALLOW_ANY")
            if self.egress_proxy.port is None:
                c.error("egressProxy", "an egress proxy needs a port")


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What the selected sidecars listen for and can reach."""

    workload_selector: WorkloadSelector | None = None
    """Workloads this applies to. Defaults to every workload of the namespace."""
    ingress: tuple[IstioIngressListener, ...] = ()
    """Inbound listeners. Defaults to the workload's service ports."""
    egress: tuple[IstioEgressListener, ...] = ()
    """Outbound listeners and the services visible through them."""
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    """Policy for unknown destinations. Defaults to the mesh setting."""
    inbound_connection_pool: ConnectionPoolSettings | None = None
    """Limits of connections to the workload, for all inbound ports."""

    def _check(self, c: Check) -> None:
        if not (self.ingress or self.egress or self.outbound_traffic_policy or self.inbound_connection_pool):
            c.error("", "a Sidecar needs ingress, egress, outboundTrafficPolicy or inboundConnectionPool")
        for field, listeners in (("ingress", self.ingress), ("egress", self.egress)):
            seen: set[int] = set()
            for i, listener in enumerate(listeners):
                if listener.port is None:
                    if field == "egress" and i != len(listeners) - 1:
                        c.error(f"egress[{i}]", "only the last egress listener may omit the port")
                    continue
                number = listener.port.number
                if number in seen:
                    c.error(f"{field}[{i}].port.number", f"duplicate port {number} among {field} listeners")
                elif number:
                    seen.add(number)
