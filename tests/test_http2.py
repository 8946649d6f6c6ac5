"""The HTTP/2 codec: client<->server pairs in memory, and a raw peer for the flood protections."""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PriorityFrame,
                              RstStreamFrame, WindowUpdateFrame)

from gateway import (ConnectionClosed, Data, EndOfMessage, GoAway, Http2Connection, HttpLimits,
                     InformationalResponse, LocalProtocolError, RemoteProtocolError, Request, Response, Role,
                     StreamReset)
from topology import Duration

CLIENT, SERVER = Role.CLIENT, Role.SERVER
GRPC = [(b"host", b"greeter.demo.svc.cluster.local:50051"), (b"content-type", b"application/grpc"),
        (b"te", b"trailers")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pair:
    def __init__(self, limits: HttpLimits = HttpLimits()) -> None:
        self.client = Http2Connection(CLIENT, limits)
        self.server = Http2Connection(SERVER, limits)
        self.exchange()

    def exchange(self) -> tuple[list[object], list[object]]:
        """Move bytes both ways until both sides are quiet; returns (client events, server events)."""
        got: dict[Role, list[object]] = {CLIENT: [], SERVER: []}
        for _ in range(100):
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                data = src.data_to_send()
                if data:
                    moved = True
                    dst.receive_data(data)
                    got[dst.our_role] += dst.events()
            if not moved:
                return got[CLIENT], got[SERVER]
        raise AssertionError("the pair never went quiet")


def raw_peer(**settings: int) -> tuple[H2Connection, bytes]:
    """An h2 client we drive frame by frame; returns it and its preface + SETTINGS."""
    peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    if settings:
        peer.local_settings = Settings(client=True, initial_values={getattr(SettingCodes, k): v
                                                                    for k, v in settings.items()})
    peer.initiate_connection()
    return peer, peer.data_to_send()


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return Encoder().encode(headers)


REQUEST_BLOCK = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


def headers_frame(stream_id: int, end_stream: bool = True, end_headers: bool = True, data: bytes | None = None) -> bytes:
    f = HeadersFrame(stream_id)
    f.data = block(REQUEST_BLOCK) if data is None else data
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def flood_error(server: Http2Connection, data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(data)
    return info.value


def goaway_code(server: Http2Connection) -> int:
    peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    peer.initiate_connection()
    events = peer.receive_data(server.data_to_send())
    return next(int(e.error_code) for e in events if type(e).__name__ == "ConnectionTerminated")


# --- exchanges --------------------------------------------------------------------------------

def test_grpc_style_exchange_keeps_trailers_and_maps_authority_to_host() -> None:
    p = Pair()
    sid = p.client.send_headers(Request(b"POST", b"/demo.Greeter/SayHello", GRPC))
    p.client.send_data(sid, b"\x00\x00\x00\x00\x05hello", end_stream=True)
    _, got = p.exchange()
    assert got == [Request(b"POST", b"/demo.Greeter/SayHello", GRPC, b"2", sid),
                   Data(b"\x00\x00\x00\x00\x05hello", sid), EndOfMessage((), sid)]
    p.server.send_headers(Response(200, [(b"content-type", b"application/grpc")], stream_id=sid))
    p.server.send_data(sid, b"\x00\x00\x00\x00\x02hi")
    p.server.send_trailers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"OK")])
    got, _ = p.exchange()
    assert got == [Response(200, [(b"content-type", b"application/grpc")], b"", b"2", sid),
                   Data(b"\x00\x00\x00\x00\x02hi", sid),
                   EndOfMessage([(b"grpc-status", b"0"), (b"grpc-message", b"OK")], sid)]


def test_absolute_form_and_connect_targets_become_pseudo_headers() -> None:
    p = Pair()
    a = p.client.send_headers(Request(b"GET", b"http://reviews.bookinfo:9080/r?x=1", [(b"host", b"ignored")]),
                              end_stream=True)
    b = p.client.send_headers(Request(b"CONNECT", b"db.data:5432", [(b"host", b"db.data:5432")]))
    _, got = p.exchange()
    assert got == [Request(b"GET", b"/r?x=1", [(b"host", b"reviews.bookinfo:9080")], b"2", a), EndOfMessage((), a),
                   Request(b"CONNECT", b"db.data:5432", [(b"host", b"db.data:5432")], b"2", b)]


