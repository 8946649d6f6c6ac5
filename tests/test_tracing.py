"""x-request-id, W3C Trace Context and B3 propagation, spans, and OTLP/HTTP JSON export
to a receiver running in the test on 127.0.0.1."""

import functools
import json
import random
import re
import socket

import pytest
import trio

from gateway import ExporterConfigError, OtlpExporter, ProxyMetrics, Span, SpanKind, TraceContext, Tracer, encode_spans
from gateway._tracing import new_request_id, parse_b3_multi, parse_b3_single, parse_traceparent

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
BASE = [(b"host", b"reviews:9080"), (b"user-agent", b"curl/8.5.0")]


class ListSink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, span: Span) -> None:
        self.spans.append(span)


def tracer(percent: float = 100.0, sink: ListSink | None = None) -> Tracer:
    return Tracer(sink or ListSink(), sampling_percent=percent, rng=random.Random(7))


def header(headers: list, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


# -- parsing ------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (f"00-{TRACE}-{CALLER}-01", TraceContext(TRACE, CALLER, True)),
    (f"00-{TRACE}-{CALLER}-00", TraceContext(TRACE, CALLER, False)),
    (f"00-{TRACE}-{CALLER}-03", TraceContext(TRACE, CALLER, True)),  # unknown flag bits ignored
    (f"01-{TRACE}-{CALLER}-01-future", TraceContext(TRACE, CALLER, True)),  # higher version may carry more
    (f"00-{TRACE}-{CALLER}-01-extra", None),  # version 00 is exactly 55 characters
    (f"ff-{TRACE}-{CALLER}-01", None),
    (f"00-{TRACE.upper()}-{CALLER}-01", None),
    (f"00-{'0' * 32}-{CALLER}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE}-{CALLER}", None),
    ("", None),
])
def test_traceparent_is_validated_as_w3c_trace_context_says(value: str, expected: TraceContext | None) -> None:
    assert parse_traceparent(value.encode()) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (f"{TRACE}-{CALLER}-1", TraceContext(TRACE, CALLER, True, b3_single=True)),
    (f"{TRACE}-{CALLER}-0-{'e457b5a2e4d86bd1'}", TraceContext(TRACE, CALLER, False, b3_single=True)),
    (f"{TRACE}-{CALLER}-d", TraceContext(TRACE, CALLER, True, True, b3_single=True)),
    (f"{TRACE}-{CALLER}", TraceContext(TRACE, CALLER, None, b3_single=True)),
    (f"{'a3ce929d0e0e4736'}-{CALLER}-1", TraceContext("0000000000000000a3ce929d0e0e4736", CALLER, True,
                                                        b3_single=True)),
    ("0", TraceContext(sampled=False, b3_single=True)),
    ("d", TraceContext(sampled=True, debug=True, b3_single=True)),
    (f"{TRACE}-{CALLER}-x", None),
    ("abc", None),
])
def test_single_b3_header_forms(value: str, expected: TraceContext | None) -> None:
    assert parse_b3_single(value.encode()) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": CALLER.encode(), b"x-b3-sampled": b"1"},
     TraceContext(TRACE, CALLER, True)),
    ({b"x-b3-traceid": b"a3ce929d0e0e4736", b"x-b3-spanid": CALLER.encode()},
     TraceContext("0000000000000000a3ce929d0e0e4736", CALLER, None)),
    ({b"x-b3-traceid": TRACE.encode(), b"x-b3-spanid": CALLER.encode(), b"x-b3-flags": b"1"},
     TraceContext(TRACE, CALLER, True, True)),
    ({b"x-b3-sampled": b"false"}, TraceContext(sampled=False)),
    ({b"x-b3-traceid": b"nothex", b"x-b3-spanid": CALLER.encode(), b"x-b3-sampled": b"1"}, TraceContext(sampled=True)),
    ({}, None),
])
def test_multi_b3_headers(fields: dict, expected: TraceContext | None) -> None:
    assert parse_b3_multi(fields) == expected


