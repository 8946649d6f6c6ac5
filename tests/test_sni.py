"""Server names: Istio's outbound SNI, and reading the SNI of a real ClientHello byte by byte."""

from __future__ import annotations

import ssl

import pytest

from gateway._sni import NEED_DATA, NOT_TLS, OutboundSni, outbound_sni, parse_client_hello, parse_outbound_sni


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


NAME = "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"


def test_sni_of_a_real_client_hello() -> None:
    assert parse_client_hello(client_hello(NAME)) == NAME


def test_client_hello_without_sni_has_no_name() -> None:
    assert parse_client_hello(client_hello(None)) is None


def test_every_truncation_of_a_client_hello_needs_data() -> None:
    hello = client_hello(NAME)
    assert {parse_client_hello(hello[:n]) for n in range(len(hello))} == {NEED_DATA}


def test_client_hello_split_over_two_records_is_joined() -> None:
    hello = client_hello(NAME)
    payload = hello[5:]
    cut = 40
    head = hello[:3]
    two = (head + cut.to_bytes(2, "big") + payload[:cut]
           + head + (len(payload) - cut).to_bytes(2, "big") + payload[cut:])
    assert parse_client_hello(two) == NAME


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
                                  b"\x16\x09\x01\x00\x01\x01"])
def test_anything_but_a_client_hello_is_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) is NOT_TLS


@pytest.mark.parametrize("port, subset, fqdn, text", [
    (9080, "", "reviews.bookinfo.svc.cluster.local", "outbound_.9080_._.reviews.bookinfo.svc.cluster.local"),
    (9080, "v1", "reviews.bookinfo.svc.cluster.local", "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"),
])
def test_outbound_sni_round_trips(port: int, subset: str, fqdn: str, text: str) -> None:
    assert outbound_sni(port, subset, fqdn) == text
    assert parse_outbound_sni(text) == OutboundSni(port, subset, fqdn)


@pytest.mark.parametrize("text", ["reviews.bookinfo.svc.cluster.local", "outbound_.x_._.a", "outbound_.0_._.a",
                                  "outbound_.9080_._.", "inbound_.9080_._.a", "outbound_.9080._.a"])
def test_other_names_are_not_outbound_snis(text: str) -> None:
    assert parse_outbound_sni(text) is None
