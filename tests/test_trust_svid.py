"""Workload SVIDs: CSR in, certificate out, with exactly the extensions SPIFFE and Istio expect."""

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from trustdomain import (
    CertificateAuthority, IssuanceRefused, KeyType, SpiffeId, TrustDomain, create_intermediate, create_root,
    issue_svid, make_csr, sign_csr, with_key,
)
from trustdomain._files import cert_pem

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST, WEST = TrustDomain("east.example"), TrustDomain("west.example")
REVIEWS = SpiffeId.workload(EAST, "bookinfo", "reviews")


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return create_root(NOW)


@pytest.fixture(scope="module")
def east(root: CertificateAuthority) -> CertificateAuthority:
    return create_intermediate(root, EAST, "east", NOW)


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def test_svid_carries_exactly_one_uri_san_and_the_dns_names(east: CertificateAuthority) -> None:
    svid = issue_svid(east, REVIEWS, NOW, dns_names=("reviews.bookinfo.svc.cluster.local",))
    san = ext(svid.certificate, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty (RFC 5280 4.2.1.6)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(REVIEWS)]
    assert san.value.get_values_for_type(x509.DNSName) == ["reviews.bookinfo.svc.cluster.local"]
    assert svid.certificate.subject == x509.Name([])
    assert svid.spiffe_id == REVIEWS


def test_svid_is_a_leaf_for_server_and_client_auth(east: CertificateAuthority) -> None:
    cert = issue_svid(east, REVIEWS, NOW).certificate
    assert ext(cert, x509.BasicConstraints).value.ca is False
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH]


def test_rsa_svid_also_has_key_encipherment(east: CertificateAuthority) -> None:
    cert = issue_svid(east, REVIEWS, NOW, key_type=KeyType.RSA_2048).certificate
    ku = ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment


def test_default_lifetime_is_24_hours_backdated_five_minutes(east: CertificateAuthority) -> None:
    svid = issue_svid(east, REVIEWS, NOW)
    assert svid.not_before == NOW - dt.timedelta(minutes=5)
    assert svid.not_after == NOW + dt.timedelta(hours=24)
    assert dt.timedelta(hours=24) <= svid.not_after - svid.not_before <= dt.timedelta(hours=25)


@pytest.mark.parametrize("lifetime, backdate", [
    (dt.timedelta(minutes=1), dt.timedelta(seconds=6)),
    (dt.timedelta(minutes=10), dt.timedelta(minutes=1)),
    (dt.timedelta(hours=1), dt.timedelta(minutes=5)),
])
def test_short_lifetimes_down_to_a_minute_are_backdated_a_tenth(east: CertificateAuthority,
                                                                lifetime: dt.timedelta,
                                                                backdate: dt.timedelta) -> None:
    svid = issue_svid(east, REVIEWS, NOW, lifetime=lifetime)
    assert (svid.not_before, svid.not_after) == (NOW - backdate, NOW + lifetime)


def test_lifetime_below_a_minute_is_refused(east: CertificateAuthority) -> None:
    with pytest.raises(IssuanceRefused, match=r"^lifetime 0:00:59 is shorter than the minimum 0:01:00$"):
        issue_svid(east, REVIEWS, NOW, lifetime=dt.timedelta(seconds=59))


def test_svid_never_outlives_its_ca(east: CertificateAuthority) -> None:
    late = east.not_after - dt.timedelta(hours=2)
    svid = issue_svid(east, REVIEWS, late)
    assert svid.not_after == east.not_after


def test_chain_holds_the_intermediates_issuer_first_without_the_root(root: CertificateAuthority,
                                                                    east: CertificateAuthority) -> None:
    svid = issue_svid(east, REVIEWS, NOW)
    assert svid.intermediates == (east.certificate,)
    assert root.certificate not in svid.intermediates
    assert len(svid.chain_der()) == 2


def test_openssl_verifies_ecdsa_and_rsa_chains(tmp_path: Path) -> None:
    for key_type in (KeyType.ECDSA_P256, KeyType.RSA_3072):
        root = create_root(NOW, key_type=key_type)
        ca = create_intermediate(root, EAST, "east", NOW, key_type=key_type)
        svid = issue_svid(ca, REVIEWS, NOW, key_type=key_type)
        (tmp_path / "root.pem").write_bytes(cert_pem(root.certificate))
        (tmp_path / "chain.pem").write_bytes(cert_pem(*svid.intermediates))
        (tmp_path / "leaf.pem").write_bytes(cert_pem(svid.certificate))
        out = subprocess.run(["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-purpose", "sslclient",
                              "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "chain.pem"),
                              str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, (key_type, out.stderr)


def test_ca_signs_only_its_own_trust_domain(east: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, SpiffeId.workload(WEST, "bookinfo", "ratings"))
    with pytest.raises(IssuanceRefused) as info:
        sign_csr(east, csr, NOW)
    assert str(info.value) == ("CA of trust domain 'east.example' does not sign "
                               "'spiffe://west.example/ns/bookinfo/sa/ratings' of trust domain 'west.example'")
    assert info.value.spiffe_id == "spiffe://west.example/ns/bookinfo/sa/ratings"


def test_root_does_not_sign_workloads(root: CertificateAuthority) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), REVIEWS)
    with pytest.raises(IssuanceRefused, match=r"^this CA has no trust domain"):
        sign_csr(root, csr, NOW)


def csr_with_uris(*uris: str) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName("x.example")]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize("uris, message", [
    ((), "a CSR must carry exactly one URI SAN, found 0: []"),
    (("spiffe://east.example/ns/a/sa/b", "spiffe://east.example/ns/a/sa/c"),
     "a CSR must carry exactly one URI SAN, found 2: ['spiffe://east.example/ns/a/sa/b', "
     "'spiffe://east.example/ns/a/sa/c']"),
    (("https://east.example/ns/a",), "the CSR's URI SAN is not a SPIFFE ID: scheme is missing or invalid "
                                      "(must be 'spiffe://')"),
])
def test_csr_must_ask_for_exactly_one_valid_spiffe_id(east: CertificateAuthority, uris: tuple[str, ...],
                                                      message: str) -> None:
    with pytest.raises(IssuanceRefused) as info:
        sign_csr(east, csr_with_uris(*uris), NOW)
    assert str(info.value) == message


def test_signed_csr_keeps_the_requesters_key_and_dns_names(east: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    svid = sign_csr(east, make_csr(key, REVIEWS, ["reviews"]), NOW, dt.timedelta(minutes=30))
    assert svid.key is None and svid.certificate.public_key() == key.public_key()
    assert with_key(svid, key).key is key
    with pytest.raises(IssuanceRefused, match="does not match"):
        with_key(svid, ec.generate_private_key(ec.SECP256R1()))


def test_svid_repr_shows_identity_not_key(east: CertificateAuthority) -> None:
    svid = issue_svid(east, REVIEWS, NOW)
    assert repr(svid) == (f"<X509Svid spiffe://east.example/ns/bookinfo/sa/reviews serial={svid.serial:x} "
                          f"until 2030-01-02T00:00:00Z intermediates=1>")
