"""Trust bundles: SPIFFE bundle JSON and PEM, one bundle per domain, aliases."""

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import serialization

from trustdomain import Bundle, BundleError, BundleSet, KeyType, SpiffeId, TrustDomain, create_root

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST, WEST, OLD = TrustDomain("east.example"), TrustDomain("west.example"), TrustDomain("old.example")


@pytest.fixture(scope="module")
def ec_root():  # type: ignore[no-untyped-def]
    return create_root(NOW).certificate


@pytest.fixture(scope="module")
def rsa_root():  # type: ignore[no-untyped-def]
    return create_root(NOW, key_type=KeyType.RSA_2048).certificate


def test_spiffe_json_is_a_jwks_with_sequence_and_refresh_hint(ec_root) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(Bundle(EAST, (ec_root,), 7, dt.timedelta(minutes=5)).to_json())
    assert sorted(doc) == ["keys", "spiffe_refresh_hint", "spiffe_sequence"]
    assert (doc["spiffe_sequence"], doc["spiffe_refresh_hint"]) == (7, 300)
    (key,) = doc["keys"]
    assert sorted(key) == ["crv", "kty", "use", "x", "x5c", "y"]
    assert (key["use"], key["kty"], key["crv"]) == ("x509-svid", "EC", "P-256")
    assert base64.b64decode(key["x5c"][0]) == ec_root.public_bytes(serialization.Encoding.DER)
    nums = ec_root.public_key().public_numbers()
    assert base64.urlsafe_b64decode(key["x"] + "=") == nums.x.to_bytes(32, "big")


def test_rsa_authority_is_an_rsa_jwk(rsa_root) -> None:  # type: ignore[no-untyped-def]
    (key,) = Bundle(EAST, (rsa_root,)).to_jwks()["keys"]
    assert (key["kty"], key["e"]) == ("RSA", "AQAB") and "n" in key


def test_json_and_pem_round_trip(ec_root, rsa_root) -> None:  # type: ignore[no-untyped-def]
    b = Bundle(EAST, (ec_root, rsa_root), 3, dt.timedelta(seconds=60))
    assert Bundle.from_json(EAST, b.to_json()) == b
    assert Bundle.from_pem(EAST, b.to_pem()).x509_authorities == (ec_root, rsa_root)


def test_json_without_sequence_or_hint_parses(ec_root) -> None:  # type: ignore[no-untyped-def]
    text = json.dumps({"keys": Bundle(EAST, (ec_root,)).to_jwks()["keys"]})
    b = Bundle.from_json(EAST, text)
    assert (b.sequence, b.refresh_hint, b.x509_authorities) == (None, None, (ec_root,))


def test_jwt_svid_keys_are_skipped(ec_root) -> None:  # type: ignore[no-untyped-def]
    doc = Bundle(EAST, (ec_root,), 1).to_jwks()
    doc["keys"].append({"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"})
    assert Bundle.from_json(EAST, json.dumps(doc)).x509_authorities == (ec_root,)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(keys="x"), "a SPIFFE bundle is a JWK Set: a JSON object with a 'keys' list"),
    (lambda d: d["keys"][0].update(x5c=[]), "keys[0]: an x509-svid key must carry exactly one certificate in x5c, "
                                            "found 0"),
    (lambda d: d["keys"][0].update(x5c=d["keys"][0]["x5c"] * 2),
     "keys[0]: an x509-svid key must carry exactly one certificate in x5c, found 2"),
    (lambda d: d["keys"][0].update(x5c=["AAAA"]), "keys[0].x5c[0] is not a DER certificate: "),
    (lambda d: d["keys"][0].update(kty="RSA"), "keys[0].kty does not match the certificate in x5c"),
    (lambda d: d["keys"][0].update(x="AAAA"), "keys[0].x does not match the certificate in x5c"),
    (lambda d: d.update(spiffe_sequence=-1), "spiffe_sequence must be a non-negative integer, found -1"),
    (lambda d: d.update(spiffe_refresh_hint="5m"), "spiffe_refresh_hint must be a non-negative integer, found '5m'"),
])
def test_malformed_bundle_json_is_refused_naming_the_key(ec_root, edit, message) -> None:  # type: ignore[no-untyped-def]
    doc = Bundle(EAST, (ec_root,), 1, dt.timedelta(seconds=1)).to_jwks()
    edit(doc)
    with pytest.raises(BundleError) as info:
        Bundle.from_json(EAST, json.dumps(doc))
    assert str(info.value).startswith(f"bundle for 'east.example': {message}")
    assert info.value.trust_domain == "east.example"


