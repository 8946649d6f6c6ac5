"""The proxy's metrics: Istio's standard metrics and meshfed's own, exposed through a
prometheus_client registry that belongs to one ``ProxyMetrics`` (never the global one,
so several proxies can share a test process).

Theory of operation. prometheus_client's own Counter/Histogram take a lock per update
and cost ~7 us for one request's four updates (measured here); a proxy on one trio loop
needs neither. So the hot path writes plain Python ints and floats in *cells* - one per
(static labels, protocol, response code, gRPC status, flags) - found by one dict lookup,
and a custom collector turns the cells into metric families when ``/metrics`` is
scraped. Label tuples are built at config compile time (``RequestLabels``) and the
series objects that hold the cells are cached per label set. Not thread-safe by design:
one ``ProxyMetrics`` per event loop (worker processes each have their own).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._breaker import Overflow
from ._metrics_labels import HTTP_LABELS, TCP_LABELS, RequestLabels
from ._outlier import OutlierAction, OutlierEvent
from ._proxy_stats import PROXY_METRICS, StatFamily, TlsRefusal

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"
"""The Content-Type the admin endpoint answers ``/metrics`` with: prometheus_client's
``CONTENT_TYPE_LATEST`` (a test keeps the two equal), written out so that a proxy loads
prometheus_client (~2 MB resident) at its first scrape, not at start."""

BUCKETS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                              60000, 300000, 600000, 1800000, 3600000)
"""Envoy's default histogram buckets (``HistogramSettingsImpl::defaultBuckets``). Istio
configures none for its histograms, so the duration (ms) and the size (bytes) histograms
all use these."""
_LE = tuple(format(b, ".32g") for b in BUCKETS) + ("+Inf",)  # Envoy prints le="1800000"
_NB = len(BUCKETS) + 1


class _HttpCell:
    """Counts for one full HTTP label set; histogram slots are per bucket, not cumulative."""

    __slots__ = ("count", "dur", "dur_sum", "req", "req_sum", "resp", "resp_sum")

    def __init__(self) -> None:
        self.count = 0
        self.dur = [0] * _NB
        self.req = [0] * _NB
        self.resp = [0] * _NB
        self.dur_sum = 0.0
        self.req_sum = 0
        self.resp_sum = 0


class HttpSeries:
    """Istio's four HTTP metrics for one ``RequestLabels``. Get it from
    ``ProxyMetrics.http(labels)`` at compile time; call ``record`` once per finished request."""

    __slots__ = ("labels", "_cells")

    def __init__(self, labels: RequestLabels) -> None:
        self.labels = labels
        self._cells: dict[tuple[int, str, int | None, bool], _HttpCell] = {}

    def record(self, *, code: int, duration_ms: float, request_bytes: int, response_bytes: int,
               flags: str = "-", grpc: bool = False, grpc_status: int | None = None) -> None:
        """One finished request. ``code`` is the status sent downstream (0 when none was, as
        Envoy); ``flags`` is ``format_flags(...)`` (``"-"`` when none); bytes are as seen on
        the downstream connection, headers included (Istio's bytes meter). A gRPC request
        (``grpc=True`` or a ``grpc_status``) is labelled ``request_protocol="grpc"``."""
        key = (code, flags, grpc_status, grpc or grpc_status is not None)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _HttpCell()
        cell.count += 1
        cell.dur[bisect_left(BUCKETS, duration_ms)] += 1
        cell.dur_sum += duration_ms
        cell.req[bisect_left(BUCKETS, request_bytes)] += 1
        cell.req_sum += request_bytes
        cell.resp[bisect_left(BUCKETS, response_bytes)] += 1
        cell.resp_sum += response_bytes

    def _rows(self) -> Iterator[tuple[list[str], _HttpCell]]:
        static, policy = list(self.labels.values), self.labels.security_policy
        for (code, flags, status, is_grpc), cell in self._cells.items():
            yield static + ["grpc" if is_grpc else "http", flags, policy, str(code),
                            "" if status is None else str(status)], cell


class TcpSeries:
    """Istio's four TCP counters for one ``RequestLabels``. Istio fixes a connection's
    ``response_flags`` at its first report: pass the same flags to all three calls of one
    connection (a connection that fails before it is established reports all three at
    once with its flag, e.g. ``UF``)."""

    __slots__ = ("labels", "_cells")

    def __init__(self, labels: RequestLabels) -> None:
        self.labels = labels
        self._cells: dict[str, list[int]] = {}  # flags -> [opened, closed, sent, received]

    def _cell(self, flags: str) -> list[int]:
        cell = self._cells.get(flags)
        if cell is None:
            cell = self._cells[flags] = [0, 0, 0, 0]
        return cell

    def opened(self, flags: str = "-") -> None:
        self._cell(flags)[0] += 1

    def closed(self, flags: str = "-") -> None:
        self._cell(flags)[1] += 1

    def transferred(self, *, sent: int, received: int, flags: str = "-") -> None:
        """Bytes since the last call: ``sent`` to the downstream peer, ``received`` from it."""
        cell = self._cell(flags)
        cell[2] += sent
        cell[3] += received


class ProxyMetrics:
    """Every metric of one proxy, with its own ``CollectorRegistry`` (``registry``) and
    ``render()`` for the admin ``/metrics`` endpoint. Also an ``OutlierEventSink``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        """Pass the proxy's own registry to scrape other collectors with these; never the
        global one. Without one, a registry of its own is made at the first scrape."""
        self._pending: list[Any] = []
        """Collectors registered before the registry exists."""
        self._http: dict[RequestLabels, HttpSeries] = {}
        self._tcp: dict[RequestLabels, TcpSeries] = {}
        self._stats = {d.name: StatFamily(d) for d in PROXY_METRICS}
        self.register(_Collector(self))

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus_client registry with every collector registered so far."""
        registry = self._registry
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = self._registry = CollectorRegistry()
        pending, self._pending = self._pending, []
        for collector in pending:
            registry.register(collector)
        return registry

    def register(self, collector: Any) -> None:
        """Add a collector (``describe``/``collect``) to this proxy's registry, now or at
        the first scrape, whichever comes later."""
        if self._registry is None:
            self._pending.append(collector)
        else:
            self._registry.register(collector)

    # -- Istio standard metrics -------------------------------------------------
    def http(self, labels: RequestLabels) -> HttpSeries:
        """The HTTP series for a static label set; the same object for equal labels."""
        series = self._http.get(labels)
        if series is None:
            series = self._http[labels] = HttpSeries(labels)
        return series

    def tcp(self, labels: RequestLabels) -> TcpSeries:
        """The TCP series for a static label set; the same object for equal labels."""
        series = self._tcp.get(labels)
        if series is None:
            series = self._tcp[labels] = TcpSeries(labels)
        return series

    # -- meshfed's own metrics --------------------------------------------------
    def stat(self, name: str) -> StatFamily:
        """A family of ``PROXY_METRICS`` by its full name; ``KeyError`` naming the known ones."""
        try:
            return self._stats[name]
        except KeyError:
            raise KeyError(f"no proxy metric {name!r}; known: {', '.join(sorted(self._stats))}") from None

    def record_outlier_event(self, event: OutlierEvent) -> None:
        """Count an ejection as detected, and as enforced when it was (Envoy counts both apart)."""
        family = "meshfed_outlier_ejections_active"
        if event.action is OutlierAction.UNEJECT:
            self._stats[family].labels(event.cluster).dec()
            return
        kind = event.ejection_type.value if event.ejection_type is not None else "unknown"
        self._stats["meshfed_outlier_ejections_detected_total"].labels(event.cluster, kind).inc()
        if event.enforced:
            self._stats["meshfed_outlier_ejections_enforced_total"].labels(event.cluster, kind).inc()
            self._stats[family].labels(event.cluster).inc()

    def record_overflow(self, cluster: str, overflow: Overflow) -> None:
        """A request or connection the circuit breaker refused (always enforced: 503 UO)."""
        self._stats["meshfed_upstream_overflow_total"].labels(cluster, overflow.resource.short).inc()

    def record_config(self, *, applied: bool) -> None:
        """A config document applied, or refused with the last good one kept."""
        self._stats["meshfed_config_applied_total" if applied else "meshfed_config_refused_total"].labels().inc()

    def record_tls_refusal(self, reason: TlsRefusal, *, inbound: bool = True) -> None:
        """A TLS handshake (or plaintext connection under STRICT) the proxy refused."""
        self._stats["meshfed_tls_handshake_refused_total"].labels(
            "inbound" if inbound else "outbound", reason.value).inc()

    # -- exposition -------------------------------------------------------------
    def render(self) -> bytes:
        """Everything in Prometheus text format (``CONTENT_TYPE``)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` (``istio_requests_total``,
        ``istio_request_duration_milliseconds_count``, ...) whose labels include ``labels``;
        0 when none. For tests and ``/clusters``, not the hot path."""
        total = 0.0
        for family in self.registry.collect():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def __repr__(self) -> str:
        return f"<ProxyMetrics {len(self._http)} http series, {len(self._tcp)} tcp series>"


class _Collector:
    """Turns cells into metric families at scrape time (the registry's only collector)."""

    def __init__(self, owner: ProxyMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        names = ["istio_requests", "istio_tcp_sent_bytes", "istio_tcp_received_bytes",
                 "istio_tcp_connections_opened", "istio_tcp_connections_closed"]
        out: list[Metric] = [CounterMetricFamily(n, "") for n in names]
        out += [HistogramMetricFamily(n, "") for n in _HISTOGRAMS]
        return out + [f._family() for f in self._owner._stats.values()]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        o = self._owner
        requests = CounterMetricFamily("istio_requests", "Requests handled (Istio standard metric).",
                                       labels=HTTP_LABELS)
        hists = [HistogramMetricFamily(n, h, labels=HTTP_LABELS) for n, h in _HISTOGRAMS.items()]
        for series in o._http.values():
            for values, cell in series._rows():
                requests.add_metric(values, cell.count)
                for fam, slots, total in zip(hists, (cell.dur, cell.req, cell.resp),
                                             (cell.dur_sum, cell.req_sum, cell.resp_sum)):
                    fam.add_metric(values, _cumulative(slots), total)
        yield requests
        yield from hists
        tcp = [CounterMetricFamily(n, h, labels=TCP_LABELS) for n, h in _TCP_COUNTERS]
        for conn in o._tcp.values():
            static, policy = list(conn.labels.values), conn.labels.security_policy
            for flags, counts in conn._cells.items():
                values = static + ["tcp", flags, policy]
                for counter, v in zip(tcp, counts):
                    counter.add_metric(values, v)
        yield from tcp
        for family in o._stats.values():
            yield family._family()


_HISTOGRAMS = {
    "istio_request_duration_milliseconds": "Request duration in milliseconds (Istio standard metric).",
    "istio_request_bytes": "Request size in bytes, headers included (Istio standard metric).",
    "istio_response_bytes": "Response size in bytes, headers included (Istio standard metric).",
}
_TCP_COUNTERS = (  # in the order of a TcpSeries cell
    ("istio_tcp_connections_opened", "TCP connections opened (Istio standard metric)."),
    ("istio_tcp_connections_closed", "TCP connections closed (Istio standard metric)."),
    ("istio_tcp_sent_bytes", "Bytes sent to the downstream peer over TCP (Istio standard metric)."),
    ("istio_tcp_received_bytes", "Bytes received from the downstream peer over TCP (Istio standard metric)."),
)


def _cumulative(slots: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(_LE, slots):
        running += n
        out.append((le, running))
    return out
