"""The CA hierarchy: shared root, per-cluster intermediates with URI name constraints."""

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustdomain import (
    CaError, CertificateAuthority, KeyType, SpiffeId, TrustDomain, create_intermediate, create_root, issue_svid,
)
from trustdomain._ca import is_ca_certificate, permitted_trust_domain
from trustdomain._files import cert_pem

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST = TrustDomain("east.example")


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return create_root(NOW)


@pytest.fixture(scope="module")
def east(root: CertificateAuthority) -> CertificateAuthority:
    return create_intermediate(root, EAST, "east", NOW)


def openssl_verify(tmp_path: Path, root: x509.Certificate, chain: tuple[x509.Certificate, ...],
                   leaf: x509.Certificate, at: dt.datetime = NOW) -> subprocess.CompletedProcess[str]:
    (tmp_path / "root.pem").write_bytes(cert_pem(root))
    (tmp_path / "chain.pem").write_bytes(cert_pem(*chain))
    (tmp_path / "leaf.pem").write_bytes(cert_pem(leaf))
    args = ["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile", str(tmp_path / "root.pem")]
    if chain:
        args += ["-untrusted", str(tmp_path / "chain.pem")]
    return subprocess.run(args + [str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=10)


def test_root_defaults_to_ecdsa_p256_for_ten_years(root: CertificateAuthority) -> None:
    cert = root.certificate
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    assert root.is_root and root.root is cert and cert.issuer == cert.subject


def test_root_is_rsa_3072_on_request() -> None:
    root = create_root(NOW, key_type=KeyType.RSA_3072)
    key = root.certificate.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072


def test_intermediate_is_one_year_path_len_zero_and_name_constrained(east: CertificateAuthority,
                                                                     root: CertificateAuthority) -> None:
    cert = east.certificate
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=365)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier("east.example")]
    assert permitted_trust_domain(cert) == EAST
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert east.chain == (root.certificate,) and east.root is root.certificate
    assert east.trust_domain == EAST


def test_intermediate_never_outlives_its_root() -> None:
    short_root = create_root(NOW, validity=dt.timedelta(days=30))
    ca = create_intermediate(short_root, EAST, "east", NOW)
    assert ca.not_after == short_root.not_after


def test_openssl_accepts_a_leaf_inside_the_name_constraint(tmp_path: Path, root: CertificateAuthority,
                                                           east: CertificateAuthority) -> None:
    svid = issue_svid(east, SpiffeId.workload(EAST, "bookinfo", "reviews"), NOW)
    result = openssl_verify(tmp_path, root.certificate, svid.intermediates, svid.certificate)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def forge_leaf(ca: CertificateAuthority, uri: str) -> x509.Certificate:
    """What a compromised east CA key could sign, bypassing sign_csr's own check."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .sign(ca.key, hashes.SHA256()))


def test_openssl_refuses_a_leaf_outside_the_name_constraint(tmp_path: Path, root: CertificateAuthority,
                                                            east: CertificateAuthority) -> None:
    leaf = forge_leaf(east, "spiffe://west.example/ns/bookinfo/sa/ratings")
    result = openssl_verify(tmp_path, root.certificate, (east.certificate,), leaf)
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stderr


def test_ca_key_never_appears_in_repr(east: CertificateAuthority) -> None:
    text = repr(east)
    assert text.startswith("<CertificateAuthority 'CN=meshfed intermediate CA,L=east,O=meshfed' "
                           "trust_domain=east.example until 2031-01-01")
    assert "key" not in text.lower()


def test_ca_refuses_a_key_that_is_not_its_own(root: CertificateAuthority, east: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="^the private key does not belong to the CA certificate$"):
        CertificateAuthority(east.certificate, root.key, east.chain, EAST)


def test_ca_refuses_a_chain_that_does_not_sign_it(east: CertificateAuthority) -> None:
    other_root = create_root(NOW, common_name="other root")
    with pytest.raises(CaError, match="^chain is broken: 'CN=meshfed intermediate CA,L=east,O=meshfed' is not "
                                      "signed by 'CN=other root,O=meshfed'"):
        CertificateAuthority(east.certificate, east.key, (other_root.certificate,), EAST)


def test_ca_refuses_a_chain_without_a_root(root: CertificateAuthority, east: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="^chain does not end in a self-signed root"):
        CertificateAuthority(east.certificate, east.key, (), EAST)


def test_a_leaf_certificate_cannot_be_a_ca(east: CertificateAuthority) -> None:
    svid = issue_svid(east, SpiffeId.workload(EAST, "a", "b"), NOW)
    assert not is_ca_certificate(svid.certificate)
    assert svid.key is not None
    with pytest.raises(CaError, match="is not a CA certificate"):
        CertificateAuthority(svid.certificate, svid.key, east.chain, EAST)
