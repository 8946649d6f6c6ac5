"""ClientHello parsing (real hellos from Python's ssl and openssl s_client, fragmented every
way, malformed every way, fuzzed) and Istio's outbound SNI names."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import GatewayError
from gateway._sni import (MAX_CLIENT_HELLO, NEED_DATA, NOT_TLS, ClientHelloInfo, ClientHelloParser, MalformedHello,
                          MeshSni, NotMeshSni, NotTls, SniError, mesh_sni, parse_client_hello, parse_mesh_sni,
                          parse_outbound_sni, sniff_server_name)

NAME = "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"
TLS13 = 0x0304


def python_hello(server_name: str | None, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> bytes:
    """The first flight Python's ssl writes: a real ClientHello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.fixture(scope="module")
def openssl_hello() -> bytes:
    """What ``openssl s_client -servername NAME -alpn h2,http/1.1`` sends, read off a loopback socket."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        port = srv.getsockname()[1]
        proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME,
                                 "-alpn", "h2,http/1.1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(10)
                parser, data = ClientHelloParser(), b""
                for _ in range(1000):  # bounded: a hello arrives in a few reads
                    chunk = conn.recv(65536)
                    data += chunk
                    if not chunk or parser.receive_data(chunk) is not NEED_DATA:
                        break
        finally:
            proc.kill()
            proc.wait(10)
    return data


def hellos(openssl: bytes) -> list[bytes]:
    return [python_hello(NAME), openssl]


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake bytes re-cut into records of ``size`` payload bytes."""
    payload = hello[5:]
    return b"".join(hello[:3] + len(p).to_bytes(2, "big") + p
                    for p in (payload[i:i + size] for i in range(0, len(payload), size)))


def feed_bytewise(data: bytes) -> tuple[list[object], ClientHelloInfo | None]:
    parser, answers = ClientHelloParser(), []
    for i in range(len(data)):
        answers.append(parser.receive_data(data[i:i + 1]))
        if answers[-1] is not NEED_DATA:
            break
    last = answers[-1]
    return answers[:-1], last if isinstance(last, ClientHelloInfo) else None


# --- real hellos ---------------------------------------------------------------------------

def test_python_hello_gives_sni_alpn_and_tls13() -> None:
    hello = python_hello(NAME)
    info = parse_client_hello(hello)
    assert info == ClientHelloInfo(NAME, ("h2", "http/1.1"), info.supported_versions, 0x0303, len(hello))
    assert TLS13 in info.supported_versions


def test_openssl_s_client_hello_gives_sni_alpn_and_tls13(openssl_hello: bytes) -> None:
    info = parse_client_hello(openssl_hello)
    assert isinstance(info, ClientHelloInfo)
    assert (info.server_name, info.alpn_protocols, info.record_bytes) == (NAME, ("h2", "http/1.1"), len(openssl_hello))
    assert TLS13 in info.supported_versions


def test_hello_without_sni_or_alpn_has_neither() -> None:
    info = parse_client_hello(python_hello(None, alpn=()))
    assert isinstance(info, ClientHelloInfo) and (info.server_name, info.alpn_protocols) == (None, ())


def test_server_name_is_lower_cased() -> None:
    info = parse_client_hello(python_hello("Reviews.Bookinfo.SVC.cluster.local"))
    assert isinstance(info, ClientHelloInfo) and info.server_name == "reviews.bookinfo.svc.cluster.local"


def test_every_truncation_needs_data(openssl_hello: bytes) -> None:
    for hello in hellos(openssl_hello):
        assert {parse_client_hello(hello[:n]) for n in range(len(hello))} == {NEED_DATA}


def test_hello_fed_byte_by_byte_is_read_at_its_last_byte(openssl_hello: bytes) -> None:
    for hello in hellos(openssl_hello):
        before, info = feed_bytewise(hello)
        assert set(before) == {NEED_DATA} and len(before) == len(hello) - 1
        assert info == parse_client_hello(hello)


