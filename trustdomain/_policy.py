"""Who may ask a cluster CA for which identity.

A workload proves what it may become with a bootstrap credential, the role Kubernetes
service-account tokens play for istiod: here a small HMAC-SHA256 token minted by the
cluster's control plane that names a trust domain, the (namespace, service account)
pairs it allows (``*`` as the service account allows a whole namespace) and an expiry.
``ClusterSigner`` puts the two rules of issue 3 in one place: the CA signs only its own
trust domain (``sign_csr`` enforces it) and only what the requester's grant allows.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass, field

from cryptography import x509

from ._ca import CertificateAuthority
from ._errors import BootstrapError, IssuanceRefused
from ._spiffe import SpiffeId, TrustDomain
from ._svid import DEFAULT_SVID_LIFETIME, X509Svid, requested_id, sign_csr

TOKEN_PREFIX = "mfb1"
ANY_SERVICE_ACCOUNT = "*"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class BootstrapGrant:
    """What a bootstrap credential lets its holder request."""

    trust_domain: TrustDomain
    identities: tuple[tuple[str, str], ...]
    """(namespace, service account) pairs; service account ``*`` means any in that namespace."""
    not_after: dt.datetime

    def allows(self, spiffe_id: SpiffeId) -> bool:
        if spiffe_id.trust_domain != self.trust_domain:
            return False
        ns, sa = spiffe_id.namespace, spiffe_id.service_account
        if ns is None or sa is None:
            return False
        return any(ns == gns and gsa in (sa, ANY_SERVICE_ACCOUNT) for gns, gsa in self.identities)

    def describe(self) -> str:
        return ", ".join(f"ns/{ns}/sa/{sa}" for ns, sa in self.identities) or "nothing"


class BootstrapAuthority:
    """Mints and checks bootstrap tokens with one cluster's secret (kept out of every repr)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise BootstrapError("a bootstrap secret needs at least 16 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "<BootstrapAuthority secret=<redacted>>"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def mint(self, grant: BootstrapGrant) -> str:
        body = json.dumps({"td": grant.trust_domain.name, "ids": [list(p) for p in grant.identities],
                           "exp": int(grant.not_after.timestamp())}, separators=(",", ":")).encode()
        return f"{TOKEN_PREFIX}.{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, token: str, now: dt.datetime) -> BootstrapGrant:
        """The grant a token carries, if it was minted with this secret and has not expired."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise BootstrapError(f"bootstrap credential is not a '{TOKEN_PREFIX}' token")
        try:
            body, mac = _unb64(parts[1]), _unb64(parts[2])
        except ValueError:
            raise BootstrapError("bootstrap credential is not valid base64url") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BootstrapError("bootstrap credential signature does not verify (forged, or another cluster's)")
        try:
            doc = json.loads(body)
            grant = BootstrapGrant(TrustDomain(doc["td"]), tuple((str(ns), str(sa)) for ns, sa in doc["ids"]),
                                   dt.datetime.fromtimestamp(int(doc["exp"]), dt.timezone.utc))
        except (ValueError, KeyError, TypeError) as exc:
            raise BootstrapError(f"bootstrap credential payload is malformed: {exc}") from None
        if now >= grant.not_after:
            raise BootstrapError(f"bootstrap credential expired at {grant.not_after:%Y-%m-%dT%H:%M:%SZ}")
        return grant


@dataclass(frozen=True, slots=True)
class ClusterSigner:
    """A cluster's CA service: a CSR plus a bootstrap token in, an SVID out, or a refusal."""

    ca: CertificateAuthority
    bootstrap: BootstrapAuthority = field(repr=False)
    max_lifetime: dt.timedelta = DEFAULT_SVID_LIFETIME

    def authorize(self, spiffe_id: SpiffeId, token: str, now: dt.datetime) -> BootstrapGrant:
        try:
            grant = self.bootstrap.verify(token, now)
        except BootstrapError as exc:
            raise IssuanceRefused(f"refused {str(spiffe_id)!r}: {exc}", str(spiffe_id)) from None
        if grant.trust_domain != self.ca.trust_domain:
            raise IssuanceRefused(f"refused {str(spiffe_id)!r}: the bootstrap credential is for trust domain "
                                  f"{grant.trust_domain.name!r}", str(spiffe_id))
        if not grant.allows(spiffe_id):
            raise IssuanceRefused(f"refused {str(spiffe_id)!r}: the bootstrap credential allows only "
                                  f"{grant.describe()}", str(spiffe_id))
        return grant

    def sign(self, csr: x509.CertificateSigningRequest, token: str, now: dt.datetime,
             lifetime: dt.timedelta | None = None) -> X509Svid:
        spiffe_id = requested_id(csr)
        if self.ca.trust_domain is not None and spiffe_id.trust_domain != self.ca.trust_domain:
            raise IssuanceRefused(f"refused {str(spiffe_id)!r}: this CA signs only trust domain "
                                  f"{self.ca.trust_domain.name!r}", str(spiffe_id))
        self.authorize(spiffe_id, token, now)
        return sign_csr(self.ca, csr, now, min(lifetime or self.max_lifetime, self.max_lifetime))
