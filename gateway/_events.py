"""The vocabulary shared by the HTTP/1.1 and HTTP/2 codecs: roles, events and protocol errors.

Both codecs turn bytes into these events and these events into bytes, so the proxy above
them handles one shape whatever the wire protocol. Header names are lowercase bytes on
the way in (HTTP/2 requires it; the HTTP/1.1 codec lowercases, as Envoy does); values are
bytes as received. ``stream_id`` is None on HTTP/1.1 and the HTTP/2 stream otherwise.

Events are frozen slots dataclasses. Their generated ``__init__`` sets each field through
``object.__setattr__``, which costs about 0.9 µs for a five-field event - as much as
httptools takes to parse a whole request - so the codecs build them on the hot path with
the ``_new_*`` functions below: a mutable twin with the same slot layout is filled with
plain attribute stores and then given the frozen class (a ``__class__`` assignment, which
CPython allows between classes of identical layout). The result is indistinguishable from
a constructed event: equal, frozen, same type.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from . import GatewayError

Headers = Sequence[tuple[bytes, bytes]]
"""(name, value) pairs in wire order; repeated names stay repeated."""


class Role(enum.Enum):
    """Which end of the connection this codec speaks for."""

    __hash__ = object.__hash__  # members are singletons; Enum hashes the name in Python

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes
    """As on the wire: origin-form ``/p?q``, absolute-form ``http://h:80/p`` (explicit proxy),
    authority-form ``host:443`` (CONNECT) or ``*``. HTTP/2: ``:path`` (``:authority`` for CONNECT)."""
    headers: Headers
    """HTTP/2's ``:authority`` arrives as a ``host`` header; other pseudo-headers are dropped."""
    http_version: bytes = b"1.1"
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx response: 100 Continue, 101 Switching Protocols, 103 Early Hints."""

    status: int
    headers: Headers = ()
    reason: bytes = b""
    http_version: bytes = b"1.1"
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers = ()
    reason: bytes = b""
    """The reason phrase; empty means the standard one for ``status`` when sent on HTTP/1.1."""
    http_version: bytes = b"1.1"
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = ()
    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its sending side (HTTP/1.1) or the transport ended (HTTP/2)."""


@dataclass(frozen=True, slots=True)
class StreamReset:
    """HTTP/2 RST_STREAM, received or sent by the codec itself (see ``remote``)."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class GoAway:
    """HTTP/2 GOAWAY from the peer: streams above ``last_stream_id`` were never processed."""

    error_code: int
    last_stream_id: int
    debug_data: bytes = b""


Event = (Request | InformationalResponse | Response | Data | EndOfMessage | ConnectionClosed
         | StreamReset | GoAway)

END_OF_MESSAGE = EndOfMessage()
"""The one trailer-less HTTP/1.1 end of message; reused for every message."""
CONNECTION_CLOSED = ConnectionClosed()


class ProtocolError(GatewayError):
    """HTTP framing that cannot be honoured.

    ``status`` is the HTTP status to answer with if an answer is still possible (400, 413,
    414, 431, 501, 505); ``error_code`` is the HTTP/2 error code put in RST_STREAM or GOAWAY,
    None on HTTP/1.1.
    """

    def __init__(self, message: str, status: int = 400, error_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol or the connection state forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol or our limits forbid."""


# --- fast constructors (see the module docstring) ------------------------------------------

def _twin(cls: type) -> type:
    return type(f"_{cls.__name__}Builder", (), {"__slots__": cls.__slots__})


_RequestB, _ResponseB, _InfoB, _DataB, _EomB = map(
    _twin, (Request, Response, InformationalResponse, Data, EndOfMessage))


def _new_request(method: bytes, target: bytes, headers: Headers, http_version: bytes,
                 stream_id: int | None = None) -> Request:
    e = _RequestB()
    e.method = method
    e.target = target
    e.headers = headers
    e.http_version = http_version
    e.stream_id = stream_id
    e.__class__ = Request
    return e  # type: ignore[return-value]


def _new_response(status: int, headers: Headers, reason: bytes, http_version: bytes,
                  stream_id: int | None = None) -> Response:
    e = _ResponseB()
    e.status = status
    e.headers = headers
    e.reason = reason
    e.http_version = http_version
    e.stream_id = stream_id
    e.__class__ = Response
    return e  # type: ignore[return-value]


def _new_informational(status: int, headers: Headers, reason: bytes, http_version: bytes,
                       stream_id: int | None = None) -> InformationalResponse:
    e = _InfoB()
    e.status = status
    e.headers = headers
    e.reason = reason
    e.http_version = http_version
    e.stream_id = stream_id
    e.__class__ = InformationalResponse
    return e  # type: ignore[return-value]


def _new_data(data: bytes, stream_id: int | None = None) -> Data:
    e = _DataB()
    e.data = data
    e.stream_id = stream_id
    e.__class__ = Data
    return e  # type: ignore[return-value]


def _new_end(trailers: Headers, stream_id: int | None = None) -> EndOfMessage:
    e = _EomB()
    e.trailers = trailers
    e.stream_id = stream_id
    e.__class__ = EndOfMessage
    return e  # type: ignore[return-value]
