"""The drill's load: a bounded number of requests at a fixed rate, through a workload's sidecar.

``LoadSchedule`` is the plan alone (request ``i`` leaves at ``i / rps`` seconds, never at
or after ``duration``), so the generator stops by itself. ``LoadGenerator`` sends the
plan as an application with ``HTTP_PROXY`` would: absolute-form ``GET
http://echo.demo:8080/`` requests to the sidecar's outbound listener, over keep-alive
HTTP/1.1 connections it pools (one request per connection at a time, h11 for framing:
tens of requests a second do not need httptools). Each request ends as one ``Sample``:
who answered (the echo app's ``cluster`` and ``locality``), how long it took, or why it
failed. Nothing here knows about faults: it is told when to stop early.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

import h11
import trio

REQUEST_TIMEOUT = 10.0
"""Seconds a request may take before it counts as failed ("timeout"). Defaults to 10."""
MAX_IN_FLIGHT = 256
"""Requests outstanding at once; a request due beyond that is counted failed ("overload")."""


@dataclass(frozen=True, slots=True)
class LoadSchedule:
    rps: float
    duration: float
    """Seconds; no request leaves at or after it."""

    def __post_init__(self) -> None:
        if not (self.rps > 0 and self.duration > 0 and math.isfinite(self.rps * self.duration)):
            raise ValueError(f"load schedule needs rps > 0 and duration > 0; found {self.rps!r}, {self.duration!r}")

    @property
    def total(self) -> int:
        return max(0, math.ceil(self.duration * self.rps - 1e-9))

    def offset(self, i: int) -> float:
        """When request ``i`` (0-based) leaves, in seconds from the start."""
        return i / self.rps

    def due(self, elapsed: float) -> int:
        """How many requests should have left ``elapsed`` seconds after the start."""
        if elapsed < 0:
            return 0
        return min(self.total, math.floor(elapsed * self.rps + 1e-9) + 1)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request's outcome. ``sent`` is seconds since the drill started."""

    sent: float
    latency_ms: float
    status: int
    """HTTP status; 0 when no response came back."""
    cluster: str | None = None
    locality: str | None = None
    error: str | None = None
    """None for a success, else why: the status (``"503"``), ``timeout``, ``reset``, ``connect``, ``overload``."""

    @property
    def ok(self) -> bool:
        return self.error is None


def classify(status: int, body: bytes) -> tuple[str | None, str | None, str | None]:
    """(cluster, locality, error) of an answer: the echo app names itself in its JSON body
    (``cluster``, ``locality``); bookinfo's reviews, as Istio's, says ``clustername`` only."""
    error = None if 200 <= status < 400 else str(status)
    cluster = locality = None
    if body[:1] == b"{":
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            named = doc.get("cluster", doc.get("clustername"))
            cluster = named if isinstance(named, str) else None
            locality = doc.get("locality") if isinstance(doc.get("locality"), str) else None
    return cluster, locality, error


class _Conn:
    __slots__ = ("stream", "h11")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)


class _ConnectFailed(Exception):
    pass


_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)

Opener = Callable[[], Awaitable[trio.abc.Stream]]


class LoadGenerator:
    """Sends ``schedule`` to the HTTP proxy ``open_stream`` connects to; ``samples`` fills as answers come."""

    def __init__(self, open_stream: Opener, url: str, authority: str, schedule: LoadSchedule, *,
                 timeout: float = REQUEST_TIMEOUT, max_in_flight: int = MAX_IN_FLIGHT,
                 on_sample: Callable[[Sample], None] | None = None,
                 localities: Mapping[str, str] | None = None) -> None:
        self.open_stream = open_stream
        self.url = url
        self.authority = authority
        self.schedule = schedule
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.on_sample = on_sample
        self.localities = dict(localities or {})
        """Cluster -> its locality, for answers that name their cluster only (region and zone scopes)."""
        self.samples: list[Sample] = []
        self.sent = 0
        self.in_flight = 0
        self._idle: list[_Conn] = []
        self._stop = False

    def __repr__(self) -> str:
        return f"<LoadGenerator {self.url} sent={self.sent}/{self.schedule.total} in_flight={self.in_flight}>"

    def stop(self) -> None:
        """Send nothing more; ``run`` returns once the requests in flight are answered or time out."""
        self._stop = True

    async def run(self, start: float | None = None) -> None:
        """Send the schedule from ``start`` (``trio.current_time()`` seconds; now by default)."""
        t0 = trio.current_time() if start is None else start
        try:
            async with trio.open_nursery() as nursery:
                for i in range(self.schedule.total):
                    await trio.sleep_until(t0 + self.schedule.offset(i))
                    if self._stop:
                        break
                    self.sent += 1
                    sent = trio.current_time() - t0
                    if self.in_flight >= self.max_in_flight:
                        self._record(Sample(sent, 0.0, 0, error="overload"))
                        continue
                    nursery.start_soon(self._one, sent)
        finally:
            for conn in self._idle:
                await trio.aclose_forcefully(conn.stream)
            self._idle.clear()

    def _record(self, sample: Sample) -> None:
        self.samples.append(sample)
        if self.on_sample is not None:
            self.on_sample(sample)

    async def _one(self, sent: float) -> None:
        self.in_flight += 1
        began = trio.current_time()
        conn: _Conn | None = None
        try:
            with trio.fail_after(self.timeout):
                status, body, reusable = 0, b"", False
                while conn is None:
                    reused = bool(self._idle)
                    conn = self._idle.pop() if reused else await self._open()
                    try:
                        status, body, reusable = await self._exchange(conn)
                    except _STREAM_ERRORS:
                        if not reused:
                            raise
                        # a kept-alive connection the proxy closed while idle: as HTTP clients do,
                        # the request is sent again once on a new connection
                        await trio.aclose_forcefully(conn.stream)
                        conn = None
            cluster, locality, error = classify(status, body)
            if locality is None and cluster is not None:
                locality = self.localities.get(cluster)
            sample = Sample(sent, _ms(began), status, cluster, locality, error)
            if reusable:
                self._idle.append(conn)
                conn = None
        except _ConnectFailed:
            sample = Sample(sent, _ms(began), 0, error="connect")
        except trio.TooSlowError:
            sample = Sample(sent, _ms(began), 0, error="timeout")
        except _STREAM_ERRORS:
            sample = Sample(sent, _ms(began), 0, error="reset")
        finally:
            self.in_flight -= 1
            if conn is not None:
                await trio.aclose_forcefully(conn.stream)
        self._record(sample)

    async def _open(self) -> _Conn:
        try:
            return _Conn(await self.open_stream())
        except OSError as exc:
            raise _ConnectFailed from exc

    async def _exchange(self, conn: _Conn) -> tuple[int, bytes, bool]:
        c = conn.h11
        request = h11.Request(method="GET", target=self.url, headers=[
            ("Host", self.authority), ("User-Agent", "fedctl-drill"), ("Accept", "*/*")])
        await conn.stream.send_all(c.send(request) + c.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = c.next_event()
            if event is h11.NEED_DATA:
                data = await conn.stream.receive_some(65536)
                c.receive_data(data)  # b"" is the peer closing: h11 then raises or ends the message
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("closed before the response ended")
        reusable = c.our_state is h11.DONE and c.their_state is h11.DONE
        if reusable:
            c.start_next_cycle()
        return status, bytes(body), reusable


def _ms(began: float) -> float:
    return round((trio.current_time() - began) * 1000.0, 3)


def tcp_opener(host: str, port: int) -> Opener:
    async def open_stream() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)
    return open_stream
