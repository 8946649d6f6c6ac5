"""JSON access log lines in Istio's JSON format (``meshConfig.accessLogEncoding: JSON``),
with Envoy's response flags.

Keys and their order are Istio's ``EnvoyJSONLogFormatIstio`` (pilot
``pkg/model/telemetry_logging.go``, in the order of its text format), then two of
meshfed's: the peers' SPIFFE IDs (Envoy ``%DOWNSTREAM_PEER_URI_SAN%`` and
``%UPSTREAM_PEER_URI_SAN%``). As Envoy's JSON formatter does, a value that is not
available is ``null``, numbers are numbers, and a request without response flags has
``"response_flags":"-"``.

Not blocking the event loop: ``AccessLog.log`` encodes the line (a few microseconds)
and appends it to an in-memory buffer; it never touches the file. The ``run`` task
(in the proxy's nursery) hands the buffered lines to a worker thread
(``trio.to_thread.run_sync``) every ``flush_interval`` or once ``flush_bytes`` are
waiting, so a slow disk or a full stdout pipe stalls only that thread. While it is
stalled, lines keep buffering up to ``max_buffer_bytes``; past that they are dropped
and counted (``dropped``), so memory stays bounded whatever the sink does.
"""

from __future__ import annotations

import inspect
import io
import json
import operator
import time
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote  # the C escaper behind json.dumps
from typing import IO, TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._metrics import ProxyMetrics


@dataclass(slots=True)
class AccessLogEntry:
    """One request or TCP connection, filled in by the proxy as it learns each value (a
    per-request record, hence mutable). None is logged as ``null``."""

    start_time: float = 0.0
    """Unix seconds when the first byte arrived (``%START_TIME%``, logged as ISO 8601 UTC, ms)."""
    route_name: str | None = None
    method: str | None = None
    path: str | None = None
    """The original path (``X-ENVOY-ORIGINAL-PATH?:PATH``): before any rewrite."""
    protocol: str | None = None
    """``HTTP/1.1``, ``HTTP/2``; None for TCP."""
    response_code: int = 0
    """Status sent downstream; 0 when none was (Envoy)."""
    response_flags: str = "-"
    """``format_flags(...)``."""
    response_code_details: str | None = None
    """Envoy's reason: ``via_upstream``, ``rbac_access_denied_matched_policy[none]``, ..."""
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: int = 0
    """Body bytes received from downstream."""
    bytes_sent: int = 0
    """Body bytes sent downstream."""
    duration: int = 0
    """Milliseconds from the first byte received to the last byte sent."""
    upstream_service_time: str | None = None
    """``x-envoy-upstream-service-time`` of the response (ms, as the header's text)."""
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    """``ip:port`` of the chosen endpoint."""
    upstream_cluster: str | None = None
    """``outbound|9080|v1|reviews.bookinfo.svc.cluster.local``, ``inbound|9080||``."""
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    downstream_peer_uri_san: str | None = None
    """The caller's SPIFFE ID (inbound, under mTLS)."""
    upstream_peer_uri_san: str | None = None
    """The upstream's SPIFFE ID (outbound, under mTLS)."""


KEYS: tuple[str, ...] = tuple(AccessLogEntry.__dataclass_fields__)
"""The JSON keys, in output order."""

_fields = operator.attrgetter(*KEYS)
# trio renamed run_sync's ``cancellable`` to ``abandon_on_cancel`` (0.23); take whichever exists.
_ABANDON = {"abandon_on_cancel" if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
            else "cancellable": True}

_last_second = -1
_last_prefix = ""


def format_start_time(ts: float) -> str:
    """``2024-05-01T12:00:00.123Z``, Envoy's ``%START_TIME%`` default; the seconds part is
    cached, since consecutive requests mostly share it."""
    global _last_second, _last_prefix
    ms = int(ts * 1000)  # not (ts - sec) * 1000: 1714564800.123 would give 122
    sec = ms // 1000
    if sec != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _last_second = sec
    return f"{_last_prefix}.{ms - sec * 1000:03d}Z"


_PREFIXES = tuple(("{" if i == 0 else ",") + json.dumps(k) + ":" for i, k in enumerate(KEYS))
_FIRST, _REST = _PREFIXES[0], _PREFIXES[1:]


