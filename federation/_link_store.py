"""Links as the mesh state keeps them: ``DIR/.meshfed/links.json``, kept across ``fedctl up`` runs.

Two kinds of entries:

* ``links``: pairs of clusters of this topology (``fedctl link A B``), both directions;
  each control plane finds its peers' addresses in the Mesh;
* ``applied``: a ``LinkDocument`` of a cluster elsewhere, applied to one local cluster
  (``fedctl link apply FILE --cluster D``): D imports from it, one direction;
* ``accepted``: the trust bundle of a cluster elsewhere that applied a local cluster's
  document and offered its bundle (``_trust_exchange``): the local cluster trusts it.

``fedctl link``/``unlink``/``apply`` write the file (atomically); every control plane
polls it and starts or stops watching its peers. A ``LinkDocument`` is what ``fedctl
link export`` prints: where the cluster's federation API and gateway are, its network,
locality and trust domain, the roots of its trust bundle, and a credential - an HMAC
under the cluster's bootstrap secret, with an expiry - that its control plane accepts in
place of knowing the importer from its own link file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from ._errors import FederationError
from ._link_health import ProbePolicy
from ._state import state_dir, write_atomic

LINKS_FILE = "links.json"
FORMAT = 1
KIND = "MeshLink"
API_VERSION = "meshfed.io/v1alpha1"
CREDENTIAL_TTL = dt.timedelta(days=30)


class LinkError(FederationError):
    """A link request that cannot be honoured; ``problems`` lists every reason found."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


def links_path(mesh_dir: str | os.PathLike[str]) -> Path:
    return state_dir(mesh_dir) / LINKS_FILE


@dataclass(frozen=True, slots=True)
class LinkDocument:
    """One cluster as a peer sees it (``fedctl link export``)."""

    cluster: str
    network: str
    locality: str
    trust_domain: str
    federation: str
    """``host:port`` of its control plane's federation API (the :15012 listener)."""
    gateway: str
    """``host:port`` of its east-west gateway."""
    trust_bundle: str = ""
    """PEM roots its trust domain chains to."""
    credential: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.cluster},
                "spec": {"cluster": self.cluster, "network": self.network, "locality": self.locality,
                         "trustDomain": self.trust_domain, "federation": self.federation, "gateway": self.gateway,
                         "trustBundle": self.trust_bundle, "credential": self.credential}}

    @classmethod
    def from_json(cls, doc: Any, source: str = "<link>") -> "LinkDocument":
        if not isinstance(doc, Mapping) or doc.get("kind") != KIND:
            found = doc.get("kind") if isinstance(doc, Mapping) else type(doc).__name__
            raise LinkError(f"{source}: not a link document (expected kind {KIND}); found {found!r}")
        spec = doc.get("spec")
        if not isinstance(spec, Mapping):
            raise LinkError(f"{source}: spec: missing; a link document needs spec.cluster, federation, gateway")
        missing = [k for k in ("cluster", "trustDomain", "federation", "gateway") if not spec.get(k)]
        if missing:
            raise LinkError(f"{source}: spec: missing {', '.join(missing)}")
        for key in ("federation", "gateway"):
            host, sep, port = str(spec[key]).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise LinkError(f"{source}: spec.{key}: must be host:port; found {spec[key]!r}")
        return cls(str(spec["cluster"]), str(spec.get("network") or ""), str(spec.get("locality") or ""),
                   str(spec["trustDomain"]), str(spec["federation"]), str(spec["gateway"]),
                   str(spec.get("trustBundle") or ""), str(spec.get("credential") or ""))


# -- credentials ------------------------------------------------------------------------------


def _mac(secret: bytes, cluster: str, expires: int) -> str:
    return hmac.new(secret, f"meshfed-link:{cluster}:{expires}".encode(), hashlib.sha256).hexdigest()


def mint_credential(secret: bytes, cluster: str, now: dt.datetime, ttl: dt.timedelta = CREDENTIAL_TTL) -> str:
    expires = int((now + ttl).timestamp())
    return f"v1.{cluster}.{expires}.{_mac(secret, cluster, expires)}"


def credential_expiry(credential: str) -> dt.datetime | None:
    parts = credential.split(".")
    if len(parts) < 4 or parts[0] != "v1" or not parts[-2].isdigit():
        return None
    return dt.datetime.fromtimestamp(int(parts[-2]), dt.timezone.utc)


def check_credential(secret: bytes, cluster: str, credential: str, now: dt.datetime) -> str | None:
    """None when ``credential`` was minted for ``cluster`` with ``secret`` and has not expired,
    else why not."""
    parts = credential.split(".")
    if len(parts) < 4 or parts[0] != "v1" or not parts[-2].isdigit():
        return "the credential is malformed"
    name, expires, mac = ".".join(parts[1:-2]), int(parts[-2]), parts[-1]
    if name != cluster:
        return f"the credential is for cluster {name!r}, not {cluster!r}"
    if not hmac.compare_digest(mac, _mac(secret, cluster, expires)):
        return "the credential was not issued by this cluster"
    if now.timestamp() > expires:
        return f"the credential expired at {dt.datetime.fromtimestamp(expires, dt.timezone.utc).isoformat()}"
    return None