def test_hello_split_into_two_reads_at_every_offset(openssl_hello: bytes) -> None:
    for hello in hellos(openssl_hello):
        whole = parse_client_hello(hello)
        for cut in range(len(hello) + 1):
            parser = ClientHelloParser()
            first = parser.receive_data(hello[:cut])
            assert (first is NEED_DATA) == (cut < len(hello))
            assert parser.receive_data(hello[cut:]) == whole


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 40, 100, 511])
def test_hello_spread_over_many_records_is_joined(size: int, openssl_hello: bytes) -> None:
    for hello in hellos(openssl_hello):
        cut = refragment(hello, size)
        info = parse_client_hello(cut)
        assert isinstance(info, ClientHelloInfo) and info.server_name == NAME and info.record_bytes == len(cut)
        before, bytewise = feed_bytewise(cut)
        assert bytewise == info and set(before) == {NEED_DATA}


def test_bytes_after_the_hello_are_left_for_the_tls_server() -> None:
    hello = python_hello(NAME)
    ccs = b"\x14\x03\x03\x00\x01\x01"  # the client's next flight may follow in the same read
    info = parse_client_hello(hello + ccs + b"\x17\x03\x03\x00\x05hello")
    assert isinstance(info, ClientHelloInfo) and info.record_bytes == len(hello)


def test_answer_stays_final_once_given() -> None:
    parser = ClientHelloParser()
    info = parser.receive_data(python_hello(NAME))
    assert parser.receive_data(b"GET / HTTP/1.1\r\n") is info
    parser = ClientHelloParser()
    with pytest.raises(NotTls) as first:
        parser.receive_data(b"GET")
    with pytest.raises(NotTls) as again:
        parser.receive_data(python_hello(NAME))
    assert again.value is first.value


# --- malformed input -----------------------------------------------------------------------

def vec(n: int, data: bytes) -> bytes:
    return len(data).to_bytes(n, "big") + data


def ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vec(2, data)


SNI = ext(0, vec(2, b"\x00" + vec(2, b"a.example")))


def body(*, sid: bytes = b"", suites: bytes = b"\x13\x01", comp: bytes = b"\x00", exts: bytes | None = SNI,
         after: bytes = b"") -> bytes:
    b = b"\x03\x03" + bytes(32) + vec(1, sid) + vec(2, suites) + vec(1, comp)
    return b + (vec(2, exts) if exts is not None else b"") + after


