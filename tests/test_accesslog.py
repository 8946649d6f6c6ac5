"""JSON access log lines in Istio's format, and a writer that never blocks the event loop."""

import io
import json
import threading

import pytest
import trio

from gateway import AccessLog, AccessLogEntry, ProxyMetrics
from gateway._accesslog import KEYS, encode_entry, format_start_time

ISTIO_JSON_KEYS = [  # pilot EnvoyJSONLogFormatIstio, in the order of Istio's text format
    "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "connection_termination_details", "upstream_transport_failure_reason",
    "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for", "user_agent",
    "request_id", "authority", "upstream_host", "upstream_cluster", "upstream_local_address",
    "downstream_local_address", "downstream_remote_address", "requested_server_name",
]


def entry(**kw: object) -> AccessLogEntry:
    base = dict(start_time=1714564800.123, method="GET", path="/reviews/0", protocol="HTTP/1.1", response_code=200,
                bytes_sent=295, duration=3, upstream_service_time="2", user_agent="curl/8.5.0",
                request_id="7f1c3a9e-1d2b-4c5e-9f00-112233445566", authority="reviews:9080",
                upstream_host="127.1.2.7:9080", upstream_cluster="outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
                response_code_details="via_upstream", downstream_remote_address="127.1.1.5:40312",
                upstream_peer_uri_san="spiffe://west.local/ns/bookinfo/sa/reviews")
    base.update(kw)
    return AccessLogEntry(**base)  # type: ignore[arg-type]


def test_keys_are_istios_json_keys_then_the_peer_sans() -> None:
    assert list(KEYS) == ISTIO_JSON_KEYS + ["downstream_peer_uri_san", "upstream_peer_uri_san"]


def test_a_line_is_one_json_object_with_nulls_numbers_and_flags() -> None:
    line = encode_entry(entry())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert list(doc) == list(KEYS)
    assert doc == {
        "start_time": "2024-05-01T12:00:00.123Z", "route_name": None, "method": "GET", "path": "/reviews/0",
        "protocol": "HTTP/1.1", "response_code": 200, "response_flags": "-", "response_code_details": "via_upstream",
        "connection_termination_details": None, "upstream_transport_failure_reason": None, "bytes_received": 0,
        "bytes_sent": 295, "duration": 3, "upstream_service_time": "2", "x_forwarded_for": None,
        "user_agent": "curl/8.5.0", "request_id": "7f1c3a9e-1d2b-4c5e-9f00-112233445566",
        "authority": "reviews:9080", "upstream_host": "127.1.2.7:9080",
        "upstream_cluster": "outbound|9080|v2|reviews.bookinfo.svc.cluster.local", "upstream_local_address": None,
        "downstream_local_address": None, "downstream_remote_address": "127.1.1.5:40312",
        "requested_server_name": None, "downstream_peer_uri_san": None,
        "upstream_peer_uri_san": "spiffe://west.local/ns/bookinfo/sa/reviews"}


@pytest.mark.parametrize("nasty", ['/a"b\\c', "/line\nbreak\r\t", "/caf\u00e9/\u2603", "\x00\x1f", "/\udcff"])
def test_any_path_or_header_text_stays_one_valid_line(nasty: str) -> None:
    line = encode_entry(entry(path=nasty, user_agent=nasty, response_flags="UO,URX"))
    assert line.count(b"\n") == 1
    doc = json.loads(line)
    if "\udcff" not in nasty:  # a lone surrogate (undecodable header byte) is escaped, never fatal
        assert (doc["path"], doc["user_agent"]) == (nasty, nasty)
    assert doc["response_flags"] == "UO,URX"


@pytest.mark.parametrize(("ts", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1714564800.123, "2024-05-01T12:00:00.123Z"),
    (1714564800.999, "2024-05-01T12:00:00.999Z"),
    (1714564801.0, "2024-05-01T12:00:01.000Z"),
])
def test_start_time_is_envoys_iso8601_utc_with_milliseconds(ts: float, text: str) -> None:
    assert format_start_time(ts) == text