# -- x-request-id -------------------------------------------------------------------
@pytest.mark.parametrize("t", [Tracer(), tracer()], ids=["tracing off", "tracing on"])
def test_request_id_is_kept_when_present_and_generated_when_absent(t: Tracer) -> None:
    hop, out = t.begin(BASE + [(b"x-request-id", b"abc-123")], name="r", kind=SpanKind.CLIENT)
    assert (hop.request_id, header(out, b"x-request-id")) == (b"abc-123", [b"abc-123"])
    hop, out = t.begin(BASE, name="r", kind=SpanKind.CLIENT)
    assert UUID4.fullmatch(hop.request_id) and header(out, b"x-request-id") == [hop.request_id]
    assert new_request_id() != new_request_id()


# -- propagation ----------------------------------------------------------------------
def test_tracing_off_passes_trace_headers_through_untouched() -> None:
    incoming = BASE + [(b"traceparent", f"00-{TRACE}-{CALLER}-01".encode()), (b"tracestate", b"k=v"),
                       (b"x-b3-spanid", CALLER.encode()), (b"x-request-id", b"r1")]
    hop, out = Tracer().begin(incoming, name="r", kind=SpanKind.CLIENT)
    assert out == incoming and hop.finish(status=200) is None
    assert repr(Tracer()) == "<Tracer off sampling=1%>"


def test_w3c_parent_gets_a_new_span_id_per_hop_in_every_format() -> None:
    incoming = BASE + [(b"traceparent", f"00-{TRACE}-{CALLER}-01".encode()), (b"tracestate", b"congo=t61rcWkgMzE"),
                       (b"x-request-id", b"r1")]
    hop, out = tracer().begin(incoming, name="reviews:9080/*", kind=SpanKind.CLIENT)
    assert (hop.trace_id, hop.parent_span_id, hop.sampled) == (TRACE, CALLER, True)
    assert hop.span_id not in (None, CALLER) and len(hop.span_id or "") == 16
    assert header(out, b"traceparent") == [f"00-{TRACE}-{hop.span_id}-01".encode()]
    assert header(out, b"tracestate") == [b"congo=t61rcWkgMzE"]
    assert (header(out, b"x-b3-traceid"), header(out, b"x-b3-spanid"), header(out, b"x-b3-parentspanid"),
            header(out, b"x-b3-sampled")) == ([TRACE.encode()], [hop.span_id.encode()], [CALLER.encode()], [b"1"])
    assert header(out, b"b3") == []  # the single form is written only when the caller used it
    assert out[:2] == BASE


def test_two_hops_chain_parent_to_child() -> None:
    first, out1 = tracer().begin(BASE, name="out", kind=SpanKind.CLIENT)
    second, out2 = tracer().begin(out1, name="in", kind=SpanKind.SERVER)
    assert (second.trace_id, second.parent_span_id) == (first.trace_id, first.span_id)
    assert first.parent_span_id is None and header(out2, b"x-request-id") == [first.request_id]


def test_b3_single_caller_gets_b3_single_back_with_debug_kept() -> None:
    incoming = BASE + [(b"b3", f"{TRACE}-{CALLER}-d".encode())]
    hop, out = tracer(percent=0).begin(incoming, name="r", kind=SpanKind.SERVER)
    assert hop.sampled  # debug forces sampling whatever the rate
    assert header(out, b"b3") == [f"{TRACE}-{hop.span_id}-d-{CALLER}".encode()]
    assert header(out, b"x-b3-flags") == [b"1"]


def test_sixty_four_bit_b3_trace_ids_are_padded_for_w3c() -> None:
    incoming = BASE + [(b"x-b3-traceid", b"a3ce929d0e0e4736"), (b"x-b3-spanid", CALLER.encode()),
                       (b"x-b3-sampled", b"1")]
    hop, out = tracer().begin(incoming, name="r", kind=SpanKind.CLIENT)
    assert header(out, b"traceparent") == [f"00-0000000000000000a3ce929d0e0e4736-{hop.span_id}-01".encode()]
    assert header(out, b"x-b3-spanid") == [hop.span_id.encode()]  # the caller's replaced, not repeated


@pytest.mark.parametrize(("incoming", "percent", "sampled"), [
    ([], 100.0, True),
    ([], 0.0, False),
    ([(b"traceparent", f"00-{TRACE}-{CALLER}-00".encode())], 100.0, False),  # the caller's decision wins
    ([(b"traceparent", f"00-{TRACE}-{CALLER}-01".encode())], 0.0, True),
    ([(b"x-b3-sampled", b"0")], 100.0, False),
])
def test_sampling_decision(incoming: list, percent: float, sampled: bool) -> None:
    hop, out = tracer(percent).begin(BASE + incoming, name="r", kind=SpanKind.CLIENT)
    assert hop.sampled is sampled
    assert header(out, b"traceparent")[0].endswith(b"-01" if sampled else b"-00")
    assert header(out, b"x-b3-sampled") == [b"1" if sampled else b"0"]


