"""Latency load for the data-plane benchmark: an open-loop client with Poisson arrivals.

Theory of operation (latency). A closed-loop client (wrk, ab, a loop of ``await``) sends
the next request only when the previous answer came back, so a stall delays the
requests that should have been sent meanwhile and they are never counted as slow -
"coordinated omission". Here the send times are fixed in advance: exponential gaps at
the chosen rate (Poisson arrivals, the jitter of many independent callers), generated
from a seed. Each request's latency runs from its *scheduled* time to the last byte of
its response, so time spent waiting for a free connection or behind a late send counts.

The client is one thread over blocking sockets and ``select.select`` (whose timeout has
microsecond resolution, where epoll's is whole milliseconds), with keep-alive
connections reused last-in first-out and more opened when every one is busy, up to a
bound. Responses are framed by httptools (llhttp), so chunked and content-length bodies
both end where HTTP says. Every loop is bounded by a count and a deadline.

At ~1000 rps the client uses well under a tenth of a core; it shares the two cores with
the servers it measures. Saturation is measured by wrk (_wrk.py).
"""

from __future__ import annotations

import gc
import math
import random
import select
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import httptools

MAX_ARRIVALS = 1_000_000


def poisson_offsets(rate: float, seconds: float, seed: int) -> list[float]:
    """Send times in seconds from the start, exponential gaps of mean ``1/rate``, all < ``seconds``."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be positive; found rate={rate!r} seconds={seconds!r}")
    rng = random.Random(seed)
    limit = min(MAX_ARRIVALS, int(rate * seconds * 2) + 100)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds and len(out) < limit:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (the smallest value with at least ``p`` % of values at or below it)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100]; found {p!r}")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def absolute_form_request(authority: str, path: str = "/") -> bytes:
    """What an ``HTTP_PROXY`` client sends to its proxy: the whole URL in the request line."""
    host = authority.rsplit(":", 1)[0]
    return f"GET http://{authority}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def origin_form_request(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@dataclass
class OpenLoopResult:
    latencies_ms: list[float] = field(default_factory=list)
    """Scheduled send -> last response byte, sorted, for every 2xx answer."""
    scheduled: int = 0
    non_2xx: int = 0
    connection_errors: int = 0
    unfinished: int = 0
    """Still waiting (for a connection or an answer) when the drain deadline passed."""
    wall_seconds: float = 0.0
    max_send_lag_ms: float = 0.0
    """Worst lateness of an actual send behind its schedule (the client's own stalls)."""
    connections_opened: int = 0
    """New connections this run needed beyond those it started with."""
    service_ms: list[float] = field(default_factory=list, repr=False)
    """Actual send -> last response byte, sorted: the server's part alone (no client lateness)."""

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.ok / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


class _Conn:
    __slots__ = ("sock", "parser", "scheduled", "sent", "done", "status", "keep_alive")

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = httptools.HttpResponseParser(self)
        self.scheduled = self.sent = 0.0
        self.done = False
        self.status = 0
        self.keep_alive = True

    def on_message_complete(self) -> None:
        self.done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def close(self) -> None:
        self.sock.close()


class OpenLoopClient:
    """Keep-alive connections to one server, kept from one ``run`` to the next (warm-up, then measure).

    Connections are taken last-in first-out, as client pools do, and opened on demand up to
    ``max_connections``; a request due while all are busy waits in a backlog, and that
    wait is part of its latency.
    """

    def __init__(self, host: str, port: int, request: bytes, *, max_connections: int = 64, preopen: int = 8) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_connections = max_connections
        self.idle: list[_Conn] = []
        self.total = 0
        for _ in range(min(preopen, max_connections)):
            self.idle.append(self._open())

    def _open(self) -> _Conn:
        conn = _Conn(self.host, self.port)
        self.total += 1
        return conn

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        self.total -= 1

    def close(self) -> None:
        while self.idle:
            self._drop(self.idle.pop())

    def __enter__(self) -> "OpenLoopClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, offsets: Sequence[float], drain_seconds: float = 5.0) -> OpenLoopResult:
        """Send at ``offsets`` (seconds from now); bounded by ``len(offsets)`` and the last one + ``drain_seconds``.

        The cyclic garbage collector is off for the run: a pass over this process's heap
        (it holds the benchmark's imports) takes milliseconds, which would be counted as
        the server's latency. A run allocates no reference cycles worth collecting."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(offsets, drain_seconds)
        finally:
            if enabled:
                gc.enable()

    def _run(self, offsets: Sequence[float], drain_seconds: float) -> OpenLoopResult:
        result = OpenLoopResult(scheduled=len(offsets))
        idle, request = self.idle, self.request
        busy: dict[socket.socket, _Conn] = {}
        backlog: deque[float] = deque()
        service: list[float] = []
        t0 = time.perf_counter() + 0.02
        deadline = t0 + (offsets[-1] if offsets else 0.0) + drain_seconds
        i, n = 0, len(offsets)
        try:
            while i < n or backlog or busy:
                now = time.perf_counter()
                if now >= deadline:
                    break
                while i < n and t0 + offsets[i] <= now:
                    backlog.append(t0 + offsets[i])
                    i += 1
                while backlog and (idle or self.total < self.max_connections):
                    scheduled = backlog.popleft()
                    try:
                        if idle:
                            conn = idle.pop()
                        else:
                            conn = self._open()
                            result.connections_opened += 1
                    except OSError:
                        result.connection_errors += 1
                        continue
                    conn.scheduled, conn.done = scheduled, False
                    try:
                        conn.sock.sendall(request)
                    except OSError:
                        self._drop(conn)
                        result.connection_errors += 1
                        continue
                    conn.sent = time.perf_counter()
                    result.max_send_lag_ms = max(result.max_send_lag_ms, (conn.sent - scheduled) * 1e3)
                    busy[conn.sock] = conn
                wake = t0 + offsets[i] if i < n else deadline
                timeout = max(0.0, min(wake, deadline) - time.perf_counter())
                if backlog:
                    timeout = min(timeout, 0.05)
                readable, _, _ = select.select(list(busy), [], [], timeout)
                for sock in readable:
                    conn = busy[sock]
                    try:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionResetError("closed by the server")
                        conn.parser.feed_data(data)
                    except (OSError, httptools.HttpParserError):
                        del busy[sock]
                        self._drop(conn)
                        result.connection_errors += 1
                        continue
                    if conn.done:
                        finished = time.perf_counter()
                        del busy[sock]
                        if 200 <= conn.status < 300:
                            result.latencies_ms.append((finished - conn.scheduled) * 1e3)
                            service.append((finished - conn.sent) * 1e3)
                        else:
                            result.non_2xx += 1
                        if conn.keep_alive:
                            idle.append(conn)
                        else:
                            self._drop(conn)
            result.wall_seconds = time.perf_counter() - t0
            result.unfinished = len(backlog) + len(busy) + (n - i)
        finally:
            for conn in busy.values():  # an answer still owed: the connection cannot be reused
                self._drop(conn)
        result.latencies_ms.sort()
        service.sort()
        result.service_ms = service
        return result


def fetch_once(host: str, port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). For checking a path before loading it."""
    body = bytearray()

    class Sink:
        done = False

        def on_body(self, data: bytes) -> None:
            body.extend(data)

        def on_message_complete(self) -> None:
            Sink.done = True

    parser = httptools.HttpResponseParser(Sink())
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        while not Sink.done and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            parser.feed_data(data)
    if not Sink.done:
        raise ConnectionError(f"no complete answer from {host}:{port} within {timeout:g}s")
    return parser.get_status_code(), bytes(body)
