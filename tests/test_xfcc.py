"""x-forwarded-client-cert as Envoy's SANITIZE_SET builds it: By, Hash, URI; the caller's is replaced."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway._xfcc import XFCC_HEADER, PeerCertificate, XfccConfig, parse, quote, sanitize_set
from trustdomain import SpiffeId
from trustdomain.testing import MeshPki

OWN = SpiffeId.parse("spiffe://east.example/ns/foo/sa/httpbin")


@pytest.fixture(scope="module")
def peer() -> tuple[bytes, str]:
    """A sleep SVID made in the test: its DER and its SHA-256 as cryptography computes it."""
    svid = MeshPki.shared_root("east.example").svid("east.example", "foo", "sleep", dns_names=("sleep.foo",))
    return svid.certificate.public_bytes(serialization.Encoding.DER), svid.certificate.fingerprint(hashes.SHA256()).hex()


def plain_cert(subject: str) -> bytes:
    """A self-signed certificate without SANs and with a subject needing quotes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_element_is_by_hash_uri(peer: tuple[bytes, str]) -> None:
    der, digest = peer
    assert XfccConfig.for_identity(OWN).element(der) == \
        f"By=spiffe://east.example/ns/foo/sa/httpbin;Hash={digest};URI=spiffe://east.example/ns/foo/sa/sleep"


def test_istio_field_set_adds_empty_quoted_subject_and_dns(peer: tuple[bytes, str]) -> None:
    der, digest = peer
    assert XfccConfig.for_identity(OWN, subject=True, dns=True).element(der) == (
        f'By=spiffe://east.example/ns/foo/sa/httpbin;Hash={digest};Subject="";'
        "URI=spiffe://east.example/ns/foo/sa/sleep;DNS=sleep.foo")


def test_certificate_without_uri_san_still_says_uri_and_quotes_subject() -> None:
    der = plain_cert('Acme, "Inc"')
    element = XfccConfig.for_identity(OWN, subject=True, dns=True).element(der)
    digest = PeerCertificate.from_der(der).hash
    assert element == f'By=spiffe://east.example/ns/foo/sa/httpbin;Hash={digest};Subject="CN=Acme\\\\, \\\\\\"Inc\\\\\\"";URI='
    assert parse(element)[0]["subject"] == ['CN=Acme\\, \\"Inc\\"']  # RFC 4514 form, read back exactly


def test_peer_certificate_read_once_can_be_reused(peer: tuple[bytes, str]) -> None:
    der, digest = peer
    read = PeerCertificate.from_der(der)
    assert (read.hash, read.uris, read.dns, read.subject) == (
        digest, ("spiffe://east.example/ns/foo/sa/sleep",), ("sleep.foo",), "")
    assert XfccConfig.for_identity(OWN).element(read) == XfccConfig.for_identity(OWN).element(der)


def test_callers_headers_are_replaced_and_others_kept_in_order(peer: tuple[bytes, str]) -> None:
    der, _ = peer
    config = XfccConfig.for_identity(OWN)
    sent = [(b"host", b"httpbin"), (b"x-forwarded-client-cert", b"By=spiffe://evil;URI=spiffe://admin"),
            (b"accept", b"*/*"), (b"X-Forwarded-Client-Cert", b"URI=spiffe://forged")]
    out = config.apply(sent, config.element(der))
    assert out[:2] == [(b"host", b"httpbin"), (b"accept", b"*/*")]
    assert [k for k, _ in out].count(XFCC_HEADER) == 1
    assert out[2] == (XFCC_HEADER, config.element(der).encode())


def test_plaintext_connection_only_removes_the_header() -> None:
    config = XfccConfig.for_identity(OWN)
    assert config.element(None) is None
    assert sanitize_set([(b"x-forwarded-client-cert", b"URI=spiffe://forged"), (b"a", b"b")], OWN, None) == \
        [(b"a", b"b")]


@pytest.mark.parametrize(("value", "always", "quoted"), [
    ("spiffe://east.example/ns/foo/sa/sleep", False, "spiffe://east.example/ns/foo/sa/sleep"),
    ("https://x.example/a?b=c", False, '"https://x.example/a?b=c"'),
    ("a,b", False, '"a,b"'), ("a;b", False, '"a;b"'), ('say "hi"', False, '"say \\"hi\\""'),
    ("C:\\dir", False, '"C:\\\\dir"'),
    ("", True, '""'), ("CN=x", True, '"CN=x"'),
])
def test_quoting_follows_the_xfcc_format(value: str, always: bool, quoted: str) -> None:
    assert quote(value, always=always) == quoted


def test_parse_reads_back_what_was_built(peer: tuple[bytes, str]) -> None:
    der, digest = peer
    element = XfccConfig.for_identity(OWN, subject=True).element(der)
    assert parse(element) == [{"by": [str(OWN)], "hash": [digest], "subject": [""],
                               "uri": ["spiffe://east.example/ns/foo/sa/sleep"]}]
    assert parse('By=a;URI="x,y";Subject="a \\"q\\"",By=b') == [
        {"by": ["a"], "uri": ["x,y"], "subject": ['a "q"']}, {"by": ["b"]}]
