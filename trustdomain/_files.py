"""The CA folder on disk, in Istio's file names, and PEM in and out.

Layout (``--dir``, default ``.meshfed/ca``)::

    root-cert.pem  root-key.pem                  the shared root (``fedctl ca init``)
    <cluster>/ca-cert.pem  ca-key.pem            the cluster's signing CA   } Istio's
    <cluster>/root-cert.pem  cert-chain.pem      root(s); ca-cert + root    } cacerts layout
    <cluster>/trust-domain                       meshfed's addition: the domain it signs
    <cluster>/root/root-cert.pem  root-key.pem   a cluster's own root (Mesh ``rootCA: own``)

``cert-chain.pem`` is ``ca-cert.pem`` followed by the certificates above it including the
root, as Istio's tools/certs Makefile writes it (``cat ca-cert.pem root-cert.pem``).
Keys are written with mode 0600 from the first byte (``os.open`` with the mode, never
chmod after the fact) and are never read back into anything that prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._ca import CertificateAuthority, PrivateKey, permitted_trust_domain
from ._errors import CaError, TrustDomainError
from ._spiffe import TrustDomain
from ._svid import X509Svid

DEFAULT_CA_DIR = ".meshfed/ca"
CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CaError("no PEM certificate found", str(path)) from None
    return certs


def read_key(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # the message never includes the file's content: it is a key
        raise CaError("not an unencrypted PEM private key", str(path)) from None
    return key  # type: ignore[return-value]


def write_private(path: Path, data: bytes) -> None:
    """Create or replace ``path`` readable by its owner only (0600) before writing a byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it, never widened; make it exact
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_svid(out: Path, svid: X509Svid) -> None:
    """``cert.pem`` (leaf), ``key.pem`` (0600), ``chain.pem`` (intermediates, issuer first, no root)."""
    if svid.key is None:
        raise CaError("the SVID has no private key to write", str(out))
    write_private(out / "key.pem", key_pem(svid.key))
    write_public(out / "cert.pem", cert_pem(svid.certificate))
    write_public(out / "chain.pem", cert_pem(*svid.intermediates))


def load_cacerts(folder: Path, trust_domain: TrustDomain | None = None) -> CertificateAuthority:
    """A signing CA from Istio's ``cacerts`` files, checked end to end.

    The trust domain comes from the argument, else ``folder/trust-domain``, else the CA's
    URI name constraint; a name constraint that disagrees with it is refused.
    """
    missing = [n for n in CACERTS_FILES if not (folder / n).is_file()]
    if missing:
        raise CaError(f"not an Istio cacerts folder: missing {', '.join(missing)}", str(folder))
    ca_certs = read_certificates(folder / "ca-cert.pem")
    if len(ca_certs) != 1:
        raise CaError(f"expected exactly one certificate, found {len(ca_certs)}", str(folder / "ca-cert.pem"))
    cert = ca_certs[0]
    key = read_key(folder / "ca-key.pem")
    roots = read_certificates(folder / "root-cert.pem")
    listed = read_certificates(folder / "cert-chain.pem")
    if listed[0] != cert:
        raise CaError("the first certificate is not ca-cert.pem", str(folder / "cert-chain.pem"))
    chain = list(listed[1:])
    top = chain[-1] if chain else cert
    if top.issuer != top.subject:  # cert-chain.pem may stop below the root: find it in root-cert.pem
        issuer = next((r for r in roots if r.subject == top.issuer), None)
        if issuer is None:
            raise CaError(f"no root in root-cert.pem issued {top.subject.rfc4514_string()!r}",
                          str(folder / "root-cert.pem"))
        chain.append(issuer)
    elif chain and chain[-1] not in roots:
        raise CaError("cert-chain.pem ends in a root that root-cert.pem does not hold", str(folder))
    td_file = folder / "trust-domain"
    if trust_domain is None and td_file.is_file():
        trust_domain = TrustDomain(td_file.read_text().strip())
    constrained = permitted_trust_domain(cert)
    if trust_domain is None:
        trust_domain = constrained
    if trust_domain is None:
        raise CaError("cannot tell which trust domain this CA signs: give --trust-domain", str(folder))
    if constrained is not None and constrained != trust_domain:
        raise CaError(f"ca-cert.pem is name-constrained to {constrained.name!r}, not "
                      f"{trust_domain.name!r}", str(folder))
    try:
        return CertificateAuthority(cert, key, tuple(chain), trust_domain)
    except CaError as exc:
        raise CaError(str(exc), str(folder)) from None


