"""``fedctl link apply FILE --cluster D``: check a link document, then link D to it.

``check_link`` is pure (the document, the local side, a clock and a reachability
function in; findings out), so every check is tested without a network. Findings are
``ok``, ``note`` (works, but say how) or ``fail`` (refused unless ``--force``):

* trust: the document's bundle holds this mesh's root (shared root), or other roots
  (an independent root: its bundle is federated for this link); none at all fails;
* trust domains: the peer's must differ from the importer's, and from every other
  local cluster's unless it *is* that cluster;
* network names: the same network as the importer means endpoints are dialled directly
  (a note); a network another local cluster owns, under another cluster name, fails;
* names: a peer named like a local cluster must be that cluster (same trust domain
  and network), and never the importer itself;
* gateway reachable (TCP connect), federation API reachable (a note when not: the
  control plane retries);
* credential present and not expired;
* trust exchange: the importer's bundle is offered to the peer's control plane with the
  document's credential (``_trust_exchange``), so that the peer trusts the importer as the
  importer now trusts the peer; a peer that refuses or cannot be reached fails the apply
  (without it no connection of the importer's could be verified there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._errors import FederationError
from ._link_store import LinkDocument, LinkError, credential_expiry, read_links, write_links


@dataclass(frozen=True, slots=True)
class Finding:
    level: str
    """``ok``, ``note`` or ``fail``."""
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<4}  {self.check}: {self.message}"


@dataclass(frozen=True, slots=True)
class LocalCluster:
    name: str
    trust_domain: str
    network: str


def _fingerprints(pem: str) -> set[bytes]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return set()
    return {c.public_bytes(serialization.Encoding.DER) for c in certs}


def check_link(doc: LinkDocument, importer: LocalCluster, local: Sequence[LocalCluster], root_pem: str,
               now: dt.datetime, reachable: Callable[[str], str | None]) -> list[Finding]:
    out: list[Finding] = []
    same_name = next((c for c in local if c.name == doc.cluster), None)
    if doc.cluster == importer.name:
        out.append(Finding("fail", "names", f"the document describes {doc.cluster!r} itself; a cluster cannot link "
                                            "to itself"))
    elif same_name is not None and (same_name.trust_domain, same_name.network) != (doc.trust_domain, doc.network):
        out.append(Finding("fail", "names", f"name conflict: this mesh has a cluster {doc.cluster!r} with trust domain "
                                            f"{same_name.trust_domain!r} and network {same_name.network!r}; the "
                                            f"document's has {doc.trust_domain!r} and {doc.network!r}"))
    else:
        out.append(Finding("ok", "names", f"{doc.cluster!r} " + ("is this mesh's own cluster of that name"
                                                                  if same_name else "is new to this mesh")))
    roots = _fingerprints(doc.trust_bundle)
    if not roots:
        out.append(Finding("fail", "trust", "the document carries no trust bundle (spec.trustBundle: PEM roots)"))
    elif roots & _fingerprints(root_pem):
        out.append(Finding("ok", "trust", f"same root CA: {doc.trust_domain} chains to this mesh's root"))
    else:
        out.append(Finding("note", "trust", f"independent root: the bundle of {doc.trust_domain} "
                                            f"({len(roots)} root(s)) is federated for this link"))
    owner = next((c for c in local if c.trust_domain == doc.trust_domain and c.name != doc.cluster), None)
    if doc.trust_domain == importer.trust_domain and doc.cluster != importer.name:
        out.append(Finding("fail", "trust domains", f"{doc.cluster!r} uses {doc.trust_domain!r}, the trust domain "
                                                    f"of {importer.name!r}: identities would be ambiguous"))
    elif owner is not None:
        out.append(Finding("fail", "trust domains", f"{doc.trust_domain!r} belongs to local cluster {owner.name!r}, "
                                                    f"not {doc.cluster!r}"))
    else:
        out.append(Finding("ok", "trust domains", f"{doc.trust_domain} (peer) and {importer.trust_domain} (local) "
                                                  "are distinct"))
    net_owner = next((c for c in local if c.network == doc.network and c.name not in (doc.cluster, importer.name)), None)
    if doc.network and doc.network == importer.network:
        out.append(Finding("note", "networks", f"{doc.cluster!r} is on {importer.name!r}'s network {doc.network!r}: "
                                               "its endpoints are dialled directly, not through its gateway"))
    elif net_owner is not None:
        out.append(Finding("fail", "networks", f"network {doc.network!r} belongs to local cluster "
                                               f"{net_owner.name!r}: traffic for it would take the wrong gateway"))
    else:
        out.append(Finding("ok", "networks", f"{doc.network or '(unnamed)'} differs from {importer.network}: "
                                             f"traffic goes through {doc.gateway}"))
    why = reachable(doc.gateway)
    out.append(Finding("fail", "gateway", f"{doc.gateway} unreachable: {why}") if why else
               Finding("ok", "gateway", f"{doc.gateway} accepts connections"))
    why = reachable(doc.federation)
    out.append(Finding("note", "federation API", f"{doc.federation} unreachable now ({why}); the control plane "
                                                 "keeps retrying") if why else
               Finding("ok", "federation API", f"{doc.federation} accepts connections"))
    expiry = credential_expiry(doc.credential) if doc.credential else None
    if not doc.credential:
        out.append(Finding("fail", "credential", "the document carries no credential (spec.credential)"))
    elif expiry is None:
        out.append(Finding("fail", "credential", f"malformed credential {doc.credential[:12]!r}..."))
    elif expiry <= now:
        out.append(Finding("fail", "credential", f"expired at {expiry.isoformat()}; export a new document"))
    else:
        out.append(Finding("ok", "credential", f"valid until {expiry.isoformat()}"))
    return out


def exchange_trust(doc: LinkDocument, importer: LocalCluster, ca: Path) -> Finding:
    """Offer the importer's bundle to the document's control plane (``_trust_exchange``)."""
    import trio

    from ._federation_peers import _hostport
    from ._trust_exchange import BundleOffer, ExchangeRefused, offer_bundle, own_bundle_pem
    try:
        offer = BundleOffer(importer.name, importer.trust_domain, own_bundle_pem(ca, importer.name), doc.credential)
        answer = trio.run(offer_bundle, _hostport(doc.federation), doc.trust_domain, doc.trust_bundle, offer)
    except (ExchangeRefused, FederationError) as exc:
        return Finding("fail", "trust exchange", f"{doc.cluster!r} does not trust {importer.trust_domain}: {exc}")
    return Finding("ok", "trust exchange", f"{doc.cluster!r} trusts {importer.trust_domain} until "
                                           f"{answer.get('expires')}")


def read_document(path: Path) -> LinkDocument:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LinkError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml  # a document edited by hand may have become YAML
            data = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same answer
            raise LinkError(f"{path}: neither JSON nor YAML: {exc}") from None
    return LinkDocument.from_json(data, str(path))


def apply_link(args: argparse.Namespace, path: Path) -> int:
    from ._cli_link import _running, _wait, applied_link, tcp_reachable
    from ._launch import Layout
    from ._state import resolve_dir
    from ._up import load_topology
    if not args.cluster:
        raise FederationError("usage: fedctl link apply FILE --cluster NAME (the local cluster that imports)")
    mesh_dir = resolve_dir(args.dir)
    try:
        doc = read_document(path)
    except LinkError as exc:
        raise FederationError(str(exc)) from None
    mesh = load_topology(mesh_dir).mesh
    local = [LocalCluster(c.name, c.trust_domain or f"{c.name}.meshfed.local", c.network or c.name)
             for c in mesh.clusters]
    importer = next((c for c in local if c.name == args.cluster), None)
    if importer is None:
        raise FederationError(f"no cluster {args.cluster!r} in {mesh_dir}; its clusters: "
                              f"{', '.join(c.name for c in local)}")
    ca = Layout(mesh_dir).ca
    root = ""
    for candidate in (ca / importer.name / "root-cert.pem", ca / "root-cert.pem"):  # its own root, else the shared
        try:
            root = candidate.read_text()
            break
        except OSError:
            continue
    findings = check_link(doc, importer, local, root, dt.datetime.now(dt.timezone.utc), tcp_reachable)
    if args.force or not any(f.level == "fail" for f in findings):
        findings.append(exchange_trust(doc, importer, ca))
    for f in findings:
        print(str(f))
    failed = [f for f in findings if f.level == "fail"]
    if failed and not args.force:
        print(f"fedctl link apply: refused ({len(failed)} check(s) failed; --force applies anyway)", file=sys.stderr)
        return 1
    try:
        links = read_links(mesh_dir)
    except LinkError as exc:
        raise FederationError(str(exc)) from None
    write_links(mesh_dir, links.with_applied(applied_link(importer.name, doc, args)))
    _running(mesh_dir)
    if args.timeout <= 0:
        return 0
    missing = _wait(mesh_dir, [(importer.name, doc.cluster)], args.timeout)
    if missing:
        print("fedctl link apply: written, but not up yet: " + "; ".join(missing), file=sys.stderr)
        return 1
    print(f"linked: {importer.name} imports from {doc.cluster} through {doc.gateway}")
    return 0
