"""What the proxy must know of gRPC: recognising a call, its deadline, and its status.

gRPC is HTTP/2 with a content type, a deadline header and a status in the trailers
(grpc/grpc doc/PROTOCOL-HTTP2.md). The proxy forwards calls like any HTTP/2 request;
it needs gRPC only at three points:

* a local reply to a gRPC call (no route, no healthy upstream, denied, timed out) is
  HTTP 200 with ``grpc-status`` and ``grpc-message`` in one HEADERS frame that ends the
  stream (a "Trailers-Only" response), as Envoy sends it - a gRPC client reads the
  status from there, not from the HTTP status (``local_reply_headers``);
* ``grpc-timeout`` is the caller's deadline: the proxy gives up at the same moment and
  answers DEADLINE_EXCEEDED rather than holding the stream (``grpc_timeout``);
* the status of every call is read from its trailers for the metrics' ``grpc_response_status``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._rescue import grpc_status_for

GRPC_CONTENT_TYPE = b"application/grpc"
DEADLINE_EXCEEDED = 4
# PROTOCOL-HTTP2.md: TimeoutUnit -> seconds per unit.
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """``content-type: application/grpc`` (or ``application/grpc+proto`` and kin)."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == GRPC_CONTENT_TYPE
    return False


def grpc_timeout(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """Seconds of the call's ``grpc-timeout`` (``TimeoutValue TimeoutUnit``, at most 8
    digits), or None when absent or malformed (then no deadline, as grpc-go reads it)."""
    for name, value in headers:
        if name == b"grpc-timeout":
            digits, unit = value[:-1], value[-1:]
            if not digits or len(digits) > 8 or not digits.isdigit() or unit not in _UNITS:
                return None
            return int(digits) * _UNITS[unit]
    return None


def grpc_status(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``grpc-status`` in trailers (or a Trailers-Only head), if any."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else None
    return None


def percent_encode(text: bytes) -> bytes:
    """``grpc-message``: bytes outside printable ASCII, and ``%``, as %XX (PROTOCOL-HTTP2.md)."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text)


def local_reply_headers(http_status: int, message: bytes, status: int | None = None) -> list[tuple[bytes, bytes]]:
    """The one HEADERS frame of a Trailers-Only reply to a gRPC call that the proxy could
    not carry (``http_status`` is what an HTTP client would have got)."""
    code = grpc_status_for(http_status) if status is None else status
    headers = [(b"content-type", GRPC_CONTENT_TYPE), (b"grpc-status", b"%d" % code)]
    if message:
        headers.append((b"grpc-message", percent_encode(message)))
    return headers