# -- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalLink:
    clusters: tuple[str, str]
    probe: ProbePolicy = field(default_factory=ProbePolicy)
    created_at: str = ""

    def has(self, cluster: str) -> bool:
        return cluster in self.clusters

    def other(self, cluster: str) -> str:
        a, b = self.clusters
        return b if cluster == a else a


@dataclass(frozen=True, slots=True)
class AppliedLink:
    cluster: str
    """The local cluster that imports."""
    peer: LinkDocument
    probe: ProbePolicy = field(default_factory=ProbePolicy)
    applied_at: str = ""


@dataclass(frozen=True, slots=True)
class AcceptedBundle:
    """A peer's trust bundle that a local cluster took at link time: ``fedctl link apply`` on the
    peer's host offered it with the credential this cluster minted (``_trust_exchange``), so
    that this cluster's control plane and sidecars trust the peer's independent root. Kept
    until the credential expires or the link is removed (``fedctl unlink``)."""

    cluster: str
    """The local cluster that exports (and now trusts the peer)."""
    peer: str
    trust_domain: str
    bundle: str
    """PEM roots of the peer's trust domain."""
    expires: str
    """ISO time the credential it came with expires; the bundle is not trusted after it."""
    accepted_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "peer": self.peer, "trustDomain": self.trust_domain,
                "bundle": self.bundle, "expires": self.expires, "acceptedAt": self.accepted_at}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "AcceptedBundle":
        return cls(str(doc["cluster"]), str(doc["peer"]), str(doc["trustDomain"]), str(doc["bundle"]),
                   str(doc["expires"]), str(doc.get("acceptedAt") or ""))

    def valid_at(self, now: dt.datetime) -> bool:
        try:
            return now < dt.datetime.fromisoformat(self.expires)
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class LinkSet:
    links: tuple[LocalLink, ...] = ()
    applied: tuple[AppliedLink, ...] = ()
    accepted: tuple[AcceptedBundle, ...] = ()

    def find(self, a: str, b: str) -> LocalLink | None:
        return next((l for l in self.links if set(l.clusters) == {a, b}), None)

    def with_link(self, a: str, b: str, probe: ProbePolicy, now: str) -> "LinkSet":
        """Adds the link, or replaces its probe settings (the imports are kept: make-before-break)."""
        kept = tuple(l for l in self.links if set(l.clusters) != {a, b})
        return replace(self, links=(*kept, LocalLink((a, b), probe, now)))

    def without_link(self, a: str, b: str) -> "LinkSet":
        """Without the link, the documents applied between the two, and the bundles either accepted."""
        return LinkSet(tuple(l for l in self.links if set(l.clusters) != {a, b}),
                       tuple(x for x in self.applied if {x.cluster, x.peer.cluster} != {a, b}),
                       tuple(x for x in self.accepted if {x.cluster, x.peer} != {a, b}))

    def with_accepted(self, accepted: AcceptedBundle) -> "LinkSet":
        """Adds it, replacing what the same cluster accepted from the same peer before (rotation)."""
        kept = tuple(x for x in self.accepted if (x.cluster, x.peer) != (accepted.cluster, accepted.peer))
        return replace(self, accepted=(*kept, accepted))

    def with_applied(self, applied: AppliedLink) -> "LinkSet":
        """Adds it, replacing a previous document of the same peer for the same cluster (rotation)."""
        kept = tuple(x for x in self.applied if (x.cluster, x.peer.cluster) != (applied.cluster, applied.peer.cluster))
        return replace(self, applied=(*kept, applied))

    def peers_of(self, cluster: str) -> list[str]:
        names = [l.other(cluster) for l in self.links if l.has(cluster)]
        names += [x.peer.cluster for x in self.applied if x.cluster == cluster]
        return list(dict.fromkeys(names))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT,
                "links": [{"clusters": list(l.clusters), "probe": l.probe.to_json(), "createdAt": l.created_at}
                          for l in self.links],
                "applied": [{"cluster": x.cluster, "peer": x.peer.to_json(), "probe": x.probe.to_json(),
                             "appliedAt": x.applied_at} for x in self.applied],
                "accepted": [x.to_json() for x in self.accepted]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "LinkSet":
        links = tuple(LocalLink((str(l["clusters"][0]), str(l["clusters"][1])), ProbePolicy.from_json(l.get("probe")),
                                str(l.get("createdAt") or "")) for l in doc.get("links") or ())
        applied = tuple(AppliedLink(str(x["cluster"]), LinkDocument.from_json(x["peer"]),
                                    ProbePolicy.from_json(x.get("probe")), str(x.get("appliedAt") or ""))
                        for x in doc.get("applied") or ())
        accepted = tuple(AcceptedBundle.from_json(x) for x in doc.get("accepted") or ())
        return cls(links, applied, accepted)


def read_links(mesh_dir: str | os.PathLike[str]) -> LinkSet:
    """The links in force; a missing file is none. A damaged file raises ``LinkError``."""
    path = links_path(mesh_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return LinkSet()
    except OSError as exc:
        raise LinkError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return LinkSet.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError, IndexError, LinkError) as exc:
        raise LinkError(f"{path}: damaged link file ({exc})") from None


def write_links(mesh_dir: str | os.PathLike[str], links: LinkSet) -> None:
    write_atomic(links_path(mesh_dir), json.dumps(links.to_json(), indent=1).encode() + b"\n", mode=0o600)
