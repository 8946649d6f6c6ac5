"""The sidecar's inbound side (:15006): mTLS terminated, callers authorized, the app called.

Per connection, in order:

1. **TLS or not** - the first byte of a TLS connection is a handshake record (0x16);
   anything else is plaintext (Istio's PERMISSIVE detection, done the same way).
2. **Which app port** - a mesh caller's SNI is ``outbound_.<port>_.<subset>_.<fqdn>``
   (read from the ClientHello before the handshake), its service port mapped to the
   app's target port; without one, the app's only port, else (HTTP) the Host header's.
3. **PeerAuthentication** for that port: STRICT refuses plaintext, DISABLE refuses TLS
   (mesh callers then need a DestinationRule with ``tls.mode: DISABLE``, as in Istio),
   PERMISSIVE takes both. A refused connection is closed without a byte.
4. **Handshake** with ``MtlsContexts``: the caller's SPIFFE ID is verified against the
   bundle of its trust domain; the peer certificate is read once for XFCC.
5. **Per request** (HTTP ports): AuthorizationPolicy (403 ``RBAC: access denied`` on
   deny), rate limits (429), the faults of WorkloadFault resources selecting the workload
   (``DI``/``FI``), ``x-forwarded-client-cert`` replaced by ours (Envoy's SANITIZE_SET), then the
   request goes to the app over a pooled connection: h2c for http2/grpc app ports, plain
   HTTP/1.1 otherwise. A caller that negotiated ALPN ``h2`` (a client sidecar carrying an
   http2/grpc service), or opens a plaintext connection to an http2/grpc port with the
   HTTP/2 preface, is served as HTTP/2: each stream one request (``_h2serve``).
   **TCP ports**: one TCP-level authorization check, then a splice to the app.
"""

from __future__ import annotations

import logging
import operator
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trustdomain import TrustDomainError

from ._authz import DENIED_BODY, DENIED_STATUS
from ._authz_match import AuthzRequest
from ._events import InformationalResponse, Request, _new_request
from ._fastio import FastSocketStream, FastTlsStream
from ._downstream import RECV_SIZE, Downstream, DownstreamGone, serve_http1
from ._exchange import Exchange, ResponseAborted, forward_attempt, forward_upgrade, request_headers
from ._h2forward import forward_to_app
from ._h2serve import H2_PREFACE, maybe_preface, read_preface, serve_inbound_h2
from ._tunnel import close_gracefully, split_authority
from ._proxy_stats import TlsRefusal
from ._inbound_checks import answer_abort, draw_faults, rate_limited, reported
from ._rescue import ProxyError, rescue
from ._sni import NEED_DATA, NOT_TLS, TLS_HANDSHAKE, parse_outbound_sni, sniff_server_name
from ._tcpsplice import splice
from ._upstream import open_connection
from ._xfcc import XFCC_HEADER, PeerCertificate

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._snapshot import InboundConfig, Snapshot

log = logging.getLogger("meshfed.gateway.inbound")

DETECT_TIMEOUT = 10.0
"""Seconds a new connection may take to send its first bytes (and a whole ClientHello)."""
HANDSHAKE_TIMEOUT = 10.0
_CONTINUE = InformationalResponse(100)
_NAME = operator.itemgetter(0)
_H2_PROTOCOLS = frozenset({"http2", "grpc"})


_REFUSALS = {
    "no_client_certificate": TlsRefusal.NO_CLIENT_CERTIFICATE, "expired": TlsRefusal.CERTIFICATE_EXPIRED,
    "not_yet_valid": TlsRefusal.CERTIFICATE_EXPIRED, "chain_not_to_bundle": TlsRefusal.UNTRUSTED_CHAIN,
    "ca_as_leaf": TlsRefusal.UNTRUSTED_CHAIN, "wrong_eku": TlsRefusal.UNTRUSTED_CHAIN,
    "unknown_trust_domain": TlsRefusal.BAD_PEER_IDENTITY, "uri_san_count": TlsRefusal.BAD_PEER_IDENTITY,
    "malformed_spiffe_id": TlsRefusal.BAD_PEER_IDENTITY,
}


