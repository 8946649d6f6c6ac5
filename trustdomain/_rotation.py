"""When certificates are replaced: pure policies that take ``now`` and return decisions.

* Workload SVIDs are renewed at a jittered point before 80 % of their lifetime (as
  Istio's SECRET_GRACE_PERIOD_RATIO with jitter, and linkerd's identity client): the
  jitter spreads the renewals of workloads started together so the CA is not hit by a
  thundering herd. The point is drawn once per certificate from an injected RNG.
* An intermediate is replaced ``overlap`` before it expires; the old one stays valid to
  its end, so SVIDs it signed (clipped to its notAfter) stay verifiable. ``overlap``
  must exceed the longest SVID lifetime or a renewal could land on a dying CA.
* A root rotation runs in three timed phases: PUBLISH_BOTH (bundle holds old + new,
  CAs still sign under the old root, until every peer has the new bundle), SIGN_WITH_NEW
  (intermediates re-signed under the new root, bundle still holds both, until every SVID
  chained to the old root has expired), then NEW_ONLY. Each phase change bumps the
  bundle's ``spiffe_sequence`` so peers see the change.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
from dataclasses import dataclass

from cryptography import x509

from ._bundle import Bundle
from ._ca import CertificateAuthority, KeyType, create_intermediate
from ._errors import TrustDomainError
from ._spiffe import TrustDomain
from ._svid import DEFAULT_SVID_LIFETIME

RENEW_FRACTION = 0.8  # issue 3: "renewed before 80 % of its lifetime"
RENEW_JITTER = 0.1  # renew uniformly within [70 %, 80 %) of the lifetime
RETRY_MIN = dt.timedelta(seconds=1)
RETRY_MAX = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    fraction: float = RENEW_FRACTION
    """Renew no later than this fraction of the lifetime. Defaults to 0.8."""
    jitter: float = RENEW_JITTER
    """Renew no earlier than ``fraction - jitter``. Defaults to 0.1."""

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1 or not 0 <= self.jitter < self.fraction:
            raise TrustDomainError(f"renewal fraction {self.fraction} / jitter {self.jitter} out of range: "
                                   "need 0 < jitter < fraction <= 1")

    def schedule(self, not_before: dt.datetime, not_after: dt.datetime, rng: random.Random) -> "RenewalSchedule":
        lifetime = not_after - not_before
        at = not_before + lifetime * (self.fraction - self.jitter * rng.random())
        return RenewalSchedule(not_before, not_after, at)


@dataclass(frozen=True, slots=True)
class RenewalSchedule:
    """The renewal point of one certificate, fixed when the certificate arrived."""

    not_before: dt.datetime
    not_after: dt.datetime
    renew_at: dt.datetime

    def next_renewal(self, now: dt.datetime) -> dt.datetime:
        """When to renew: the drawn point, or ``now`` when it has passed."""
        return max(self.renew_at, now)

    def is_due(self, now: dt.datetime) -> bool:
        return now >= self.renew_at

    def retry_at(self, now: dt.datetime, attempt: int) -> dt.datetime:
        """After a failed renewal: exponential backoff from 1 s, capped at 60 s and at expiry."""
        backoff: dt.timedelta = min(RETRY_MAX, RETRY_MIN * 2 ** min(max(0, attempt - 1), 16))
        return min(now + backoff, max(now, self.not_after))


def renewal_schedule(cert: x509.Certificate, rng: random.Random,
                     policy: RenewalPolicy = RenewalPolicy()) -> RenewalSchedule:
    return policy.schedule(cert.not_valid_before_utc, cert.not_valid_after_utc, rng)


@dataclass(frozen=True, slots=True)
class IntermediateRotation:
    """Replace a cluster CA ``overlap`` before it ends; both stay valid through the overlap."""

    overlap: dt.timedelta = dt.timedelta(days=30)
    max_svid_lifetime: dt.timedelta = DEFAULT_SVID_LIFETIME

    def __post_init__(self) -> None:
        if self.overlap <= self.max_svid_lifetime:
            raise TrustDomainError(f"intermediate overlap {self.overlap} must exceed the longest SVID lifetime "
                                   f"{self.max_svid_lifetime}")

    def next_rotation(self, current: CertificateAuthority) -> dt.datetime:
        return current.not_after - self.overlap

    def is_due(self, current: CertificateAuthority, now: dt.datetime) -> bool:
        return now >= self.next_rotation(current)

    def rotate(self, parent: CertificateAuthority, current: CertificateAuthority, cluster: str,
               now: dt.datetime, validity: dt.timedelta, key_type: KeyType = KeyType.ECDSA_P256) -> CertificateAuthority:
        """The successor of ``current``: same trust domain, signed by ``parent`` (a new root, maybe)."""
        if current.trust_domain is None:
            raise TrustDomainError("only a cluster CA with a trust domain rotates as an intermediate")
        return create_intermediate(parent, current.trust_domain, cluster, now, key_type=key_type, validity=validity)


class RootPhase(enum.Enum):
    PUBLISH_BOTH = "publish-both"
    SIGN_WITH_NEW = "sign-with-new"
    NEW_ONLY = "new-only"


@dataclass(frozen=True, slots=True)
class RootRotation:
    """A timed root rotation; what to publish and which root to sign under, given ``now``."""

    old_root: x509.Certificate
    new_root: x509.Certificate
    started_at: dt.datetime
    propagation: dt.timedelta
    """How long until every peer has fetched the bundle holding both roots (refresh hint x 2, say)."""
    drain: dt.timedelta = DEFAULT_SVID_LIFETIME
    """How long after the switch SVIDs chained to the old root can live: the longest SVID lifetime."""
    base_sequence: int = 0

    def phase(self, now: dt.datetime) -> RootPhase:
        if now < self.started_at + self.propagation:
            return RootPhase.PUBLISH_BOTH
        if now < self.started_at + self.propagation + self.drain:
            return RootPhase.SIGN_WITH_NEW
        return RootPhase.NEW_ONLY

    def signing_root(self, now: dt.datetime) -> x509.Certificate:
        return self.old_root if self.phase(now) is RootPhase.PUBLISH_BOTH else self.new_root

    def authorities(self, now: dt.datetime) -> tuple[x509.Certificate, ...]:
        if self.phase(now) is RootPhase.NEW_ONLY:
            return (self.new_root,)
        return (self.old_root, self.new_root)

    def bundle(self, trust_domain: TrustDomain, now: dt.datetime,
               refresh_hint: dt.timedelta | None = None) -> Bundle:
        """The bundle to publish at ``now``; its sequence grows with each phase."""
        sequence = self.base_sequence + 1 + list(RootPhase).index(self.phase(now))
        return Bundle(trust_domain, self.authorities(now), sequence, refresh_hint)
