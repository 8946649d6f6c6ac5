"""Issuance policy: bootstrap credentials and the cluster signer that enforces them."""

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from trustdomain import (
    BootstrapAuthority, BootstrapError, BootstrapGrant, CertificateAuthority, ClusterSigner, IssuanceRefused,
    SpiffeId, TrustDomain, create_intermediate, create_root, make_csr,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST, WEST = TrustDomain("east.example"), TrustDomain("west.example")
SECRET = b"east-cluster-bootstrap-secret-0123"


@pytest.fixture(scope="module")
def east() -> CertificateAuthority:
    return create_intermediate(create_root(NOW), EAST, "east", NOW)


def grant(*ids: tuple[str, str], td: TrustDomain = EAST, hours: int = 1) -> BootstrapGrant:
    return BootstrapGrant(td, ids, NOW + dt.timedelta(hours=hours))


def csr_for(sid: SpiffeId):  # type: ignore[no-untyped-def]
    return make_csr(ec.generate_private_key(ec.SECP256R1()), sid)


@pytest.mark.parametrize("ids, namespace, sa, allowed", [
    ((("bookinfo", "reviews"),), "bookinfo", "reviews", True),
    ((("bookinfo", "reviews"),), "bookinfo", "ratings", False),
    ((("bookinfo", "reviews"),), "other", "reviews", False),
    ((("bookinfo", "*"),), "bookinfo", "anything", True),
    ((("bookinfo", "*"),), "other", "anything", False),
    ((("a", "x"), ("b", "y")), "b", "y", True),
    ((), "bookinfo", "reviews", False),
])
def test_grant_allows_only_the_listed_namespace_and_service_accounts(ids, namespace, sa, allowed) -> None:  # type: ignore[no-untyped-def]
    assert grant(*ids).allows(SpiffeId.workload(EAST, namespace, sa)) is allowed


def test_grant_never_allows_another_trust_domain_or_a_non_workload_id() -> None:
    g = grant(("bookinfo", "*"))
    assert not g.allows(SpiffeId.workload(WEST, "bookinfo", "reviews"))
    assert not g.allows(SpiffeId.parse("spiffe://east.example/bookinfo"))


def test_token_round_trips_its_grant() -> None:
    auth = BootstrapAuthority(SECRET)
    g = grant(("bookinfo", "reviews"), ("bookinfo", "*"))
    assert auth.verify(auth.mint(g), NOW) == g


@pytest.mark.parametrize("mutate, message", [
    (lambda t: "garbage", "bootstrap credential is not a 'mfb1' token"),
    (lambda t: t.replace("mfb1.", "mfb2."), "bootstrap credential is not a 'mfb1' token"),
    (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"),
     "bootstrap credential signature does not verify (forged, or another cluster's)"),
    (lambda t: BootstrapAuthority(b"west-cluster-bootstrap-secret-9876").mint(grant(("bookinfo", "*"))),
     "bootstrap credential signature does not verify (forged, or another cluster's)"),
])
def test_forged_or_garbled_tokens_are_refused(mutate, message) -> None:  # type: ignore[no-untyped-def]
    auth = BootstrapAuthority(SECRET)
    with pytest.raises(BootstrapError) as info:
        auth.verify(mutate(auth.mint(grant(("bookinfo", "reviews")))), NOW)
    assert str(info.value) == message


def test_expired_token_is_refused() -> None:
    auth = BootstrapAuthority(SECRET)
    token = auth.mint(grant(("bookinfo", "reviews"), hours=1))
    with pytest.raises(BootstrapError, match=r"^bootstrap credential expired at 2030-01-01T01:00:00Z$"):
        auth.verify(token, NOW + dt.timedelta(hours=1))


def test_authority_secret_is_not_in_repr_and_must_be_long_enough() -> None:
    assert repr(BootstrapAuthority(SECRET)) == "<BootstrapAuthority secret=<redacted>>"
    with pytest.raises(BootstrapError, match="at least 16 bytes"):
        BootstrapAuthority(b"short")


def test_signer_issues_what_the_credential_allows(east: CertificateAuthority) -> None:
    auth = BootstrapAuthority(SECRET)
    signer = ClusterSigner(east, auth)
    sid = SpiffeId.workload(EAST, "bookinfo", "reviews")
    svid = signer.sign(csr_for(sid), auth.mint(grant(("bookinfo", "reviews"))), NOW)
    assert svid.spiffe_id == sid and svid.not_after == NOW + dt.timedelta(hours=24)


def test_signer_caps_the_lifetime_at_its_maximum(east: CertificateAuthority) -> None:
    auth = BootstrapAuthority(SECRET)
    signer = ClusterSigner(east, auth, max_lifetime=dt.timedelta(hours=1))
    sid = SpiffeId.workload(EAST, "bookinfo", "reviews")
    token = auth.mint(grant(("bookinfo", "reviews")))
    assert signer.sign(csr_for(sid), token, NOW, dt.timedelta(hours=48)).not_after == NOW + dt.timedelta(hours=1)
    assert signer.sign(csr_for(sid), token, NOW, dt.timedelta(minutes=5)).not_after == NOW + dt.timedelta(minutes=5)


@pytest.mark.parametrize("sid, token_grant, message", [
    (SpiffeId.workload(EAST, "bookinfo", "ratings"), grant(("bookinfo", "reviews")),
     "refused 'spiffe://east.example/ns/bookinfo/sa/ratings': the bootstrap credential allows only "
     "ns/bookinfo/sa/reviews"),
    (SpiffeId.workload(EAST, "kube-system", "admin"), grant(("bookinfo", "*")),
     "refused 'spiffe://east.example/ns/kube-system/sa/admin': the bootstrap credential allows only ns/bookinfo/sa/*"),
    (SpiffeId.workload(EAST, "bookinfo", "reviews"), grant(("bookinfo", "reviews"), td=WEST),
     "refused 'spiffe://east.example/ns/bookinfo/sa/reviews': the bootstrap credential is for trust domain "
     "'west.example'"),
    (SpiffeId.workload(WEST, "bookinfo", "reviews"), grant(("bookinfo", "reviews"), td=WEST),
     "refused 'spiffe://west.example/ns/bookinfo/sa/reviews': this CA signs only trust domain 'east.example'"),
    (SpiffeId.workload(EAST, "bookinfo", "reviews"), grant(("bookinfo", "reviews"), hours=0),
     "refused 'spiffe://east.example/ns/bookinfo/sa/reviews': bootstrap credential expired at 2030-01-01T00:00:00Z"),
])
def test_signer_refuses_what_the_credential_or_the_domain_does_not_allow(east, sid, token_grant, message) -> None:  # type: ignore[no-untyped-def]
    auth = BootstrapAuthority(SECRET)
    with pytest.raises(IssuanceRefused) as info:
        ClusterSigner(east, auth).sign(csr_for(sid), auth.mint(token_grant), NOW)
    assert str(info.value) == message
    assert info.value.spiffe_id == str(sid)
