"""The SPIFFE peer verifier: one test per refusal reason, and the bundle-per-domain rule."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from trustdomain import (
    Bundle, BundleSet, CertificateAuthority, PeerRefused, PeerRole, RefusalReason, SpiffeId, TrustDomain,
    create_intermediate, create_root, verify_peer,
)
from trustdomain._ca import key_usage
from trustdomain.testing import MeshPki

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST, WEST = TrustDomain("east.example"), TrustDomain("west.example")
REVIEWS = SpiffeId.workload(EAST, "bookinfo", "reviews")


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example", "west.example", now=NOW)


def der(*certs: x509.Certificate) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def leaf(ca: CertificateAuthority, *, uris: tuple[str, ...] = (str(REVIEWS),), ca_flag: bool = False,
         eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH),
         not_before: dt.datetime = NOW - dt.timedelta(minutes=5),
         not_after: dt.datetime = NOW + dt.timedelta(hours=1), digital_signature: bool = True) -> x509.Certificate:
    """A leaf signed with ``ca``'s key, bypassing the issuance checks, to build bad SVIDs."""
    key = ec.generate_private_key(ec.SECP256R1())
    ku = key_usage(ca=ca_flag) if digital_signature else x509.KeyUsage(
        False, False, True, False, False, False, False, False, False)
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
         .add_extension(ku, critical=True))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                            critical=True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(ca.key, hashes.SHA256())


def refusal(chain: list[bytes], bundles: BundleSet, role: PeerRole = PeerRole.CLIENT,
            now: dt.datetime = NOW) -> PeerRefused:
    with pytest.raises(PeerRefused) as info:
        verify_peer(chain, bundles, now, role)
    return info.value


def test_valid_svid_yields_its_spiffe_id(pki: MeshPki) -> None:
    svid = pki.svid("east.example", "bookinfo", "reviews")
    assert verify_peer(svid.chain_der(), pki.bundles(), NOW) == REVIEWS
    assert verify_peer(svid.chain_der(), pki.bundles(), NOW, PeerRole.SERVER) == REVIEWS


# --- one test per refusal reason ------------------------------------------------------------

def test_refuses_no_client_certificate(pki: MeshPki) -> None:
    r = refusal([], pki.bundles())
    assert (r.reason, str(r)) == (RefusalReason.NO_CLIENT_CERTIFICATE,
                                  "no_client_certificate: the peer presented no certificate")


def test_refuses_expired(pki: MeshPki) -> None:
    svid = pki.svid("east.example", "bookinfo", "reviews", lifetime=dt.timedelta(hours=1))
    r = refusal(svid.chain_der(), pki.bundles(), now=NOW + dt.timedelta(hours=1, seconds=1))
    assert r.reason is RefusalReason.EXPIRED and r.spiffe_id == REVIEWS
    assert str(r) == ("expired: certificate of 'spiffe://east.example/ns/bookinfo/sa/reviews' expired at "
                      "2030-01-01T01:00:00Z, now is 2030-01-01T01:00:01Z")


def test_refuses_not_yet_valid(pki: MeshPki) -> None:
    svid = pki.svid("east.example", "bookinfo", "reviews", now=NOW + dt.timedelta(hours=1))
    r = refusal(svid.chain_der(), pki.bundles(), now=NOW)
    assert r.reason is RefusalReason.NOT_YET_VALID
    assert str(r) == ("not_yet_valid: certificate of 'spiffe://east.example/ns/bookinfo/sa/reviews' is valid from "
                      "2030-01-01T00:55:00Z, now is 2030-01-01T00:00:00Z")


def test_refuses_unknown_trust_domain(pki: MeshPki) -> None:
    svid = pki.svid("west.example", "bookinfo", "ratings")
    r = refusal(svid.chain_der(), pki.bundles("east.example"))
    assert r.reason is RefusalReason.UNKNOWN_TRUST_DOMAIN
    assert str(r) == ("unknown_trust_domain: no bundle for trust domain 'west.example' of "
                      "'spiffe://west.example/ns/bookinfo/sa/ratings' (trusted: east.example)")