def handshake(b: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + vec(3, b)


def record(payload: bytes, ctype: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes([ctype]) + version + vec(2, payload)


def test_a_hand_built_hello_parses() -> None:
    data = record(handshake(body()))
    assert parse_client_hello(data) == ClientHelloInfo("a.example", (), (), 0x0303, len(data))
    assert parse_client_hello(record(handshake(body(exts=None)))) == ClientHelloInfo(None, (), (), 0x0303, 50)


NOT_TLS_CASES = [
    ("http1", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "first byte b'G' does not start a TLS handshake record (content type 22)"),
    ("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "first byte b'P' does not start a TLS handshake record (content type 22)"),
    ("sslv2_hello", b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37),
     "SSLv2-style ClientHello; only TLS records are accepted"),
    ("high_bit_not_hello", b"\x80\x2e\x05\x00", "first byte b'\\x80' does not start a TLS handshake record (content type 22)"),
    ("application_data_first", record(b"x", ctype=23), "first byte b'\\x17' does not start a TLS handshake record (content type 22)"),
    ("bad_record_version", b"\x16\x09\x01\x00\x05" + bytes(5), "record version 9.x is not TLS (3.x)"),
]


@pytest.mark.parametrize("data, reason", [c[1:] for c in NOT_TLS_CASES], ids=[c[0] for c in NOT_TLS_CASES])
def test_bytes_that_are_not_tls_raise_not_tls(data: bytes, reason: str) -> None:
    with pytest.raises(NotTls) as whole:
        parse_client_hello(data)
    assert whole.value.reason == reason
    with pytest.raises(NotTls) as bytewise:
        feed_bytewise(data)
    assert bytewise.value.reason == reason


HELLO = handshake(body())
MALFORMED_CASES = [
    ("server_hello", record(handshake(body(), msg_type=2)), "handshake message type 2 is not a ClientHello (1)"),
    ("record_over_2_14", b"\x16\x03\x01\xff\xff", "record length 65535 exceeds 2^14 (RFC 8446 5.1)"),
    ("zero_length_record", b"\x16\x03\x01\x00\x00" + record(HELLO),
     "empty handshake record (RFC 8446 5.1 forbids zero-length handshake fragments)"),
    ("huge_handshake_length", record(b"\x01\xff\xff\xff" + bytes(100)),
     "ClientHello of 16777219 bytes exceeds the 65536-byte limit"),
    ("alert_inside_hello", record(HELLO[:20]) + record(b"\x02\x28", ctype=21),
     "record of content type 21 before the ClientHello ended"),
    ("later_record_not_tls_version", record(HELLO[:20]) + b"\x16\x02\x00\x00\x01",
     "record version 2.x is not TLS (3.x)"),
    ("message_shorter_than_random", record(b"\x01\x00\x00\x0a" + bytes(10)), "truncated random: 32 bytes needed, 8 left"),
    ("session_id_over_32", record(handshake(body(sid=bytes(33)))), "legacy_session_id length 33 outside 0..32"),
    ("odd_cipher_suites", record(handshake(body(suites=b"\x13\x01\x13"))), "cipher_suites length 3 is odd"),
    ("no_cipher_suites", record(handshake(body(suites=b""))), "cipher_suites length 0 outside 2..65534"),
    ("no_compression", record(handshake(body(comp=b""))), "legacy_compression_methods length 0 outside 1..255"),
    ("extensions_past_end", record(handshake(body(exts=None, after=b"\x00\x64" + bytes(10)))),
     "extensions length 100 runs past its container (10 bytes left)"),
    ("bytes_after_extensions", record(handshake(body(after=b"xyz"))), "3 bytes after the extensions"),
    ("extension_past_block", record(handshake(body(exts=b"\x00\x10\x00\x09ab"))),
     "extension 16 length 9 runs past its container (2 bytes left)"),
    ("truncated_extension_header", record(handshake(body(exts=b"\x00"))),
     "truncated extension type: 2 bytes needed, 1 left"),
    ("duplicate_extension", record(handshake(body(exts=SNI + SNI))), "extension 0 appears twice"),
    ("empty_server_name_ext", record(handshake(body(exts=ext(0, b"")))),
     "truncated server_name list length: 2 bytes needed, 0 left"),
    ("two_host_names", record(handshake(body(exts=ext(0, vec(2, b"\x00" + vec(2, b"a") + b"\x00" + vec(2, b"b")))))),
     "server_name lists two host names"),
    ("non_ascii_host_name", record(handshake(body(exts=ext(0, vec(2, b"\x00" + vec(2, "café".encode())))))),
     "server name b'caf\\xc3\\xa9' is not printable ASCII"),
    ("empty_host_name", record(handshake(body(exts=ext(0, vec(2, b"\x00\x00\x00"))))),
     "server name length 0 outside 1..65535"),
    ("empty_alpn_name", record(handshake(body(exts=ext(16, vec(2, b"\x00\x02h2"))))),
     "ALPN protocol name length 0 outside 1..255"),
    ("odd_supported_versions", record(handshake(body(exts=ext(43, vec(1, b"\x03\x04\x03"))))),
     "supported_versions is not a list of 2-byte versions"),
]


@pytest.mark.parametrize("data, reason", [c[1:] for c in MALFORMED_CASES], ids=[c[0] for c in MALFORMED_CASES])
def test_broken_hellos_raise_malformed_hello_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedHello) as whole:
        parse_client_hello(data)
    assert whole.value.reason == reason and str(whole.value) == reason
    with pytest.raises(MalformedHello) as bytewise:
        feed_bytewise(data)
    assert bytewise.value.reason == reason


def test_hello_over_the_configured_limit_is_refused() -> None:
    hello = python_hello(NAME)
    with pytest.raises(MalformedHello) as info:
        parse_client_hello(hello, max_size=200)
    assert info.value.reason == f"ClientHello longer than the 200-byte limit (record 1 ends at byte {len(hello)})"
    with pytest.raises(MalformedHello) as info:
        parse_client_hello(refragment(hello, 10), max_size=len(hello) - 10)
    assert info.value.reason == f"ClientHello of {len(hello) - 5} bytes exceeds the {len(hello) - 10}-byte limit"


def test_a_flood_of_one_byte_records_stops_at_the_limit() -> None:
    flood = b"\x01\x00\xff\xf0" + bytes(70_000)  # a 64 KiB-ish hello in 1-byte records: 6 bytes each on the wire
    data = b"".join(b"\x16\x03\x01\x00\x01" + flood[i:i + 1] for i in range(len(flood)))
    parser = ClientHelloParser()
    with pytest.raises(MalformedHello) as info:
        for i in range(0, len(data), 4096):
            parser.receive_data(data[i:i + 4096])
    assert info.value.reason == f"ClientHello longer than the {MAX_CLIENT_HELLO}-byte limit (record 10923 ends at byte 65538)"


def test_errors_belong_to_the_gateway_hierarchy() -> None:
    assert issubclass(NotTls, SniError) and issubclass(MalformedHello, SniError) and issubclass(SniError, GatewayError)


@settings(deadline=500, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_need_data_or_raise_sni_errors(data: bytes) -> None:
    try:
        parse_client_hello(data)
    except (NotTls, MalformedHello):
        pass


@settings(deadline=500, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_hellos_fed_in_random_reads_never_raise_anything_else(data: st.DataObject) -> None:
    hello = bytearray(HELLO_FOR_FUZZ)
    for _ in range(data.draw(st.integers(0, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(hello[:data.draw(st.integers(0, len(hello)))])
    parser, pos = ClientHelloParser(), 0
    try:
        while pos < len(cut):
            step = data.draw(st.integers(1, 64))
            parser.receive_data(cut[pos:pos + step])
            pos += step
    except (NotTls, MalformedHello):
        pass


HELLO_FOR_FUZZ = refragment(python_hello(NAME), 97)


# --- the sniffing helper and outbound SNI names -----------------------------------------------

def test_sniff_server_name_gives_the_name_need_data_or_not_tls() -> None:
    hello = python_hello(NAME)
    assert sniff_server_name(hello) == NAME
    assert sniff_server_name(python_hello(None)) is None
    assert sniff_server_name(hello[:10]) is NEED_DATA
    assert sniff_server_name(b"GET / HTTP/1.1\r\n") is NOT_TLS
    assert sniff_server_name(record(handshake(body(), msg_type=2))) is NOT_TLS


@pytest.mark.parametrize("port, subset, fqdn, text", [
    (9080, "", "reviews.bookinfo.svc.cluster.local", "outbound_.9080_._.reviews.bookinfo.svc.cluster.local"),
    (9080, "v1", "reviews.bookinfo.svc.cluster.local", "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"),
    (1, "canary_v2", "a", "outbound_.1_.canary_v2_.a"),
])
def test_mesh_sni_round_trips(port: int, subset: str, fqdn: str, text: str) -> None:
    assert mesh_sni(port, subset, fqdn) == text
    assert parse_mesh_sni(text) == MeshSni(port, subset, fqdn) == parse_outbound_sni(text)


@pytest.mark.parametrize("text, reason", [
    ("reviews.bookinfo.svc.cluster.local",
     "'reviews.bookinfo.svc.cluster.local' is not of the form outbound_.<port>_.<subset>_.<fqdn>"),
    ("inbound_.9080_._.a", "'inbound_.9080_._.a' is not of the form outbound_.<port>_.<subset>_.<fqdn>"),
    ("outbound_.9080_._", "'outbound_.9080_._' is not of the form outbound_.<port>_.<subset>_.<fqdn>"),
    ("outbound_.x_._.a", "'outbound_.x_._.a': port 'x_' is not '<1..65535>_'"),
    ("outbound_.0_._.a", "'outbound_.0_._.a': port '0_' is not '<1..65535>_'"),
    ("outbound_.65536_._.a", "'outbound_.65536_._.a': port '65536_' is not '<1..65535>_'"),
    ("outbound_.9080._.a", "'outbound_.9080._.a': port '9080' is not '<1..65535>_'"),
    ("outbound_.9080_.v1.a", "'outbound_.9080_.v1.a': subset 'v1' does not end in '_'"),
    ("outbound_.9080_._.", "'outbound_.9080_._.': service name '' is not a host name"),
    ("outbound_.9080_._.a..b", "'outbound_.9080_._.a..b': service name 'a..b' is not a host name"),
])
def test_other_names_are_not_mesh_snis(text: str, reason: str) -> None:
    with pytest.raises(NotMeshSni) as info:
        parse_mesh_sni(text)
    assert (info.value.reason, info.value.name) == (reason, text)
    assert parse_outbound_sni(text) is None


@pytest.mark.parametrize("port, subset", [(0, ""), (70000, ""), (80, "a.b")])
def test_mesh_sni_refuses_parts_that_would_not_parse_back(port: int, subset: str) -> None:
    with pytest.raises(NotMeshSni):
        mesh_sni(port, subset, "a.example")
