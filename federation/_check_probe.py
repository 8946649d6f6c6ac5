"""The I/O of ``fedctl check``: admin pages, TCP connects, a TLS handshake, one request.

Every probe is bounded by its timeout and returns what it saw as data - never raises for
a network outcome - so the walk (``_check``) stays a pure function of answers, and tests
replace ``LiveProbes`` with canned ones. A peer that accepts a connection but never
answers is told apart from one that refuses it (``Answer.hung``): a stopped process
keeps its listening socket, and the kernel still completes the TCP handshake for it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from gateway._config import parse_hostport


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer (admin page or request through the sidecar), or why there is none."""

    status: int | None = None
    body: bytes = field(default=b"", repr=False)
    error: str | None = None
    """``connection refused``, ``no answer within 2 s``, ...; None when ``status`` is set."""
    hung: bool = False
    """The peer accepted the connection and then said nothing until the timeout."""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Handshake:
    """A TLS handshake's outcome: the chain the server sent (leaf first, DER), or the error."""

    chain: tuple[bytes, ...] = field(default=(), repr=False)
    alpn: str | None = None
    error: str | None = None
    hung: bool = False
    client_certificate: bool = False
    """Whether the client's own SVID was presented."""


def _error(exc: BaseException, timeout: float) -> tuple[str, bool]:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s", True
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset by the peer", False
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer", False
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}", False
    if isinstance(exc, OSError):
        return exc.strerror or str(exc), False
    return str(exc), False


class LiveProbes:
    """Probes against the running mesh; each bounded by ``timeout`` seconds (requests by ``request_timeout``)."""

    def __init__(self, timeout: float = 2.0, request_timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.request_timeout = request_timeout

    def admin(self, hostport: str, path: str) -> Answer:
        host, port = parse_hostport(hostport)
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                error, _ = _error(exc, self.timeout)
                return Answer(error=error)  # a timeout here is "not reachable", not "hung"
            conn.request("GET", path, headers={"User-Agent": "fedctl-check"})
            resp = conn.getresponse()
            return Answer(resp.status, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            error, hung = _error(exc, self.timeout)
            return Answer(error=error, hung=hung)
        finally:
            conn.close()

    def connect(self, hostport: str) -> str | None:
        """None when a TCP connection opened, else why not."""
        host, port = parse_hostport(hostport)
        try:
            socket.create_connection((host, port), timeout=self.timeout).close()
        except OSError as exc:
            return _error(exc, self.timeout)[0]
        return None

    def handshake(self, hostport: str, sni: str, svid: Any | None) -> Handshake:
        """A TLS handshake with ``sni``, presenting ``svid`` when given. The server's chain is
        judged by the caller (``verify_peer``), so OpenSSL is told not to refuse it first."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        if svid is not None:
            from trustdomain._tls import _load_chain
            _load_chain(ctx, svid)
        host, port = parse_hostport(hostport)
        try:
            raw = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            return Handshake(error=_error(exc, self.timeout)[0], client_certificate=svid is not None)
        raw.settimeout(self.timeout * 2)
        try:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                return Handshake(_sent_chain(tls), tls.selected_alpn_protocol(), client_certificate=svid is not None)
        except (OSError, ssl.SSLError) as exc:
            error, hung = _error(exc, self.timeout * 2)
            if isinstance(exc, ssl.SSLEOFError) or "EOF" in str(exc):
                error, hung = "the connection was closed before the handshake completed", False
            return Handshake(error=error, hung=hung, client_certificate=svid is not None)
        finally:
            raw.close()

    def request(self, outbound: str, url: str) -> Answer:
        """GET ``url`` through the sidecar's outbound listener, as the app would (``HTTP_PROXY``)."""
        from ._curl import CurlError, build_request, send
        try:
            resp = send(parse_hostport(outbound), build_request(url, None, ["User-Agent: fedctl-check"], None),
                        self.request_timeout)
        except CurlError as exc:
            return Answer(error=str(exc), hung=exc.code == 28)
        return Answer(resp.status, resp.body)

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError):
            return None


def _sent_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the server sent, leaf first (the private accessor on Python < 3.13)."""
    for holder in (tls, getattr(tls, "_sslobj", None)):
        method = getattr(holder, "get_unverified_chain", None)
        if method is None:
            continue
        chain = method() or []
        return tuple(c if isinstance(c, bytes) else c.public_bytes(2) for c in chain)  # 2 == DER
    leaf = tls.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