def test_off_log_is_disabled_and_takes_nothing() -> None:
    log = AccessLog.off()
    log.log(entry())
    log.flush()
    assert (log.enabled, log.written, log.dropped) == (False, 0, 0)
    assert repr(log) == "<AccessLog off buffered=0B written=0 dropped=0>"


@pytest.mark.parametrize("sink", [io.BytesIO, io.StringIO])
def test_flush_writes_buffered_lines_to_binary_and_text_sinks(sink: type) -> None:
    out = sink()
    log = AccessLog(out)
    log.log(entry(response_code=200))
    log.log(entry(response_code=503, response_flags="UO"))
    assert out.getvalue() in (b"", "")  # nothing touches the sink until a flush
    log.flush()
    text = out.getvalue() if isinstance(out, io.StringIO) else out.getvalue().decode()
    assert [json.loads(line)["response_code"] for line in text.splitlines()] == [200, 503]
    assert log.written == 2


def test_full_buffer_drops_and_counts_lines() -> None:
    one = len(encode_entry(entry()))
    m = ProxyMetrics()
    log = AccessLog(io.BytesIO(), max_buffer_bytes=one * 3)
    log.register_metrics(m)
    for _ in range(5):
        log.log(entry())
    assert (log.dropped, m.value("meshfed_access_log_dropped_total")) == (2, 2)
    log.flush()
    assert log.written == 3


def test_to_path_appends_to_a_file(tmp_path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b"earlier\n")
    log = AccessLog.to_path(str(path))
    log.log(entry(method="POST"))
    log.close()
    assert log.sink is not None and log.sink.closed
    first, second = path.read_bytes().splitlines()
    assert (first, json.loads(second)["method"]) == (b"earlier", "POST")


@pytest.mark.parametrize(("max_buffer_bytes", "flush_bytes", "flush_interval"), [(0, 1, 0.1), (1, 0, 0.1), (1, 1, 0)])
def test_writer_limits_must_be_positive(max_buffer_bytes: int, flush_bytes: int, flush_interval: float) -> None:
    with pytest.raises(ValueError) as e:
        AccessLog(io.BytesIO(), max_buffer_bytes=max_buffer_bytes, flush_bytes=flush_bytes,
                  flush_interval=flush_interval)
    assert str(e.value) == ("max_buffer_bytes and flush_bytes must be >= 1 and flush_interval > 0, got "
                            f"{max_buffer_bytes!r}, {flush_bytes!r}, {flush_interval!r}")


async def test_run_writes_from_a_thread_and_flushes_what_is_left_when_cancelled() -> None:
    out = io.BytesIO()
    log = AccessLog(out, flush_interval=0.01)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.log(entry(response_code=201))
            while log.written < 1:
                await trio.sleep(0.005)
            log.log(entry(response_code=202))  # still buffered when the task is cancelled
            nursery.cancel_scope.cancel()
    assert [json.loads(line)["response_code"] for line in out.getvalue().splitlines()] == [201, 202]


class StuckSink(io.RawIOBase):
    """A sink whose writes block until released, like stdout piped to a stalled reader."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.release.wait(5)
        self.data += b
        return len(b)


async def test_a_stalled_sink_never_blocks_logging_and_memory_stays_bounded() -> None:
    sink = StuckSink()
    one = len(encode_entry(entry()))
    log = AccessLog(sink, max_buffer_bytes=one * 10, flush_bytes=1, flush_interval=0.01)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            log.log(entry())  # taken by the writer thread, which then blocks
            while log.written < 1:
                await trio.sleep(0.005)
            before = trio.current_time()
            for _ in range(100):
                log.log(entry())
            assert trio.current_time() - before < 0.5
            assert log.dropped == 90
            sink.release.set()
            while log.written < 11:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    assert sink.data.count(b"\n") == 11
