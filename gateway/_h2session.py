"""HTTP/2 connections as trio tasks: one reader, one writer, and a handle per stream.

Theory of operation. ``Http2Connection`` (``_http2``) is sans-I/O; an ``H2Session`` gives
it a transport. A reader task feeds received bytes to the codec and hands each event to
the stream it belongs to; the writer (the task running ``run``) sends whatever the codec
has queued whenever someone changed it (``wake``) - so frames of every stream leave in
codec order, coalesced into as few writes (and TLS records) as the moment allows, and no
task but the writer ever blocks on the socket.

Streams are ``H2Stream`` handles. A server session (a listener's connection) makes one
per request and runs ``handler(stream)`` in a task of its own, cancelled when the client
resets that stream or the connection ends. A client session (a pooled upstream
connection) makes them on ``open_stream``; ``has_capacity`` keeps them within the peer's
SETTINGS_MAX_CONCURRENT_STREAMS.

Backpressure, both ways:

* receiving: body bytes are handed back to the peer (WINDOW_UPDATE) only when the user
  calls ``ack`` after passing them on, so a peer never has more in flight on a stream
  than its window (64 KiB by default), however slow the other side is;
* sending: ``send_data`` returns once the codec took the bytes within the peer's window
  (waiting for WINDOW_UPDATE otherwise), so a producer runs at its consumer's pace and at
  most one chunk per stream waits in memory.

A stream that ends abnormally raises the session's ``gone(reason, code, refused)`` error
from every later call: the upstream pool's sessions raise ``UpstreamStreamReset`` (a
``UpstreamResetError``), listener sessions ``DownstreamReset`` (a ``DownstreamGone``) - so
the relay above knows which side failed without asking. ``refused`` marks a stream the
peer never processed (REFUSED_STREAM, or above a GOAWAY's last stream id): safe to retry.

A graceful GOAWAY (NO_ERROR) lets the streams it spared finish (RFC 9113 6.8); a
session that is ``close``d sends its own GOAWAY once its last stream is done.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio
from h2.exceptions import ProtocolError as H2ProtocolError

from ._events import (Data, EndOfMessage, GoAway, InformationalResponse, LocalProtocolError, RemoteProtocolError,
                      Request, Response, Role, StreamReset)
from ._http2 import Http2Connection
from ._limits import DEFAULT_LIMITS, HttpLimits
from ._h2stream import (CANCEL, NO_ERROR, REFUSED_STREAM, DownstreamReset, Gone, H2Stream, Handler,
                         UpstreamRefusedError, UpstreamStreamReset, _code_name, downstream_gone, upstream_gone)

log = logging.getLogger("meshfed.gateway.h2")

RECV_SIZE = 64 * 1024
CLOSE_GRACE = 1.0
"""Seconds a dying connection gets to send its last frames (a GOAWAY) before it is cut."""
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)

__all__ = ["DownstreamReset", "H2Session", "H2Stream", "UpstreamRefusedError", "UpstreamStreamReset",
           "downstream_gone", "upstream_gone"]


class H2Session:
    """One HTTP/2 connection; see the module docstring."""

    def __init__(self, transport: trio.abc.Stream, role: Role, limits: HttpLimits = DEFAULT_LIMITS, *,
                 gone: Gone = downstream_gone, handler: Handler | None = None, prefix: bytes = b"",
                 idle_timeout: float | None = None, name: str = "", peer: str = "") -> None:
        self.transport = transport
        self.role = role
        self.limits = limits
        self.codec = Http2Connection(role, limits)
        self.gone = gone
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.name = name
        self.peer = peer
        """SPIFFE ID of the peer (mTLS upstream connections)."""
        self.streams: dict[int, H2Stream] = {}
        self.active = 0
        """Streams handed out and not yet released."""
        self.opened = 0
        self.most_active = 0
        self.dead: str | None = None
        """Why the connection is over, once it is."""
        self.goaway: GoAway | None = None
        self.closing = False
        self.on_goaway: Callable[[H2Session], None] | None = None
        self.on_stream_done: Callable[[], None] | None = None
        """Called when a stream ends (a pool's waiters for capacity may go on)."""
        self.drain_at = math.inf
        """When a pooled connection stops taking streams (``maxConnectionDuration``)."""
        self.max_opened = 0
        """Streams a pooled connection may carry in all (``maxRequestsPerConnection``); 0: no limit."""
        self.pool_idle_timeout: float | None = None
        """Seconds a pooled connection may sit without a stream; None: forever."""
        self.last_active = trio.current_time()
        self._prefix = prefix
        self._dirty = trio.Event()
        self._progress: trio.Event | None = None
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        state = f"dead ({self.dead})" if self.dead else "closing" if self.closing else "open"
        return f"<H2Session {self.role.name} {self.name} {state} [{self.active} streams, {self.opened} opened]>"

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it ends; the caller closes the transport afterwards."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._read)
            if self.idle_timeout:
                nursery.start_soon(self._watch_idle, self.idle_timeout)
            task_status.started()
            try:
                await self._write()
            finally:
                self._end("session ended")
                nursery.cancel_scope.cancel()

    async def _write(self) -> None:
        codec, transport = self.codec, self.transport
        try:
            while True:
                data = codec.data_to_send()
                if data:
                    if self.dead is not None:
                        with trio.move_on_after(CLOSE_GRACE):
                            await transport.send_all(data)
                        return
                    await transport.send_all(data)
                    continue
                if self.dead is not None:
                    return
                self._dirty = dirty = trio.Event()
                await dirty.wait()
        except _BROKEN as exc:
            self._end(f"send failed: {exc}")

    async def _read(self) -> None:
        codec, transport = self.codec, self.transport
        data, self._prefix = self._prefix, b""
        try:
            while True:
                if not data:
                    data = await transport.receive_some(RECV_SIZE)
                    if not data:
                        self._end("connection closed by the peer")
                        return
                try:
                    codec.receive_data(data)
                except RemoteProtocolError as exc:
                    self._end(f"protocol error: {exc.message}")
                    return
                self._dispatch(codec.events())
                self.wake()
                self._progressed()
                data = b""
        except _BROKEN as exc:
            self._end(f"connection lost: {exc}")

    async def _watch_idle(self, timeout: float) -> None:
        while True:
            deadline = self.last_active + timeout
            if not self.active and trio.current_time() >= deadline:
                self.close()
                return
            await trio.sleep_until(deadline if not self.active else trio.current_time() + timeout)

    def wake(self) -> None:
        """The codec has bytes to send: wake the writer."""
        self._dirty.set()

    async def window_opened(self) -> None:
        """Wait until the peer's next frames were processed (a WINDOW_UPDATE, perhaps)."""
        event = self._progress
        if event is None:
            event = self._progress = trio.Event()
        await event.wait()

    def _progressed(self) -> None:
        event = self._progress
        if event is not None:
            self._progress = None
            event.set()

    def _end(self, why: str) -> None:
        if self.dead is not None:
            return
        self.dead = why
        log.debug("%r: %s", self, why)
        for stream in list(self.streams.values()):
            stream._fail(self.gone(why, CANCEL, False))
            if stream.scope is not None:
                stream.scope.cancel()
        self.wake()
        self._progressed()

    # -- events ----------------------------------------------------------------------------

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is Data:
                stream = streams.get(event.stream_id)
                size = len(event.data)
                if stream is None or stream.released:
                    self.codec.ack_data(event.stream_id, size)  # nobody reads it: credit back at once
                    continue
                stream.pending += size
                stream._push(event)
            elif kind is EndOfMessage:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.ended_in = True
                    stream._push(event)
            elif kind is Request:
                self._new_stream(event)
            elif kind is Response or kind is InformationalResponse:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._push(event)
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None and event.remote:
                    code = event.error_code
                    stream._fail(self.gone(f"stream reset by the peer ({_code_name(code)})", code,
                                           code == REFUSED_STREAM))
                    if stream.scope is not None:
                        stream.scope.cancel()
            elif kind is GoAway:
                self._on_goaway(event)

    def _new_stream(self, request: Request) -> None:
        if self.handler is None or self._nursery is None or self.closing:
            self.codec.reset(request.stream_id, REFUSED_STREAM)  # type: ignore[arg-type]
            return
        stream = H2Stream(self, request.stream_id)
        stream._push(request)
        self.streams[request.stream_id] = stream  # type: ignore[index]
        self._opened()
        self._nursery.start_soon(self._serve_stream, stream)

    async def _serve_stream(self, stream: H2Stream) -> None:
        assert self.handler is not None
        try:
            with trio.CancelScope() as stream.scope:
                await self.handler(stream)
        except Exception:  # noqa: BLE001 - one failing stream never takes its connection down
            log.exception("%r: stream %s failed", self, stream.stream_id)
        finally:
            stream.scope = None
            stream.release()

    def _on_goaway(self, event: GoAway) -> None:
        self.goaway = event
        self.closing = True
        graceful = event.error_code == NO_ERROR
        why = f"GOAWAY from the peer ({_code_name(event.error_code)})"
        for stream in list(self.streams.values()):
            refused = self.role is Role.CLIENT and (stream.stream_id or 0) > event.last_stream_id
            if refused or not graceful:
                stream._fail(self.gone(why, REFUSED_STREAM if refused else event.error_code, refused))
                if stream.scope is not None:
                    stream.scope.cancel()
        if graceful:
            self.codec.keep_streams_after_goaway()
        if self.on_goaway is not None:
            self.on_goaway(self)
        if not graceful:
            self._end(why)
        elif not self.active:
            self._shutdown()

    # -- stream bookkeeping ------------------------------------------------------------------

    def has_capacity(self) -> bool:
        """A new stream may be opened here now."""
        return (self.dead is None and not self.closing
                and self.active < min(self.codec.peer_max_concurrent_streams, self.limits.max_concurrent_streams))

    def open_stream(self) -> H2Stream:
        """A client stream; it gets its id when its head is sent."""
        self._opened()
        return H2Stream(self, None)

    def _opened(self) -> None:
        self.active += 1
        self.opened += 1
        if self.active > self.most_active:
            self.most_active = self.active

    def _ack(self, stream_id: int, size: int) -> None:
        if self.dead is None:
            self.codec.ack_data(stream_id, size)
            self.wake()

    def _forget(self, stream: H2Stream) -> None:
        if stream.stream_id is not None:
            self.streams.pop(stream.stream_id, None)
        self.active -= 1
        if not self.active:
            self.last_active = trio.current_time()
            if self.closing:
                self._shutdown()
        if self.on_stream_done is not None:
            self.on_stream_done()

    def close(self) -> None:
        """No new streams; GOAWAY and the end once the open ones are done."""
        self.closing = True
        if not self.active:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.dead is not None:
            return
        if self.goaway is None:
            try:
                self.codec.close()
            except (LocalProtocolError, H2ProtocolError):
                pass
        self._end("closed")
