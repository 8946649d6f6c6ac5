"""The control plane's :15012 listener: TLS with an optional client certificate, HTTP/2, routes by path.

Why the client certificate is optional. A proxy that starts has no SVID yet: it must
get its first one from the certificate service on this very port, over TLS that
authenticates the server only, with its bootstrap token as the credential. So the
handshake asks for a client certificate but does not require one (``CERT_OPTIONAL``):

* a certificate that is presented is verified as strictly as ``MtlsContexts`` does -
  OpenSSL against every bundle's authorities during the handshake, then ``verify_peer``
  on the chain the client sent, against the bundle of its own trust domain - and a
  connection whose certificate fails either is closed before any request is read;
* a connection without a certificate is anonymous, and an anonymous connection may
  only ``POST /v1/certificate`` (``anonymous_paths``), where the token is checked.
  Every other path answers 401 without reaching its handler.

Trust can be withdrawn while a connection is open (``fedctl unlink`` removes a peer's
bundle, an accepted bundle expires): every request of a connection whose client's trust
domain has no bundle any more is answered 403 naming that domain, so a linked peer's long
poll ends and its next handshake is refused - the connection does not outlive the trust.

Requests are dispatched once complete (HEADERS + DATA + END_STREAM, body at most
``MAX_REQUEST_BODY``) to a handler task in the connection's nursery, so a long-lived
response (the subscribe stream) and short ones (ACKs) share one connection, and every
handler ends with its connection.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from gateway._discovery_wire import CONTENT_JSON, MAX_REQUEST_BODY, PATH_CERTIFICATE, error_body
from gateway._h2channel import RECEIVE_SIZE, ChannelClosed, H2Endpoint
from trustdomain import MtlsContexts, PeerIdentity, PeerRefused, build_context
from trustdomain._tls import sent_chain
from trustdomain._verify import PeerRole, verify_peer

log = logging.getLogger("meshfed.federation.listener")

HANDSHAKE_TIMEOUT = 10.0
SERVER_WINDOW = 1 << 20
MAX_STREAMS = 64


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Request:
    """One complete request and the means to answer it (once, or as a stream)."""

    connection: "ServerConnection"
    stream_id: int
    method: str
    path: str
    peer: PeerIdentity | None
    body: bytes = b""
    reset: trio.Event = field(default_factory=trio.Event)

    async def respond(self, status: int, body: bytes = b"", *, content_type: str = CONTENT_JSON,
                      end: bool = True) -> None:
        conn = self.connection
        conn.conn.send_headers(self.stream_id, [(":status", str(status)), ("content-type", content_type)],
                               end_stream=end and not body)
        await conn.flush()
        if body:
            await conn.send_body(self.stream_id, [body], end=end)

    async def send(self, parts: Sequence[bytes]) -> None:
        """More of a streamed response body."""
        if self.reset.is_set():
            raise ChannelClosed(f"stream {self.stream_id} was reset")
        await self.connection.send_body(self.stream_id, parts, end=False)

    async def error(self, status: int, message: str) -> None:
        await self.respond(status, error_body(message))


Handler = Callable[[Request], Awaitable[None]]


class OptionalClientAuth:
    """Server-side TLS of :15012 (see the module docstring); contexts follow ``contexts``' rotations."""

    def __init__(self, contexts: MtlsContexts, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.contexts = contexts
        self.clock = clock
        self._built: tuple[int, ssl.SSLContext] | None = None

    def context(self) -> ssl.SSLContext:
        generation = self.contexts.generation
        if self._built is None or self._built[0] != generation:
            ctx = build_context(self.contexts.svid, self.contexts.bundles, server_side=True, alpn=("h2",))
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self._built = (generation, ctx)
        return self._built[1]

    async def accept(self, transport: trio.abc.Stream) -> tuple[trio.SSLStream, PeerIdentity | None]:
        stream = trio.SSLStream(transport, self.context(), server_side=True)
        await stream.do_handshake()
        leaf = stream.getpeercert(binary_form=True)
        if not leaf:
            return stream, None
        sent = [c for c in sent_chain(stream) if c]  # the server side's chain may lack the leaf
        chain = sent if sent and sent[0] == leaf else [leaf, *(c for c in sent if c != leaf)]
        bundles = self.contexts.bundles
        spiffe_id = verify_peer(chain, bundles, self.clock(), PeerRole.CLIENT)
        return stream, PeerIdentity(spiffe_id, bundles.canonical(spiffe_id.trust_domain),
                                    stream.selected_alpn_protocol())


class ServerConnection(H2Endpoint):
    def __init__(self, stream: trio.abc.Stream, peer: PeerIdentity | None, listener: "ControlPlaneListener") -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        super().__init__(stream, conn)
        self.peer = peer
        self.listener = listener
        self._requests: dict[int, Request] = {}

    async def serve(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: SERVER_WINDOW,
                                   h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        try:
            async with trio.open_nursery() as nursery:
                await self._read(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.closed.set()
            self.window_changed()
            for req in self._requests.values():
                req.reset.set()
            await trio.aclose_forcefully(self.stream)

    async def _read(self, nursery: trio.Nursery) -> None:
        """Until EOF or a broken connection; errors end here (handlers catch their own), so the
        nursery never combines one with a Cancelled into a MultiError."""
        try:
            await self.flush()
            while True:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self._dispatch(event, nursery)
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError) as exc:
            log.debug("connection from %s ended: %r", self.peer and self.peer.spiffe_id, exc)

    def _dispatch(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_changed()
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise trio.BrokenResourceError("GOAWAY")
        elif isinstance(event, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in event.headers}
            self._requests[event.stream_id] = Request(self, event.stream_id, headers.get(":method", ""),
                                                      headers.get(":path", ""), self.peer)
        elif isinstance(event, h2.events.DataReceived):
            req = self._requests.get(event.stream_id)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if req is not None:
                req.body += event.data
                if len(req.body) > MAX_REQUEST_BODY:
                    del self._requests[event.stream_id]
                    self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.StreamEnded):
            req = self._requests.get(event.stream_id)
            if req is not None:
                nursery.start_soon(self._handle, req)
        elif isinstance(event, h2.events.StreamReset):
            req = self._requests.pop(event.stream_id, None)
            if req is not None:
                req.reset.set()

    async def _handle(self, req: Request) -> None:
        try:
            handler = self.listener.routes.get(req.path)
            distrusted = self.listener.distrusted(req.peer)
            if req.peer is None and req.path not in self.listener.anonymous_paths:
                await req.error(401, f"{req.path} requires a client certificate (mTLS); only "
                                     f"{', '.join(sorted(self.listener.anonymous_paths))} accepts a bootstrap token")
            elif distrusted is not None:
                await req.error(403, distrusted)
            elif handler is None:
                await req.error(404, f"no such path {req.path!r}")
            elif req.method != "POST":
                await req.error(405, f"{req.path} takes POST; found {req.method}")
            else:
                await handler(req)
        except (ChannelClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except h2.exceptions.H2Error as exc:
            log.debug("stream %d: %r", req.stream_id, exc)
        finally:
            self._requests.pop(req.stream_id, None)


def _closed_before_tls(exc: BaseException) -> bool:
    """The peer closed (or reset) without completing a handshake, as a TCP port probe does."""
    return isinstance(exc, trio.BrokenResourceError) and isinstance(
        exc.__cause__, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError))


class ControlPlaneListener:
    """Accepts :15012 connections and routes their requests to ``routes`` (path -> handler)."""

    def __init__(self, contexts: MtlsContexts, routes: dict[str, Handler], *,
                 anonymous_paths: frozenset[str] = frozenset({PATH_CERTIFICATE}),
                 clock: Callable[[], dt.datetime] = _utcnow, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.tls = OptionalClientAuth(contexts, clock)
        self.routes = routes
        self.anonymous_paths = anonymous_paths
        self.handshake_timeout = handshake_timeout
        self.connections = 0
        self.refused = 0
        self.address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"<ControlPlaneListener {self.address} connections={self.connections} refused={self.refused}>"

    def distrusted(self, peer: PeerIdentity | None) -> str | None:
        """Why ``peer``'s requests are refused now that its trust domain has no bundle, else None."""
        if peer is None:
            return None
        td = peer.spiffe_id.trust_domain
        if self.tls.contexts.bundles.for_peer(td) is not None:
            return None
        return (f"trust domain {td.name} is no longer trusted by this control plane (its bundle was removed: "
                f"unlinked, or the link credential expired); {peer.spiffe_id} must be linked again")

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.address = listeners[0].socket.getsockname()[:2]
        task_status.started(self.address)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, transport: trio.SocketStream) -> None:
        try:
            with trio.fail_after(self.handshake_timeout):
                stream, peer = await self.tls.accept(transport)
        except (PeerRefused, trio.BrokenResourceError, trio.TooSlowError) as exc:
            if _closed_before_tls(exc):  # a port probe (fedctl up's readiness check): nothing to refuse
                log.debug("a :15012 connection closed before its TLS handshake")
                await trio.aclose_forcefully(transport)
                return
            self.refused += 1
            log.info("refused a :15012 connection: %s", exc if str(exc) else repr(exc.__cause__ or exc))
            await trio.aclose_forcefully(transport)
            return
        if stream.selected_alpn_protocol() != "h2":
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await ServerConnection(stream, peer, self).serve()
        except Exception:  # one connection's bug must not take the control plane down
            log.exception("connection from %s failed", peer.spiffe_id if peer else "an anonymous client")
        finally:
            self.connections -= 1