def test_refuses_chain_not_to_that_domains_bundle() -> None:
    pki = MeshPki.independent_roots("east.example", "west.example", now=NOW)
    forged = leaf(pki.ca("west.example"), uris=(str(REVIEWS),))  # an east identity from west's CA
    r = refusal(der(forged, pki.ca("west.example").certificate), pki.bundles())  # west is trusted too
    assert r.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE and r.spiffe_id == REVIEWS
    assert str(r) == ("chain_not_to_bundle: 'spiffe://east.example/ns/bookinfo/sa/reviews' does not chain to "
                      "the bundle of 'east.example': nothing in the peer's chain or the bundle of 'east.example' "
                      "signed 'CN=meshfed intermediate CA,L=west,O=meshfed' (its issuer is "
                      "'CN=root of west.example,O=meshfed')")


def test_refuses_zero_uri_sans(pki: MeshPki) -> None:
    r = refusal(der(leaf(pki.ca("east.example"), uris=())), pki.bundles())
    assert (r.reason, str(r)) == (RefusalReason.URI_SAN_COUNT, "uri_san_count: an SVID has exactly one URI SAN, "
                                                               "found 0")


def test_refuses_several_uri_sans(pki: MeshPki) -> None:
    two = (str(REVIEWS), "spiffe://east.example/ns/bookinfo/sa/ratings")
    r = refusal(der(leaf(pki.ca("east.example"), uris=two)), pki.bundles())
    assert (r.reason, str(r)) == (RefusalReason.URI_SAN_COUNT, (
        "uri_san_count: an SVID has exactly one URI SAN, found 2: 'spiffe://east.example/ns/bookinfo/sa/reviews', "
        "'spiffe://east.example/ns/bookinfo/sa/ratings'"))


def test_refuses_malformed_spiffe_id(pki: MeshPki) -> None:
    r = refusal(der(leaf(pki.ca("east.example"), uris=("spiffe://east.example:8443/ns/a/sa/b",))), pki.bundles())
    assert (r.reason, str(r)) == (RefusalReason.MALFORMED_SPIFFE_ID, (
        "malformed_spiffe_id: invalid SPIFFE ID or trust domain 'spiffe://east.example:8443/ns/a/sa/b': "
        "a SPIFFE ID cannot contain a port"))


def test_refuses_ca_certificate_as_leaf(pki: MeshPki) -> None:
    east = pki.ca("east.example")
    r = refusal(der(east.certificate), pki.bundles())
    assert (r.reason, str(r)) == (RefusalReason.CA_AS_LEAF, "ca_as_leaf: leaf 'CN=meshfed intermediate CA,L=east,"
                                                            "O=meshfed' is a CA certificate")
    r = refusal(der(leaf(east, ca_flag=True)), pki.bundles())
    assert r.reason is RefusalReason.CA_AS_LEAF


