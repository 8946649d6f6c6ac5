"""mTLS for trio: SSL contexts built from an SVID and a BundleSet, and the SPIFFE check.

Theory of operation: the stdlib's ``ssl`` cannot choose trust anchors by the peer's
trust domain, so verification happens twice. The handshake itself runs with
CERT_REQUIRED against the union of every bundle's authorities (plus
VERIFY_X509_PARTIAL_CHAIN, so an intermediate published in a bundle can anchor);
OpenSSL thereby refuses strangers, missing certificates and broken signatures early.
Then ``verify_peer`` runs on the chain the peer actually sent and re-checks it against
the bundle of the peer's own trust domain, which is what refuses an SVID of domain A
chained to domain B's authority. The sent chain comes from the captured
Certificate message, else ``get_unverified_chain()`` (public from Python 3.13; on
3.10-3.12 on the private ``_sslobj``), else the leaf alone with the intermediates this
side knows (its own chain), which suffices under a shared root.

When OpenSSL refuses first it discards the sent chain, so the handshake contexts carry
``ChainCapture`` (see ``_capture``), which keeps the Certificate message the peer sent;
``verify_peer`` then explains the refusal with the same reason it would have given, and
OpenSSL's verify code is only the fallback. Every refusal is logged with its reason and
counted in ``TlsStats``.

Contexts are immutable once built: a new SVID or bundle set builds new ones, which
later handshakes pick up; an open connection keeps the context it started with.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import trio
from cryptography.hazmat.primitives import serialization

from ._bundle import BundleSet
from ._capture import ChainCapture
from ._errors import TrustDomainError
from ._files import cert_pem, key_pem
from ._spiffe import SpiffeId, TrustDomain
from ._svid import X509Svid
from ._verify import PeerRefused, PeerRole, RefusalReason, verify_peer

log = logging.getLogger("meshfed.trustdomain.tls")

ALPN_PROTOCOLS = ("h2", "http/1.1")
_OPENSSL_REASONS = {  # X509_V_ERR_* codes, for when the sent chain cannot be read
    9: RefusalReason.NOT_YET_VALID, 10: RefusalReason.EXPIRED, 26: RefusalReason.WRONG_EKU,
}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end, as the proxy needs it for authorization and telemetry."""

    spiffe_id: SpiffeId
    trust_domain: TrustDomain
    """The peer's trust domain as policy sees it: an alias is read as the domain it stands for."""
    alpn: str | None = None


@dataclass
class TlsStats:
    """Handshake outcomes; the gateway exports them (reason is the metric label)."""

    handshakes: int = 0
    refused: Counter[RefusalReason] = field(default_factory=Counter)

    def record_refusal(self, reason: RefusalReason) -> None:
        self.refused[reason] += 1

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.value}={n}" for r, n in sorted(self.refused.items(), key=lambda i: i[0].value))
        return f"<TlsStats handshakes={self.handshakes} refused[{parts}]>"