def tls_refusal(exc: BaseException) -> TlsRefusal:
    """The metric reason for a failed inbound handshake."""
    if isinstance(exc, trio.TooSlowError):
        return TlsRefusal.HANDSHAKE_TIMEOUT
    reason = getattr(exc, "reason", None)
    return _REFUSALS.get(getattr(reason, "value", ""), TlsRefusal.HANDSHAKE_ERROR)


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read (to look at them): they come first again."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        prefix = self._prefix
        if prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(prefix):
                self._prefix = b""
                return prefix
            self._prefix = prefix[max_bytes:]
            return prefix[:max_bytes]
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


@dataclass(slots=True)
class Caller:
    """What is known of one inbound connection, for every request on it."""

    source_ip: str
    local_ip: str
    port: int | None
    """App port; None until a plaintext HTTP request names it."""
    sni: str = ""
    peer: str | None = None
    """Verified SPIFFE ID of an mTLS caller."""
    xfcc: bytes | None = None
    """Our XFCC element for this caller, built once."""
    alpn: str = ""
    """The protocol an mTLS caller negotiated (``h2`` or ``http/1.1``)."""


class InboundListener:
    """The :15006 connection handler."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.rng = random.Random()

    async def handle_connection(self, stream: FastSocketStream) -> None:
        snap = self.proxy.snapshot
        inbound = snap.inbound
        try:
            source = stream.socket.getpeername()[0]
            local = stream.socket.getsockname()[0]
        except OSError:
            return
        hello: str | None | object = NOT_TLS
        data = b""
        with trio.move_on_after(DETECT_TIMEOUT):
            data = await stream.receive_some(RECV_SIZE)
            if data and data[0] == TLS_HANDSHAKE:
                while (hello := sniff_server_name(data)) is NEED_DATA:
                    more = await stream.receive_some(RECV_SIZE)
                    if not more:
                        return
                    data += more
        if not data or hello is NEED_DATA:
            return
        if data[0] == TLS_HANDSHAKE:
            if hello is NOT_TLS:
                log.info("inbound from %s: not a TLS ClientHello; closed", source)
                return
            await self._tls(stream, data, hello, snap, Caller(source, local, None))  # type: ignore[arg-type]
        else:
            await self._plaintext(stream, data, snap, Caller(source, local, inbound.only_port))

    async def _tls(self, stream: FastSocketStream, hello_bytes: bytes, sni: str | None, snap: Snapshot,
                   caller: Caller) -> None:
        inbound = snap.inbound
        parsed = parse_outbound_sni(sni) if sni else None
        caller.sni = sni or ""
        caller.port = inbound.port_for(parsed.fqdn, parsed.port) if parsed else inbound.only_port
        decision = inbound.peer_auth.mode_for(caller.port) if caller.port else inbound.peer_auth.default
        if not decision.accepts_mtls:
            log.info("inbound TLS from %s refused: %s", caller.source_ip, decision.why)
            return
        mtls = self.proxy.server_mtls
        if mtls is None:
            log.warning("inbound TLS from %s refused: this proxy has no certificate (spec.tls)", caller.source_ip)
            return
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                handshaken, peer = await mtls.accept(PrefixedStream(stream, hello_bytes))
            tls = FastTlsStream.take_over(handshaken)
        except (TrustDomainError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("inbound TLS from %s failed: %s", caller.source_ip, exc)
            self.proxy.metrics.record_tls_refusal(tls_refusal(exc))
            return
        caller.peer = str(peer.spiffe_id)
        caller.alpn = peer.alpn or ""
        if inbound.xfcc is not None:
            der = tls.getpeercert(binary_form=True)
            element = inbound.xfcc.element(PeerCertificate.from_der(der)) if der else None
            caller.xfcc = element.encode("latin-1") if element is not None else None
        try:
            await self._serve(tls, b"", snap, caller)
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await tls.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def _plaintext(self, stream: FastSocketStream, first: bytes, snap: Snapshot, caller: Caller) -> None:
        pa = snap.inbound.peer_auth
        if caller.port is not None:
            decision = pa.mode_for(caller.port)
            if not decision.accepts_plaintext:
                log.info("inbound plaintext from %s refused: %s", caller.source_ip, decision.why)
                self.proxy.metrics.record_tls_refusal(TlsRefusal.PLAINTEXT_UNDER_STRICT)
                return
        elif not any(pa.mode_for(p).accepts_plaintext for p in snap.inbound.app_ports):
            log.info("inbound plaintext from %s refused: %s", caller.source_ip, pa.default.why)
            self.proxy.metrics.record_tls_refusal(TlsRefusal.PLAINTEXT_UNDER_STRICT)
            return
        await self._serve(stream, first, snap, caller)

    async def _serve(self, stream: trio.abc.Stream, first: bytes, snap: Snapshot, caller: Caller) -> None:
        inbound = snap.inbound
        protocol = inbound.app_ports.get(caller.port) if caller.port is not None else None
        if protocol == "tcp":
            await self._splice(stream, first, snap, caller)
            return
        if caller.alpn == "h2":
            await serve_inbound_h2(self, stream, first, caller)
            return
        if protocol is not None and protocol.lower() in _H2_PROTOCOLS and maybe_preface(first):
            first = await read_preface(stream, first, DETECT_TIMEOUT)
            if first.startswith(H2_PREFACE):  # h2c by prior knowledge (a plaintext caller under PERMISSIVE)
                await serve_inbound_h2(self, stream, first, caller)
                return
            if first[:1] == bytes((TLS_HANDSHAKE,)):  # the client's own TLS, through a CONNECT tunnel
                await self._splice(stream, first, snap, caller)
                return
        down = Downstream(stream, snap.limits, (caller.source_ip, 0), preread=first)

        async def handle(down: Downstream, req: Request) -> bool:
            return await self.handle(down, req, caller)

        await serve_http1(down, handle, self.proxy.idle)

    async def _splice(self, stream: trio.abc.Stream, first: bytes, snap: Snapshot, caller: Caller) -> None:
        inbound = snap.inbound
        port = caller.port
        assert port is not None
        if inbound.has_authz:
            d = inbound.authorizer.check(AuthzRequest(caller.source_ip, port, caller.peer, caller.local_ip,
                                                      caller.sni, tcp=True))
            if not d.allowed:
                log.info("inbound TCP from %s to port %d denied: %s", caller.peer or caller.source_ip, port, d.reason)
                self.proxy.report.inbound_tcp(caller.peer, port, "-")
                return
        try:
            app = await open_connection((inbound.app_address, port, "", ""), None,
                                        self.proxy.app_connect_timeout)
        except ProxyError as exc:
            log.info("inbound TCP to app port %d: %s", port, exc)
            self.proxy.report.inbound_tcp(caller.peer, port, rescue(exc).flags)
            return
        try:
            result = await splice(stream, app.stream, a_prefix=first)
        finally:
            await close_gracefully(app)
        self.proxy.report.inbound_tcp(caller.peer, port, "-", result)

    async def handle(self, down: Downstream, req: Request, caller: Caller) -> bool:
        snap = self.proxy.snapshot
        inbound: InboundConfig = snap.inbound
        started = self.proxy.now()
        host = b""
        for name, value in req.headers:
            if name == b"host":
                host = value
                break
        port = caller.port
        if port is None:
            port = split_authority(host)[1] if host else 0
            if port not in inbound.app_ports:
                await down.local_reply(404, b"", close=True)
                return False
            if not inbound.peer_auth.mode_for(port).accepts_plaintext:
                return False
            caller.port = port
        state = Exchange()
        flags = "-"
        try:
            if inbound.has_authz:
                path = req.target.partition(b"?")[0]
                d = inbound.authorizer.check(AuthzRequest(
                    caller.source_ip, port, caller.peer, caller.local_ip, caller.sni, False,
                    req.method.decode("latin-1"), path.decode("latin-1"), host.decode("latin-1"), req.headers))
                if not d.allowed:
                    log.debug("inbound %s %s denied: %s", req.method, req.target[:200], d.reason)
                    keep = await down.local_reply(DENIED_STATUS, DENIED_BODY)
                    code, grpc = reported(down, DENIED_STATUS)
                    self.proxy.report.inbound_http(caller.peer, port, code, "-", started, grpc_status=grpc)
                    return keep
            if snap.ratelimits.inbound:  # identity -> authorization -> rate limit -> app
                limited = rate_limited(snap, self.proxy)
                if limited is not None:
                    keep = await down.local_reply(429, b"local_rate_limited", limited)
                    code, grpc = reported(down, 429)
                    self.proxy.report.inbound_http(caller.peer, port, code, "RL", started, grpc_status=grpc)
                    return keep
            if inbound.faults:  # the workload's WorkloadFault: after the checks, before the app
                flags, abort = await draw_faults(inbound, self.rng, self.proxy)
                if abort is not None:
                    keep = await answer_abort(down, abort)
                    code, grpc = reported(down, abort.http_status)
                    self.proxy.report.inbound_http(caller.peer, port, code, flags, started, grpc_status=grpc)
                    return keep
            if down.codec.they_are_waiting_for_100_continue:
                await down.send_bytes(down.codec.send(_CONTINUE))
            headers, has_body, upgrade = request_headers(req.headers, host)
            if XFCC_HEADER in map(_NAME, headers):  # what the caller sent is replaced
                headers = [h for h in headers if h[0] != XFCC_HEADER]
            if caller.xfcc is not None:
                headers.append((XFCC_HEADER, caller.xfcc))
            head = _new_request(req.method, req.target, headers, b"1.1")
            key = (inbound.app_address, port, "", "")
            protocol = inbound.app_ports.get(port, "http")
            if upgrade is not None:  # WebSocket: a connection of its own, a tunnel after 101
                if type(down) is Downstream:
                    down.unwatch()  # a tunnel's half-close is not a hang-up
                conn = await open_connection(key, None, self.proxy.app_connect_timeout)
                await forward_upgrade(down, head, conn, state=state)
            elif type(down) is Downstream and protocol.lower() not in _H2_PROTOCOLS:
                # forward_attempt rather than forward: one coroutine less per request
                await forward_attempt(down, head, self.proxy.pool, key, self.proxy.app_connect_timeout, state=state)
            else:  # HTTP/2 at either end
                await forward_to_app(self.proxy, down, head, has_body, inbound.app_address, port, protocol, state)
        except ProxyError as exc:
            reply = rescue(exc)
            log.debug("inbound %s %s: %s", req.method, req.target[:200], exc)
            try:
                return await down.rescue(reply)
            except DownstreamGone:
                return False
            finally:
                code, grpc = reported(down, reply.status)
                self.proxy.report.inbound_http(caller.peer, port, code, reply.flags, started, state.bytes_in,
                                               state.bytes_out, grpc_status=grpc)
        except (ResponseAborted, DownstreamGone) as exc:
            log.debug("inbound %s %s: %s", req.method, req.target[:200], exc)
            self.proxy.report.inbound_http(caller.peer, port, state.status,
                                           "UC" if isinstance(exc, ResponseAborted) else "DC", started,
                                           state.bytes_in, state.bytes_out)
            return False
        except BaseException:
            # Cancelled: the HTTP/1.1 caller hung up mid-request (``IdleWatch.busy``) and the
            # app's connection went with it (an HTTP/2 stream's reset is reported by ``_h2serve``).
            if type(down) is Downstream and down.watch is not None:
                self.proxy.report.inbound_http(caller.peer, port, state.status, "DC", started,
                                               state.bytes_in, state.bytes_out)
            raise
        self.proxy.report.inbound_http(caller.peer, port, state.status, flags, started, state.bytes_in,
                                       state.bytes_out, grpc_status=state.grpc_status)
        return state.status != 101
