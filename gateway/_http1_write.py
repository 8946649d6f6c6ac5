"""Writing HTTP/1.1: heads, and the body framing a head commits to.

A head is serialized in one pass that also notes the fields deciding framing and reuse
(Content-Length, Transfer-Encoding, Connection, Upgrade, Host, Expect) into a reusable
``HeadFacts``, so nothing is scanned twice and nothing is allocated per header but the
output. ``BodyWriter`` then turns Data and EndOfMessage into bytes for the framing chosen:
a Content-Length count, chunks (with trailers), bytes until close, or no body at all.
Whether a message may have a body at all (HEAD, 1xx, 204, 304, CONNECT) is the
connection's call; this module only keeps the promise the head made.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

from ._events import Headers, LocalProtocolError

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
CLOSE_HEADER = b"connection: close\r\n"
CHUNKED_HEADER = b"transfer-encoding: chunked\r\n"
_WATCH = frozenset({b"host", b"expect", b"content-length", b"transfer-encoding", b"connection", b"upgrade"})


class HeadFacts:
    """What the last head written said about its framing and the connection's reuse."""

    __slots__ = ("content_length", "transfer_encoding", "close", "upgrade", "hosts", "expect")

    def __init__(self) -> None:
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.close = False
        self.upgrade = False  # an Upgrade field and "upgrade" among the Connection tokens
        self.hosts = 0
        self.expect = False   # Expect: 100-continue


def status_line(status: int, reason: bytes) -> bytes:
    """``reason`` empty means the standard phrase (none for a status HTTPStatus does not know)."""
    line = STATUS_LINES.get(status) if not reason else None
    return line if line is not None else b"HTTP/1.1 %d %s\r\n" % (status, reason)


def write_head(line: bytes, headers: Headers, facts: HeadFacts) -> list[bytes]:
    """The head's pieces up to its last field (``finish_head`` ends it); fills ``facts``."""
    parts = [line]
    clen = te = None
    close = upgrade_token = upgrade = expect = False
    hosts = 0
    watch = _WATCH
    for name, value in headers:
        # Parsed names are lowercase already and their hash is cached: test them as they are.
        lname = name if name in watch or name.islower() else name.lower()
        if lname in watch:
            if lname == b"content-length":
                if clen is not None and clen != value:
                    raise LocalProtocolError(f"conflicting Content-Length headers {clen!r} and {value!r}")
                clen = value
            elif lname == b"transfer-encoding":
                te = value
            elif lname == b"connection":
                tokens = [t.strip() for t in value.lower().split(b",")]
                close = close or b"close" in tokens
                upgrade_token = upgrade_token or b"upgrade" in tokens
            elif lname == b"host":
                hosts += 1
            elif lname == b"expect":
                expect = value.lower() == b"100-continue"
            else:
                upgrade = True
        parts += (name, b": ", value, b"\r\n")
    facts.content_length, facts.transfer_encoding, facts.close = clen, te, close
    facts.upgrade, facts.hosts, facts.expect = upgrade and upgrade_token, hosts, expect
    return parts


def finish_head(parts: list[bytes], extra: bytes = b"") -> bytes:
    """Join the pieces, add ``extra`` fields and the blank line; refuse CR/LF smuggled inside."""
    parts.append(extra)
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Each line must end in the one CRLF written here: a CR or LF inside a target, reason,
    # name or value would start a field (or a whole message) of the sender's choosing.
    lines = (len(parts) - 3) // 4 + 2 + extra.count(b"\n")
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise LocalProtocolError("CR or LF in the request target, reason, a header name or a header value")
    return head


class Framing(enum.Enum):
    NONE = "no body"
    LENGTH = "Content-Length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until close"


NONE, LENGTH, CHUNKED, UNTIL_CLOSE = Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.UNTIL_CLOSE


class BodyWriter:
    """The framing the current outgoing message committed to, and how much of it is left."""

    __slots__ = ("framing", "left")

    def __init__(self) -> None:
        self.framing = NONE
        self.left = 0

    def commit(self, facts: HeadFacts) -> None:
        """Frame as the head's Content-Length or Transfer-Encoding says (no body without either)."""
        te, clen = facts.transfer_encoding, facts.content_length
        if te is not None:
            if clen is not None:
                raise LocalProtocolError("both Content-Length and Transfer-Encoding in one message")
            if not te.lower().rstrip().endswith(b"chunked"):
                raise LocalProtocolError(f"Transfer-Encoding {te!r} does not end with chunked")
            self.framing = CHUNKED
        elif clen is not None:
            if not clen.isdigit():
                raise LocalProtocolError(f"Content-Length {clen!r} is not a non-negative integer")
            self.framing, self.left = LENGTH, int(clen)
        else:
            self.framing = NONE

    def data(self, data: bytes) -> bytes:
        framing = self.framing
        if framing is LENGTH:
            if len(data) > self.left:
                raise LocalProtocolError(f"{len(data)} bytes of body exceed the {self.left} left of Content-Length")
            self.left -= len(data)
            return data
        if framing is CHUNKED:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""  # an empty chunk would end the body
        if framing is UNTIL_CLOSE:
            return data
        if data:
            raise LocalProtocolError("this message has no body (no Content-Length or Transfer-Encoding, "
                                     "HEAD, 1xx, 204, 304 or CONNECT)")
        return b""

    def check_end(self, trailers: Headers) -> None:
        """Raise if the message cannot end here; called before the state moves."""
        if self.framing is LENGTH and self.left:
            raise LocalProtocolError(f"message ended {self.left} bytes short of its Content-Length")
        if trailers and self.framing is not CHUNKED:
            raise LocalProtocolError("trailers need a chunked body")

    def end(self, trailers: Headers) -> bytes:
        if self.framing is not CHUNKED:
            return b""
        if not trailers:
            return b"0\r\n\r\n"
        return finish_head(write_head(b"0\r\n", trailers, HeadFacts()))
