"""HTTP/2 for both roles: h2's H2Connection behind the codec events, with flood protections.

Theory of operation. h2 does the protocol (framing, HPACK, stream states, flow-control
accounting); this wrapper turns its events into the shared ones, queues outgoing DATA
that the peer's window cannot take yet (``available`` and ``buffered`` are the
backpressure signals), and hands received-data credit back only when the caller says it
consumed the bytes (``ack_data``), so a slow reader bounds what a fast peer can push.

Before h2 sees received bytes, ``_http2_guard.FrameGuard`` counts the flood ingredients
in their frame headers (rapid reset, CONTINUATION, empty, PRIORITY, WINDOW_UPDATE, PING and
SETTINGS floods); over a bound the connection ends with GOAWAY ENHANCE_YOUR_CALM and the
chunk is never parsed. What h2 already enforces is left to it: the HPACK bomb (its
decoder's ``max_header_list_size``, set here to ``max_header_bytes``), the concurrent
stream limit (a stream over SETTINGS_MAX_CONCURRENT_STREAMS is a connection error), frame
sizes and window overflow (FLOW_CONTROL_ERROR). A head with more than ``max_headers``
fields resets its stream only, as Envoy does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import h2.events as h2e
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import Settings, SettingCodes

from ._events import (CONNECTION_CLOSED, Event, GoAway, Headers, InformationalResponse, LocalProtocolError,
                      RemoteProtocolError, Request, Response, Role, StreamReset, _new_data, _new_end,
                      _new_informational, _new_request, _new_response)
from ._http2_guard import FrameGuard
from ._limits import DEFAULT_LIMITS, HttpLimits

# Connection-specific fields must not appear in HTTP/2 (RFC 9113 8.2.2), and host travels
# as :authority: all are dropped from what is sent.
_NOT_SENT = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"})


class _Outgoing:
    """DATA waiting for flow-control window, and what ends the stream after it."""

    __slots__ = ("chunks", "size", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: list[tuple[bytes, bytes]] | None = None


class Http2Connection:
    """One HTTP/2 connection seen from ``our_role``; see the module docstring."""

    def __init__(self, our_role: Role, limits: HttpLimits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = time.monotonic, scheme: bytes = b"http") -> None:
        self.our_role = our_role
        self._server = our_role is Role.SERVER
        self._error_status = 400 if self._server else 502
        self._limits = limits
        self._scheme = scheme
        conn = H2Connection(H2Configuration(client_side=not self._server, header_encoding=None))
        conn.local_settings = Settings(client=not self._server, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_stream_window_size,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            SettingCodes.HEADER_TABLE_SIZE: limits.hpack_table_size,
            SettingCodes.ENABLE_PUSH: 0,
        })
        conn.max_inbound_frame_size = limits.max_frame_size
        conn.decoder.max_header_list_size = limits.max_header_bytes  # the HPACK bomb bound
        conn.decoder.max_allowed_table_size = limits.hpack_table_size
        conn.initiate_connection()
        extra = limits.initial_connection_window_size - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self._conn = conn
        self._guard = FrameGuard(limits, clock, self._server)
        self._events: list[Event] = []
        self._out: dict[int, _Outgoing] = {}
        self._trailers_ended: set[int] = set()
        self._closed = False

    def __repr__(self) -> str:
        conn = self._conn
        return (f"<Http2Connection {self.our_role.name} streams={conn.open_inbound_streams}in/"
                f"{conn.open_outbound_streams}out buffered={sum(q.size for q in self._out.values())}>")

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse bytes from the peer (``b""``: EOF); events accumulate for ``events()``.

        Raises RemoteProtocolError, with the HTTP/2 ``error_code`` sent in GOAWAY, when the
        peer broke the protocol or a flood bound; the GOAWAY is then in ``data_to_send()``.
        """
        if not data:
            self._events.append(CONNECTION_CLOSED)
            return
        if self._closed:
            return
        if type(data) is not bytes:
            data = bytes(data)
        problem = self._guard.scan(data)
        if problem is not None:
            self._closed = True
            self._conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM,
                                        last_stream_id=self._conn.highest_inbound_stream_id)
            raise RemoteProtocolError(f"HTTP/2 flood: {problem}", self._error_status, ErrorCodes.ENHANCE_YOUR_CALM)
        try:
            received = self._conn.receive_data(data)
        except H2ProtocolError as exc:
            self._closed = True
            code = int(exc.error_code)
            raise RemoteProtocolError(f"HTTP/2 {ErrorCodes(code).name}: {exc}", self._error_status, code) from None
        self._translate(received)
        self._flush()

    def events(self) -> list[Event]:
        """The events received so far, oldest first; the list is handed over, not copied."""
        events, self._events = self._events, []
        return events

    def _translate(self, received: list[h2e.Event]) -> None:
        out = self._events
        refused: set[int] = set()  # streams reset here for too many fields: drop the rest of their batch
        for ev in received:
            kind = type(ev)
            if refused and getattr(ev, "stream_id", None) in refused:
                continue
            if kind is h2e.DataReceived:
                pad = ev.flow_controlled_length - len(ev.data)
                if pad:
                    self._conn.acknowledge_received_data(pad, ev.stream_id)
                if ev.data:
                    out.append(_new_data(ev.data, ev.stream_id))
            elif kind is h2e.RequestReceived or kind is h2e.ResponseReceived or kind is h2e.InformationalResponseReceived:
                head = self._head(ev.stream_id, ev.headers, kind)
                if type(head) is StreamReset:
                    refused.add(ev.stream_id)
                out.append(head)
            elif kind is h2e.StreamEnded:
                if ev.stream_id in self._trailers_ended:
                    self._trailers_ended.discard(ev.stream_id)
                else:
                    out.append(_new_end((), ev.stream_id))
            elif kind is h2e.TrailersReceived:
                self._trailers_ended.add(ev.stream_id)
                out.append(_new_end(list(ev.headers), ev.stream_id))
            elif kind is h2e.StreamReset:
                self._out.pop(ev.stream_id, None)
                out.append(StreamReset(ev.stream_id, int(ev.error_code), ev.remote_reset))
            elif kind is h2e.ConnectionTerminated:
                out.append(GoAway(int(ev.error_code), ev.last_stream_id or 0, ev.additional_data or b""))

    def _head(self, stream_id: int, raw: Headers, kind: type) -> Event:
        if len(raw) > self._limits.max_headers + 4:  # four pseudo-header fields at most
            fields = [n for n, _ in raw if not n.startswith(b":")]
            if len(fields) > self._limits.max_headers:
                self.reset(stream_id, ErrorCodes.PROTOCOL_ERROR)  # Envoy resets, as for max_headers_count
                return StreamReset(stream_id, ErrorCodes.PROTOCOL_ERROR, remote=False)
        headers: list[tuple[bytes, bytes]] = []
        method = path = authority = status = None
        for name, value in raw:
            if name[:1] != b":":
                if name != b"host":
                    headers.append((name, value))
            elif name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":status":
                status = int(value)
        if kind is h2e.RequestReceived:
            if authority is None:
                authority = next((v for n, v in raw if n == b"host"), None)
            if authority is not None:
                headers.insert(0, (b"host", authority))
            target = authority if method == b"CONNECT" else path
            return _new_request(method, target, headers, b"2", stream_id)  # type: ignore[arg-type]
        if kind is h2e.ResponseReceived:
            return _new_response(status, headers, b"", b"2", stream_id)  # type: ignore[arg-type]
        return _new_informational(status, headers, b"", b"2", stream_id)  # type: ignore[arg-type]

    # --- sending ----------------------------------------------------------------------------

    def send_headers(self, event: Request | Response | InformationalResponse, end_stream: bool = False) -> int:
        """Send a head; a client Request without ``stream_id`` opens a new stream. Returns the stream id."""
        conn = self._conn
        stream_id = event.stream_id
        if isinstance(event, Request):
            if self._server:
                raise LocalProtocolError("a server cannot send a Request")
            if stream_id is None:
                stream_id = conn.get_next_available_stream_id()
            fields = self._request_fields(event)
            self._guard.opened += 1
        else:
            if not self._server:
                raise LocalProtocolError(f"a client cannot send a {type(event).__name__}")
            if stream_id is None:
                raise LocalProtocolError("an HTTP/2 response needs the stream_id of its request")
            fields = [(b":status", b"%d" % event.status)]
            fields += [(n.lower(), v) for n, v in event.headers if n.lower() not in _NOT_SENT]
        self._call(conn.send_headers, stream_id, fields, end_stream=end_stream)
        return stream_id

    def _request_fields(self, event: Request) -> list[tuple[bytes, bytes]]:
        authority = None
        regular = []
        for name, value in event.headers:
            lname = name.lower()
            if lname == b"host":
                authority = value
            elif lname == b"te" and value.lower() != b"trailers":
                continue
            elif lname not in _NOT_SENT:
                regular.append((lname, value))
        target, scheme = event.target, self._scheme
        if event.method == b"CONNECT":
            return [(b":method", b"CONNECT"), (b":authority", target)] + regular
        if b"://" in target[:8]:  # absolute-form, as an explicit proxy receives it
            scheme, rest = target.split(b"://", 1)
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        fields = [(b":method", event.method), (b":scheme", scheme)]
        if authority is not None:
            fields.append((b":authority", authority))
        fields.append((b":path", target))
        return fields + regular

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue body bytes; they go out as the peer's windows allow (see ``available``)."""
        queue = self._out.get(stream_id)
        if queue is None:
            queue = self._out[stream_id] = _Outgoing()
        if data:
            queue.chunks.append(bytes(data))
            queue.size += len(data)
        queue.end = queue.end or end_stream
        self._flush()

    def send_trailers(self, stream_id: int, trailers: Headers) -> None:
        """End the stream with trailers (gRPC status), after any queued DATA."""
        queue = self._out.get(stream_id)
        if queue is None:
            queue = self._out[stream_id] = _Outgoing()
        queue.trailers = [(n.lower(), v) for n, v in trailers]
        self._flush()

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM: abandon the stream and anything queued on it."""
        self._out.pop(stream_id, None)
        self._call(self._conn.reset_stream, stream_id, error_code)

    def ack_data(self, stream_id: int, size: int) -> None:
        """The caller consumed ``size`` received body bytes: let the peer send that much more."""
        self._conn.acknowledge_received_data(size, stream_id)

    def close(self, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY: no new streams; those already open may finish."""
        self._conn.close_connection(error_code, last_stream_id=self._conn.highest_inbound_stream_id)

    def data_to_send(self) -> bytes:
        """Everything to write to the peer now; collecting it also answers queued PINGs/SETTINGS."""
        self._guard.control_acks = 0
        return self._conn.data_to_send()

    def available(self, stream_id: int) -> int:
        """Body bytes ``stream_id`` may send now without being queued: the backpressure signal."""
        try:
            window = self._conn.local_flow_control_window(stream_id)
        except (StreamClosedError, H2ProtocolError, KeyError):
            return 0
        queue = self._out.get(stream_id)
        return max(0, window - (queue.size if queue else 0))

    def buffered(self, stream_id: int) -> int:
        """Body bytes queued on ``stream_id`` waiting for the peer's window."""
        queue = self._out.get(stream_id)
        return queue.size if queue else 0

    @property
    def open_streams(self) -> int:
        return self._conn.open_inbound_streams + self._conn.open_outbound_streams

    @property
    def peer_max_concurrent_streams(self) -> int:
        """Streams the peer lets us open at once (its SETTINGS_MAX_CONCURRENT_STREAMS;
        unbounded until its SETTINGS arrive)."""
        return self._conn.remote_settings.max_concurrent_streams

    def keep_streams_after_goaway(self) -> None:
        """Let the streams a graceful GOAWAY spared finish. RFC 9113 6.8: streams at or below
        ``last_stream_id`` "might still complete successfully"; h2 closes its whole state
        machine on any GOAWAY, so it is put back to open - the caller opens no new stream."""
        from h2.connection import ConnectionState
        if not self._closed:
            self._conn.state_machine.state = (ConnectionState.SERVER_OPEN if self._server
                                              else ConnectionState.CLIENT_OPEN)

    def _call(self, method: Callable[..., None], *args: object, **kwargs: object) -> None:
        try:
            method(*args, **kwargs)
        except H2ProtocolError as exc:
            raise LocalProtocolError(f"HTTP/2: {exc}", 500, int(exc.error_code)) from None

    def _flush(self) -> None:
        """Move queued DATA into h2 as windows allow, never in frames smaller than the dribble bound."""
        if not self._out:
            return
        conn = self._conn
        frame = conn.max_outbound_frame_size
        least = self._limits.min_outbound_data_frame
        for stream_id, queue in list(self._out.items()):
            try:
                while queue.chunks:
                    window = conn.local_flow_control_window(stream_id)
                    if window < min(queue.size, least) or window <= 0:
                        break
                    chunk = queue.chunks[0]
                    size = min(len(chunk), window, frame)
                    if size == len(chunk):
                        queue.chunks.popleft()
                    else:
                        queue.chunks[0] = chunk[size:]
                        chunk = chunk[:size]
                    queue.size -= size
                    last = not queue.chunks and queue.end and queue.trailers is None
                    conn.send_data(stream_id, chunk, end_stream=last)
                    self._guard.data_frames_sent += 1
                    if last:
                        queue.end = False
                if queue.chunks:
                    continue
                if queue.trailers is not None:
                    conn.send_headers(stream_id, queue.trailers, end_stream=True)
                elif queue.end:
                    conn.end_stream(stream_id)
            except StreamClosedError:
                pass  # the peer reset the stream; what was queued for it is dropped
            del self._out[stream_id]
