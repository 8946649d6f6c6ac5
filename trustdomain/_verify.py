"""Verifying a peer's X.509-SVID against the bundle of the peer's own trust domain.

Theory of operation: the leaf is checked first on its own (a certificate, not a CA,
exactly one URI SAN that parses as a SPIFFE ID, usable for this side of TLS, inside its
validity window). Its trust domain then selects one bundle from the ``BundleSet``; an
unknown domain is refused before any signature is checked. Finally a path is built from
the leaf through the intermediates the peer sent to an authority of *that* bundle,
checking at every issuer the signature, CA-ness, keyCertSign, pathLen, validity and
name constraints (URI constraints match the URI's host, RFC 5280 4.2.1.10).

Why not ``cryptography.x509.verification``: its Rust path builder (cryptography 48)
refuses any URI name constraint as "unsupported name constraint", and every cluster
CA here carries one, so the path is built by hand with ``verify_directly_issued_by``.
The same bundle-per-domain rule as go-spiffe's ``x509svid.Verify``: an SVID of domain A
that chains only to domain B's authorities is refused even when B is trusted.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._bundle import Bundle, BundleSet
from ._ca import is_ca_certificate
from ._errors import SpiffeIdError, TrustDomainError
from ._spiffe import SpiffeId
from ._svid import dns_sans, is_valid_signature, uri_sans

MAX_CHAIN_DEPTH = 8  # leaf + intermediates + anchor; deeper than any mesh PKI needs
SIGNATURE_CACHE_SIZE = 4096

# (certificate, issuer) -> does the issuer's key verify the certificate's signature.
# A pure function of the two DER encodings (Certificate hashes and compares by DER), so
# caching it is safe; it spares the ~0.3 ms key load + ECDSA verify that cryptography
# pays per call for the intermediate->root link every peer of a cluster shares and for
# pooled peers reconnecting with the same SVID.
_signatures: dict[tuple[x509.Certificate, x509.Certificate], bool] = {}


_parsed: dict[bytes, x509.Certificate] = {}


def _load(der: bytes) -> x509.Certificate:
    """Parse once per distinct DER: extensions are then decoded once too."""
    cert = _parsed.get(der)
    if cert is None:
        if len(_parsed) >= SIGNATURE_CACHE_SIZE:
            _parsed.clear()
        cert = _parsed[der] = x509.load_der_x509_certificate(der)
    return cert


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = (cert, issuer)
    ok = _signatures.get(key)
    if ok is None:
        if len(_signatures) >= SIGNATURE_CACHE_SIZE:
            _signatures.clear()
        ok = _signatures[key] = is_valid_signature(cert, issuer)
    return ok


class RefusalReason(enum.Enum):
    """Why a peer was refused; the value is the label logs and metrics carry."""

    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_TRUST_DOMAIN = "unknown_trust_domain"
    CHAIN_NOT_TO_BUNDLE = "chain_not_to_bundle"
    URI_SAN_COUNT = "uri_san_count"
    """Zero or several URI SANs: an SVID has exactly one."""
    MALFORMED_SPIFFE_ID = "malformed_spiffe_id"
    CA_AS_LEAF = "ca_as_leaf"
    WRONG_EKU = "wrong_eku"
    """The leaf's (extended) key usage does not permit this side of TLS."""


class PeerRole(enum.Enum):
    """Which side of the handshake the verified peer was: it decides the EKU needed."""

    CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
    SERVER = ExtendedKeyUsageOID.SERVER_AUTH


