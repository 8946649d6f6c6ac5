"""HTTP/2 over a trio stream for the control-plane protocol: the shared I/O and the client side.

h2 is sans-I/O: it turns bytes into events and calls into bytes to send. This module is
the thin trio layer around it that both ends of :15012 need: one writer at a time
(``flush`` under a lock, since an SSLStream must not be written concurrently), bodies
sent in pieces no larger than the peer's flow-control window and frame size (waiting
for WINDOW_UPDATE when the window is shut, RFC 9113 6.9), and received data
acknowledged only when the consumer has taken it, so a slow reader throttles its
sender instead of buffering without bound. ``H2Channel`` adds the client: one reader
task dispatching events to per-stream queues, unary requests, long response streams,
and PING keepalive so a control plane that vanished without a FIN is noticed.
"""

from __future__ import annotations

import math
from typing import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from . import GatewayError
from ._discovery_wire import CLIENT_MAX_FRAME, CLIENT_WINDOW, CONTENT_JSON

RECEIVE_SIZE = 1 << 18


class ChannelClosed(GatewayError):
    """The connection ended or the stream was reset before the exchange completed."""


class H2Endpoint:
    """What both sides share: serialized writes and flow-controlled bodies."""

    def __init__(self, stream: trio.abc.Stream, conn: h2.connection.H2Connection) -> None:
        self.stream = stream
        self.conn = conn
        self._write_lock = trio.Lock()
        self._window = trio.Event()
        self.closed = trio.Event()

    async def flush(self) -> None:
        async with self._write_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    def window_changed(self) -> None:
        """Wake senders waiting for flow-control credit (WINDOW_UPDATE or new SETTINGS)."""
        self._window.set()
        self._window = trio.Event()

    async def send_body(self, stream_id: int, parts: Sequence[bytes], *, end: bool = True) -> None:
        """Send ``parts`` on ``stream_id`` as DATA frames within the peer's windows."""
        for part in parts:
            view = memoryview(part)
            while view:
                if self.closed.is_set():
                    raise ChannelClosed("the connection closed while sending")
                try:
                    room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size,
                               len(view))
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as exc:
                    raise ChannelClosed(f"stream {stream_id} closed while sending") from exc
                if room <= 0:
                    await self._window.wait()
                    continue
                self.conn.send_data(stream_id, view[:room].tobytes())
                view = view[room:]
                await self.flush()
        if end:
            self.conn.end_stream(stream_id)
            await self.flush()


class ResponseStream:
    """The response to one request: status, headers, then data until the end."""

    def __init__(self, channel: "H2Channel", stream_id: int) -> None:
        self.channel = channel
        self.stream_id = stream_id
        self.status = 0
        self.headers: dict[str, str] = {}
        self._send, self._recv = trio.open_memory_channel[tuple](math.inf)

    async def _next(self) -> tuple:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise ChannelClosed("the connection closed") from None

    async def receive(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        event = await self._next()
        if event[0] == "data":
            _, data, flow = event
            if flow:
                self.channel.conn.acknowledge_received_data(flow, self.stream_id)
                await self.channel.flush()
            return data
        if event[0] == "end":
            return None
        raise ChannelClosed(f"stream {self.stream_id} was reset by the peer (code {event[1]})")

    async def read_all(self, limit: int) -> bytes:
        out = bytearray()
        while (piece := await self.receive()) is not None:
            out += piece
            if len(out) > limit:
                raise ChannelClosed(f"response body exceeds {limit} bytes")
        return bytes(out)


class H2Channel(H2Endpoint):
    """A client connection; run ``run`` in a nursery, then ``open`` / ``request`` from any task."""

    def __init__(self, stream: trio.abc.Stream, *, authority: str = "controlplane",
                 ping_interval: float | None = 15.0) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        super().__init__(stream, conn)
        self.authority = authority
        self.ping_interval = ping_interval
        self._streams: dict[int, ResponseStream] = {}
        self._pong = trio.Event()
        self._reader = trio.CancelScope()
        self._running = False
        self.error: BaseException | None = None
        """Why the connection ended, when it broke rather than closed."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read until the connection ends; every open stream then sees ChannelClosed."""
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_WINDOW,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: CLIENT_MAX_FRAME,
                                   h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(CLIENT_WINDOW - 65535)  # RFC 9113 6.9.2: the connection's own
        self._running = True
        try:
            await self.flush()
            task_status.started()
            with self._reader:  # cancelled by aclose before it closes the stream under the reader
                async with trio.open_nursery() as nursery:
                    if self.ping_interval:
                        nursery.start_soon(self._keepalive)
                    await self._read()
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass  # the connection is over; streams still open learn it below
        finally:
            self.closed.set()
            self.window_changed()
            for rs in self._streams.values():
                rs._send.close()

    async def _read(self) -> None:
        """Until EOF or a broken connection; errors end here, never beside a Cancelled in a MultiError."""
        try:
            while True:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self._dispatch(event)
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError) as exc:
            self.error = exc

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_changed()
        elif isinstance(event, h2.events.PingAckReceived):
            self._pong.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise trio.BrokenResourceError(f"GOAWAY from the control plane (code {event.error_code})")
        rs = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if rs is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            rs.headers = {str(k): str(v) for k, v in event.headers}
            rs._send.send_nowait(("headers", int(rs.headers.get(":status", "0"))))
        elif isinstance(event, h2.events.DataReceived):
            rs._send.send_nowait(("data", event.data, event.flow_controlled_length))
        elif isinstance(event, h2.events.StreamEnded):
            rs._send.send_nowait(("end",))
            self._streams.pop(rs.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            rs._send.send_nowait(("reset", event.error_code))
            self._streams.pop(rs.stream_id, None)

    async def _keepalive(self) -> None:
        assert self.ping_interval
        while True:
            await trio.sleep(self.ping_interval)
            self._pong = trio.Event()
            self.conn.ping(b"meshfed!")
            try:
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees it too
            with trio.move_on_after(self.ping_interval) as scope:
                await self._pong.wait()
            if scope.cancelled_caught:  # no PING ACK: the peer is gone without a FIN
                await trio.aclose_forcefully(self.stream)
                return

    async def open(self, method: str, path: str, body: bytes = b"",
                   content_type: str = CONTENT_JSON) -> ResponseStream:
        """Send a request; returns once the response headers arrived (``status`` is set)."""
        if self.closed.is_set():
            raise ChannelClosed("the connection is closed")
        sid = self.conn.get_next_available_stream_id()
        rs = self._streams[sid] = ResponseStream(self, sid)
        self.conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "https"),
                                     (":authority", self.authority), ("content-type", content_type),
                                     ("content-length", str(len(body)))], end_stream=not body)
        await self.flush()
        if body:
            await self.send_body(sid, [body])
        event = await rs._next()
        if event[0] != "headers":
            raise ChannelClosed(f"stream {sid}: no response headers (got {event[0]})")
        rs.status = event[1]
        return rs

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      limit: int = 1 << 20) -> tuple[int, bytes]:
        rs = await self.open(method, path, body)
        return rs.status, await rs.read_all(limit)

    async def aclose(self) -> None:
        """GOAWAY, stop the reader, close the stream: in that order, whatever state it is in."""
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(1):
                    self.conn.close_connection()
                    await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
                pass
            self._reader.cancel()
            if self._running:
                with trio.move_on_after(1):
                    await self.closed.wait()
            await trio.aclose_forcefully(self.stream)