class CaDirectory:
    """The CA folder: the shared root and one cacerts folder per cluster."""

    def __init__(self, path: str | Path = DEFAULT_CA_DIR) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<CaDirectory {str(self.path)!r} clusters={self.clusters()}>"

    @property
    def root_cert_path(self) -> Path:
        return self.path / "root-cert.pem"

    @property
    def root_key_path(self) -> Path:
        return self.path / "root-key.pem"

    def has_root(self) -> bool:
        return self.root_cert_path.exists() or self.root_key_path.exists()

    def save_root(self, ca: CertificateAuthority) -> None:
        write_private(self.root_key_path, key_pem(ca.key))
        write_public(self.root_cert_path, cert_pem(ca.certificate))

    def load_root(self) -> CertificateAuthority:
        if not self.root_cert_path.is_file():
            raise CaError("no root CA here: run 'fedctl ca init' first", str(self.path))
        certs = read_certificates(self.root_cert_path)
        return CertificateAuthority(certs[0], read_key(self.root_key_path))

    def cluster_path(self, cluster: str) -> Path:
        if not cluster or "/" in cluster or cluster in (".", ".."):
            raise CaError(f"invalid cluster name {cluster!r}")
        return self.path / cluster

    def own_root(self, cluster: str) -> "CaDirectory":
        """Where a cluster with a root of its own (not the shared one) keeps it: ``DIR/<cluster>/root/``
        (``root-cert.pem``, ``root-key.pem``), beside its cacerts files, never listed as a cluster."""
        return CaDirectory(self.cluster_path(cluster) / "root")

    def save_cluster(self, cluster: str, ca: CertificateAuthority) -> Path:
        """Write ``ca`` in the cacerts layout (plus ``trust-domain``) under ``DIR/<cluster>/``."""
        if ca.trust_domain is None:
            raise CaError(f"cluster CA for {cluster!r} has no trust domain")
        folder = self.cluster_path(cluster)
        write_private(folder / "ca-key.pem", key_pem(ca.key))
        write_public(folder / "ca-cert.pem", cert_pem(ca.certificate))
        write_public(folder / "cert-chain.pem", cert_pem(ca.certificate, *ca.chain))
        write_public(folder / "root-cert.pem", cert_pem(ca.root))
        write_public(folder / "trust-domain", ca.trust_domain.name.encode() + b"\n")
        return folder

    def load_cluster(self, cluster: str) -> CertificateAuthority:
        folder = self.cluster_path(cluster)
        if not folder.is_dir():
            known = ", ".join(self.clusters()) or "none"
            raise CaError(f"no CA for cluster {cluster!r} (known: {known}): run "
                          f"'fedctl ca intermediate --cluster {cluster} --trust-domain TD'", str(self.path))
        return load_cacerts(folder)

    def clusters(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if (p / "ca-cert.pem").is_file())

    def roots_of(self, trust_domain: TrustDomain) -> list[x509.Certificate]:
        """Every root a cluster of ``trust_domain`` chains to (several while a root rotates)."""
        roots: list[x509.Certificate] = []
        for cluster in self.clusters():
            folder = self.path / cluster
            try:
                td = TrustDomain((folder / "trust-domain").read_text().strip())
            except (OSError, TrustDomainError):
                continue
            if td == trust_domain:
                roots += [r for r in read_certificates(folder / "root-cert.pem") if r not in roots]
        return roots
