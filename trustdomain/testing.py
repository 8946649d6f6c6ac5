"""A throwaway PKI for tests, in the spirit of trustme: roots, cluster CAs and SVIDs in memory.

Tests of every package make their CA in the test (STYLE 12); this keeps that one line:
``pki = MeshPki.shared_root("east.example", "west.example")`` then ``pki.svid("east.example",
"bookinfo", "reviews")``. Keys are ECDSA P-256, which takes microseconds to make.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ._bundle import Bundle, BundleSet
from ._ca import CertificateAuthority, KeyType, create_intermediate, create_root
from ._files import cert_pem, key_pem
from ._spiffe import SpiffeId, TrustDomain
from ._svid import DEFAULT_SVID_LIFETIME, X509Svid, issue_svid


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class MeshPki:
    """Roots and one intermediate CA per trust domain; ``now`` fixed when built unless given."""

    now: dt.datetime
    cas: dict[TrustDomain, CertificateAuthority] = field(default_factory=dict)

    @classmethod
    def shared_root(cls, *trust_domains: str, now: dt.datetime | None = None,
                    key_type: KeyType = KeyType.ECDSA_P256) -> "MeshPki":
        """Several trust domains under one root, as clusters of one mesh."""
        pki = cls(now or utcnow())
        root = create_root(pki.now, key_type=key_type)
        for name in trust_domains:
            td = TrustDomain(name)
            pki.cas[td] = create_intermediate(root, td, name.split(".")[0], pki.now, key_type=key_type)
        return pki

    @classmethod
    def independent_roots(cls, *trust_domains: str, now: dt.datetime | None = None) -> "MeshPki":
        """One root per trust domain, as separately run meshes that federate by bundle exchange."""
        pki = cls(now or utcnow())
        for name in trust_domains:
            td = TrustDomain(name)
            pki.cas[td] = create_intermediate(create_root(pki.now, common_name=f"root of {name}"), td,
                                              name.split(".")[0], pki.now)
        return pki

    def ca(self, trust_domain: str) -> CertificateAuthority:
        return self.cas[TrustDomain(trust_domain)]

    def svid(self, trust_domain: str, namespace: str = "default", service_account: str = "default", *,
             lifetime: dt.timedelta = DEFAULT_SVID_LIFETIME, now: dt.datetime | None = None,
             dns_names: tuple[str, ...] = ()) -> X509Svid:
        ca = self.ca(trust_domain)
        return issue_svid(ca, SpiffeId.workload(ca.trust_domain or TrustDomain(trust_domain), namespace,
                                                service_account), now or self.now,
                          lifetime=lifetime, dns_names=dns_names)

    def bundle(self, trust_domain: str, sequence: int | None = 1) -> Bundle:
        return Bundle(TrustDomain(trust_domain), (self.ca(trust_domain).root,), sequence)

    def bundles(self, *trust_domains: str) -> BundleSet:
        """The set a workload trusting ``trust_domains`` (default: all of them) holds."""
        names = trust_domains or tuple(td.name for td in self.cas)
        return BundleSet.of(*(self.bundle(n) for n in names))

    def write_svid(self, svid: X509Svid, folder: Path) -> dict[str, Path]:
        """cert.pem / key.pem / chain.pem / root.pem in ``folder`` for openssl's -cert options."""
        folder.mkdir(parents=True, exist_ok=True)
        assert svid.key is not None
        files = {"cert": folder / "cert.pem", "key": folder / "key.pem", "chain": folder / "chain.pem",
                 "root": folder / "root.pem"}
        files["cert"].write_bytes(cert_pem(svid.certificate))
        files["key"].write_bytes(key_pem(svid.key))
        files["chain"].write_bytes(cert_pem(*svid.intermediates))
        files["root"].write_bytes(cert_pem(*dict.fromkeys(c.root for c in self.cas.values())))
        return files
