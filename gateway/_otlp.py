"""Span export over OTLP/HTTP with JSON bodies: a pure encoder and a batching trio task.

The request path only calls ``OtlpExporter.submit(span)``: an append to a bounded deque,
or a counted drop when the queue is full - it never waits for the collector. ``run()``
(a task in the proxy's nursery) wakes when a batch is full or every ``flush_interval``,
POSTs batches to ``<url>`` (``/v1/traces`` when the URL has no path), retries the
answers the OTLP spec calls retryable (429, 502, 503, 504) and connection failures with
exponential backoff a bounded number of times, then drops the batch and counts it.

OTLP JSON (opentelemetry-proto ``docs/specification.md``, "JSON Protobuf Encoding"):
trace and span ids are hex strings, not base64; 64-bit integers (times, ``intValue``)
are decimal strings; enums are numbers; field names are lowerCamelCase.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from . import GatewayError
from ._tracing import Span

if TYPE_CHECKING:
    from ._metrics import ProxyMetrics

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})  # OTLP/HTTP spec: "Retryable Response Codes"
SCOPE = {"name": "meshfed.gateway", "version": "0.1.0"}
STATUS_ERROR = 2  # OTLP Status.StatusCode STATUS_CODE_ERROR
_MAX_RESPONSE_HEAD = 16384


class ExporterConfigError(GatewayError, ValueError):
    """An OTLP endpoint meshfed cannot use; ``url`` is the configured value."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"OTLP endpoint {url!r}: {why}")
        self.url = url


def _value(v: str | int | float | bool) -> dict[str, object]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def _attributes(pairs: Iterable[tuple[str, str | int | float | bool]]) -> list[dict[str, object]]:
    return [{"key": k, "value": _value(v)} for k, v in pairs]


def span_json(span: Span) -> dict[str, object]:
    """One span as an OTLP JSON object (empty optional fields left out, as the spec allows)."""
    out: dict[str, object] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.tracestate:
        out["traceState"] = span.tracestate
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    out.update(name=span.name, kind=span.kind.value, startTimeUnixNano=str(span.start_ns),
               endTimeUnixNano=str(span.end_ns), attributes=_attributes(span.attributes))
    if span.error:
        out["status"] = {"code": STATUS_ERROR}
    return out


def encode_spans(spans: Iterable[Span], resource: Mapping[str, str | int | float | bool]) -> bytes:
    """An ``ExportTraceServiceRequest`` body: one resource (``service.name`` and the node's
    attributes), one scope, the spans."""
    body = {"resourceSpans": [{
        "resource": {"attributes": _attributes(resource.items())},
        "scopeSpans": [{"scope": SCOPE, "spans": [span_json(s) for s in spans]}],
    }]}
    return json.dumps(body, separators=(",", ":")).encode()


class OtlpExporter:
    """Batches spans to one OTLP/HTTP endpoint (``http://`` only). A ``SpanSink``."""

    def __init__(self, url: str, *, resource: Mapping[str, str | int | float | bool],
                 max_queue: int = 2048, max_batch: int = 512, flush_interval: float = 1.0,
                 max_retries: int = 3, backoff: float = 0.1, timeout: float = 5.0,
                 shutdown_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ExporterConfigError(url, "only http://host[:port][/path] is supported")
        if max_queue < 1 or max_batch < 1 or max_retries < 0:
            raise ExporterConfigError(url, f"max_queue {max_queue!r} and max_batch {max_batch!r} must be >= 1, "
                                           f"max_retries {max_retries!r} >= 0")
        self.url = url
        self.resource = dict(resource)
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path or "/v1/traces"
        self.max_queue, self.max_batch, self.max_retries = max_queue, max_batch, max_retries
        self.flush_interval, self.backoff, self.timeout = flush_interval, backoff, timeout
        self.shutdown_timeout = shutdown_timeout
        self._queue: collections.deque[Span] = collections.deque()
        self._wake = trio.Event()
        self.exported = 0
        """Spans the endpoint accepted (2xx)."""
        self.dropped_queue_full = 0
        """Spans refused by ``submit`` because ``max_queue`` were waiting."""
        self.dropped_export_failed = 0
        """Spans of batches that failed for good (non-retryable answer or retries spent)."""
        self.retries = 0

    def submit(self, span: Span) -> None:
        """Queue a finished span; O(1), never waits. Full queue: the span is dropped and counted."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped_queue_full += 1
            return
        queue.append(span)
        if len(queue) >= self.max_batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def register_metrics(self, metrics: "ProxyMetrics") -> None:
        """Expose the counters as ``meshfed_tracing_spans_*`` of a ``ProxyMetrics``."""
        metrics.stat("meshfed_tracing_spans_exported_total").read_at_scrape(lambda: self.exported)
        dropped = metrics.stat("meshfed_tracing_spans_dropped_total")
        dropped.read_at_scrape(lambda: self.dropped_queue_full, "queue_full")
        dropped.read_at_scrape(lambda: self.dropped_export_failed, "export_failed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Export until cancelled; then one last bounded attempt for what is queued."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_interval) as interval:
                    await self._wake.wait()
                self._wake = trio.Event()
                # woken by a full batch: send full batches only, the rest waits for the interval
                await self.flush(full_batches_only=not interval.cancelled_caught)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(self.shutdown_timeout):
                await self.flush()
            raise

    async def flush(self, *, full_batches_only: bool = False) -> None:
        """Export queued spans now, batch by batch: all of them, or only full batches."""
        least = self.max_batch if full_batches_only else 1
        while len(self._queue) >= least:
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            await self._export(batch)

    async def _export(self, batch: list[Span]) -> None:
        body = encode_spans(batch, self.resource)
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await trio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with trio.fail_after(self.timeout):
                    status = await self._post(body)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError):
                continue
            if 200 <= status < 300:
                self.exported += len(batch)
                return
            if status not in RETRYABLE_STATUS:
                break
        self.dropped_export_failed += len(batch)

    async def _post(self, body: bytes) -> int:
        head = (f"POST {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        stream = await trio.open_tcp_stream(self._host, self._port)
        async with stream:
            await stream.send_all(head + body)
            buf = b""
            while b"\r\n" not in buf:
                chunk = await stream.receive_some(4096)
                if not chunk or len(buf) > _MAX_RESPONSE_HEAD:
                    raise ValueError("no status line from the OTLP endpoint")
                buf += chunk
        parts = buf.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ValueError(f"bad status line from the OTLP endpoint: {buf[:80]!r}")
        return int(parts[1])

    def __repr__(self) -> str:
        return (f"<OtlpExporter {self.url} queued={len(self._queue)} exported={self.exported} "
                f"dropped={self.dropped_queue_full}+{self.dropped_export_failed}>")