def test_not_json_is_refused() -> None:
    with pytest.raises(BundleError, match=r"^bundle for 'east.example': not JSON: "):
        Bundle.from_json(EAST, "{")


def test_bundle_set_keeps_domains_apart(ec_root, rsa_root) -> None:  # type: ignore[no-untyped-def]
    bs = BundleSet.of(Bundle(EAST, (ec_root,)), Bundle(WEST, (rsa_root,)))
    assert bs.for_peer(EAST).x509_authorities == (ec_root,)  # type: ignore[union-attr]
    assert bs.for_peer(WEST).x509_authorities == (rsa_root,)  # type: ignore[union-attr]
    assert bs.for_peer(OLD) is None
    assert bs.trust_domains == (EAST, WEST)
    assert bs.all_authorities() == [ec_root, rsa_root]
    assert repr(bs) == "<BundleSet east.example, west.example>"
    assert bs.without(WEST).trust_domains == (EAST,)


def test_bundle_set_refuses_a_stale_sequence_and_accepts_a_newer_one(ec_root, rsa_root) -> None:  # type: ignore[no-untyped-def]
    bs = BundleSet.of(Bundle(EAST, (ec_root,), 5))
    with pytest.raises(BundleError) as info:
        bs.with_bundle(Bundle(EAST, (rsa_root,), 4))
    assert str(info.value) == "bundle for 'east.example': stale: spiffe_sequence 4 is older than the held 5"
    assert bs.with_bundle(Bundle(EAST, (rsa_root,), 6)).for_peer(EAST).sequence == 6  # type: ignore[union-attr]


def test_alias_domain_uses_the_local_bundle_only_when_it_has_none_of_its_own(ec_root, rsa_root) -> None:  # type: ignore[no-untyped-def]
    bs = BundleSet.of(Bundle(EAST, (ec_root,))).with_aliases(EAST, [OLD])
    assert bs.for_peer(OLD).trust_domain == EAST  # type: ignore[union-attr]
    assert bs.canonical(OLD) == EAST and bs.canonical(WEST) == WEST
    own = bs.with_bundle(Bundle(OLD, (rsa_root,)))
    assert own.for_peer(OLD).x509_authorities == (rsa_root,)  # type: ignore[union-attr]


def test_aliases_make_identities_equal_across_domains(ec_root) -> None:  # type: ignore[no-untyped-def]
    bs = BundleSet.of(Bundle(EAST, (ec_root,)), aliases={OLD: EAST})
    a = SpiffeId.parse("spiffe://old.example/ns/bookinfo/sa/reviews")
    assert bs.same_identity(a, SpiffeId.parse("spiffe://east.example/ns/bookinfo/sa/reviews"))
    assert not bs.same_identity(a, SpiffeId.parse("spiffe://east.example/ns/bookinfo/sa/ratings"))
    assert not bs.same_identity(a, SpiffeId.parse("spiffe://west.example/ns/bookinfo/sa/reviews"))


def test_bundle_contains_by_exact_certificate(ec_root, rsa_root) -> None:  # type: ignore[no-untyped-def]
    b = Bundle(EAST, (ec_root,))
    assert b.contains(ec_root) and not b.contains(rsa_root)
    assert repr(b) == "<Bundle east.example authorities=1 sequence=None>"
