"""Request ids and trace propagation: x-request-id, W3C Trace Context and B3, one span per hop.

Theory of operation. Every request passes ``Tracer.begin(headers, ...)`` once, which
reads the caller's context in one pass over the headers and returns the ``Hop`` plus
the headers to send on. ``x-request-id`` is kept when present and a UUID4 is generated
when absent, as Envoy does. When tracing is on, the proxy's hop gets a new span id whose
parent is the caller's span; the upstream sees that new id in ``traceparent`` (W3C,
version 00) and in the B3 headers (``x-b3-*``, and ``b3`` when the caller used the
single-header form) - Istio asks applications to forward both families, so both are
written whatever arrived. ``tracestate`` is passed on untouched. When tracing is off,
trace headers pass through unchanged (a rewritten span id that nobody reports would
break the application's own traces). ``Hop.finish`` turns a sampled hop into a
``Span`` and hands it to the ``SpanSink`` (the OTLP exporter), which must not block.

Precedence when several arrive: a valid ``traceparent``, then ``b3``, then ``x-b3-*``;
an invalid one is ignored, as the specs say, and a new trace starts.
"""

from __future__ import annotations

import enum
import operator
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Protocol

from ._events import Headers

REQUEST_ID = b"x-request-id"
TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_ID = b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid"
B3_SAMPLED, B3_FLAGS = b"x-b3-sampled", b"x-b3-flags"
_REPLACED = frozenset({TRACEPARENT, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_ID, B3_SAMPLED, B3_FLAGS})
_READ = _REPLACED | {REQUEST_ID, TRACESTATE}
_NAME = operator.itemgetter(0)

DEFAULT_SAMPLING_PERCENT = 1.0  # Istio meshConfig.defaultConfig.tracing.sampling default

# W3C Trace Context §3.2.2: version-format; lowercase hex only, version ff is invalid.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_B3_SINGLE = re.compile(rb"([0-9a-f]{16}|[0-9a-f]{32})-([0-9a-f]{16})(?:-([01d]))?(?:-([0-9a-f]{16}))?")
_HEX_TRACE = re.compile(rb"[0-9a-f]{16}|[0-9a-f]{32}")
_HEX_SPAN = re.compile(rb"[0-9a-f]{16}")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class SpanKind(enum.Enum):
    """OTLP ``Span.SpanKind``; the value is the OTLP enum number. The outbound sidecar's
    hop is a CLIENT span, the inbound sidecar's a SERVER span (Envoy egress/ingress)."""

    SERVER = 2
    CLIENT = 3


@dataclass(frozen=True, slots=True)
class TraceContext:
    """What the caller sent. ``trace_id`` is 32 hex digits (64-bit B3 ids are left-padded
    with zeros, as OpenTelemetry's B3 propagator does); ``sampled`` None means no decision."""

    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool | None = None
    debug: bool = False
    b3_single: bool = False
    """The caller used the single ``b3`` header: it is rewritten too."""


def parse_traceparent(value: bytes) -> TraceContext | None:
    """A ``traceparent`` value, or None when invalid (W3C Trace Context §3.2): version ff,
    version 00 with trailing data, all-zero ids and uppercase hex are all invalid."""
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m[1] == b"ff" or (m[1] == b"00" and m[5] is not None):
        return None
    trace_id, span_id = m[2].decode(), m[3].decode()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, bool(int(m[4], 16) & 1))


def parse_b3_single(value: bytes) -> TraceContext | None:
    """A ``b3`` value: ``{trace}-{span}[-{sampling}[-{parent}]]`` or a bare sampling
    state (``0``, ``1`` or ``d`` for debug); None when invalid (openzipkin/b3-propagation)."""
    if value in (b"0", b"1", b"d"):
        return TraceContext(sampled=value != b"0", debug=value == b"d", b3_single=True)
    m = _B3_SINGLE.fullmatch(value)
    if m is None:
        return None
    state = m[3]
    return TraceContext(m[1].decode().rjust(32, "0"), m[2].decode(),
                        None if state is None else state != b"0", state == b"d", b3_single=True)


