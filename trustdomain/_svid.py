"""Workload certificates (X.509-SVIDs): CSR in, certificate and chain out.

The leaf follows the SPIFFE X509-SVID spec and Istio's workload certificates: exactly
one URI SAN holding the SPIFFE ID (spec 2: "An X.509 SVID MUST contain exactly one URI
SAN"), an empty subject with the SAN marked critical (RFC 5280 4.2.1.6 requires it when
the subject is empty), basicConstraints CA:FALSE, digitalSignature (plus keyEncipherment
for RSA keys, whose TLS 1.2 key exchange needs it), and serverAuth + clientAuth since a
sidecar is both. notBefore is backdated by min(5 min, lifetime / 10) so a peer whose
clock lags accepts a fresh certificate, and notAfter never passes the issuer's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._ca import CertificateAuthority, KeyType, PrivateKey, key_usage
from ._errors import IssuanceRefused, SpiffeIdError
from ._spiffe import SpiffeId

DEFAULT_SVID_LIFETIME = dt.timedelta(hours=24)  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MIN_SVID_LIFETIME = dt.timedelta(minutes=1)
MAX_BACKDATE = dt.timedelta(minutes=5)


def backdate_for(lifetime: dt.timedelta) -> dt.timedelta:
    """Skew allowance: 5 min for long-lived certs, a tenth of the lifetime for short ones."""
    return min(MAX_BACKDATE, lifetime / 10)


@dataclass(frozen=True, slots=True)
class X509Svid:
    """A workload's certificate, the intermediates above it (issuer first, no root), its key."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    key: PrivateKey | None = field(default=None, repr=False, compare=False)

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def chain_der(self) -> list[bytes]:
        """Leaf first, then the intermediates: what a TLS peer sends."""
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.certificate, *self.intermediates)]

    def __repr__(self) -> str:
        return (f"<X509Svid {self.spiffe_id} serial={self.serial:x} "
                f"until {self.not_after:%Y-%m-%dT%H:%M:%SZ} intermediates={len(self.intermediates)}>")


def uri_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def dns_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def make_csr(key: PrivateKey, spiffe_id: SpiffeId, dns_names: Iterable[str] = ()) -> x509.CertificateSigningRequest:
    """What a workload sends its CA: the SPIFFE ID it wants and its service names."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    names += [x509.DNSName(n) for n in dns_names]
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .sign(key, hashes.SHA256()))


def requested_id(csr: x509.CertificateSigningRequest) -> SpiffeId:
    """The one SPIFFE ID a CSR asks for; refuses zero, several or a malformed one."""
    if not csr.is_signature_valid:
        raise IssuanceRefused("the CSR's signature does not verify with its own public key")
    uris = uri_sans(csr)
    if len(uris) != 1:
        raise IssuanceRefused(f"a CSR must carry exactly one URI SAN, found {len(uris)}: {uris!r}")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise IssuanceRefused(f"the CSR's URI SAN is not a SPIFFE ID: {exc.problem}", uris[0]) from None


def sign_csr(ca: CertificateAuthority, csr: x509.CertificateSigningRequest, now: dt.datetime,
             lifetime: dt.timedelta = DEFAULT_SVID_LIFETIME) -> X509Svid:
    """Sign a workload CSR; the CA refuses any identity outside its own trust domain."""
    spiffe_id = requested_id(csr)
    if ca.trust_domain is None:
        raise IssuanceRefused("this CA has no trust domain (a root signs intermediates, not workloads)",
                              str(spiffe_id))
    if spiffe_id.trust_domain != ca.trust_domain:
        raise IssuanceRefused(f"CA of trust domain {ca.trust_domain.name!r} does not sign "
                              f"{str(spiffe_id)!r} of trust domain {spiffe_id.trust_domain.name!r}",
                              str(spiffe_id))
    if lifetime < MIN_SVID_LIFETIME:
        raise IssuanceRefused(f"lifetime {lifetime} is shorter than the minimum {MIN_SVID_LIFETIME}",
                              str(spiffe_id))
    not_after = min(now + lifetime, ca.not_after)
    if not_after - now < MIN_SVID_LIFETIME:
        raise IssuanceRefused(f"CA certificate expires at {ca.not_after:%Y-%m-%dT%H:%M:%SZ}, too soon to "
                              f"issue; rotate the intermediate", str(spiffe_id))
    public_key = csr.public_key()
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    names += [x509.DNSName(n) for n in dns_sans(csr)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate_for(lifetime)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False, key_encipherment=is_rsa), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    intermediates = (ca.certificate, *ca.chain[:-1]) if ca.chain else ()
    return X509Svid(spiffe_id, cert, intermediates)


def issue_svid(ca: CertificateAuthority, spiffe_id: SpiffeId, now: dt.datetime, *,
               lifetime: dt.timedelta = DEFAULT_SVID_LIFETIME, dns_names: Iterable[str] = (),
               key_type: KeyType = KeyType.ECDSA_P256) -> X509Svid:
    """Generate a key and have ``ca`` sign it: for tests, the CLI and the local CA service."""
    key = key_type.generate()
    svid = sign_csr(ca, make_csr(key, spiffe_id, dns_names), now, lifetime)
    return X509Svid(svid.spiffe_id, svid.certificate, svid.intermediates, key)


def with_key(svid: X509Svid, key: PrivateKey) -> X509Svid:
    """Attach the workload's own key to what the CA returned, checking they match."""
    if svid.certificate.public_key() != key.public_key():
        raise IssuanceRefused("the private key does not match the issued certificate", str(svid.spiffe_id))
    return X509Svid(svid.spiffe_id, svid.certificate, svid.intermediates, key)


def is_valid_signature(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