def test_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() -> None:
    incoming = BASE + [(b"traceparent", b"00-zz-bad-01"), (b"tracestate", b"k=v")]
    hop, out = tracer().begin(incoming, name="r", kind=SpanKind.CLIENT)
    assert hop.parent_span_id is None and hop.trace_id != TRACE
    assert header(out, b"tracestate") == [] and len(header(out, b"traceparent")) == 1


def test_sampling_percent_is_checked() -> None:
    with pytest.raises(ValueError) as e:
        Tracer(ListSink(), sampling_percent=101)
    assert str(e.value) == "sampling_percent must be within 0..100, got 101"


# -- spans ----------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "error"), [(200, False), (404, False), (503, True), (0, True)])
def test_finish_reports_a_span_with_envoys_tags(status: int, error: bool) -> None:
    sink = ListSink()
    hop, _ = tracer(sink=sink).begin(BASE + [(b"x-request-id", b"r1")], name="reviews:9080/*",
                                     kind=SpanKind.CLIENT, start_ns=1_000)
    span = hop.finish(status=status, method="GET", url="http://reviews:9080/r", protocol="HTTP/1.1",
                      flags="UO" if error else "-", upstream_cluster="outbound|9080||reviews", peer="127.1.2.7:9080",
                      end_ns=5_000)
    assert sink.spans == [span] and span is not None
    assert (span.kind, span.start_ns, span.end_ns, span.error) == (SpanKind.CLIENT, 1_000, 5_000, error)
    tags = dict(span.attributes)
    assert (tags["http.status_code"], tags["guid:x-request-id"], tags["upstream_cluster"], tags["http.method"]) == \
        (status, "r1", "outbound|9080||reviews", "GET")
    assert tags.get("error") is (True if error else None)


def test_unsampled_hop_reports_nothing() -> None:
    sink = ListSink()
    hop, _ = tracer(percent=0, sink=sink).begin(BASE, name="r", kind=SpanKind.CLIENT)
    assert hop.finish(status=200) is None and sink.spans == []


# -- OTLP encoding ----------------------------------------------------------------------
def test_otlp_json_uses_hex_ids_string_int64s_and_enum_numbers() -> None:
    root = Span(TRACE, CALLER, None, "in", SpanKind.SERVER, 1_700_000_000_000_000_000, 1_700_000_000_002_000_000,
                (("http.status_code", 503), ("http.method", "GET"), ("error", True), ("ratio", 0.5)), True, "k=v")
    child = Span(TRACE, "00f067aa0ba902b7", CALLER, "out", SpanKind.CLIENT, 10, 20)
    doc = json.loads(encode_spans([root, child], {"service.name": "reviews.bookinfo", "pid": 42}))
    rs = doc["resourceSpans"][0]
    assert rs["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "reviews.bookinfo"}},
                                            {"key": "pid", "value": {"intValue": "42"}}]
    assert rs["scopeSpans"][0]["scope"] == {"name": "meshfed.gateway", "version": "0.1.0"}
    first, second = rs["scopeSpans"][0]["spans"]
    assert first == {
        "traceId": TRACE, "spanId": CALLER, "traceState": "k=v", "name": "in", "kind": 2,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000002000000",
        "attributes": [{"key": "http.status_code", "value": {"intValue": "503"}},
                       {"key": "http.method", "value": {"stringValue": "GET"}},
                       {"key": "error", "value": {"boolValue": True}},
                       {"key": "ratio", "value": {"doubleValue": 0.5}}],
        "status": {"code": 2}}
    assert (second["parentSpanId"], second["kind"], "status" in second) == (CALLER, 3, False)


