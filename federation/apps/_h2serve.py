"""The HTTP/2 half of the demo apps' server: h2c by prior knowledge or by Upgrade.

One reader task feeds h2 and dispatches its events; each request, once its stream has
ended, gets a task of its own that calls the handler and writes the response, waiting
for flow-control window when the peer's is spent. Every write of h2's pending bytes
goes through one lock, so frames from different streams never interleave mid-frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.events as h2e
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError

from ._httpserve import RECEIVE_SIZE, HttpServer, Request, Response, closing_body

# Connection-specific fields must not appear in HTTP/2 (RFC 9113 8.2.2).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                         "http2-settings"})
WRITE_TIMEOUT = 30.0
"""Seconds a write may block on a peer that reads nothing before the connection is dropped."""


@dataclass(slots=True)
class _Stream:
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)
    scope: trio.CancelScope | None = None


async def serve_h2(server: HttpServer, stream: trio.SocketStream, first: bytes) -> None:
    """Serve a connection that opened with the HTTP/2 preface (prior knowledge)."""
    await _H2Connection(server, stream).run(first, None)


async def serve_h2_upgrade(server: HttpServer, stream: trio.SocketStream, rest: bytes, request: Request) -> None:
    """Serve an HTTP/1.1 connection after ``101 Switching Protocols``; ``request`` is stream 1."""
    await _H2Connection(server, stream).run(rest, request)


class _H2Connection:
    def __init__(self, server: HttpServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self.send_lock = trio.Lock()
        self.window_changed = trio.Event()
        self.stream_done = trio.Event()
        self.draining = False

    def __repr__(self) -> str:
        return f"<_H2Connection {'draining' if self.draining else 'open'} [{len(self.streams)} streams]>"

    async def run(self, data: bytes, upgraded: Request | None) -> None:
        if upgraded is not None:
            settings = upgraded.header("http2-settings") or ""
            settings += "=" * (-len(settings) % 4)  # clients send it unpadded (RFC 7540 3.2.1)
            try:
                self.conn.initiate_upgrade_connection(settings.encode())
            except Exception:  # noqa: BLE001 - bad base64 or a malformed SETTINGS payload
                return
        else:
            self.conn.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            if upgraded is not None:
                headers = tuple((k, v) for k, v in upgraded.headers if k not in _HOP_BY_HOP)
                self.streams[1] = _Stream([])
                nursery.start_soon(self._respond, 1, Request(upgraded.method, upgraded.target, headers,
                                                             upgraded.body, "HTTP/2"))
            nursery.start_soon(self._drain_when_asked, nursery.cancel_scope)
            await self._read(data, nursery)
            nursery.cancel_scope.cancel()  # the peer is gone: nobody to answer

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.conn.data_to_send()
            if data:
                # A write cut by cancellation would leave half a frame on the wire: finish it.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT) as scope:
                    await self.stream.send_all(data)
                if scope.cancelled_caught:
                    await self.stream.aclose()

    async def _read(self, data: bytes, nursery: trio.Nursery) -> None:
        while True:
            if not data:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return  # the peer closed
            try:
                events = self.conn.receive_data(data)
            except ProtocolError:
                try:
                    self.conn.close_connection(ErrorCodes.PROTOCOL_ERROR)
                except ProtocolError:
                    pass
                await self.flush()
                return
            for event in events:
                if not self._dispatch(event, nursery):
                    await self.flush()
                    return
            await self.flush()
            data = b""

    def _dispatch(self, event: h2e.Event, nursery: trio.Nursery) -> bool:
        """Apply one h2 event; False once the connection is over."""
        if isinstance(event, h2e.RequestReceived):
            if self.draining:
                self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)  # safe to retry elsewhere
            else:
                self.streams[event.stream_id] = _Stream(list(event.headers))
        elif isinstance(event, h2e.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.body += event.data
                if len(st.body) > self.server.max_body:
                    del self.streams[event.stream_id]
                    self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2e.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None and st.scope is None:
                nursery.start_soon(self._respond, event.stream_id, _request(st))
        elif isinstance(event, h2e.StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None and st.scope is not None:
                st.scope.cancel()
            self._wake_done()
        elif isinstance(event, (h2e.WindowUpdated, h2e.RemoteSettingsChanged)):
            self.window_changed.set()
            self.window_changed = trio.Event()
        elif isinstance(event, h2e.ConnectionTerminated):
            return False
        return True

    async def _respond(self, stream_id: int, request: Request) -> None:
        st = self.streams.get(stream_id)
        if st is None:
            # Reset by the peer between its END_STREAM and this task's start (both frames in one
            # read, e.g. after the app was stopped): nothing to answer - and no KeyError that
            # would take every other stream of the connection down with it.
            return
        try:
            with trio.CancelScope() as st.scope:
                response = await self.server.call(request)
                try:
                    await self._send(stream_id, response, head=request.method == "HEAD")
                except (StreamClosedError, ProtocolError):
                    pass  # reset by the peer, or the connection is closing
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception:  # noqa: BLE001 - a failing body stream ends its stream, not the server
                    try:
                        self.conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
                        await self.flush()
                    except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
        finally:
            self.streams.pop(stream_id, None)
            self._wake_done()

    async def _send(self, stream_id: int, response: Response, *, head: bool) -> None:
        headers = [(b":status", str(response.status).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "host"]
        body = response.body
        if isinstance(body, bytes):
            if response.status not in (204, 304) and not any(k == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(body)).encode()))
            if head:
                body = b""
            ends = not body and response.trailers is None
            self.conn.send_headers(stream_id, headers, end_stream=ends)
            await self.flush()
            if body:
                await self._send_data(stream_id, body, end=response.trailers is None)
        else:
            self.conn.send_headers(stream_id, headers)
            await self.flush()
            async with closing_body(body) as chunks:
                async for chunk in chunks:
                    if chunk and not head:
                        await self._send_data(stream_id, chunk, end=False)
            if response.trailers is None:
                self.conn.end_stream(stream_id)
                await self.flush()
        if response.trailers is not None:
            trailers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.trailers()]
            self.conn.send_headers(stream_id, trailers, end_stream=True)
            await self.flush()

    async def _send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            window = self.conn.local_flow_control_window(stream_id)  # raises once the stream is reset
            if window <= 0:
                await self.window_changed.wait()
                continue
            size = min(window, len(view), self.conn.max_outbound_frame_size)
            self.conn.send_data(stream_id, bytes(view[:size]), end_stream=end and size == len(view))
            view = view[size:]
            await self.flush()

    def _wake_done(self) -> None:
        self.stream_done.set()
        self.stream_done = trio.Event()

    async def _drain_when_asked(self, scope: trio.CancelScope) -> None:
        """On drain: refuse new streams, let open ones finish, then GOAWAY and close."""
        await self.server.draining.wait()
        self.draining = True
        while self.streams:
            await self.stream_done.wait()
        try:
            self.conn.close_connection()
            await self.flush()
        except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def _request(st: _Stream) -> Request:
    pseudo = {k: v for k, v in st.headers if k.startswith(b":")}
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in st.headers if not k.startswith(b":")]
    authority = pseudo.get(b":authority")
    if authority is not None and not any(k == "host" for k, _ in headers):
        headers.insert(0, ("host", authority.decode("latin-1")))
    method = pseudo.get(b":method", b"GET").decode("ascii")
    target = pseudo.get(b":path") or authority or b"/"
    return Request(method, target.decode("latin-1"), tuple(headers), bytes(st.body), "HTTP/2")