def test_refuses_wrong_eku(pki: MeshPki) -> None:
    server_only = leaf(pki.ca("east.example"), eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    r = refusal(der(server_only, pki.ca("east.example").certificate), pki.bundles(), PeerRole.CLIENT)
    assert (r.reason, str(r)) == (RefusalReason.WRONG_EKU, "wrong_eku: a TLS client needs extended key usage "
                                                           "clientAuth, found serverAuth")
    assert verify_peer(der(server_only, pki.ca("east.example").certificate), pki.bundles(), NOW,
                       PeerRole.SERVER) == REVIEWS


def test_every_reason_has_a_test() -> None:
    tested = {"no_client_certificate", "expired", "not_yet_valid", "unknown_trust_domain", "chain_not_to_bundle",
              "uri_san_count", "malformed_spiffe_id", "ca_as_leaf", "wrong_eku"}
    assert {r.value for r in RefusalReason} == tested


# --- the finer points -------------------------------------------------------------------

def test_key_usage_without_digital_signature_is_wrong_eku(pki: MeshPki) -> None:
    r = refusal(der(leaf(pki.ca("east.example"), digital_signature=False)), pki.bundles())
    assert (r.reason, r.detail) == (RefusalReason.WRONG_EKU, "key usage lacks digitalSignature")


def test_leaf_without_eku_is_accepted_as_rfc_5280_says(pki: MeshPki) -> None:
    no_eku = leaf(pki.ca("east.example"), eku=None)
    assert verify_peer(der(no_eku, pki.ca("east.example").certificate), pki.bundles(), NOW) == REVIEWS


def test_shared_root_name_constraints_stop_a_domain_minting_anothers_ids(pki: MeshPki) -> None:
    west = pki.ca("west.example")
    forged = leaf(west, uris=(str(REVIEWS),))  # west's CA, shared root: the root alone would accept it
    r = refusal(der(forged, west.certificate), pki.bundles())
    assert r.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE
    assert r.detail.endswith("CA 'CN=meshfed intermediate CA,L=west,O=meshfed' permits only URI west.example, "
                             "not 'spiffe://east.example/ns/bookinfo/sa/reviews'")


def test_missing_intermediate_is_chain_not_to_bundle(pki: MeshPki) -> None:
    svid = pki.svid("east.example", "bookinfo", "reviews")
    r = refusal(svid.chain_der()[:1], pki.bundles())
    assert (r.reason, r.detail) == (RefusalReason.CHAIN_NOT_TO_BUNDLE, (
        "'spiffe://east.example/ns/bookinfo/sa/reviews' does not chain to the bundle of 'east.example': "
        "nothing in the peer's chain or the bundle of 'east.example' signed '' (its issuer is "
        "'CN=meshfed intermediate CA,L=east,O=meshfed')"))


def test_expired_intermediate_is_reported_as_expired() -> None:
    root = create_root(NOW - dt.timedelta(days=2))
    expired_ca = create_intermediate(root, EAST, "east", NOW - dt.timedelta(days=2), validity=dt.timedelta(days=1))
    r = refusal(der(leaf(expired_ca), expired_ca.certificate), BundleSet.of(Bundle(EAST, (root.certificate,))))
    assert (r.reason, r.detail) == (RefusalReason.EXPIRED, "CA 'CN=meshfed intermediate CA,L=east,O=meshfed' "
                                    "expired at 2029-12-31T00:00:00Z, now is 2030-01-01T00:00:00Z")


def test_intermediate_in_the_bundle_is_an_anchor(pki: MeshPki) -> None:
    east = pki.ca("east.example")
    svid = pki.svid("east.example")
    assert verify_peer(svid.chain_der(), BundleSet.of(Bundle(EAST, (east.certificate,))), NOW) == svid.spiffe_id


def test_alias_domain_verifies_against_the_local_bundle() -> None:
    pki = MeshPki.shared_root("old.example", "east.example", now=NOW)
    svid = pki.svid("old.example", "bookinfo", "reviews")
    bundles = BundleSet.of(pki.bundle("east.example")).with_aliases(EAST, [TrustDomain("old.example")])
    assert verify_peer(svid.chain_der(), bundles, NOW) == svid.spiffe_id
    assert refusal(svid.chain_der(), BundleSet.of(pki.bundle("east.example"))).reason is \
        RefusalReason.UNKNOWN_TRUST_DOMAIN


def test_garbage_der_is_chain_not_to_bundle(pki: MeshPki) -> None:
    r = refusal([b"not a certificate"], pki.bundles())
    assert r.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE and r.detail.startswith("certificate 0 is not DER")


def test_intermediate_below_a_path_len_zero_ca_is_refused(pki: MeshPki) -> None:
    east = pki.ca("east.example")
    sub = create_intermediate(east, EAST, "east-sub", NOW)  # east has pathLen 0: it may sign leaves only
    r = refusal(der(leaf(sub), sub.certificate, east.certificate), pki.bundles())
    assert r.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE
    assert r.detail.endswith("CA 'CN=meshfed intermediate CA,L=east,O=meshfed' allows pathLen 0, found 1")
