"""Trust bundles: per trust domain, as SPIFFE bundle JSON (a JWKS) and as PEM.

A bundle is the set of X.509 authorities one trust domain's SVIDs chain to. A
``BundleSet`` keeps one bundle per trust domain and never merges them: the verifier
asks for the bundle of the peer's own trust domain, so an authority trusted for domain
B says nothing about a certificate claiming domain A. Peer domains enter the set when a
federation link is made (``with_bundle``); a bundle with a lower ``spiffe_sequence``
than the one held is stale and refused.

JSON per the SPIFFE Trust Domain and Bundle spec, section 4: a JWK Set whose X.509
authorities have ``"use": "x509-svid"`` and exactly one certificate in ``x5c``, plus
``spiffe_sequence`` and ``spiffe_refresh_hint`` (seconds). Keys of other uses
(``jwt-svid``) are skipped here: this package verifies X.509 SVIDs only.

Aliases are Istio's ``trustDomainAliases``: identities of an alias domain count as the
local domain's, and when the alias has no bundle of its own the local domain's is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._errors import BundleError
from ._spiffe import SpiffeId, TrustDomain

X509_SVID_USE = "x509-svid"


def _b64url_int(n: int, length: int | None = None) -> str:
    raw = n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwk(cert: x509.Certificate) -> dict[str, Any]:
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": X509_SVID_USE}
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        jwk.update(kty="EC", crv=crv, x=_b64url_int(point.x, size), y=_b64url_int(point.y, size))
    elif isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        jwk.update(kty="RSA", n=_b64url_int(nums.n), e=_b64url_int(nums.e))
    else:
        raise BundleError(f"unsupported authority key {type(key).__name__}")
    jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return jwk


@dataclass(frozen=True, slots=True)
class Bundle:
    """The X.509 authorities of one trust domain, with SPIFFE's sequence and refresh hint."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: dt.timedelta | None = None
    _set: frozenset[x509.Certificate] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", frozenset(self.x509_authorities))  # hashed by DER

    def contains(self, cert: x509.Certificate) -> bool:
        return cert in self._set

    def __repr__(self) -> str:
        return f"<Bundle {self.trust_domain} authorities={len(self.x509_authorities)} sequence={self.sequence}>"

    # --- SPIFFE bundle JSON -------------------------------------------------------------
    def to_jwks(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"keys": [_jwk(c) for c in self.x509_authorities]}
        if self.sequence is not None:
            doc["spiffe_sequence"] = self.sequence
        if self.refresh_hint is not None:
            doc["spiffe_refresh_hint"] = int(self.refresh_hint.total_seconds())
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_jwks(), indent=2)

    @classmethod
    def from_json(cls, trust_domain: TrustDomain, text: str | bytes) -> "Bundle":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"not JSON: {exc}", trust_domain.name) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise BundleError("a SPIFFE bundle is a JWK Set: a JSON object with a 'keys' list",
                              trust_domain.name)
        authorities = []
        for i, jwk in enumerate(doc["keys"]):
            if not isinstance(jwk, dict):
                raise BundleError(f"keys[{i}] is not an object", trust_domain.name)
            if jwk.get("use") != X509_SVID_USE:
                continue
            x5c = jwk.get("x5c")
            if not isinstance(x5c, list) or len(x5c) != 1:
                raise BundleError(f"keys[{i}]: an x509-svid key must carry exactly one certificate in x5c, "
                                  f"found {len(x5c) if isinstance(x5c, list) else x5c!r}", trust_domain.name)
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
            except ValueError as exc:
                raise BundleError(f"keys[{i}].x5c[0] is not a DER certificate: {exc}", trust_domain.name) from None
            expected = _jwk(cert)
            for param in ("kty", "crv", "x", "y", "n", "e"):
                if param in jwk and jwk[param] != expected.get(param):
                    raise BundleError(f"keys[{i}].{param} does not match the certificate in x5c",
                                      trust_domain.name)
            authorities.append(cert)
        seq, hint = doc.get("spiffe_sequence"), doc.get("spiffe_refresh_hint")
        for name, value in (("spiffe_sequence", seq), ("spiffe_refresh_hint", hint)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise BundleError(f"{name} must be a non-negative integer, found {value!r}", trust_domain.name)
        return cls(trust_domain, tuple(authorities), seq,
                   dt.timedelta(seconds=hint) if hint is not None else None)

    # --- PEM ----------------------------------------------------------------------------
    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.x509_authorities)

    @classmethod
    def from_pem(cls, trust_domain: TrustDomain, data: bytes, sequence: int | None = None) -> "Bundle":
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise BundleError("no PEM certificate found", trust_domain.name) from None
        return cls(trust_domain, tuple(certs), sequence)


@dataclass(frozen=True, slots=True)
class BundleSet:
    """One bundle per trust domain, never merged, plus Istio-style trust domain aliases."""

    bundles: Mapping[TrustDomain, Bundle] = field(default_factory=dict)
    aliases: Mapping[TrustDomain, TrustDomain] = field(default_factory=dict)
    """alias domain -> the domain it stands for (Istio's meshConfig.trustDomainAliases)."""

    @classmethod
    def of(cls, *bundles: Bundle, aliases: Mapping[TrustDomain, TrustDomain] | None = None) -> "BundleSet":
        out = cls({}, dict(aliases or {}))
        for b in bundles:
            out = out.with_bundle(b)
        return out

    def with_bundle(self, bundle: Bundle) -> "BundleSet":
        """Add or replace the bundle of ``bundle.trust_domain`` (a federation link, a refresh)."""
        held = self.bundles.get(bundle.trust_domain)
        if held is not None and held.sequence is not None and bundle.sequence is not None \
                and bundle.sequence < held.sequence:
            raise BundleError(f"stale: spiffe_sequence {bundle.sequence} is older than the held "
                              f"{held.sequence}", bundle.trust_domain.name)
        return BundleSet({**self.bundles, bundle.trust_domain: bundle}, self.aliases)

    def without(self, trust_domain: TrustDomain) -> "BundleSet":
        return BundleSet({td: b for td, b in self.bundles.items() if td != trust_domain}, self.aliases)

    def with_aliases(self, local: TrustDomain, aliases: Iterable[TrustDomain]) -> "BundleSet":
        return BundleSet(self.bundles, {**self.aliases, **{a: local for a in aliases if a != local}})

    def canonical(self, trust_domain: TrustDomain) -> TrustDomain:
        return self.aliases.get(trust_domain, trust_domain)

    def for_peer(self, trust_domain: TrustDomain) -> Bundle | None:
        """The bundle a peer of ``trust_domain`` must chain to: its own, else its alias target's."""
        own = self.bundles.get(trust_domain)
        if own is not None:
            return own
        target = self.aliases.get(trust_domain)
        return self.bundles.get(target) if target is not None else None

    def same_identity(self, a: SpiffeId, b: SpiffeId) -> bool:
        """Equal once alias trust domains are read as the domain they stand for."""
        return a.path == b.path and self.canonical(a.trust_domain) == self.canonical(b.trust_domain)

    @property
    def trust_domains(self) -> tuple[TrustDomain, ...]:
        return tuple(sorted(self.bundles))

    def all_authorities(self) -> list[x509.Certificate]:
        """Every authority of every domain, deduplicated: only for OpenSSL's first-pass check."""
        seen: dict[bytes, x509.Certificate] = {}
        for b in self.bundles.values():
            for c in b.x509_authorities:
                seen.setdefault(c.public_bytes(serialization.Encoding.DER), c)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"<BundleSet {', '.join(str(td) for td in self.trust_domains) or 'empty'}>"
