"""The CA hierarchy: one shared root, one intermediate per cluster, as Istio's plug-in CA.

Theory of operation: the root (10 years, ECDSA P-256 unless RSA-3072 is asked for)
signs per-cluster intermediates (1 year, pathLen 0). Each intermediate carries a
critical NameConstraints extension whose only permitted subtree is the URI host of its
trust domain: RFC 5280 4.2.1.10 matches URI constraints against the host part of the
URI, so the subtree ``east.example`` admits exactly ``spiffe://east.example/...``. That
is what makes "an east CA cannot mint a west identity" hold for any verifier that
honours name constraints (OpenSSL does; ours in ``_verify`` does too) even though east
and west share a root.

Private keys live in ``CertificateAuthority.key``, which is excluded from the repr.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ._errors import CaError
from ._spiffe import TrustDomain

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

ROOT_VALIDITY = dt.timedelta(days=3650)  # issue 3: "10-year default"
INTERMEDIATE_VALIDITY = dt.timedelta(days=365)  # issue 3: "1-year default"
CA_BACKDATE = dt.timedelta(minutes=5)  # tolerate peers whose clocks run a little behind
ORGANIZATION = "meshfed"


class KeyType(enum.Enum):
    """Key algorithms the CA creates; the value is the CLI spelling."""

    ECDSA_P256 = "ecdsa-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"

    def generate(self) -> PrivateKey:
        if self is KeyType.ECDSA_P256:
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=int(self.value.split("-")[1]))

    @classmethod
    def of(cls, key: object) -> "KeyType":
        if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            if isinstance(key.curve, ec.SECP256R1):
                return cls.ECDSA_P256
        elif isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            for kt in (cls.RSA_2048, cls.RSA_3072):
                if key.key_size == int(kt.value.split("-")[1]):
                    return kt
        raise CaError(f"unsupported key: {type(key).__name__}")


def describe_key(key: object) -> str:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__


def key_usage(*, ca: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """A CA by basicConstraints or by keyCertSign: either disqualifies a cert as a leaf."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def permitted_trust_domain(cert: x509.Certificate) -> TrustDomain | None:
    """The trust domain an intermediate's URI name constraint pins it to, if exactly one."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    uris = [g.value for g in nc.permitted_subtrees or () if isinstance(g, x509.UniformResourceIdentifier)]
    if len(uris) != 1:
        return None
    try:
        return TrustDomain(uris[0])
    except ValueError:
        return None


def public_keys_match(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A signing certificate with its key and the certificates above it.

    ``chain`` runs from the issuer of ``certificate`` up to and including the root; it is
    empty for a root. ``trust_domain`` is set for a cluster CA: it signs only that domain.
    """

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()
    trust_domain: TrustDomain | None = None

    def __post_init__(self) -> None:
        if not public_keys_match(self.certificate, self.key):
            raise CaError("the private key does not belong to the CA certificate")
        if not is_ca_certificate(self.certificate):
            raise CaError(f"{self.certificate.subject.rfc4514_string()!r} is not a CA certificate "
                          "(basicConstraints CA:TRUE is missing)")
        prev = self.certificate
        for up in self.chain:
            try:
                prev.verify_directly_issued_by(up)
            except Exception as exc:  # ValueError, TypeError or InvalidSignature
                raise CaError(f"chain is broken: {prev.subject.rfc4514_string()!r} is not signed by "
                              f"{up.subject.rfc4514_string()!r} ({type(exc).__name__})") from None
            prev = up
        if prev.issuer != prev.subject:
            raise CaError(f"chain does not end in a self-signed root: last is "
                          f"{prev.subject.rfc4514_string()!r}")

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.certificate

    @property
    def is_root(self) -> bool:
        return not self.chain

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def __repr__(self) -> str:
        td = f" trust_domain={self.trust_domain}" if self.trust_domain else ""
        return (f"<CertificateAuthority {self.certificate.subject.rfc4514_string()!r}{td} "
                f"until {self.not_after:%Y-%m-%d} depth={len(self.chain)}>")


def _name(common_name: str, locality: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if locality:
        attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, locality))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def create_root(now: dt.datetime, *, key_type: KeyType = KeyType.ECDSA_P256,
                validity: dt.timedelta = ROOT_VALIDITY, common_name: str = "meshfed root CA") -> CertificateAuthority:
    """A self-signed root, valid from ``now`` (minus a small backdate) for ``validity``."""
    key = key_type.generate()
    subject = _name(common_name)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CA_BACKDATE).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return CertificateAuthority(cert, key)


def create_intermediate(parent: CertificateAuthority, trust_domain: TrustDomain, cluster: str,
                        now: dt.datetime, *, key_type: KeyType = KeyType.ECDSA_P256,
                        validity: dt.timedelta = INTERMEDIATE_VALIDITY) -> CertificateAuthority:
    """A cluster CA for ``trust_domain``: pathLen 0, URI name constraint on the domain.

    Its validity is clipped to the parent's so that no certificate outlives its issuer.
    """
    key = key_type.generate()
    not_after = min(now + validity, parent.not_after)
    if not_after <= now:
        raise CaError(f"the parent CA {parent.certificate.subject.rfc4514_string()!r} has expired")
    constraint = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain.name)], excluded_subtrees=None)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("meshfed intermediate CA", cluster))
            .issuer_name(parent.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CA_BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(ca=True), critical=True)
            .add_extension(constraint, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                           critical=False)
            .sign(parent.key, hashes.SHA256()))
    return CertificateAuthority(cert, key, (parent.certificate, *parent.chain), trust_domain)
