"""The HTTP/1.1 codec, run as client<->server pairs in memory (h11's ConnectionPair idea)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from gateway import (ConnectionClosed, Data, EndOfMessage, GatewayError, Http1Connection, Http1State,
                     HttpLimits, InformationalResponse, LocalProtocolError, NEED_DATA, PAUSED,
                     RemoteProtocolError, Request, Response, Role)
from gateway._events import _new_data, _new_end, _new_informational, _new_request, _new_response
from gateway._http1_state import JOINT_MOVES, MOVES, ConnectionState, IllegalMove, Switch

CLIENT, SERVER = Role.CLIENT, Role.SERVER
S = Http1State
HOST = [(b"host", b"reviews.bookinfo.svc.cluster.local:9080")]
EOM = EndOfMessage()


class Pair:
    """A client and a server wired back to back; ``send`` delivers and collects what arrives."""

    def __init__(self, limits: HttpLimits = HttpLimits()) -> None:
        self.conn = {CLIENT: Http1Connection(CLIENT, limits), SERVER: Http1Connection(SERVER, limits)}
        self.wire: list[bytes] = []

    def send(self, role: Role, *events: object) -> list[object]:
        data = b"".join(self.conn[role].send(e) for e in events)  # type: ignore[arg-type]
        self.wire.append(data)
        other = self.conn[CLIENT if role is SERVER else SERVER]
        other.receive_data(data)
        return drain(other)

    def cycle(self) -> None:
        self.conn[CLIENT].start_next_cycle()
        self.conn[SERVER].start_next_cycle()

    def states(self) -> tuple[S, S, S, S]:
        c, s = self.conn[CLIENT], self.conn[SERVER]
        return c.our_state, c.their_state, s.our_state, s.their_state


def drain(conn: Http1Connection) -> list[object]:
    out = []
    for _ in range(1000):
        event = conn.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
            return out
    raise AssertionError("next_event never asked for data")


def receive(role: Role, data: bytes, limits: HttpLimits = HttpLimits()) -> tuple[Http1Connection, list[object]]:
    conn = Http1Connection(role, limits)
    conn.receive_data(data)
    return conn, drain(conn)


def protocol_error(conn: Http1Connection) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    return info.value


# --- round trips ---------------------------------------------------------------------------

def test_get_and_response_round_trip_then_the_connection_is_reused() -> None:
    p = Pair()
    for n in range(3):
        got = p.send(CLIENT, Request(b"GET", b"/reviews/%d" % n, HOST + [(b"X-Trace", b"t")]), EOM)
        assert got == [Request(b"GET", b"/reviews/%d" % n, HOST + [(b"x-trace", b"t")], b"1.1"), EOM, NEED_DATA]
        got = p.send(SERVER, Response(200, [(b"content-length", b"2")]), Data(b"ok"), EOM)
        assert got == [Response(200, [(b"content-length", b"2")], b"OK", b"1.1"), Data(b"ok"), EOM, NEED_DATA]
        assert p.states() == (S.DONE, S.DONE, S.DONE, S.DONE)
        p.cycle()
    assert p.wire[0] == (b"GET /reviews/0 HTTP/1.1\r\nhost: reviews.bookinfo.svc.cluster.local:9080\r\n"
                         b"X-Trace: t\r\n\r\n")
    assert p.wire[1] == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_chunked_bodies_carry_trailers_both_ways() -> None:
    p = Pair()
    te = [(b"transfer-encoding", b"chunked")]
    got = p.send(CLIENT, Request(b"POST", b"/grpc.Svc/Call", HOST + te), Data(b"abc"), Data(b""), Data(b"de"),
                 EndOfMessage([(b"x-sum", b"5")]))
    assert got[1:] == [Data(b"abc"), Data(b"de"), EndOfMessage([(b"x-sum", b"5")]), NEED_DATA]
    assert p.wire[0].endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n")
    got = p.send(SERVER, Response(200, [(b"content-type", b"application/grpc")]), Data(b"msg"),
                 EndOfMessage([(b"grpc-status", b"0"), (b"grpc-message", b"")]))
    assert got == [Response(200, [(b"content-type", b"application/grpc"), (b"transfer-encoding", b"chunked")],
                            b"OK", b"1.1"),
                   Data(b"msg"), EndOfMessage([(b"grpc-status", b"0"), (b"grpc-message", b"")]), NEED_DATA]


def test_content_length_bodies_both_ways() -> None:
    p = Pair()
    got = p.send(CLIENT, Request(b"PUT", b"/r", HOST + [(b"content-length", b"5")]), Data(b"he"), Data(b"llo"), EOM)
    assert got[1:] == [Data(b"hello"), EOM, NEED_DATA]  # llhttp joins what arrives in one read
    got = p.send(SERVER, Response(201, [(b"content-length", b"0")]), EOM)
    assert got == [Response(201, [(b"content-length", b"0")], b"Created", b"1.1"), EOM, NEED_DATA]


def test_events_built_by_the_fast_constructors_equal_constructed_ones_and_stay_frozen() -> None:
    built = [_new_request(b"GET", b"/", [], b"1.1"), _new_response(200, [], b"OK", b"1.1"),
             _new_informational(100, (), b"", b"1.1"), _new_data(b"x"), _new_end([(b"a", b"b")], 3)]
    made = [Request(b"GET", b"/", [], b"1.1"), Response(200, [], b"OK"), InformationalResponse(100),
            Data(b"x"), EndOfMessage([(b"a", b"b")], 3)]
    assert built == made
    assert [type(b) for b in built] == [type(m) for m in made]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].method = b"POST"  # type: ignore[misc]


def test_request_fed_one_byte_at_a_time_gives_the_same_events() -> None:
    raw = (b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\nwxyz\r\n0\r\nT: 1\r\n\r\n")
    conn = Http1Connection(SERVER)
    events: list[object] = []
    for i in range(len(raw)):
        conn.receive_data(raw[i:i + 1])
        events += [e for e in drain(conn) if e is not NEED_DATA]
    assert events == [Request(b"POST", b"/p?q=1", [(b"host", b"a"), (b"transfer-encoding", b"chunked")]),
                      Data(b"w"), Data(b"x"), Data(b"y"), Data(b"z"), EndOfMessage([(b"t", b"1")])]


# --- framing of what we send -----------------------------------------------------------------

@pytest.mark.parametrize("version, expect_header, expect_state", [
    (b"1.1", b"transfer-encoding: chunked\r\n", S.DONE),
    (b"1.0", b"connection: close\r\n", S.MUST_CLOSE),
])
def test_response_without_framing_is_chunked_for_http11_and_close_delimited_for_http10(
        version: bytes, expect_header: bytes, expect_state: S) -> None:
    server, _ = receive(SERVER, b"GET / HTTP/%s\r\nHost: a\r\nConnection: keep-alive\r\n\r\n" % version)
    head = server.send(Response(200, [(b"content-type", b"text/plain")]))
    assert head == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n" + expect_header + b"\r\n"
    body = server.send(Data(b"abc")) + server.send(EOM)
    assert body == (b"3\r\nabc\r\n0\r\n\r\n" if version == b"1.1" else b"abc")
    assert server.our_state is expect_state


def test_chunked_response_to_an_http10_client_is_sent_until_close() -> None:
    server, _ = receive(SERVER, b"GET / HTTP/1.0\r\n\r\n")
    head = server.send(Response(200, [(b"transfer-encoding", b"chunked"), (b"x", b"y")]))
    assert head == b"HTTP/1.1 200 OK\r\nx: y\r\nconnection: close\r\n\r\n"
    assert server.send(Data(b"raw")) == b"raw"


@pytest.mark.parametrize("method, status", [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_bodyless_responses_end_at_their_head_whatever_the_headers_say(method: bytes, status: int) -> None:
    p = Pair()
    p.send(CLIENT, Request(method, b"/", HOST), EOM)
    headers = [(b"content-length", b"1234")] if status != 204 else []
    got = p.send(SERVER, Response(status, headers), EOM)
    assert got == [Response(status, headers, _reason(status), b"1.1"), EOM, NEED_DATA]
    assert p.wire[-1] == b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, _reason(status),
                                                       b"content-length: 1234\r\n" if headers else b"")
    p.cycle()  # the client drops the parser that expected 1234 bytes and starts clean
    p.send(CLIENT, Request(b"GET", b"/next", HOST), EOM)
    assert p.send(SERVER, Response(200, [(b"content-length", b"1")]), Data(b"z"), EOM)[1:] == [Data(b"z"), EOM, NEED_DATA]


def _reason(status: int) -> bytes:
    return {200: b"OK", 204: b"No Content", 304: b"Not Modified"}[status]


def test_head_response_arriving_a_byte_at_a_time_still_ends_at_the_head() -> None:
    client = Http1Connection(CLIENT)
    client.send(Request(b"HEAD", b"/", HOST))
    client.send(EOM)
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    events: list[object] = []
    for i in range(len(raw)):
        client.receive_data(raw[i:i + 1])
        events += [e for e in drain(client) if e is not NEED_DATA]
    assert events == [InformationalResponse(100, [], b"Continue"), Response(200, [(b"content-length", b"9")], b"OK"), EOM]


def test_informational_responses_precede_the_final_one() -> None:
    p = Pair()
    p.send(CLIENT, Request(b"GET", b"/", HOST), EOM)
    got = p.send(SERVER, InformationalResponse(103, [(b"link", b"</s.css>")]), Response(200, [(b"content-length", b"0")]), EOM)
    assert got == [InformationalResponse(103, [(b"link", b"</s.css>")], b"Early Hints"),
                   Response(200, [(b"content-length", b"0")], b"OK"), EOM, NEED_DATA]


def test_expect_100_continue_is_tracked_on_both_sides_until_the_100_arrives() -> None:
    p = Pair()
    headers = HOST + [(b"expect", b"100-continue"), (b"content-length", b"3")]
    got = p.send(CLIENT, Request(b"POST", b"/upload", headers))
    assert got == [Request(b"POST", b"/upload", headers), NEED_DATA]
    assert p.conn[CLIENT].client_is_waiting_for_100_continue
    assert p.conn[SERVER].they_are_waiting_for_100_continue
    assert p.send(SERVER, InformationalResponse(100)) == [InformationalResponse(100, [], b"Continue"), NEED_DATA]
    assert not p.conn[CLIENT].client_is_waiting_for_100_continue
    assert not p.conn[SERVER].they_are_waiting_for_100_continue
    assert p.send(CLIENT, Data(b"abc"), EOM) == [Data(b"abc"), EOM, NEED_DATA]


def test_connection_close_from_the_client_closes_after_the_response() -> None:
    p = Pair()
    p.send(CLIENT, Request(b"GET", b"/", HOST + [(b"connection", b"close")]), EOM)
    p.send(SERVER, Response(200, [(b"content-length", b"0")]), EOM)
    assert p.wire[-1] == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert p.states() == (S.MUST_CLOSE, S.MUST_CLOSE, S.MUST_CLOSE, S.MUST_CLOSE)
    with pytest.raises(LocalProtocolError, match="^connection not reusable: the client is MUST_CLOSE and the "
                                                 "server is MUST_CLOSE$"):
        p.conn[CLIENT].start_next_cycle()
    p.conn[SERVER].receive_data(b"")
    assert drain(p.conn[SERVER]) == [ConnectionClosed()]


# --- explicit proxy forms, CONNECT and Upgrade ----------------------------------------------

def test_absolute_form_target_reaches_the_server_unchanged() -> None:
    _, got = receive(SERVER, b"GET http://reviews.bookinfo.svc.cluster.local:9080/ HTTP/1.1\r\n"
                             b"Host: reviews.bookinfo.svc.cluster.local:9080\r\n\r\n")
    assert got[0] == Request(b"GET", b"http://reviews.bookinfo.svc.cluster.local:9080/", HOST)


def test_connect_accepted_with_2xx_switches_both_sides_and_hands_back_tunnel_bytes() -> None:
    p = Pair()
    got = p.send(CLIENT, Request(b"CONNECT", b"reviews:443", [(b"host", b"reviews:443")]), EOM)
    assert got == [Request(b"CONNECT", b"reviews:443", [(b"host", b"reviews:443")]), EOM, PAUSED]
    p.conn[SERVER].receive_data(b"\x16\x03\x01client-hello")
    assert p.conn[SERVER].trailing_data == (b"\x16\x03\x01client-hello", False)
    head = p.conn[SERVER].send(Response(200, [], b"Connection established"))
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    p.conn[CLIENT].receive_data(head + b"\x16\x03\x03server-hello")
    assert drain(p.conn[CLIENT]) == [Response(200, [], b"Connection established"), PAUSED]
    assert p.states() == (S.SWITCHED_PROTOCOL,) * 4
    assert p.conn[CLIENT].trailing_data == (b"\x16\x03\x03server-hello", False)


def test_connect_refused_continues_as_plain_http() -> None:
    p = Pair()
    p.send(CLIENT, Request(b"CONNECT", b"db:5432", [(b"host", b"db:5432")]), EOM)
    got = p.send(SERVER, Response(403, [(b"content-length", b"19")]), Data(b"RBAC: access denied"), EOM)
    assert got[1:] == [Data(b"RBAC: access denied"), EOM, NEED_DATA]
    p.cycle()
    assert p.send(CLIENT, Request(b"GET", b"/", HOST), EOM)[0] == Request(b"GET", b"/", HOST)


WS = HOST + [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]


def test_websocket_upgrade_accepted_with_101_hands_back_the_frames_after_the_head() -> None:
    p = Pair()
    client, server = p.conn[CLIENT], p.conn[SERVER]
    data = client.send(Request(b"GET", b"/chat", WS)) + client.send(EOM)
    server.receive_data(data + b"\x81\x05hello")
    assert drain(server) == [Request(b"GET", b"/chat", WS), EOM, PAUSED]
    assert server.trailing_data == (b"\x81\x05hello", False)
    client.receive_data(server.send(InformationalResponse(101, [(b"upgrade", b"websocket"),
                                                                (b"connection", b"Upgrade")])) + b"\x81\x02hi")
    assert drain(client) == [InformationalResponse(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
                                                   b"Switching Protocols"), PAUSED]
    assert p.states() == (S.SWITCHED_PROTOCOL,) * 4
    assert client.trailing_data == (b"\x81\x02hi", False)


def test_upgrade_declined_with_a_normal_response_keeps_the_connection_http() -> None:
    p = Pair()
    data = p.conn[CLIENT].send(Request(b"GET", b"/chat", WS)) + p.conn[CLIENT].send(EOM)
    p.conn[SERVER].receive_data(data + b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert drain(p.conn[SERVER])[-1] is PAUSED
    p.send(SERVER, Response(426, [(b"content-length", b"0")]), EOM)
    assert p.states() == (S.DONE, S.DONE, S.DONE, S.DONE)
    p.cycle()
    assert drain(p.conn[SERVER]) == [Request(b"GET", b"/two", [(b"host", b"a")]), EOM, NEED_DATA]


def test_upgrade_request_with_a_body_is_served_as_a_plain_request() -> None:
    raw = (b"POST /rpc HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server, got = receive(SERVER, raw)
    assert [type(e) for e in got] == [Request, Data, EndOfMessage, PAUSED.__class__]
    assert got[1] == Data(b"hello")
    assert server.their_state is S.DONE
    server.send(Response(200, [(b"content-length", b"0")]))
    server.send(EOM)
    server.start_next_cycle()
    assert drain(server) == [Request(b"GET", b"/", [(b"host", b"a")]), EOM, NEED_DATA]


def test_unsolicited_101_is_a_protocol_error_on_both_sides() -> None:
    p = Pair()
    p.send(CLIENT, Request(b"GET", b"/", HOST), EOM)
    with pytest.raises(LocalProtocolError, match="^101 Switching Protocols without an Upgrade request$"):
        p.conn[SERVER].send(InformationalResponse(101))
    client = p.conn[CLIENT]
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
    err = protocol_error(client)
    assert (err.message, err.status) == ("101 Switching Protocols without an Upgrade request", 502)


# --- pipelining and connection end ------------------------------------------------------------

def test_pipelined_requests_wait_for_the_next_cycle() -> None:
    server, got = receive(SERVER, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert got == [Request(b"GET", b"/1", [(b"host", b"a")]), EOM, PAUSED]
    server.send(Response(200, [(b"content-length", b"0")]))
    server.send(EOM)
    server.start_next_cycle()
    assert drain(server) == [Request(b"GET", b"/2", [(b"host", b"a")]), EOM, NEED_DATA]


def test_garbage_after_a_good_request_surfaces_after_that_request() -> None:
    server, got = receive(SERVER, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01garbage")
    assert got == [Request(b"GET", b"/1", [(b"host", b"a")]), EOM, PAUSED]
    server.send(Response(200, [(b"content-length", b"0")]))
    server.send(EOM)
    server.start_next_cycle()
    err = protocol_error(server)
    assert (err.message, err.status) == ("malformed HTTP/1.1 request: Invalid method encountered", 501)
    assert server.their_state is S.ERROR


def test_bytes_after_a_connection_close_request_are_ignored() -> None:
    _, got = receive(SERVER, b"GET / HTTP/1.0\r\n\r\nGET /more HTTP/1.1\r\n\r\n")
    assert got == [Request(b"GET", b"/", [], b"1.0"), EOM, NEED_DATA]


def test_close_delimited_response_ends_at_eof() -> None:
    p = Pair()
    p.send(CLIENT, Request(b"GET", b"/", HOST), EOM)
    client = p.conn[CLIENT]
    client.receive_data(b"HTTP/1.1 200 OK\r\n\r\nstream until close")
    assert drain(client) == [Response(200, [], b"OK"), Data(b"stream until close"), NEED_DATA]
    client.receive_data(b"")
    assert drain(client) == [EOM, ConnectionClosed()]
    assert client.their_state is S.CLOSED


@pytest.mark.parametrize("role, data, message, status", [
    (SERVER, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
     "peer closed the connection in the middle of a request", 400),
    (SERVER, b"GET / HTT", "peer closed the connection in the middle of a request", 400),
    (CLIENT, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "peer closed the connection in the middle of a response", 502),
    (CLIENT, b"", "peer closed the connection without sending a response", 502),
])
def test_eof_in_the_middle_of_a_message_is_an_error(role: Role, data: bytes, message: str, status: int) -> None:
    conn = Http1Connection(role)
    if role is CLIENT:
        conn.send(Request(b"GET", b"/", HOST))
        conn.send(EOM)
    conn.receive_data(data)
    conn.receive_data(b"")
    err = protocol_error(conn)
    assert (err.message, err.status) == (message, status)


def test_eof_between_requests_is_a_clean_close() -> None:
    server, got = receive(SERVER, b"")
    assert got == [ConnectionClosed()]
    with pytest.raises(LocalProtocolError, match="^received data after the peer closed the connection$"):
        server.receive_data(b"GET")


# --- malformed input and limits ---------------------------------------------------------------

@pytest.mark.parametrize("raw, message, status", [
    (b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", "malformed HTTP/1.1 request: Invalid method encountered", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
     "malformed HTTP/1.1 request: Request has invalid `Transfer-Encoding`", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "malformed HTTP/1.1 request: Transfer-Encoding can't be present with Content-Length", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "malformed HTTP/1.1 request: Duplicate Content-Length", 400),
    (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", "malformed HTTP/1.1 request: Invalid header token", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", "malformed HTTP/1.1 request: Expected CRLF after version", 400),
    (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 request needs exactly one Host header; found 0", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 request needs exactly one Host header; found 2", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP version 2.0 is not supported", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
     "malformed HTTP/1.1 request: HTTP/2 connection preface on an HTTP/1.1 connection", 505),
])
def test_malformed_requests_are_refused_with_the_status_to_answer(raw: bytes, message: str, status: int) -> None:
    conn, _ = Http1Connection(SERVER), None
    conn.receive_data(raw)
    err = protocol_error(conn)
    assert (err.message, err.status) == (message, status)
    assert isinstance(err, GatewayError)
    assert conn.their_state is S.ERROR
    # The server may still answer the broken request, and must then close.
    assert conn.send(Response(err.status, [(b"content-length", b"0")])) .startswith(b"HTTP/1.1 %d " % status)
    conn.send(EOM)
    assert conn.our_state is S.MUST_CLOSE


SMALL = HttpLimits(max_header_bytes=100, max_headers=3, max_target_bytes=20, max_body_bytes=10)


@pytest.mark.parametrize("raw, message, status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 100 + b"\r\n\r\n", "request header section exceeds 100 bytes", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", "request header section has more than 3 fields", 431),
    (b"GET /" + b"p" * 20 + b" HTTP/1.1\r\nHost: a\r\n\r\n", "request target exceeds 20 bytes", 414),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", "Content-Length 11 exceeds the body limit of 10 bytes", 413),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n",
     "request body exceeds 10 bytes", 413),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: " + b"t" * 100 + b"\r\n\r\n",
     "trailer section exceeds 100 bytes", 431),
])
def test_limits_answer_with_envoy_statuses(raw: bytes, message: str, status: int) -> None:
    conn = Http1Connection(SERVER, SMALL)
    conn.receive_data(raw)
    events = []
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(20):
            events.append(conn.next_event())
    assert (info.value.message, info.value.status) == (message, status)


def test_a_head_that_never_ends_is_refused_once_no_valid_head_could_be_that_long() -> None:
    conn = Http1Connection(SERVER, SMALL)
    conn.receive_data(b"GET / HTTP/1.1\r\nX: ")
    fed = 0
    with pytest.raises(RemoteProtocolError, match="^request header section exceeds 100 bytes$"):
        for _ in range(100):
            assert conn.next_event() is NEED_DATA
            conn.receive_data(b"v" * 10)
            fed += 10
    assert fed <= 100 + 20 + 4 * (3 + 2) + 64 + 10  # the stall bound plus one read


def test_default_limits_allow_a_header_section_of_60_kib() -> None:
    value = b"v" * (60 * 1024 - 200)
    _, got = receive(SERVER, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + value + b"\r\n\r\n")
    assert got[0].headers[1] == (b"cookie", value)  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError, match="^request header section exceeds 61440 bytes$"):
        receive(SERVER, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + value + b"v" * 300 + b"\r\n\r\n")


# --- what we may send ------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda c: c.send(Request(b"GET", b"/", HOST + [(b"x", b"a\r\nInjected: 1")])),
     "CR or LF in the request target, reason, a header name or a header value"),
    (lambda c: c.send(Request(b"GET", b"/ HTTP/1.1\r\nX:", HOST)),
     "CR or LF in the request target, reason, a header name or a header value"),
    (lambda c: c.send(Request(b"GET", b"/", [])), "HTTP/1.1 request needs exactly one Host header; found 0"),
    (lambda c: c.send(Response(200)), "a client cannot send a Response"),
    (lambda c: c.send(Data(b"x")), "we cannot send Data while the client is in state IDLE"),
    (lambda c: (c.send(Request(b"GET", b"/", HOST)), c.send(Data(b"x"))),
     "this message has no body (no Content-Length or Transfer-Encoding, HEAD, 1xx, 204, 304 or CONNECT)"),
    (lambda c: (c.send(Request(b"PUT", b"/", HOST + [(b"content-length", b"2")])), c.send(Data(b"abc"))),
     "3 bytes of body exceed the 2 left of Content-Length"),
    (lambda c: (c.send(Request(b"PUT", b"/", HOST + [(b"content-length", b"2")])), c.send(EOM)),
     "message ended 2 bytes short of its Content-Length"),
    (lambda c: (c.send(Request(b"PUT", b"/", HOST + [(b"content-length", b"0")])), c.send(EndOfMessage([(b"t", b"1")]))),
     "trailers need a chunked body"),
    (lambda c: c.send(Request(b"PUT", b"/", HOST + [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")])),
     "both Content-Length and Transfer-Encoding in one message"),
    (lambda c: c.send(Request(b"PUT", b"/", HOST + [(b"content-length", b"-1")])),
     "Content-Length b'-1' is not a non-negative integer"),
    (lambda c: c.send(Request(b"PUT", b"/", HOST + [(b"transfer-encoding", b"gzip")])),
     "Transfer-Encoding b'gzip' does not end with chunked"),
    (lambda c: (c.send(Request(b"GET", b"/", HOST)), c.send(EOM), c.send(Request(b"GET", b"/", HOST))),
     "we cannot send Request while the client is in state DONE"),
])
def test_illegal_sends_raise_local_protocol_errors(make: object, message: str) -> None:
    conn = Http1Connection(CLIENT)
    with pytest.raises(LocalProtocolError) as info:
        make(conn)  # type: ignore[operator]
    assert info.value.message == message


def test_response_reason_and_unknown_status_are_written_as_given() -> None:
    server, _ = receive(SERVER, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert server.send(Response(599, [(b"content-length", b"0")])) == b"HTTP/1.1 599 \r\ncontent-length: 0\r\n\r\n"


# --- the state table ---------------------------------------------------------------------------

KINDS = [Request, InformationalResponse, Response, Data, EndOfMessage, ConnectionClosed]


@pytest.mark.parametrize("role, state, kind", list(itertools.product(Role, S, KINDS)))
def test_every_state_and_event_pair_follows_the_table_or_lands_in_error(role: Role, state: S, kind: type) -> None:
    states = ConnectionState()
    if role is CLIENT:
        states.client = state
    else:
        states.server = state
    expected = MOVES.get((role, state, kind))
    if expected is None:
        with pytest.raises(IllegalMove) as info:
            states.process(role, kind)
        assert str(info.value) == f"cannot send {kind.__name__} while the {role.name.lower()} is in state {state.name}"
        assert (states.client if role is CLIENT else states.server) is S.ERROR
    else:
        states.process(role, kind)
        assert (states.client if role is CLIENT else states.server) is expected


@pytest.mark.parametrize("client, server", sorted(JOINT_MOVES, key=lambda k: (k[0].name, k[1].name)))
def test_a_side_that_closed_or_broke_stops_the_other_from_starting_a_cycle(client: S, server: S) -> None:
    states = ConnectionState()
    states.client, states.server = client, server
    if client is S.ERROR or server is S.ERROR:
        states.fail(CLIENT if client is S.ERROR else SERVER)
    else:
        states.process(CLIENT if client is S.CLOSED else SERVER, ConnectionClosed)
    role, state = JOINT_MOVES[(client, server)]
    assert (states.client if role is CLIENT else states.server) is state


def test_send_failed_leaves_our_side_in_error() -> None:
    conn = Http1Connection(CLIENT)
    conn.send(Request(b"GET", b"/", HOST))
    conn.send_failed()
    assert conn.our_state is S.ERROR
    with pytest.raises(LocalProtocolError, match="^we cannot send EndOfMessage while the client is in state ERROR$"):
        conn.send(EOM)


@pytest.mark.parametrize("proposal, kind", [(Switch.UPGRADE, InformationalResponse), (Switch.CONNECT, Response)])
def test_switch_is_accepted_only_once_the_client_finished_its_request(proposal: Switch, kind: type) -> None:
    states = ConnectionState()
    states.proposal = proposal
    states.process(CLIENT, Request)
    with pytest.raises(IllegalMove, match=f"^cannot send {kind.__name__} accepting {proposal.name} while the "
                                          f"server is in state SEND_RESPONSE$"):
        states.process(SERVER, kind, proposal)
    states = ConnectionState()
    states.proposal = proposal
    states.process(CLIENT, Request)
    states.process(CLIENT, EndOfMessage)
    assert states.client is S.MIGHT_SWITCH_PROTOCOL
    states.process(SERVER, kind, proposal)
    assert (states.client, states.server) == (S.SWITCHED_PROTOCOL, S.SWITCHED_PROTOCOL)


def test_repr_shows_role_states_and_buffer() -> None:
    server, _ = receive(SERVER, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET")
    assert repr(server) == "<Http1Connection SERVER our=SEND_RESPONSE their=DONE buffered=0>"