# -- OTLP export to a receiver in the test ------------------------------------------------
class Receiver:
    """A tiny OTLP/HTTP endpoint: answers each POST with the next status from ``statuses``
    (then 200) and keeps the JSON bodies."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.statuses = list(statuses)
        self.posts: list[tuple[bytes, dict]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.posts.append((head, json.loads(body)))
        await stream.send_all(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % status)
        await stream.aclose()

    def spans(self) -> list[dict]:
        return [s for _, d in self.posts for s in d["resourceSpans"][0]["scopeSpans"][0]["spans"]]


async def serve(nursery: trio.Nursery, receiver: Receiver) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def spans(n: int) -> list[Span]:
    return [Span(TRACE, f"{i + 1:016x}", None, f"s{i}", SpanKind.CLIENT, i, i + 1) for i in range(n)]


async def test_exporter_posts_batches_to_the_otlp_endpoint() -> None:
    receiver = Receiver()
    with trio.fail_after(5):
        async with trio.open_nursery() as outer:
            url = await serve(outer, receiver)
            exporter = OtlpExporter(url, resource={"service.name": "productpage"}, max_batch=3, flush_interval=10)
            async with trio.open_nursery() as nursery:
                await nursery.start(exporter.run)
                for s in spans(7):
                    exporter.submit(s)
                while exporter.exported < 6:  # two full batches go at once; the seventh waits for the interval
                    await trio.sleep(0.005)
                assert exporter.queued == 1
                nursery.cancel_scope.cancel()  # cancelling the exporter flushes what is left
            outer.cancel_scope.cancel()
    assert [s["name"] for s in receiver.spans()] == [f"s{i}" for i in range(7)]
    head = receiver.posts[0][0].lower()
    assert head.startswith(b"post /v1/traces http/1.1") and b"content-type: application/json" in head
    resource = receiver.posts[0][1]["resourceSpans"][0]["resource"]
    assert resource["attributes"] == [{"key": "service.name", "value": {"stringValue": "productpage"}}]


async def test_retryable_answers_are_retried_then_succeed() -> None:
    receiver = Receiver(statuses=(503, 429))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            exporter = OtlpExporter(await serve(nursery, receiver) + "/custom", resource={}, backoff=0.01)
            for s in spans(2):
                exporter.submit(s)
            await exporter.flush()
            nursery.cancel_scope.cancel()
    assert (exporter.exported, exporter.retries, exporter.dropped_export_failed) == (2, 2, 0)
    assert receiver.posts[0][0].lower().startswith(b"post /custom ")


async def test_non_retryable_answer_drops_the_batch_and_counts_it() -> None:
    receiver = Receiver(statuses=(400,))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            exporter = OtlpExporter(await serve(nursery, receiver), resource={}, backoff=0.01)
            m = ProxyMetrics()
            exporter.register_metrics(m)
            for s in spans(4):
                exporter.submit(s)
            await exporter.flush()
            nursery.cancel_scope.cancel()
    assert (exporter.exported, exporter.retries, exporter.dropped_export_failed) == (0, 0, 4)
    assert m.value("meshfed_tracing_spans_dropped_total", reason="export_failed") == 4


async def test_unreachable_endpoint_gives_up_after_bounded_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    exporter = OtlpExporter(f"http://127.0.0.1:{port}", resource={}, max_retries=2, backoff=0.01, timeout=1)
    exporter.submit(spans(1)[0])
    with trio.fail_after(5):
        await exporter.flush()
    assert (exporter.retries, exporter.dropped_export_failed, exporter.queued) == (2, 1, 0)


def test_submit_never_waits_and_drops_when_the_queue_is_full() -> None:
    exporter = OtlpExporter("http://127.0.0.1:4318", resource={}, max_queue=5)
    m = ProxyMetrics()
    exporter.register_metrics(m)
    for s in spans(8):
        exporter.submit(s)
    assert (exporter.queued, exporter.dropped_queue_full) == (5, 3)
    assert m.value("meshfed_tracing_spans_dropped_total", reason="queue_full") == 3
    assert repr(exporter) == "<OtlpExporter http://127.0.0.1:4318 queued=5 exported=0 dropped=3+0>"


@pytest.mark.parametrize("url", ["https://collector:4318", "collector:4318", "http://"])
def test_only_plain_http_endpoints_are_accepted(url: str) -> None:
    with pytest.raises(ExporterConfigError) as e:
        OtlpExporter(url, resource={})
    assert str(e.value) == f"OTLP endpoint {url!r}: only http://host[:port][/path] is supported"
    assert e.value.url == url
