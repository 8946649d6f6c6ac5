"""A control plane's peers, from the link file and the Mesh: pure.

For a link between two clusters of this topology the peer's addresses, network,
locality and trust domain come from the Mesh (its control plane on the block's ``.1``,
federation API on :15012, gateway on ``.2``:15443); its trust bundle is the shared CA
directory's. For an applied link document they come from the document, with its PEM
bundle and its credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from topology._mesh import Mesh

from ._link_health import ProbePolicy
from ._link_store import LinkDocument, LinkSet

FEDERATION_PORT = 15012
GATEWAY_PORT = 15443


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    trust_domain: str
    federation: tuple[str, int]
    gateway: str
    network: str = ""
    locality: str = ""
    bundle_pem: str = ""
    """Roots of the peer's trust domain when they are not in the local CA directory."""
    credential: str = ""
    probe: ProbePolicy = field(default_factory=ProbePolicy)
    kind: str = "local"
    """``local`` (both clusters in this topology) or ``applied`` (a link document)."""


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def own_document(mesh: Mesh, cluster: str) -> LinkDocument | None:
    """The cluster as its peers see it, without bundle or credential."""
    c = mesh.cluster_named(cluster)
    if c is None or not c.control_plane_address:
        return None
    loc = str(c.locality) if c.locality is not None else ""
    return LinkDocument(c.name, c.network or c.name, loc, c.trust_domain or f"{c.name}.meshfed.local",
                        f"{c.control_plane_address}:{FEDERATION_PORT}",
                        f"{c.gateway_address}:{GATEWAY_PORT}" if c.gateway_address else "")


def peers_of(cluster: str, links: LinkSet, mesh: Mesh | None) -> dict[str, Peer]:
    """Peer name -> Peer for every link of ``cluster``; a local link naming a cluster the
    Mesh no longer has is skipped (it cannot be reached)."""
    out: dict[str, Peer] = {}
    for link in links.links:
        if not link.has(cluster) or mesh is None:
            continue
        other = link.other(cluster)
        doc = own_document(mesh, other)
        if doc is None or other == cluster:
            continue
        out[other] = Peer(other, doc.trust_domain, _hostport(doc.federation), doc.gateway, doc.network,
                          doc.locality, probe=link.probe)
    for applied in links.applied:
        if applied.cluster != cluster or applied.peer.cluster == cluster:
            continue
        d = applied.peer
        out[d.cluster] = Peer(d.cluster, d.trust_domain, _hostport(d.federation), d.gateway, d.network, d.locality,
                              d.trust_bundle, d.credential, applied.probe, "applied")
    return out
