"""Istio's standard metric label sets, built once per (reporter, local workload, peer,
service) at config compile time so a request only adds what it alone knows.

Label names, their order and their fallbacks ("unknown", and "latest" for a canonical
revision) are those of Istio's stats filter (istio/proxy
``source/extensions/filters/http/istio_stats/istio_stats.cc``, ``all_tags_``), so
Istio's Grafana dashboards and recording rules read meshfed's ``/metrics`` unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

UNKNOWN = "unknown"  # Istio's value for a label whose source is missing
LATEST = "latest"  # Istio's canonical revision when no version label says otherwise

STATIC_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service", "destination_service_name",
    "destination_service_namespace", "destination_canonical_service",
    "destination_canonical_revision", "destination_cluster",
)
"""The labels fixed by who talks to whom; ``RequestLabels.values`` follows this order."""

HTTP_LABELS: tuple[str, ...] = STATIC_LABELS + (
    "request_protocol", "response_flags", "connection_security_policy", "response_code",
    "grpc_response_status")
"""Labels of ``istio_requests_total`` and the three request histograms (Istio's order)."""

TCP_LABELS: tuple[str, ...] = STATIC_LABELS + (
    "request_protocol", "response_flags", "connection_security_policy")
"""Labels of the ``istio_tcp_*`` counters: no response code or gRPC status on TCP."""


class Reporter(enum.Enum):
    """Which proxy reports: the client side (``source``) or the server side (``destination``).
    Gateways report as ``source``, as Istio's ingress and east-west gateways do."""

    SOURCE = "source"
    DESTINATION = "destination"


def namespace_of(principal: str) -> str:
    """The namespace in a SPIFFE ID (``spiffe://td/ns/<ns>/sa/<sa>``), as Istio's stats
    filter takes it from the peer's certificate; ``unknown`` when there is none."""
    begin = principal.find("/ns/")
    if begin < 0:
        return UNKNOWN
    rest = principal[begin + 4:]
    return rest.split("/", 1)[0] or UNKNOWN


@dataclass(frozen=True, slots=True)
class Workload:
    """One end of a request as Istio's labels name it. Every field defaults to Istio's
    fallback, so a peer known only by its certificate still yields a valid label set."""

    name: str = UNKNOWN
    """Workload (deployment) name: ``source_workload`` / ``destination_workload``."""
    namespace: str = UNKNOWN
    """Kubernetes namespace of the workload."""
    principal: str = UNKNOWN
    """SPIFFE ID of the workload's certificate; ``unknown`` without mTLS."""
    app: str = UNKNOWN
    """The workload's ``app`` label."""
    version: str = UNKNOWN
    """The workload's ``version`` label."""
    canonical_service: str = UNKNOWN
    """``service.istio.io/canonical-name``, defaulted as Istio's injector does."""
    canonical_revision: str = LATEST
    """``service.istio.io/canonical-revision``, defaulted as Istio's injector does."""
    cluster: str = UNKNOWN
    """The mesh cluster the workload runs in (``source_cluster`` / ``destination_cluster``)."""

    @classmethod
    def from_labels(cls, name: str, namespace: str, labels: Mapping[str, str], *,
                    principal: str = UNKNOWN, cluster: str = UNKNOWN) -> "Workload":
        """A workload from its pod labels, canonical service and revision derived as Istio's
        sidecar injector derives them (canonical-name, app.kubernetes.io/name, app, workload
        name; canonical-revision, app.kubernetes.io/version, version, ``latest``)."""
        canonical = (labels.get("service.istio.io/canonical-name") or labels.get("app.kubernetes.io/name")
                     or labels.get("app") or name or UNKNOWN)
        revision = (labels.get("service.istio.io/canonical-revision") or labels.get("app.kubernetes.io/version")
                    or labels.get("version") or LATEST)
        return cls(name=name or UNKNOWN, namespace=namespace or UNKNOWN, principal=principal or UNKNOWN,
                   app=labels.get("app") or UNKNOWN, version=labels.get("version") or UNKNOWN,
                   canonical_service=canonical, canonical_revision=revision, cluster=cluster or UNKNOWN)

    @classmethod
    def from_principal(cls, principal: str, *, cluster: str = UNKNOWN) -> "Workload":
        """A peer known only by its certificate: Istio's stats filter then still takes the
        namespace from the SPIFFE ID and leaves the rest ``unknown``."""
        return cls(namespace=namespace_of(principal), principal=principal or UNKNOWN, cluster=cluster or UNKNOWN)


@dataclass(frozen=True, slots=True)
class Service:
    """The destination service of a request (``destination_service*`` labels)."""

    host: str = UNKNOWN
    """FQDN: ``reviews.bookinfo.svc.cluster.local``."""
    name: str = UNKNOWN
    """Short name: ``reviews``."""
    namespace: str = UNKNOWN
    """Namespace of the service: ``bookinfo``."""

    @classmethod
    def from_host(cls, host: str) -> "Service":
        """Name and namespace read from a ``<svc>.<ns>.svc.<domain>`` host; any other host
        (a ServiceEntry's) is its own name with an unknown namespace, as in Istio."""
        parts = host.split(".")
        if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
            return cls(host=host, name=parts[0], namespace=parts[1])
        return cls(host=host or UNKNOWN, name=host or UNKNOWN)


@dataclass(frozen=True, slots=True)
class RequestLabels:
    """The static part of an Istio label set, built at config compile time (per route
    destination, per endpoint or per peer identity) and used as the key of a series.
    Build it with ``outbound`` or ``inbound``; never per request."""

    values: tuple[str, ...]
    """The values of ``STATIC_LABELS``, in that order."""
    security_policy: str
    """``connection_security_policy``: ``mutual_tls`` or ``none`` when the destination
    reports, ``unknown`` when the source does (Istio's documented values)."""

    def __post_init__(self) -> None:
        if len(self.values) != len(STATIC_LABELS):
            raise ValueError(f"RequestLabels needs {len(STATIC_LABELS)} values, got {len(self.values)}")

    @classmethod
    def outbound(cls, local: Workload, destination: Workload, service: Service) -> "RequestLabels":
        """Reported by the client-side proxy (sidecar outbound, gateways): ``reporter=source``."""
        return cls(_values(Reporter.SOURCE, local, destination, service), UNKNOWN)

    @classmethod
    def inbound(cls, local: Workload, source: Workload, service: Service, *,
                mutual_tls: bool) -> "RequestLabels":
        """Reported by the server-side sidecar: ``reporter=destination``; ``mutual_tls`` says
        whether the caller presented a verified certificate."""
        return cls(_values(Reporter.DESTINATION, source, local, service), "mutual_tls" if mutual_tls else "none")

    def as_dict(self) -> dict[str, str]:
        """Label name to value (static labels and the security policy), for dumps and tests."""
        out = dict(zip(STATIC_LABELS, self.values))
        out["connection_security_policy"] = self.security_policy
        return out


def _values(reporter: Reporter, src: Workload, dst: Workload, svc: Service) -> tuple[str, ...]:
    return (reporter.value,
            src.name, src.namespace, src.principal, src.app, src.version,
            src.canonical_service, src.canonical_revision, src.cluster,
            dst.name, dst.namespace, dst.principal, dst.app, dst.version,
            svc.host, svc.name, svc.namespace,
            dst.canonical_service, dst.canonical_revision, dst.cluster)