def _load_chain(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    """Give OpenSSL the key without a file on disk: a memfd on Linux, else a 0700 temp dir."""
    assert svid.key is not None
    data = key_pem(svid.key) + cert_pem(svid.certificate, *svid.intermediates)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as folder:  # created 0700
        path = os.path.join(folder, "svid.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(path)


def build_context(svid: X509Svid, bundles: BundleSet, *, server_side: bool,
                  alpn: Sequence[str] = ALPN_PROTOCOLS) -> ssl.SSLContext:
    if svid.key is None:
        raise TrustDomainError(f"{svid!r} has no private key: it cannot serve TLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the identity is the URI SAN, checked by verify_peer
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    authorities = bundles.all_authorities()
    if authorities:
        ctx.load_verify_locations(cadata=cert_pem(*authorities).decode())
    _load_chain(ctx, svid)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


class MtlsContexts:
    """The current server and client contexts for one workload; rebuilt when its SVID or bundles change."""

    def __init__(self, svid: X509Svid, bundles: BundleSet, *, alpn: Sequence[str] = ALPN_PROTOCOLS,
                 clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.alpn = tuple(alpn)
        self.clock = clock
        self.stats = TlsStats()
        self.generation = 0
        self._svid = svid
        self._bundles = bundles
        self._rebuild()

    def _rebuild(self) -> None:
        self._known = [c.public_bytes(serialization.Encoding.DER) for c in self._svid.intermediates]
        self._capture = ChainCapture()
        built = {}
        for side, server_side in (("server", True), ("client", False)):
            handshake = build_context(self._svid, self._bundles, server_side=server_side, alpn=self.alpn)
            self._capture.install(handshake)
            built[side] = (handshake, build_context(self._svid, self._bundles, server_side=server_side,
                                                    alpn=self.alpn))
        self._server, self._server_established = built["server"]
        self._client, self._client_established = built["client"]
        self.generation += 1

    @property
    def svid(self) -> X509Svid:
        return self._svid

    @property
    def bundles(self) -> BundleSet:
        return self._bundles

    def update(self, svid: X509Svid | None = None, bundles: BundleSet | None = None) -> None:
        """Swap in a new SVID and/or bundle set: new handshakes use it, open connections keep theirs."""
        self._svid = svid or self._svid
        self._bundles = bundles or self._bundles
        self._rebuild()

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self) -> ssl.SSLContext:
        return self._client

    def __repr__(self) -> str:
        return (f"<MtlsContexts {self._svid.spiffe_id} generation={self.generation} "
                f"trusting [{', '.join(td.name for td in self._bundles.trust_domains)}]>")

    # --- handshakes ---------------------------------------------------------------------
    async def accept(self, transport: trio.abc.Stream) -> tuple[trio.SSLStream, PeerIdentity]:
        """Server side: handshake on ``transport``, verify the client's SVID, or raise PeerRefused."""
        stream = trio.SSLStream(transport, self._server, server_side=True)
        return stream, await self._handshake(stream, PeerRole.CLIENT, self._server_established)

    async def connect(self, transport: trio.abc.Stream, server_name: str | None = None
                      ) -> tuple[trio.SSLStream, PeerIdentity]:
        """Client side: handshake on ``transport``, verify the server's SVID, or raise PeerRefused.
        ``server_name`` is sent as SNI only (the identity check is the SPIFFE ID, never the name):
        sidecars name the service port they want with ``outbound_.<port>_.<subset>_.<fqdn>``."""
        stream = trio.SSLStream(transport, self._client, server_hostname=server_name)
        return stream, await self._handshake(stream, PeerRole.SERVER, self._client_established)

    async def _handshake(self, stream: trio.SSLStream, role: PeerRole,
                         established: ssl.SSLContext) -> PeerIdentity:
        bundles, now, capture, known = self._bundles, self.clock(), self._capture, self._known
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            refusal = self._explain(sent_chain(stream, capture, known), exc.__cause__, bundles, now, role)
            await trio.aclose_forcefully(stream)
            if refusal is None:
                raise
            self._refuse(refusal, role)
            raise refusal from exc
        try:
            spiffe_id = verify_peer(sent_chain(stream, capture, known), bundles, now, role)
        except PeerRefused as refusal:
            self._refuse(refusal, role)
            await trio.aclose_forcefully(stream)
            raise
        stream.context = established  # drop the capture hook for the life of the connection
        self.stats.handshakes += 1
        return PeerIdentity(spiffe_id, bundles.canonical(spiffe_id.trust_domain), stream.selected_alpn_protocol())

    def _explain(self, chain: list[bytes], cause: BaseException | None, bundles: BundleSet,
                 now: dt.datetime, role: PeerRole) -> PeerRefused | None:
        """The refusal behind a failed handshake, or None when it failed for another cause."""
        if isinstance(cause, ssl.SSLCertVerificationError):
            try:
                if chain:  # empty when neither capture nor get_unverified_chain could see it
                    verify_peer(chain, bundles, now, role)
            except PeerRefused as refusal:
                return refusal
            reason = _OPENSSL_REASONS.get(cause.verify_code, RefusalReason.CHAIN_NOT_TO_BUNDLE)
            return PeerRefused(reason, f"OpenSSL: {cause.verify_message}")
        if isinstance(cause, ssl.SSLError) and cause.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return PeerRefused(RefusalReason.NO_CLIENT_CERTIFICATE, "the peer presented no certificate")
        return None

    def _refuse(self, refusal: PeerRefused, role: PeerRole) -> None:
        self.stats.record_refusal(refusal.reason)
        log.warning("refused TLS %s %s: %s", role.name.lower(), refusal.spiffe_id or "(no identity)", refusal,
                    extra={"reason": refusal.reason.value})


def sent_chain(stream: trio.SSLStream, capture: ChainCapture | None = None,
               known_intermediates: Sequence[bytes] = ()) -> list[bytes]:
    """The certificates the peer sent, leaf first, as DER (see the module docstring).

    ``known_intermediates`` are appended only in the leaf-only fallback, as a pool the
    path builder may use; they are never trusted by themselves.
    """
    obj = getattr(stream, "_ssl_object", None)  # trio keeps the ssl.SSLObject private
    captured = capture.chain_of(obj) if capture is not None and obj is not None else None
    if captured is not None:
        return captured
    for holder in (obj, getattr(obj, "_sslobj", None)):
        method = getattr(holder, "get_unverified_chain", None)
        if method is None:
            continue
        chain = method() or []
        return [c if isinstance(c, bytes) else c.public_bytes(2) for c in chain]  # 2 == _ssl.ENCODING_DER
    try:
        leaf = stream.getpeercert(binary_form=True)
    except trio.NeedHandshakeError:
        return []
    return [leaf, *known_intermediates] if leaf else []