class PeerRefused(TrustDomainError):
    """A peer certificate refused, with the reason as data and the SPIFFE ID when known."""

    def __init__(self, reason: RefusalReason, detail: str, spiffe_id: SpiffeId | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.spiffe_id = spiffe_id
        super().__init__(f"{reason.value}: {detail}")


def _stamp(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def _who(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string())


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str | None, sid: SpiffeId | None) -> None:
    """``what`` names the certificate in the message; None names a CA by its subject."""
    if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return
    what = what or f"CA {_who(cert)}"
    if now < cert.not_valid_before_utc:
        raise PeerRefused(RefusalReason.NOT_YET_VALID, f"{what} is valid from "
                          f"{_stamp(cert.not_valid_before_utc)}, now is {_stamp(now)}", sid)
    if now > cert.not_valid_after_utc:
        raise PeerRefused(RefusalReason.EXPIRED, f"{what} expired at {_stamp(cert.not_valid_after_utc)}, "
                          f"now is {_stamp(now)}", sid)


def _check_leaf_usage(leaf: x509.Certificate, role: PeerRole, sid: SpiffeId) -> None:
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise PeerRefused(RefusalReason.WRONG_EKU, "key usage lacks digitalSignature", sid)
    except x509.ExtensionNotFound:
        pass
    try:
        eku = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return  # RFC 5280 4.2.1.12: no EKU extension means no restriction
    if role.value not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        found = ", ".join(getattr(o, "_name", o.dotted_string) for o in eku) or "none"
        raise PeerRefused(RefusalReason.WRONG_EKU, f"a TLS {role.name.lower()} needs extended key usage "
                          f"{'clientAuth' if role is PeerRole.CLIENT else 'serverAuth'}, found {found}", sid)


def _host_matches(host: str, constraint: str) -> bool:
    """RFC 5280 4.2.1.10: a leading '.' admits subdomains only, else the exact host."""
    host, constraint = host.lower(), constraint.lower()
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


def _dns_matches(name: str, constraint: str) -> bool:
    name, constraint = name.lower().rstrip("."), constraint.lower().lstrip(".")
    return not constraint or name == constraint or name.endswith("." + constraint)


def _name_constraint_problem(ca: x509.Certificate, sid: SpiffeId, dns: list[str]) -> str | None:
    try:
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    names = [("URI", str(sid), sid.trust_domain.name, _host_matches)] + [("DNS", d, d, _dns_matches) for d in dns]
    kinds = {"URI": x509.UniformResourceIdentifier, "DNS": x509.DNSName}
    for kind, shown, value, match in names:
        permitted = [g.value for g in nc.permitted_subtrees or () if isinstance(g, kinds[kind])]
        excluded = [g.value for g in nc.excluded_subtrees or () if isinstance(g, kinds[kind])]
        if permitted and not any(match(value, c) for c in permitted):
            return f"CA {_who(ca)} permits only {kind} {', '.join(permitted)}, not {shown!r}"
        if any(match(value, c) for c in excluded):
            return f"CA {_who(ca)} excludes {kind} {shown!r}"
    return None


def _issuer_problem(cert: x509.Certificate, ca: x509.Certificate, below: int, now: dt.datetime,
                    sid: SpiffeId) -> tuple[RefusalReason, str] | None:
    """Why ``ca`` cannot be the issuer of ``cert`` here, or None when it can."""
    if ca.subject != cert.issuer or not _signed_by(cert, ca):
        return RefusalReason.CHAIN_NOT_TO_BUNDLE, f"{_who(ca)} did not sign {_who(cert)}"
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        return RefusalReason.CHAIN_NOT_TO_BUNDLE, f"issuer {_who(ca)} is not a CA"
    if bc.path_length is not None and below > bc.path_length:
        return RefusalReason.CHAIN_NOT_TO_BUNDLE, f"CA {_who(ca)} allows pathLen {bc.path_length}, found {below}"
    try:
        if not ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            return RefusalReason.CHAIN_NOT_TO_BUNDLE, f"CA {_who(ca)} lacks keyCertSign"
    except x509.ExtensionNotFound:
        pass
    try:
        _check_time(ca, now, None, sid)
    except PeerRefused as exc:
        return exc.reason, exc.detail
    return None


def _build_path(leaf: x509.Certificate, pool: list[x509.Certificate], bundle: Bundle, now: dt.datetime,
                sid: SpiffeId) -> list[x509.Certificate]:
    """Depth-first search from the leaf to an authority of ``bundle``.

    Name constraints are checked on each complete path, so that a chain which never
    reaches the bundle says so rather than naming a constraint on the way. When every
    path fails, the most telling failure wins: a CA out of its validity, then a name
    constraint on a path that did reach the bundle, then the last dead end.
    """
    dns = dns_sans(leaf)
    failures: list[tuple[int, RefusalReason, str]] = []

    def complete(path: list[x509.Certificate]) -> bool:
        for ca in path[1:]:
            problem = _name_constraint_problem(ca, sid, dns)
            if problem is not None:
                failures.append((1, RefusalReason.CHAIN_NOT_TO_BUNDLE, problem))
                return False
        return True

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        cur = path[-1]
        anchors = [a for a in bundle.x509_authorities if a.subject == cur.issuer]
        candidates = anchors + [c for c in pool if c.subject == cur.issuer and c not in path and c not in anchors]
        for ca in candidates:
            problem = _issuer_problem(cur, ca, len(path) - 1, now, sid)
            if problem is not None:
                failures.append((2 if problem[0] is not RefusalReason.CHAIN_NOT_TO_BUNDLE else 0, *problem))
                continue
            if bundle.contains(ca):
                if complete([*path, ca]):
                    return [*path, ca]
                continue
            if len(path) + 1 < MAX_CHAIN_DEPTH:
                found = extend([*path, ca])
                if found is not None:
                    return found
        if not candidates and cur.issuer == cur.subject:
            failures.append((0, RefusalReason.CHAIN_NOT_TO_BUNDLE,
                             f"it ends at root {_who(cur)}, which is not in that bundle"))
        elif not candidates:
            failures.append((0, RefusalReason.CHAIN_NOT_TO_BUNDLE,
                             f"nothing in the peer's chain or the bundle of {sid.trust_domain.name!r} "
                             f"signed {_who(cur)} (its issuer is {cur.issuer.rfc4514_string()!r})"))
        return None

    path = extend([leaf])
    if path is not None:
        return path
    _, reason, detail = max(failures, key=lambda f: f[0])
    if reason is RefusalReason.CHAIN_NOT_TO_BUNDLE:
        detail = f"{str(sid)!r} does not chain to the bundle of {sid.trust_domain.name!r}: {detail}"
    raise PeerRefused(reason, detail, sid)


def verify_peer(chain_der: Sequence[bytes], bundles: BundleSet, now: dt.datetime,
                role: PeerRole = PeerRole.CLIENT) -> SpiffeId:
    """The peer's SPIFFE ID if ``chain_der`` (leaf first) is a valid SVID chain, else PeerRefused."""
    chain = verify_peer_chain(chain_der, bundles, now, role)
    return SpiffeId.parse(uri_sans(chain[0])[0])


def verify_peer_chain(chain_der: Sequence[bytes], bundles: BundleSet, now: dt.datetime,
                      role: PeerRole = PeerRole.CLIENT) -> list[x509.Certificate]:
    """As ``verify_peer``, returning the verified path (leaf ... authority)."""
    if not chain_der:
        raise PeerRefused(RefusalReason.NO_CLIENT_CERTIFICATE, "the peer presented no certificate")
    certs = []
    for i, der in enumerate(chain_der):
        try:
            certs.append(_load(bytes(der)))
        except ValueError as exc:
            raise PeerRefused(RefusalReason.CHAIN_NOT_TO_BUNDLE, f"certificate {i} is not DER: {exc}") from None
    leaf = certs[0]
    if is_ca_certificate(leaf):
        raise PeerRefused(RefusalReason.CA_AS_LEAF, f"leaf {_who(leaf)} is a CA certificate")
    uris = uri_sans(leaf)
    if len(uris) != 1:
        raise PeerRefused(RefusalReason.URI_SAN_COUNT, f"an SVID has exactly one URI SAN, found "
                          f"{len(uris)}{': ' + ', '.join(map(repr, uris)) if uris else ''}")
    try:
        sid = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise PeerRefused(RefusalReason.MALFORMED_SPIFFE_ID, str(exc)) from None
    _check_leaf_usage(leaf, role, sid)
    _check_time(leaf, now, f"certificate of {str(sid)!r}", sid)
    bundle = bundles.for_peer(sid.trust_domain)
    if bundle is None:
        known = ", ".join(td.name for td in bundles.trust_domains) or "none"
        raise PeerRefused(RefusalReason.UNKNOWN_TRUST_DOMAIN, f"no bundle for trust domain "
                          f"{sid.trust_domain.name!r} of {str(sid)!r} (trusted: {known})", sid)
    return _build_path(leaf, certs[1:], bundle, now, sid)
