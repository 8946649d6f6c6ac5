"""Capturing the certificate chain a TLS peer sent, even when OpenSSL refuses it.

Why: OpenSSL discards the peer's chain when its own verification fails, so after a
refused handshake ``get_unverified_chain()`` is empty and the refusal could only be
explained by OpenSSL's verify code, which cannot tell "unknown trust domain" from
"chain not to that domain's bundle" and never names the SPIFFE ID. CPython's private
``SSLContext._msg_callback`` (3.8+, the hook behind ``openssl s_client -msg``-style
tracing) sees every handshake message in plaintext, TLS 1.3 included; the Certificate
message (type 11) is parsed here (RFC 8446 4.4.2 / RFC 5246 7.4.2) and kept per
connection so ``verify_peer`` can judge exactly what was sent.

The hook costs a Python call per TLS record for the life of a connection (measured
~20 % of a 1 kB record round trip), so a connection is moved to a twin context without
the hook as soon as its handshake ends (``SSL_set_SSL_CTX`` via ``SSLObject.context``);
OpenSSL still calls CPython's C trampoline, which returns at once when the context it
now points at has no hook.
"""

from __future__ import annotations

import ssl
import weakref
from typing import Any

try:  # the C-level slot takes plain ints; ssl.SSLContext's property wraps each call in enum conversions
    from _ssl import _SSLContext as _RawContext
    _RAW_SETTER: Any = _RawContext._msg_callback.__set__  # type: ignore[attr-defined]
    _RAW_GETTER: Any = _RawContext._msg_callback.__get__  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - other Pythons
    _RAW_SETTER = _RAW_GETTER = None


def has_hook(ctx: ssl.SSLContext) -> bool:
    """Whether ``ctx`` carries a message hook (that is, costs a Python call per TLS record)."""
    return _RAW_GETTER is not None and _RAW_GETTER(ctx) is not None

HANDSHAKE = 22  # TLS ContentType handshake
CERTIFICATE = 11  # HandshakeType certificate
TLS1_3 = 0x0304

SUPPORTED = hasattr(ssl.SSLContext, "_msg_callback")


def parse_certificate_message(message: bytes, tls13: bool) -> list[bytes]:
    """DER certificates of a Certificate handshake message (header included), leaf first."""
    body = memoryview(message)[4:4 + int.from_bytes(message[1:4], "big")]
    pos = 0
    if tls13:  # opaque certificate_request_context<0..2^8-1>
        pos = 1 + body[0]
    end = pos + 3 + int.from_bytes(body[pos:pos + 3], "big")
    pos += 3
    if end > len(body):
        raise ValueError("truncated certificate list")
    certs = []
    while pos < end:
        n = int.from_bytes(body[pos:pos + 3], "big")
        pos += 3
        if pos + n > end:
            raise ValueError("truncated certificate entry")
        certs.append(bytes(body[pos:pos + n]))
        pos += n
        if tls13:  # Extension extensions<0..2^16-1> per entry
            pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    return certs


class ChainCapture:
    """Holds the last Certificate message each connection received, keyed weakly by SSLObject."""

    def __init__(self) -> None:
        self._chains: weakref.WeakKeyDictionary[Any, list[bytes]] = weakref.WeakKeyDictionary()

    def install(self, ctx: ssl.SSLContext) -> None:
        if _RAW_SETTER is not None:
            _RAW_SETTER(ctx, self._on_message)
        elif SUPPORTED:
            ctx._msg_callback = self._on_message  # type: ignore[attr-defined]

    def _on_message(self, conn: Any, direction: str, version: int, content_type: int, msg_type: int,
                    data: bytes) -> None:
        # runs inside OpenSSL: must never raise
        if direction != "read" or content_type != HANDSHAKE or msg_type != CERTIFICATE:
            return
        try:
            self._chains[conn] = parse_certificate_message(data, version == TLS1_3)
        except (ValueError, IndexError, TypeError):
            pass

    def chain_of(self, ssl_object: Any) -> list[bytes] | None:
        try:
            return self._chains.get(ssl_object)
        except TypeError:
            return None