def encode_entry(entry: AccessLogEntry) -> bytes:
    """One log line, newline included. Hand-rolled over the C string escaper: twice as
    fast as ``json.dumps`` of a dict here, and the output is the same JSON."""
    parts: list[str] = []
    add = parts.append
    start, *values = _fields(entry)
    add(_FIRST)
    add(_quote(format_start_time(start)))
    for prefix, value in zip(_REST, values):
        add(prefix)
        if value is None:
            add("null")
        elif type(value) is str:
            add(_quote(value))
        else:
            add("%d" % value)
    add("}\n")
    return "".join(parts).encode("utf-8", "backslashreplace")


class AccessLog:
    """Where access log lines go: a file object, or nowhere (``AccessLog.off()``). Check
    ``enabled`` before building an entry, so a disabled log costs nothing per request."""

    def __init__(self, sink: IO[str] | IO[bytes] | None, *, max_buffer_bytes: int = 1 << 20,
                 flush_bytes: int = 64 << 10, flush_interval: float = 0.1) -> None:
        if max_buffer_bytes < 1 or flush_bytes < 1 or flush_interval <= 0:
            raise ValueError("max_buffer_bytes and flush_bytes must be >= 1 and flush_interval > 0, got "
                             f"{max_buffer_bytes!r}, {flush_bytes!r}, {flush_interval!r}")
        self.sink = sink
        self._owned = False  # opened by to_path: close() closes it
        self._text = isinstance(sink, io.TextIOBase)
        self.max_buffer_bytes, self.flush_bytes, self.flush_interval = max_buffer_bytes, flush_bytes, flush_interval
        self._buf: list[bytes] = []
        self._buffered = 0
        self._wake = trio.Event()
        self.written = 0
        """Lines handed to the sink."""
        self.dropped = 0
        """Lines dropped because ``max_buffer_bytes`` were already waiting."""

    @classmethod
    def off(cls) -> "AccessLog":
        return cls(None)

    @classmethod
    def to_path(cls, path: str, *, max_buffer_bytes: int = 1 << 20, flush_bytes: int = 64 << 10,
                flush_interval: float = 0.1) -> "AccessLog":
        """Append to a file (``/dev/stdout`` works too), opened unbuffered in binary mode."""
        log = cls(open(path, "ab", buffering=0), max_buffer_bytes=max_buffer_bytes,  # noqa: SIM115
                  flush_bytes=flush_bytes, flush_interval=flush_interval)
        log._owned = True
        return log

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def log(self, entry: AccessLogEntry) -> None:
        """Buffer one line; never blocks. Dropped and counted when the buffer is full."""
        if self.sink is None:
            return
        line = encode_entry(entry)
        if self._buffered + len(line) > self.max_buffer_bytes:
            self.dropped += 1
            return
        self._buf.append(line)
        self._buffered += len(line)
        if self._buffered >= self.flush_bytes:
            self._wake.set()

    def register_metrics(self, metrics: "ProxyMetrics") -> None:
        """Expose ``dropped`` as ``meshfed_access_log_dropped_total`` of a ``ProxyMetrics``."""
        metrics.stat("meshfed_access_log_dropped_total").read_at_scrape(lambda: self.dropped)

    def _take(self) -> bytes:
        data, n = b"".join(self._buf), len(self._buf)
        self._buf, self._buffered = [], 0
        self.written += n
        return data

    def _write(self, data: bytes) -> None:
        assert self.sink is not None
        if self._text:
            self.sink.write(data.decode("utf-8"))  # type: ignore[call-overload]
        else:
            self.sink.write(data)  # type: ignore[arg-type]
        self.sink.flush()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write buffered lines from a worker thread until cancelled; then write what is
        left, bounded to one second."""
        task_status.started()
        if self.sink is None:
            return
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                if self._buf:
                    await trio.to_thread.run_sync(self._write, self._take())
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                if self._buf:
                    await trio.to_thread.run_sync(self._write, self._take(), **_ABANDON)
            raise

    def flush(self) -> None:
        """Write what is buffered now, from the calling thread (shutdown outside trio, tests)."""
        if self.sink is not None and self._buf:
            self._write(self._take())

    def close(self) -> None:
        """Flush, and close the file if ``to_path`` opened it (a caller's file stays open)."""
        self.flush()
        if self._owned and self.sink is not None:
            self.sink.close()

    def __repr__(self) -> str:
        where = "off" if self.sink is None else getattr(self.sink, "name", type(self.sink).__name__)
        return f"<AccessLog {where} buffered={self._buffered}B written={self.written} dropped={self.dropped}>"
