"""Which trust domains a cluster trusts, and the bundle files its proxies read.

Trust follows the roots and the links, never the topology alone:

* the cluster's own trust domain, with the roots its CA chains to;
* every cluster of the topology under the *same* root (the shared root of issue 3: one
  mesh, many trust domains; trusted from the start, as before any link);
* every linked peer: a cluster of this topology linked with ``fedctl link A B`` (its
  roots from the CA folder, whatever root it has: the exchange is automatic), a document
  applied here (``fedctl link apply``: the roots it carries), a bundle a peer elsewhere
  offered with our credential (``_trust_exchange``; until that credential expires; a peer
  of this very topology is read from the CA folder instead).

A cluster with an independent root (Mesh ``rootCA: own``) is therefore trusted by no
other cluster until linked, and no longer once unlinked: ``fedctl unlink`` removes the
peer's bundle at once. Bundles of different trust domains are never merged; two sources
for one domain (a local link and an applied document of the same peer) are united.

``BundleTransitions`` makes a *rotation* make-before-break: when a trust domain stays
trusted but its roots change (a new document carries a new root), the roots it loses stay
trusted for ``grace`` seconds after the new ones arrived, so that workloads still holding
certificates of the old root are not cut off. A domain that is no longer trusted at all
goes at once.

``ClusterTrust`` is the control plane's side: it computes the set, keeps the transitions,
writes one PEM file per trust domain under ``DIR/.meshfed/trust/<cluster>/`` (named by
content, so a changed bundle is a changed path and every proxy document changes with it:
proxies reload on a new document, not on a rewritten file) and hands out ``TlsFiles``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustdomain import Bundle, BundleSet, CaDirectory, TrustDomain, TrustDomainError
from trustdomain._files import write_public

from ._link_store import LinkSet

BUNDLE_GRACE = 3600.0
"""Seconds a rotated-out root of a still trusted domain stays trusted. Defaults to one hour."""

Roots = tuple[bytes, ...]
"""DER certificates, in order, without duplicates."""


def _ders(pem: str | bytes) -> Roots:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        return ()
    return tuple(dict.fromkeys(c.public_bytes(serialization.Encoding.DER) for c in certs))


@dataclass(frozen=True, slots=True)
class ClusterRoots:
    """One cluster of the topology as its CA folder has it."""

    trust_domain: str
    roots: Roots


def read_cluster_roots(cadir: CaDirectory) -> dict[str, ClusterRoots]:
    """Cluster -> its trust domain and roots, from ``<cluster>/trust-domain`` and ``root-cert.pem``."""
    out = {}
    for cluster in cadir.clusters():
        folder = cadir.path / cluster
        try:
            td = (folder / "trust-domain").read_text().strip()
            roots = _ders((folder / "root-cert.pem").read_bytes())
        except OSError:
            continue
        if td and roots:
            out[cluster] = ClusterRoots(td, roots)
    return out


def wanted_bundles(cluster: str, roots: Mapping[str, ClusterRoots], links: LinkSet,
                   now: dt.datetime) -> dict[str, Roots]:
    """Trust domain -> roots ``cluster`` trusts (module docstring); empty if it has no CA."""
    me = roots.get(cluster)
    if me is None:
        return {}
    out: dict[str, Roots] = {}

    def add(td: str, ders: Roots) -> None:
        if td and ders:
            out[td] = tuple(dict.fromkeys((*out.get(td, ()), *ders)))

    add(me.trust_domain, me.roots)
    mine = set(me.roots)
    for other in roots.values():
        if mine & set(other.roots):
            add(other.trust_domain, other.roots)
    for link in links.links:
        if link.has(cluster) and link.other(cluster) in roots and link.other(cluster) != cluster:
            peer = roots[link.other(cluster)]
            add(peer.trust_domain, peer.roots)
    for applied in links.applied:
        if applied.cluster == cluster and applied.peer.cluster != cluster:
            add(applied.peer.trust_domain, _ders(applied.peer.trust_bundle))
    for accepted in links.accepted:
        if accepted.cluster == cluster and accepted.valid_at(now):
            local = roots.get(accepted.peer)  # a cluster of this topology: its CA folder, not the offer
            add(accepted.trust_domain, local.roots if local is not None and local.trust_domain ==
                accepted.trust_domain else _ders(accepted.bundle))
    return out


@dataclass
class BundleTransitions:
    """Make-before-break for rotated roots (module docstring); ``now`` is monotonic seconds."""

    grace: float = BUNDLE_GRACE
    _retiring: dict[tuple[str, bytes], float] = field(default_factory=dict)
    """(trust domain, root) -> when it stops being trusted."""
    _held: dict[str, Roots] = field(default_factory=dict)

    def advance(self, wanted: Mapping[str, Roots], now: float) -> dict[str, Roots]:
        """The roots to trust now: ``wanted``, plus roots of still wanted domains inside their grace."""
        for td, held in self._held.items():
            if td not in wanted:
                continue
            for der in held:
                if der not in wanted[td]:
                    self._retiring.setdefault((td, der), now + self.grace)
        self._retiring = {k: until for k, until in self._retiring.items()
                          if k[0] in wanted and until > now and k[1] not in wanted[k[0]]}
        out = {td: tuple(ders) for td, ders in wanted.items()}
        for (td, der) in self._retiring:
            out[td] = (*out[td], der)
        self._held = out
        return dict(out)

    def next_change(self) -> float | None:
        """When a retiring root is due to go (monotonic seconds), if any is."""
        return min(self._retiring.values(), default=None)


def bundle_set(bundles: Mapping[str, Roots], aliases: Mapping[str, str] | None = None) -> BundleSet:
    """A BundleSet of one bundle per trust domain (a domain whose name is invalid is skipped)."""
    out = []
    for td, ders in sorted(bundles.items()):
        try:
            out.append(Bundle(TrustDomain(td), tuple(x509.load_der_x509_certificate(d) for d in ders)))
        except (TrustDomainError, ValueError):
            continue
    return BundleSet.of(*out, aliases={TrustDomain(a): TrustDomain(t) for a, t in (aliases or {}).items()})


def bundle_pem(ders: Roots) -> bytes:
    return b"".join(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in ders)


def bundle_file_name(td: str, ders: Roots) -> str:
    """``<td>.<digest>.pem``: a new content is a new name."""
    return f"{td}.{hashlib.sha256(b''.join(ders)).hexdigest()[:16]}.pem"


class ClusterTrust:
    """The trust of one cluster's control plane: computed, kept through rotations, materialised."""

    def __init__(self, cluster: str, ca_dir: Path, trust_dir: Path, *, grace: float = BUNDLE_GRACE,
                 now: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        self.cluster = cluster
        self.cadir = CaDirectory(ca_dir)
        self.folder = trust_dir / cluster
        self.now = now
        self.wall_clock = wall_clock
        self.transitions = BundleTransitions(grace)
        self.bundles: dict[str, Roots] = {}
        self.files: dict[str, str] = {}
        """Trust domain -> the PEM file of its roots, as proxy documents name it."""

    def __repr__(self) -> str:
        return f"<ClusterTrust {self.cluster}: {', '.join(sorted(self.bundles)) or 'nothing'}>"

    def bundle_set(self) -> BundleSet:
        return bundle_set(self.bundles)

    def refresh(self, links: LinkSet) -> bool:
        """Recompute from the CA folder and ``links``; True when the trusted set changed."""
        wanted = wanted_bundles(self.cluster, read_cluster_roots(self.cadir), links, self.wall_clock())
        bundles = self.transitions.advance(wanted, self.now())
        if bundles == self.bundles and self.files:
            return False
        self.bundles = bundles
        self._write()
        return True

    def _write(self) -> None:
        files = {}
        for td, ders in sorted(self.bundles.items()):
            path = self.folder / bundle_file_name(td, ders)
            if not path.exists():
                write_public(path, bundle_pem(ders))
            files[td] = str(path)
        keep = {*files.values(), *self.files.values()}  # a proxy may still be loading the last set
        if self.folder.is_dir():
            for old in self.folder.glob("*.pem"):
                if str(old) not in keep:
                    old.unlink(missing_ok=True)
        self.files = files

    def status(self) -> dict[str, Any]:
        return {"trustDomains": sorted(self.bundles), "files": dict(self.files),
                "retiringUntil": self.transitions.next_change()}
