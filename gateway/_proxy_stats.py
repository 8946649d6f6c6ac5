"""meshfed's own proxy metrics, declared in one table (as Envoy's ``ALL_*_STATS`` macros).

Where Envoy has a statistic for the same thing its name is kept after the ``meshfed_``
prefix (``upstream_cx_total``, ``upstream_cx_overflow`` ...). Outlier ejections are
counted *detected* and *enforced* apart, as Envoy's ``ejections_detected_*`` and
``ejections_enforced_*``: a detection the enforcement draw or ``maxEjectionPercent``
stopped is still visible. Circuit-breaker overflows are always enforced (the request is
refused with 503 ``UO``), so they have one counter.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

COUNTER = "counter"
GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family: full Prometheus name (counters end in ``_total``), kind, help and
    label names."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


class TlsRefusal(enum.Enum):
    """Why the proxy refused a TLS handshake; the value is the ``reason`` label."""

    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    """STRICT mTLS and the client sent no certificate."""
    UNTRUSTED_CHAIN = "untrusted_chain"
    """The chain does not verify against the trust bundle of the peer's trust domain."""
    CERTIFICATE_EXPIRED = "certificate_expired"
    """The peer certificate is outside its validity period."""
    BAD_PEER_IDENTITY = "bad_peer_identity"
    """No valid SPIFFE ID in the URI SAN, or a trust domain that is not federated."""
    PLAINTEXT_UNDER_STRICT = "plaintext_under_strict"
    """A plaintext connection on a port whose PeerAuthentication mode is STRICT."""
    HANDSHAKE_ERROR = "handshake_error"
    """Any other TLS protocol failure (version, cipher, malformed record)."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """The handshake did not finish in time."""


PROXY_METRICS: tuple[MetricDef, ...] = (
    # upstream connection pool (Envoy cluster.upstream_cx_*)
    MetricDef("meshfed_upstream_cx_total", COUNTER, "Upstream connections opened.", ("cluster",)),
    MetricDef("meshfed_upstream_cx_active", GAUGE, "Upstream connections open now.", ("cluster",)),
    MetricDef("meshfed_upstream_cx_connect_fail_total", COUNTER, "Upstream connection attempts that failed.",
              ("cluster",)),
    MetricDef("meshfed_upstream_cx_destroy_total", COUNTER, "Upstream connections closed.", ("cluster",)),
    MetricDef("meshfed_upstream_rq_pending_active", GAUGE, "Requests waiting for an upstream connection.",
              ("cluster",)),
    MetricDef("meshfed_upstream_rq_retry_total", COUNTER, "Upstream request retries.", ("cluster",)),
    MetricDef("meshfed_upstream_rq_timeout_total", COUNTER, "Upstream requests that timed out.", ("cluster",)),
    # circuit breaker: enforced only (resource = cx | pending | rq | retries)
    MetricDef("meshfed_upstream_overflow_total", COUNTER,
              "Connections or requests refused by the circuit breaker (503 UO).", ("cluster", "resource")),
    # outlier detection: detected and enforced apart (type = Envoy ejection type)
    MetricDef("meshfed_outlier_ejections_detected_total", COUNTER,
              "Hosts found outlying, ejected or not.", ("cluster", "type")),
    MetricDef("meshfed_outlier_ejections_enforced_total", COUNTER,
              "Hosts actually ejected from the load-balancing pool.", ("cluster", "type")),
    MetricDef("meshfed_outlier_ejections_active", GAUGE, "Hosts ejected now.", ("cluster",)),
    # resilience layers (Envoy fault.*, http_local_rate_limit.*, router shadow stats)
    MetricDef("meshfed_fault_delays_injected_total", COUNTER,
              "Requests delayed by fault injection (DI); route: the VirtualService route, or the "
              "WorkloadFault (namespace/name) of an inbound fault.", ("route",)),
    MetricDef("meshfed_fault_aborts_injected_total", COUNTER,
              "Requests aborted by fault injection (FI); route as for delays.", ("route",)),
    MetricDef("meshfed_ratelimit_limited_total", COUNTER, "Requests refused by a local rate limit (429 RL).",
              ("direction",)),
    MetricDef("meshfed_mirror_requests_total", COUNTER,
              "Mirror copies by outcome: sent (answered), failed, dropped (too many in flight).",
              ("cluster", "result")),
    # authorization (Envoy rbac.allowed / rbac.denied; shadow = AUDIT policies)
    MetricDef("meshfed_rbac_allowed_total", COUNTER, "Requests or connections authorization allowed."),
    MetricDef("meshfed_rbac_denied_total", COUNTER, "Requests or connections authorization denied (403)."),
    MetricDef("meshfed_rbac_audited_total", COUNTER, "Requests or connections an AUDIT policy matched."),
    # config
    MetricDef("meshfed_config_applied_total", COUNTER, "Config documents applied."),
    MetricDef("meshfed_config_refused_total", COUNTER, "Config documents refused; the last good one stayed."),
    # TLS
    MetricDef("meshfed_tls_handshake_refused_total", COUNTER, "TLS handshakes the proxy refused.",
              ("direction", "reason")),
    # telemetry pipeline itself
    MetricDef("meshfed_access_log_dropped_total", COUNTER, "Access log lines dropped because the buffer was full."),
    MetricDef("meshfed_tracing_spans_exported_total", COUNTER, "Spans accepted by the OTLP endpoint."),
    MetricDef("meshfed_tracing_spans_dropped_total", COUNTER,
              "Spans dropped: queue full or export failed after retries.", ("reason",)),
)


class Stat:
    """One row of a meshfed metric family, bound to its label values at compile time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class StatFamily:
    """A meshfed metric from the ``PROXY_METRICS`` table; ``labels(...)`` binds a ``Stat``."""

    __slots__ = ("definition", "_rows", "_sources")

    def __init__(self, definition: MetricDef) -> None:
        self.definition = definition
        self._rows: dict[tuple[str, ...], Stat] = {}
        self._sources: dict[tuple[str, ...], Callable[[], float]] = {}

    def labels(self, *values: str) -> Stat:
        """The row for these label values (created on first use, then the same object)."""
        row = self._rows.get(values)
        if row is None:
            self._check(values)
            row = self._rows[values] = Stat()
        return row

    def read_at_scrape(self, source: Callable[[], float], *values: str) -> None:
        """Take this row's value from ``source()`` at each scrape (pool sizes, exporter
        counters): nothing to update on the hot path."""
        self._check(values)
        self._sources[values] = source

    def _check(self, values: tuple[str, ...]) -> None:
        names = self.definition.labels
        if len(values) != len(names) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{self.definition.name} takes labels {names}, got {values!r}")

    def _family(self) -> Metric:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # at scrape time only

        d = self.definition
        fam = (CounterMetricFamily if d.kind == COUNTER else GaugeMetricFamily)(d.name, d.help, labels=d.labels)
        for values, row in self._rows.items():
            fam.add_metric(values, row.value)
        for values, source in self._sources.items():
            fam.add_metric(values, float(source()))
        return fam
