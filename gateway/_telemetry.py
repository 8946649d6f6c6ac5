"""A proxy's request telemetry beyond metrics: the JSON access log and the tracer, set up
from ``spec.telemetry``, and the outlier-event sink that feeds metrics, log and access log.

``accessLog`` is ``off`` (the default), ``stdout`` or a file path; ``otlpEndpoint`` turns
span export on (``Tracer`` with an ``OtlpExporter`` sink; sampling as Istio's
``sampling``, 1 % by default, and a caller's sampling decision is kept). Without an
endpoint the tracer still ensures ``x-request-id`` and lets trace headers through.

The writer and exporter tasks live in the proxy's nursery, each in its own cancel scope:
a new document that changes ``telemetry`` starts the new ones and stops the old (their
buffered lines and spans are flushed on the way out). Nothing here blocks a request:
``AccessLog.log`` and ``OtlpExporter.submit`` only append to bounded buffers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from ._accesslog import AccessLog, AccessLogEntry
from ._otlp import ExporterConfigError, OtlpExporter
from ._outlier import OutlierAction, OutlierEvent
from ._tracing import DEFAULT_SAMPLING_PERCENT, Tracer

if TYPE_CHECKING:
    from ._metrics import ProxyMetrics
    from ._snapshot import Snapshot

log = logging.getLogger("meshfed.gateway.telemetry")


class Telemetry:
    """Access log, tracer and outlier-event sink of one proxy."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
        self.access_log = AccessLog.off()
        self.tracer = Tracer()
        self.exporter: OtlpExporter | None = None
        self.outlier_events: list[OutlierEvent] = []
        """The latest outlier events (bounded), for ``/clusters`` and tests."""
        self._key: tuple[Any, ...] = ("off", None, DEFAULT_SAMPLING_PERCENT)
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None

    def configure(self, snap: Snapshot) -> None:
        """Follow ``spec.telemetry`` of a newly applied snapshot (a no-op when unchanged)."""
        spec = snap.config.spec
        t = spec.telemetry
        key = (t.access_log, t.otlp_endpoint, t.sampling)
        if key == self._key:
            return
        self._key = key
        if t.access_log == "off":
            access_log = AccessLog.off()
        else:
            try:
                access_log = AccessLog.to_path("/dev/stdout" if t.access_log == "stdout" else t.access_log)
            except OSError as exc:
                log.error("access log %s cannot be opened: %s; access logging is off", t.access_log, exc)
                access_log = AccessLog.off()
        exporter = None
        if t.otlp_endpoint:
            node = spec.node
            try:
                exporter = OtlpExporter(t.otlp_endpoint, resource={
                    "service.name": f"{node.workload}.{node.namespace}", "k8s.namespace.name": node.namespace,
                    "k8s.cluster.name": node.cluster})
            except ExporterConfigError as exc:
                log.error("%s; spans are not exported", exc)
        self.access_log = access_log
        access_log.register_metrics(self.metrics)
        self.exporter = exporter
        if exporter is not None:
            exporter.register_metrics(self.metrics)
        self.tracer = Tracer(exporter, sampling_percent=t.sampling)
        if self._nursery is not None:
            self._restart()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the writer and exporter tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._restart()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _restart(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        assert self._nursery is not None
        scope = self._scope = trio.CancelScope()
        self._nursery.start_soon(self._tasks, scope, self.access_log, self.exporter)

    @staticmethod
    async def _tasks(scope: trio.CancelScope, access_log: AccessLog, exporter: OtlpExporter | None) -> None:
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(access_log.run)
                    if exporter is not None:
                        nursery.start_soon(exporter.run)
            finally:
                access_log.close()

    # -- the outlier event sink ------------------------------------------------------------
    def record_outlier_event(self, event: OutlierEvent) -> None:
        """An ejection or a return: counted, logged, written to the access log, kept."""
        self.metrics.record_outlier_event(event)
        log.info("%s", event)
        self.outlier_events.append(event)
        del self.outlier_events[:-256]
        if self.access_log.enabled:
            detail = ("outlier_ejected:" + event.reason if event.action is OutlierAction.EJECT
                      else "outlier_returned")
            if event.action is OutlierAction.EJECT and not event.enforced:
                detail += "(not_enforced)"
            self.access_log.log(AccessLogEntry(start_time=time.time(), response_code_details=detail,
                                               upstream_host=event.host, upstream_cluster=event.cluster))

    def __repr__(self) -> str:
        return f"<Telemetry {self.access_log!r} {self.tracer!r}>"
