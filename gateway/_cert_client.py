"""The proxy's certificate client: first SVID with a bootstrap token, renewals over mTLS.

``fetch`` runs before the proxy has any certificate: it connects to :15012 with TLS
that authenticates only the server (the control plane's SVID, checked against the
trust bundle the proxy was started with, and its SPIFFE ID when one is expected),
generates a key, and sends a CSR with the bootstrap token. ``renew`` connects with the
current SVID (mTLS) and sends a CSR for the same identity without a token. ``run``
keeps renewing before expiry: ``trustdomain.SvidRotator`` decides when (the
``RenewalPolicy``, jittered before 80 % of the lifetime, with backoff on failure) and
swaps each new SVID into ``MtlsContexts``; ``on_svid`` lets the proxy write it to its
files first. The key never leaves the proxy.
"""

from __future__ import annotations

import datetime as dt
import random
import ssl
from typing import Awaitable, Callable, Sequence

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustdomain import (
    BundleSet, KeyType, MtlsContexts, PeerRefused, RenewalPolicy, SpiffeId, SvidRotator, TrustDomainError,
    X509Svid, make_csr, with_key,
)
from trustdomain._files import cert_pem
from trustdomain._tls import sent_chain
from trustdomain._verify import PeerRole, verify_peer, verify_peer_chain

from . import GatewayError
from ._discovery_wire import PATH_CERTIFICATE, CertificateRequest, CertificateResponse, WireError, error_of
from ._h2channel import ChannelClosed, H2Channel


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertificateFetchError(GatewayError, TrustDomainError):
    """No SVID this time (CA unreachable or refusing); a TrustDomainError so SvidRotator retries."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


FETCH_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ChannelClosed,
                PeerRefused)


def bootstrap_context(bundles: BundleSet) -> ssl.SSLContext:
    """TLS client context without a client certificate, trusting the bundles' authorities."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the server's identity is its URI SAN, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    authorities = bundles.all_authorities()
    if authorities:
        ctx.load_verify_locations(cadata=cert_pem(*authorities).decode())
    ctx.set_alpn_protocols(["h2"])
    return ctx


class CertificateClient:
    """Gets and renews the SVID of ``identity`` from the CA service at ``address``."""

    def __init__(self, address: tuple[str, int], identity: SpiffeId, bundles: BundleSet, token: str | None, *,
                 control_plane: SpiffeId | None = None, key_type: KeyType = KeyType.ECDSA_P256,
                 dns_names: Sequence[str] = (), clock: Callable[[], dt.datetime] = _utcnow,
                 timeout: float = 10.0) -> None:
        self.address = address
        self.identity = identity
        self.bundles = bundles
        self.token = token
        self.control_plane = control_plane
        self.key_type = key_type
        self.dns_names = tuple(dns_names)
        self.clock = clock
        self.timeout = timeout
        self.fetched = 0

    def __repr__(self) -> str:
        return f"<CertificateClient {self.identity} from {self.address[0]}:{self.address[1]} fetched={self.fetched}>"

    async def fetch(self) -> X509Svid:
        """The first SVID, authenticated by the bootstrap token (no client certificate)."""
        if not self.token:
            raise CertificateFetchError(f"{self.identity}: no bootstrap token to ask for a first certificate")

        async def handshake(tcp: trio.SocketStream) -> trio.SSLStream:
            stream = trio.SSLStream(tcp, bootstrap_context(self.bundles), server_hostname=None)
            await stream.do_handshake()
            server = verify_peer(sent_chain(stream), self.bundles, self.clock(), PeerRole.SERVER)
            self._check_server(server)
            return stream
        return await self._request(handshake, self.token)

    async def renew(self, contexts: MtlsContexts, now: dt.datetime | None = None) -> X509Svid:
        """A fresh SVID for the same identity, authenticated by the current one (mTLS)."""
        async def handshake(tcp: trio.SocketStream) -> trio.SSLStream:
            stream, peer = await contexts.connect(tcp)
            self._check_server(peer.spiffe_id)
            return stream
        return await self._request(handshake, None)

    def _check_server(self, server: SpiffeId) -> None:
        if self.control_plane is not None and server != self.control_plane:
            raise CertificateFetchError(f"the CA service presented {server}; expected {self.control_plane}")

    async def _request(self, handshake: Callable[[trio.SocketStream], Awaitable[trio.SSLStream]],
                       token: str | None) -> X509Svid:
        key = self.key_type.generate()
        csr = make_csr(key, self.identity, self.dns_names).public_bytes(serialization.Encoding.PEM).decode()
        try:
            with trio.fail_after(self.timeout):
                tcp = await trio.open_tcp_stream(*self.address)
                try:
                    stream = await handshake(tcp)
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
                channel = H2Channel(stream, ping_interval=None)
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(channel.run)
                        try:
                            status, body = await channel.request("POST", PATH_CERTIFICATE,
                                                                 CertificateRequest(csr, token).to_json())
                        except FETCH_ERRORS as exc:  # raised below, not wrapped in an ExceptionGroup
                            status, body = 0, str(exc).encode()
                        nursery.cancel_scope.cancel()  # stop the reader before the stream closes
                finally:
                    await channel.aclose()
        except FETCH_ERRORS as exc:
            raise CertificateFetchError(f"{self.identity}: CA service at {self.address[0]}:{self.address[1]} "
                                        f"unreachable: {exc or type(exc).__name__}") from None
        if status == 0:
            raise CertificateFetchError(f"{self.identity}: CA service at {self.address[0]}:{self.address[1]} "
                                        f"unreachable: {body.decode()}")
        if status != 200:
            raise CertificateFetchError(f"{self.identity}: CA service refused ({status}): {error_of(body)}", status)
        return self._svid(body, key)

    def _svid(self, body: bytes, key: object) -> X509Svid:
        try:
            resp = CertificateResponse.from_json(body)
            cert = x509.load_pem_x509_certificate(resp.cert_pem.encode())
            chain = tuple(x509.load_pem_x509_certificates(resp.chain_pem.encode())) if resp.chain_pem else ()
            svid = with_key(X509Svid(SpiffeId.parse(resp.spiffe_id), cert, chain), key)  # type: ignore[arg-type]
            verify_peer_chain(svid.chain_der(), self.bundles, self.clock(), PeerRole.CLIENT)
        except (WireError, ValueError, TrustDomainError) as exc:
            raise CertificateFetchError(f"{self.identity}: the CA service's answer is unusable: {exc}") from None
        if svid.spiffe_id != self.identity:
            raise CertificateFetchError(f"the CA service issued {svid.spiffe_id}; asked for {self.identity}")
        self.fetched += 1
        return svid

    async def run(self, contexts: MtlsContexts, *, policy: RenewalPolicy = RenewalPolicy(),
                  rng: random.Random | None = None, on_svid: Callable[[X509Svid], None] | None = None,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew ``contexts``' SVID before it expires, until cancelled."""
        async def renew(now: dt.datetime) -> X509Svid:
            svid = await self.renew(contexts, now)
            if on_svid is not None:
                on_svid(svid)
            return svid
        rotator = SvidRotator(contexts, renew, policy=policy, rng=rng, wall_clock=self.clock)
        await rotator.run(task_status=task_status)