def parse_b3_multi(fields: dict[bytes, bytes]) -> TraceContext | None:
    """The ``x-b3-*`` headers; ``x-b3-flags: 1`` (debug) implies sampled. Ids that are not
    both valid leave only the sampling decision; None when nothing usable arrived."""
    flags, sampled = fields.get(B3_FLAGS), fields.get(B3_SAMPLED)
    debug = flags == b"1"
    decision = True if debug else {b"1": True, b"true": True, b"0": False, b"false": False}.get(sampled or b"")
    trace, span = fields.get(B3_TRACE_ID), fields.get(B3_SPAN_ID)
    if trace is not None and span is not None and _HEX_TRACE.fullmatch(trace) and _HEX_SPAN.fullmatch(span):
        return TraceContext(trace.decode().rjust(32, "0"), span.decode(), decision, debug)
    return None if decision is None else TraceContext(sampled=decision, debug=debug)


@dataclass(frozen=True, slots=True)
class Span:
    """One finished hop, as exported (OTLP ``Span``). Times are Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: tuple[tuple[str, str | int | float | bool], ...] = ()
    error: bool = False
    """OTLP status ERROR: a 5xx, or no response at all (status 0)."""
    tracestate: str = ""


class SpanSink(Protocol):
    """Takes finished spans; must return at once (the OTLP exporter queues or drops)."""

    def submit(self, span: Span) -> None: ...


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, variant 10 (RFC 4122 §4.4)
_id_bits = random.Random(os.urandom(32)).getrandbits


def new_request_id() -> bytes:
    """A random UUID4 in its text form, as Envoy generates for ``x-request-id``.

    The bits come from a Mersenne Twister seeded from the OS once per process, as
    Envoy's own random generator does: a request id must be unique, not secret, and a
    ``getrandom`` syscall per request cost more than the rest of this function."""
    h = b"%032x" % ((_id_bits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class Hop:
    """This proxy's part of one request: its request id and, when traced, its span ids.
    Mutable per-request state; ``finish`` once when the response is done."""

    __slots__ = ("request_id", "trace_id", "span_id", "parent_span_id", "sampled", "name", "kind",
                 "start_ns", "tracestate", "_sink")

    def __init__(self, request_id: bytes, trace_id: str | None = None, span_id: str | None = None,
                 parent_span_id: str | None = None, sampled: bool = False, name: str = "",
                 kind: SpanKind = SpanKind.CLIENT, start_ns: int = 0, tracestate: str = "",
                 sink: SpanSink | None = None) -> None:
        self.request_id, self.trace_id, self.span_id = request_id, trace_id, span_id
        self.parent_span_id, self.sampled, self.name, self.kind = parent_span_id, sampled, name, kind
        self.start_ns, self.tracestate, self._sink = start_ns, tracestate, sink

    def finish(self, *, status: int, method: str = "", url: str = "", protocol: str = "",
               flags: str = "-", upstream_cluster: str = "", peer: str = "", end_ns: int | None = None,
               request_size: int = 0, response_size: int = 0) -> Span | None:
        """Close the span with Envoy's tags and hand it to the sink; returns it, or None
        when the hop is not traced or not sampled (then nothing is allocated)."""
        if not self.sampled or self._sink is None or self.trace_id is None or self.span_id is None:
            return None
        error = status == 0 or status >= 500
        attrs: list[tuple[str, str | int | float | bool]] = [
            ("component", "proxy"), ("guid:x-request-id", self.request_id.decode("latin-1")),
            ("http.method", method), ("http.url", url), ("http.protocol", protocol),
            ("http.status_code", status), ("response_flags", flags), ("upstream_cluster", upstream_cluster),
            ("peer.address", peer), ("request_size", request_size), ("response_size", response_size)]
        if error:
            attrs.append(("error", True))
        span = Span(self.trace_id, self.span_id, self.parent_span_id, self.name, self.kind, self.start_ns,
                    time.time_ns() if end_ns is None else end_ns, tuple(attrs), error, self.tracestate)
        self._sink.submit(span)
        return span


class Tracer:
    """Per-proxy tracing policy: sampling and the sink. ``Tracer()`` (no sink) only
    manages ``x-request-id`` and lets trace headers through unchanged."""

    def __init__(self, sink: SpanSink | None = None, *, sampling_percent: float = DEFAULT_SAMPLING_PERCENT,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= sampling_percent <= 100.0:
            raise ValueError(f"sampling_percent must be within 0..100, got {sampling_percent!r}")
        self.sink = sink
        self.sampling_percent = sampling_percent
        self._rng = rng if rng is not None else random.Random()

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def begin(self, headers: Headers, *, name: str, kind: SpanKind,
              start_ns: int | None = None) -> tuple[Hop, list[tuple[bytes, bytes]]]:
        """Read the caller's ids from ``headers`` (lowercase names) and return this hop and
        the headers to forward: x-request-id ensured and, when tracing, trace headers
        carrying this hop's new span id."""
        enabled = self.sink is not None
        if not enabled and _READ.isdisjoint(map(_NAME, headers)):
            # Untraced and the caller sent no ids (the common case): a new request id, the rest as is.
            request_id = new_request_id()
            out = list(headers)
            out.append((REQUEST_ID, request_id))
            return Hop(request_id), out
        out: list[tuple[bytes, bytes]] = []
        found: dict[bytes, bytes] = {}
        states: list[bytes] = []
        for pair in headers:
            name_ = pair[0]
            if name_ in _READ:
                if name_ == TRACESTATE:
                    states.append(pair[1])
                else:
                    found.setdefault(name_, pair[1])
                if enabled and name_ in _REPLACED:
                    continue
            out.append(pair)
        request_id = found.get(REQUEST_ID)
        if request_id is None:
            request_id = new_request_id()
            out.append((REQUEST_ID, request_id))
        if not enabled:
            return Hop(request_id), out
        ctx = self._extract(found)
        sampled = ctx.sampled if ctx.sampled is not None else self._rng.random() * 100.0 < self.sampling_percent
        if ctx.trace_id is None:
            trace_id, parent = f"{self._rng.getrandbits(128):032x}", None
            if states:  # tracestate without a valid traceparent is discarded (W3C §3.3)
                out = [p for p in out if p[0] != TRACESTATE]
                states = []
        else:
            trace_id, parent = ctx.trace_id, ctx.span_id
        span_id = f"{self._rng.getrandbits(64) or 1:016x}"
        bit = b"1" if sampled else b"0"
        out.append((TRACEPARENT, b"00-%s-%s-0%s" % (trace_id.encode(), span_id.encode(), bit)))
        out += [(B3_TRACE_ID, trace_id.encode()), (B3_SPAN_ID, span_id.encode()), (B3_SAMPLED, bit)]
        if parent is not None:
            out.append((B3_PARENT_ID, parent.encode()))
        if ctx.debug:
            out.append((B3_FLAGS, b"1"))
        if ctx.b3_single:
            single = b"%s-%s-%s" % (trace_id.encode(), span_id.encode(), b"d" if ctx.debug else bit)
            out.append((B3, single + (b"-" + parent.encode() if parent else b"")))
        hop = Hop(request_id, trace_id, span_id, parent, sampled or ctx.debug, name, kind,
                  time.time_ns() if start_ns is None else start_ns,
                  b",".join(states).decode("latin-1"), self.sink)
        return hop, out

    @staticmethod
    def _extract(found: dict[bytes, bytes]) -> TraceContext:
        value = found.get(TRACEPARENT)
        if value is not None and (ctx := parse_traceparent(value)) is not None:
            return ctx
        value = found.get(B3)
        if value is not None and (ctx := parse_b3_single(value)) is not None:
            return ctx
        return parse_b3_multi(found) or TraceContext()

    def __repr__(self) -> str:
        return f"<Tracer {'on' if self.enabled else 'off'} sampling={self.sampling_percent:g}%>"
