"""Bundle exchange at link time, for a link document applied on another host.

``fedctl link apply C.link --cluster D`` gives D everything about C, C's roots included,
so D trusts C. C knows nothing of D: with independent roots its :15012 listener would
refuse D's control plane and its sidecars D's sidecars. So ``apply`` *offers* D's bundle
to C (``POST /v1/federation/bundle`` on C's federation API), over TLS that authenticates
C only - D's certificate cannot be verified yet, which is the point - and with the
credential from C's document as the authority, as a bootstrap token is for a first SVID:

    {"cluster": "D", "trustDomain": "d.example", "bundle": "<PEM roots>", "credential": "v1.C...."}

C checks (``accept_offer``, pure): the credential is C's own, unexpired; the trust domain
is a valid SPIFFE one and not one of another of C's topology's clusters (the offer of a
cluster of C's own topology is kept, but its roots are then read from C's CA folder, never
from the offer: ``_trust_bundles``); the bundle holds CA certificates only.
Accepted, the bundle is kept in C's link file (``LinkSet.accepted``) until the credential
expires or ``fedctl unlink C D``; C's control plane then trusts D's domain on :15012 and
hands the bundle to its sidecars. 200 answers ``{"cluster", "trustDomain", "expires"}``, a
refusal 403 (or 400 for a malformed offer) ``{"error"}`` naming the reason.

The client side checks that the server presents C's control plane identity chained to
the bundle of C's document before it sends anything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import trio

from gateway._cert_client import bootstrap_context
from gateway._discovery_wire import control_plane_id, error_body, error_of
from gateway._h2channel import ChannelClosed, H2Channel
from trustdomain import (
    Bundle, BundleError, BundleSet, PeerRefused, PeerRole, RefusalReason, TrustDomain, TrustDomainError,
)
from trustdomain._ca import is_ca_certificate
from trustdomain._tls import sent_chain
from trustdomain._verify import verify_peer

from ._cplistener import Request
from ._errors import FederationError
from ._link_store import AcceptedBundle, LinkError, check_credential, credential_expiry, read_links, write_links

log = logging.getLogger("meshfed.federation.trust")

PATH_BUNDLE = "/v1/federation/bundle"
OFFER_TIMEOUT = 10.0
MAX_BUNDLE_CERTS = 16


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ExchangeRefused(FederationError):
    """An offer refused; ``status`` is the HTTP status it is answered with (0: not sent)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class BundleOffer:
    cluster: str
    """The offering cluster (the importer)."""
    trust_domain: str
    bundle: str
    """PEM roots of ``trust_domain``."""
    credential: str
    """The credential of the document the importer applied: minted by the cluster offered to."""

    def to_json(self) -> bytes:
        return json.dumps({"cluster": self.cluster, "trustDomain": self.trust_domain, "bundle": self.bundle,
                           "credential": self.credential}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "BundleOffer":
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            raise ExchangeRefused("the body must be a JSON object", 400) from None
        if not isinstance(doc, dict):
            raise ExchangeRefused(f"the body must be a JSON object; found {type(doc).__name__}", 400)
        missing = [k for k in ("cluster", "trustDomain", "bundle", "credential")
                   if not isinstance(doc.get(k), str) or not doc[k]]
        if missing:
            raise ExchangeRefused(f"missing {', '.join(missing)}", 400)
        return cls(doc["cluster"], doc["trustDomain"], doc["bundle"], doc["credential"])


def accept_offer(offer: BundleOffer, *, cluster: str, secret: bytes, local_domains: Mapping[str, str],
                 now: dt.datetime) -> AcceptedBundle:
    """The bundle ``cluster`` keeps for ``offer``. ``local_domains``: trust domain -> the local
    cluster that owns it. Raises ExchangeRefused with the reason."""
    why = check_credential(secret, cluster, offer.credential, now)
    if why is not None:
        raise ExchangeRefused(f"bundle of {offer.trust_domain!r} from {offer.cluster!r} refused: {why}")
    if offer.cluster == cluster:
        raise ExchangeRefused(f"{offer.cluster!r} is this cluster: it cannot be linked to itself")
    try:
        td = TrustDomain.parse(offer.trust_domain)
    except TrustDomainError as exc:
        raise ExchangeRefused(f"trustDomain: {exc}", 400) from None
    owner = local_domains.get(td.name)
    if owner is not None and owner != offer.cluster:
        raise ExchangeRefused(f"trust domain {td.name!r} belongs to local cluster {owner!r}, not "
                              f"{offer.cluster!r}: identities would be ambiguous")
    try:
        bundle = Bundle.from_pem(td, offer.bundle.encode())
    except BundleError as exc:
        raise ExchangeRefused(str(exc), 400) from None
    if not 1 <= len(bundle.x509_authorities) <= MAX_BUNDLE_CERTS:
        raise ExchangeRefused(f"bundle of {td.name!r}: 1 to {MAX_BUNDLE_CERTS} roots; found "
                              f"{len(bundle.x509_authorities)}", 400)
    leaf = next((c for c in bundle.x509_authorities if not is_ca_certificate(c)), None)
    if leaf is not None:
        raise ExchangeRefused(f"bundle of {td.name!r}: {leaf.subject.rfc4514_string()!r} is not a CA "
                              "certificate", 400)
    expiry = credential_expiry(offer.credential)
    assert expiry is not None  # check_credential accepted it
    return AcceptedBundle(cluster, offer.cluster, td.name, bundle.to_pem().decode(), expiry.isoformat(),
                          now.isoformat(timespec="seconds"))


class BundleExchange:
    """``POST /v1/federation/bundle`` of one control plane (module docstring)."""

    def __init__(self, cluster: str, secret: bytes, mesh_dir: Path, local_domains: Callable[[], Mapping[str, str]],
                 *, on_accept: Callable[[], None] = lambda: None, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.cluster = cluster
        self.secret = secret
        self.mesh_dir = mesh_dir
        self.local_domains = local_domains
        self.on_accept = on_accept
        self.clock = clock
        self.accepted = 0
        self.refused = 0
        self.last_refusal: str | None = None

    def __repr__(self) -> str:
        return f"<BundleExchange {self.cluster} accepted={self.accepted} refused={self.refused}>"

    @property
    def routes(self) -> dict[str, Callable[[Request], Any]]:
        return {PATH_BUNDLE: self.handle}

    def accept(self, body: bytes) -> dict[str, Any]:
        """The decision and its bookkeeping, without the wire: the answer, or ExchangeRefused."""
        now = self.clock()
        offer = BundleOffer.from_json(body)
        kept = accept_offer(offer, cluster=self.cluster, secret=self.secret, local_domains=self.local_domains(),
                            now=now)
        try:
            links = read_links(self.mesh_dir)
        except LinkError as exc:
            raise ExchangeRefused(f"cannot record the bundle: {exc}", 500) from None
        write_links(self.mesh_dir, links.with_accepted(kept))
        log.info("trusting %s (from %s) until %s: its bundle was offered with our link credential",
                 kept.trust_domain, kept.peer, kept.expires)
        self.accepted += 1
        self.on_accept()
        return {"cluster": self.cluster, "trustDomain": kept.trust_domain, "expires": kept.expires}

    async def handle(self, req: Request) -> None:
        try:
            answer = self.accept(req.body)
        except ExchangeRefused as exc:
            self.refused += 1
            self.last_refusal = str(exc)
            log.warning("bundle offer refused (%d): %s", exc.status, exc)
            await req.respond(exc.status, error_body(str(exc)))
            return
        await req.respond(200, json.dumps(answer).encode())


async def offer_bundle(federation: tuple[str, int], peer_trust_domain: str, peer_bundle_pem: str,
                       offer: BundleOffer, *, timeout: float = OFFER_TIMEOUT,
                       clock: Callable[[], dt.datetime] = _utcnow) -> dict[str, Any]:
    """Send ``offer`` to the control plane at ``federation``, which must present the control plane
    identity of ``peer_trust_domain`` chained to ``peer_bundle_pem``. Raises ExchangeRefused."""
    td = TrustDomain(peer_trust_domain)
    bundles = BundleSet.of(Bundle.from_pem(td, peer_bundle_pem.encode()))
    where = f"{federation[0]}:{federation[1]}"
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(*federation)
            stream = trio.SSLStream(tcp, bootstrap_context(bundles), server_hostname=None)
            try:
                await stream.do_handshake()
                server = verify_peer(sent_chain(stream), bundles, clock(), PeerRole.SERVER)
            except trio.BrokenResourceError as exc:
                await trio.aclose_forcefully(stream)
                if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    raise PeerRefused(RefusalReason.CHAIN_NOT_TO_BUNDLE, "its certificate does not chain to the "
                                      f"link document's bundle ({exc.__cause__.verify_message})") from None
                raise
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            if server != control_plane_id(td):
                await trio.aclose_forcefully(stream)
                raise ExchangeRefused(f"{where} presented {server}; expected {control_plane_id(td)}", 0)
            channel = H2Channel(stream, ping_interval=None)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(channel.run)
                    status, body = await channel.request("POST", PATH_BUNDLE, offer.to_json())
                    nursery.cancel_scope.cancel()
            finally:
                await channel.aclose()
    except* PeerRefused as group:
        raise ExchangeRefused(f"{where} is not the control plane of {td.name}: {group.exceptions[0]}", 0) from None
    except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ChannelClosed) as group:
        raise ExchangeRefused(f"{where} unreachable: {group.exceptions[0] or type(group.exceptions[0]).__name__}",
                              0) from None
    except* trio.TooSlowError:
        raise ExchangeRefused(f"{where} did not answer within {timeout:g} s", 0) from None
    if status != 200:
        raise ExchangeRefused(f"{where} refused the bundle ({status}): {error_of(body)}", status)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ExchangeRefused(f"{where} answered 200 without a JSON object", 0)
    return answer


def own_bundle_pem(ca_dir: Path, cluster: str) -> str:
    """The roots a local cluster's SVIDs chain to, as offered to a peer."""
    try:
        return (ca_dir / cluster / "root-cert.pem").read_text()
    except OSError as exc:
        raise FederationError(f"{cluster}: no CA yet under {ca_dir} ({exc.strerror})") from None


def local_trust_domains(ca_dir: Path) -> dict[str, str]:
    """Trust domain -> the local cluster owning it, from the CA folder."""
    from ._trust_bundles import read_cluster_roots
    from trustdomain import CaDirectory
    return {r.trust_domain: cluster for cluster, r in read_cluster_roots(CaDirectory(ca_dir)).items()}

