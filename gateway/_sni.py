"""Server names: the SNI a sidecar sends, and reading it back from a TLS ClientHello.

Between sidecars the SNI says which service port a connection is for, as Istio's
AUTO_PASSTHROUGH names clusters: ``outbound_.<port>_.<subset>_.<fqdn>`` with ``_`` for
no subset (``outbound_.9080_._.reviews.bookinfo.svc.cluster.local``). The inbound
sidecar (and the east-west gateway) must know it before the handshake - to choose what
to do with the connection - so ``parse_client_hello`` reads it from the first bytes,
bytes in, answer out, no socket (RFC 8446 4.1.2 and RFC 6066 3 give the layout).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TLS_HANDSHAKE = 0x16
"""First byte of a TLS record carrying a handshake: how the inbound port tells TLS from plaintext."""
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
MAX_CLIENT_HELLO = 64 * 1024
"""More than this without a complete ClientHello is not a ClientHello we serve."""


class Hello(enum.Enum):
    NEED_DATA = "NEED_DATA"
    """Feed more bytes: the ClientHello is not complete yet."""
    NOT_TLS = "NOT_TLS"
    """The bytes are not a TLS ClientHello."""


NEED_DATA = Hello.NEED_DATA
NOT_TLS = Hello.NOT_TLS


def parse_client_hello(data: bytes) -> str | None | Hello:
    """The server name in a ClientHello at the start of ``data``: the name, None when the
    hello carries none, NEED_DATA, or NOT_TLS (also for a hello over MAX_CLIENT_HELLO)."""
    if not data:
        return NEED_DATA
    if data[0] != TLS_HANDSHAKE:
        return NOT_TLS
    # The handshake message may span several records; join their payloads first.
    payload = bytearray()
    pos = 0
    need: int | None = None
    while need is None or len(payload) < need:
        if len(data) < pos + 5:
            return NEED_DATA if len(data) < MAX_CLIENT_HELLO else NOT_TLS
        if data[pos] != TLS_HANDSHAKE or data[pos + 1] != 3:
            return NOT_TLS
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) < pos + 5 + length:
            return NEED_DATA if len(data) < MAX_CLIENT_HELLO else NOT_TLS
        payload += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if need is None and len(payload) >= 4:
            if payload[0] != _CLIENT_HELLO:
                return NOT_TLS
            need = 4 + int.from_bytes(payload[1:4], "big")
            if need > MAX_CLIENT_HELLO:
                return NOT_TLS
    try:
        return _server_name(bytes(payload[4:need]))
    except (IndexError, ValueError):
        return NOT_TLS


def _server_name(body: bytes) -> str | None:
    p = 2 + 32  # legacy_version, random
    p += 1 + body[p]  # legacy_session_id
    p += 2 + int.from_bytes(body[p:p + 2], "big")  # cipher_suites
    p += 1 + body[p]  # legacy_compression_methods
    if p >= len(body):
        return None  # no extensions
    end = p + 2 + int.from_bytes(body[p:p + 2], "big")
    p += 2
    while p + 4 <= end:
        kind = int.from_bytes(body[p:p + 2], "big")
        size = int.from_bytes(body[p + 2:p + 4], "big")
        p += 4
        if kind == _SERVER_NAME:
            q, stop = p + 2, p + size
            while q + 3 <= stop:
                name_type, n = body[q], int.from_bytes(body[q + 1:q + 3], "big")
                if name_type == _HOST_NAME:
                    return body[q + 3:q + 3 + n].decode("ascii")
                q += 3 + n
            return None
        p += size
    return None


@dataclass(frozen=True, slots=True)
class OutboundSni:
    """The parts of ``outbound_.<port>_.<subset>_.<fqdn>``."""

    port: int
    subset: str
    """Empty for the whole service."""
    fqdn: str


def outbound_sni(port: int, subset: str, fqdn: str) -> str:
    """Istio's AUTO_PASSTHROUGH cluster name as an SNI; an empty subset leaves ``_._``."""
    return f"outbound_.{port}_.{subset}_.{fqdn}"


def parse_outbound_sni(name: str) -> OutboundSni | None:
    """The parts of an outbound SNI; None for any other name."""
    parts = name.split(".", 3)
    if len(parts) != 4 or parts[0] != "outbound_" or not parts[1].endswith("_") or not parts[2].endswith("_"):
        return None
    port = parts[1][:-1]
    if not port.isdigit() or not 0 < int(port) < 65536 or not parts[3]:
        return None
    subset = parts[2][:-1]
    return OutboundSni(int(port), subset, parts[3])