def test_bytes_arriving_one_at_a_time_parse_the_same() -> None:
    client, server = Http2Connection(CLIENT), Http2Connection(SERVER)
    sid = client.send_headers(Request(b"POST", b"/demo.Greeter/SayHello", GRPC))
    client.send_data(sid, b"x" * 3000)
    client.send_trailers(sid, [(b"x-checksum", b"1")])
    wire = client.data_to_send()
    for i in range(len(wire)):
        server.receive_data(wire[i:i + 1])
    events = server.events()
    assert events[0] == Request(b"POST", b"/demo.Greeter/SayHello", GRPC, b"2", sid)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == b"x" * 3000
    assert events[-1] == EndOfMessage([(b"x-checksum", b"1")], sid)


def test_connection_specific_headers_are_dropped_on_send() -> None:
    p = Pair()
    sid = p.client.send_headers(Request(b"GET", b"/", [
        (b"Host", b"a"), (b"Connection", b"keep-alive"), (b"Keep-Alive", b"5"), (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"), (b"TE", b"gzip"), (b"X-Kept", b"1")]), end_stream=True)
    _, got = p.exchange()
    assert got[0] == Request(b"GET", b"/", [(b"host", b"a"), (b"x-kept", b"1")], b"2", sid)


def test_streams_are_multiplexed_and_informational_responses_pass() -> None:
    p = Pair()
    one = p.client.send_headers(Request(b"GET", b"/1", [(b"host", b"a")]), end_stream=True)
    two = p.client.send_headers(Request(b"GET", b"/2", [(b"host", b"a")]), end_stream=True)
    p.exchange()
    p.server.send_headers(InformationalResponse(103, [(b"link", b"</a.css>")], stream_id=two))
    p.server.send_headers(Response(200, stream_id=two))
    p.server.send_headers(Response(404, stream_id=one))
    p.server.send_data(two, b"second", end_stream=True)
    p.server.end_stream(one)
    got, _ = p.exchange()
    assert got == [InformationalResponse(103, [(b"link", b"</a.css>")], b"", b"2", two),
                   Response(200, [], b"", b"2", two), Response(404, [], b"", b"2", one),
                   Data(b"second", two), EndOfMessage((), two), EndOfMessage((), one)]


def test_peer_reset_drops_queued_data_and_goaway_is_reported() -> None:
    p = Pair()
    sid = p.client.send_headers(Request(b"GET", b"/", [(b"host", b"a")]), end_stream=True)
    p.exchange()
    p.server.send_headers(Response(200, stream_id=sid))
    p.server.send_data(sid, b"x" * 200_000)
    p.client.reset(sid, ErrorCodes.CANCEL)
    client_events, server_events = p.exchange()
    assert StreamReset(sid, ErrorCodes.CANCEL, True) in server_events
    assert p.server.buffered(sid) == 0
    p.client.close()
    _, got = p.exchange()
    assert got == [GoAway(ErrorCodes.NO_ERROR, 0)]
    p.server.receive_data(b"")
    assert p.server.events() == [ConnectionClosed()]


def test_server_cannot_send_requests_nor_answer_without_a_stream() -> None:
    server = Http2Connection(SERVER)
    with pytest.raises(LocalProtocolError, match="^a server cannot send a Request$"):
        server.send_headers(Request(b"GET", b"/", []))
    with pytest.raises(LocalProtocolError, match="^an HTTP/2 response needs the stream_id of its request$"):
        server.send_headers(Response(200))


def test_settings_advertise_the_limits() -> None:
    peer, preface = raw_peer()
    server = Http2Connection(SERVER)
    server.receive_data(preface)
    peer.receive_data(server.data_to_send())
    remote = peer.remote_settings
    assert (remote.max_concurrent_streams, remote.initial_window_size, remote.max_header_list_size,
            remote.max_frame_size, remote.enable_push) == (100, 65536, 61440, 16384, 0)
    assert peer.outbound_flow_control_window == 1024 * 1024


# --- flow control and backpressure ------------------------------------------------------------

def test_a_reader_that_does_not_ack_bounds_what_the_sender_may_push() -> None:
    p = Pair()
    sid = p.client.send_headers(Request(b"GET", b"/big", [(b"host", b"a")]), end_stream=True)
    p.exchange()
    p.server.send_headers(Response(200, stream_id=sid))
    body = bytes(range(256)) * 1000  # 256,000 bytes
    p.server.send_data(sid, body, end_stream=True)
    chunk = b"".join(e.data for e in p.exchange()[0] if isinstance(e, Data))
    assert len(chunk) == 65536  # the client's stream window: nothing more until it consumes
    assert (p.server.buffered(sid), p.server.available(sid)) == (len(body) - 65536, 0)
    assert p.exchange() == ([], [])  # no ack, no progress
    received, ended = chunk, False
    for _ in range(20):
        p.client.ack_data(sid, len(chunk))
        events = p.exchange()[0]
        chunk = b"".join(e.data for e in events if isinstance(e, Data))
        received += chunk
        if any(isinstance(e, EndOfMessage) for e in events):
            ended = True
            break
    assert ended and received == body


def test_tiny_peer_windows_get_no_dribble_of_tiny_frames() -> None:
    peer, preface = raw_peer(INITIAL_WINDOW_SIZE=100)
    server = Http2Connection(SERVER)
    peer.send_headers(1, REQUEST_BLOCK, end_stream=True)
    server.receive_data(preface + peer.data_to_send())
    server.events()
    server.send_headers(Response(200, stream_id=1))
    server.send_data(1, b"y" * 5000, end_stream=True)
    events = peer.receive_data(server.data_to_send())
    assert [type(e).__name__ for e in events if type(e).__name__ == "DataReceived"] == []
    assert server.available(1) == 0 and server.buffered(1) == 5000
    peer.increment_flow_control_window(2000, stream_id=1)
    server.receive_data(peer.data_to_send())
    sizes = [len(e.data) for e in peer.receive_data(server.data_to_send()) if type(e).__name__ == "DataReceived"]
    assert sizes == [2100]


def test_window_update_overflow_is_a_flow_control_error() -> None:
    peer, preface = raw_peer()
    server = Http2Connection(SERVER)
    f = WindowUpdateFrame(0)
    f.window_increment = 2**31 - 1
    err = flood_error(server, preface + f.serialize())
    assert err.error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert err.message.startswith("HTTP/2 FLOW_CONTROL_ERROR: ")
    assert goaway_code(server) == ErrorCodes.FLOW_CONTROL_ERROR


# --- flood protections -------------------------------------------------------------------------

def test_window_update_flood_ends_the_connection() -> None:
    peer, preface = raw_peer()
    server = Http2Connection(SERVER)
    frames = []
    for _ in range(6):
        f = WindowUpdateFrame(0)
        f.window_increment = 1
        frames.append(f.serialize())
    err = flood_error(server, preface + b"".join(frames))
    assert (err.message, err.error_code) == (
        "HTTP/2 flood: 6 WINDOW_UPDATE frames for 0 DATA frames sent exceed 5", ErrorCodes.ENHANCE_YOUR_CALM)
    assert goaway_code(server) == ErrorCodes.ENHANCE_YOUR_CALM


def test_rapid_reset_counts_young_streams_in_a_sliding_window() -> None:
    clock = Clock()
    limits = HttpLimits(max_rapid_resets=5, rapid_reset_window=Duration.of_seconds(10),
                        premature_reset_lifetime=Duration.of_seconds(1))
    server = Http2Connection(SERVER, limits, clock)
    peer, preface = raw_peer()
    server.receive_data(preface)
    stream = 1

    def open_and_reset(age: float = 0.0) -> None:
        nonlocal stream
        server.receive_data(headers_frame(stream, end_stream=False, data=peer.encoder.encode(REQUEST_BLOCK)))
        clock.now += age
        f = RstStreamFrame(stream)
        f.error_code = ErrorCodes.CANCEL
        server.receive_data(f.serialize())
        stream += 2

    for _ in range(5):
        open_and_reset()
    open_and_reset(age=1.5)  # a stream that lived past the premature lifetime does not count
    clock.now += 10  # the window slides past the first five
    for _ in range(5):
        open_and_reset()
    with pytest.raises(RemoteProtocolError) as info:
        open_and_reset()
    assert (info.value.message, info.value.error_code) == (
        "HTTP/2 flood: 6 streams reset within 1s of opening in the last 10s exceed 5 (rapid reset)",
        ErrorCodes.ENHANCE_YOUR_CALM)
    assert goaway_code(server) == ErrorCodes.ENHANCE_YOUR_CALM


def test_rapid_reset_default_allows_250_then_refuses() -> None:
    server = Http2Connection(SERVER, clock=Clock())
    peer, preface = raw_peer()
    server.receive_data(preface)
    traffic = []
    for i in range(251):
        sid = 1 + 2 * i
        traffic.append(headers_frame(sid, end_stream=False, data=peer.encoder.encode(REQUEST_BLOCK)))
        rst = RstStreamFrame(sid)
        rst.error_code = ErrorCodes.CANCEL
        traffic.append(rst.serialize())
    data = b"".join(traffic)
    cut = data.index(traffic[-1])  # everything but the 251st reset
    server.receive_data(data[:cut])
    err = flood_error(server, data[cut:])
    assert err.message.startswith("HTTP/2 flood: 251 streams reset within 1s")


@pytest.mark.parametrize("split", [False, True])
def test_continuation_flood_is_refused(split: bool) -> None:
    server = Http2Connection(SERVER)
    _, preface = raw_peer()
    encoded = block(REQUEST_BLOCK)
    frames = [headers_frame(1, end_headers=False, data=encoded[:1])]
    for _ in range(33):
        f = ContinuationFrame(1)
        f.data = b"\x00"  # never END_HEADERS
        frames.append(f.serialize())
    data = preface + b"".join(frames)
    with pytest.raises(RemoteProtocolError) as info:
        for piece in ([data[i:i + 7] for i in range(0, len(data), 7)] if split else [data]):
            server.receive_data(piece)
    assert info.value.message == "HTTP/2 flood: more than 32 CONTINUATION frames in one header block"
    assert goaway_code(server) == ErrorCodes.ENHANCE_YOUR_CALM


def test_header_block_larger_than_the_header_limit_is_refused_before_decoding() -> None:
    server = Http2Connection(SERVER)
    _, preface = raw_peer()
    frames = [headers_frame(1, end_headers=False, data=b"\x00" * 16000)]
    for _ in range(3):
        f = ContinuationFrame(1)
        f.data = b"\x00" * 16000
        frames.append(f.serialize())
    err = flood_error(server, preface + b"".join(frames))
    assert err.message == "HTTP/2 flood: header block of 64000 bytes exceeds 61440"


def test_hpack_bomb_is_refused_by_the_decoded_size_bound() -> None:
    server = Http2Connection(SERVER)
    peer, preface = raw_peer()
    server.receive_data(preface)
    peer.receive_data(server.data_to_send())
    peer.send_headers(1, REQUEST_BLOCK + [(b"x-bomb", b"b" * 4000)] * 20, end_stream=True)
    wire = peer.data_to_send()
    assert len(wire) < 8000  # 20 references to one dynamic-table entry: small on the wire
    err = flood_error(server, wire)
    assert err.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert err.message.startswith("HTTP/2 ENHANCE_YOUR_CALM: Oversized header block")


def test_more_streams_than_allowed_end_the_connection() -> None:
    server = Http2Connection(SERVER, HttpLimits(max_concurrent_streams=3))
    peer, preface = raw_peer()  # it has not read our SETTINGS yet, so it does not hold back
    for sid in (1, 3, 5, 7):
        peer.send_headers(sid, REQUEST_BLOCK)
    err = flood_error(server, preface + peer.data_to_send())
    assert (err.message, err.error_code) == (
        "HTTP/2 PROTOCOL_ERROR: Max inbound streams is 3, 3 open", ErrorCodes.PROTOCOL_ERROR)


def test_too_many_header_fields_reset_the_stream_only() -> None:
    p = Pair(HttpLimits(max_headers=3))
    sid = p.client.send_headers(Request(b"GET", b"/", [(b"host", b"a")] + [(b"x-%d" % i, b"v") for i in range(4)]),
                                end_stream=True)
    client_events, server_events = p.exchange()
    assert server_events == [StreamReset(sid, ErrorCodes.PROTOCOL_ERROR, False)]
    assert client_events == [StreamReset(sid, ErrorCodes.PROTOCOL_ERROR, True)]


@pytest.mark.parametrize("frames, message", [
    (lambda: [DataFrame(1).serialize(), DataFrame(1).serialize()],
     "more than 1 consecutive empty frames without END_STREAM"),
    (lambda: [_priority(1)] * 101, "101 PRIORITY frames for 0 streams exceed 100"),
    (lambda: [PingFrame(0).serialize()] * 1001, "more than 1000 PING/SETTINGS frames awaiting answers"),
])
def test_control_and_empty_frame_floods_end_the_connection(frames: object, message: str) -> None:
    server = Http2Connection(SERVER)
    _, preface = raw_peer()
    err = flood_error(server, preface + b"".join(frames()))  # type: ignore[operator]
    assert (err.message, err.error_code) == (f"HTTP/2 flood: {message}", ErrorCodes.ENHANCE_YOUR_CALM)


def _priority(stream_id: int) -> bytes:
    f = PriorityFrame(stream_id)
    f.depends_on = 0
    f.stream_weight = 15
    return f.serialize()


def test_pings_are_fine_while_the_loop_collects_the_answers() -> None:
    server = Http2Connection(SERVER)
    _, preface = raw_peer()
    server.receive_data(preface)
    for _ in range(5):
        server.receive_data(PingFrame(0).serialize() * 900)
        assert server.data_to_send()
