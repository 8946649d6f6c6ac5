"""The one place where a failure becomes a response: status, Envoy response flag, body.

Every layer of the proxy raises a ``ProxyError`` subclass carrying its data (cluster,
address, reason); nothing else decides a status. ``rescue(error)`` returns the local
reply Envoy would send in the same situation, with Envoy's body text, so users' scripts
and their knowledge of Envoy's messages keep working:

=====================  ======  ====  ================================================
cause                  status  flag  body
=====================  ======  ====  ================================================
no route               404     NR    (empty)
no cluster             503     NC    (empty)
no healthy upstream    503     UH    ``no healthy upstream``
connect failure        503     UF    ``upstream connect error or disconnect/reset
                                     before headers. reset reason: connection failure``
circuit breaker        503     UO    ``... reset reason: overflow``
upstream reset         503     UC    ``... reset reason: connection termination``
upstream timeout       504     UT    ``upstream request timeout``
bad upstream response  502     UPE   ``... reset reason: protocol error``
bad request            4xx     DPE   the status phrase (``Bad Request``)
=====================  ======  ====  ================================================

A reply can only be sent while no response head has gone downstream; after that the
caller resets the downstream connection instead (Envoy's behaviour too).

A gRPC call gets the same reply as HTTP 200 with a ``grpc-status`` (``grpc_status_for``):
the mapping of grpc/grpc doc/http-grpc-status-mapping.md that Envoy's
``Grpc::Utility::httpToGrpcStatus`` applies - 504 (a route or per-try timeout) included,
which is UNAVAILABLE. Only the expiry of the caller's own ``grpc-timeout``, which the
proxy answers itself (``_h2serve``), is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from . import GatewayError
from ._events import ProtocolError
from ._flags import ResponseFlag

RESET_PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "


class ProxyError(GatewayError):
    """A request the proxy could not carry through; ``rescue`` turns it into a reply."""


class NoRouteError(ProxyError):
    def __init__(self, authority: str, path: str, port: int) -> None:
        super().__init__(f"no route for {authority}{path} on port {port}")
        self.authority, self.path, self.port = authority, path, port


class NoClusterError(ProxyError):
    def __init__(self, cluster: str) -> None:
        super().__init__(f"route names cluster {cluster!r}, which is not configured")
        self.cluster = cluster


class NoHealthyUpstreamError(ProxyError):
    def __init__(self, cluster: str) -> None:
        super().__init__(f"cluster {cluster!r} has no healthy endpoint")
        self.cluster = cluster


class UpstreamOverflowError(ProxyError):
    def __init__(self, cluster: str, resource: str) -> None:
        super().__init__(f"circuit breaker of {cluster!r} is at its {resource} limit")
        self.cluster, self.resource = cluster, resource


class UpstreamConnectError(ProxyError):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot connect to {address}: {reason}")
        self.address, self.reason = address, reason


class UpstreamResetError(ProxyError):
    """The upstream connection ended before a complete response head."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"upstream {address} reset: {reason}")
        self.address, self.reason = address, reason


class UpstreamTimeoutError(ProxyError):
    def __init__(self, seconds: float, what: str = "route timeout") -> None:
        super().__init__(f"{what} of {seconds:g}s expired")
        self.seconds, self.what = seconds, what


class UpstreamProtocolError(ProxyError):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"upstream {address} sent an invalid response: {reason}")
        self.address, self.reason = address, reason


class DownstreamProtocolError(ProxyError):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(f"invalid request: {reason}")
        self.reason, self.status = reason, status


@dataclass(frozen=True, slots=True)
class LocalReply:
    status: int
    flag: ResponseFlag | None
    body: bytes

    @property
    def flags(self) -> str:
        return self.flag.code if self.flag is not None else "-"


_FIXED: dict[type, LocalReply] = {
    NoRouteError: LocalReply(404, ResponseFlag.NR, b""),
    NoClusterError: LocalReply(503, ResponseFlag.NC, b""),
    NoHealthyUpstreamError: LocalReply(503, ResponseFlag.UH, b"no healthy upstream"),
    UpstreamConnectError: LocalReply(503, ResponseFlag.UF, (RESET_PREFIX + "connection failure").encode()),
    UpstreamOverflowError: LocalReply(503, ResponseFlag.UO, (RESET_PREFIX + "overflow").encode()),
    UpstreamResetError: LocalReply(503, ResponseFlag.UC, (RESET_PREFIX + "connection termination").encode()),
    UpstreamTimeoutError: LocalReply(504, ResponseFlag.UT, b"upstream request timeout"),
    UpstreamProtocolError: LocalReply(502, ResponseFlag.UPE, (RESET_PREFIX + "protocol error").encode()),
}


def rescue(error: BaseException) -> LocalReply:
    """The reply for ``error``; anything unforeseen is a 500 with no flag (and a bug to log)."""
    if type(error) is UpstreamConnectError:
        # Envoy's own suffix, naming the hop and the cause (istio#45010: opaque cross-network errors).
        return LocalReply(503, ResponseFlag.UF, (f"{RESET_PREFIX}connection failure, transport failure reason: "
                                                 f"{error.address}: {error.reason}").encode())
    fixed = _FIXED.get(type(error))
    if fixed is not None:
        return fixed
    if isinstance(error, DownstreamProtocolError):
        return _phrase(error.status, ResponseFlag.DPE)
    if isinstance(error, ProtocolError):  # a codec error on the downstream connection
        return _phrase(error.status, ResponseFlag.DPE)
    for kind, reply in _FIXED.items():
        if isinstance(error, kind):
            return reply
    return LocalReply(500, None, b"")


# HTTP status of a local reply -> gRPC status (module docstring).
GRPC_STATUS_FOR_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def grpc_status_for(http_status: int) -> int:
    """The gRPC status a local reply of ``http_status`` carries to a gRPC caller."""
    return GRPC_STATUS_FOR_HTTP.get(http_status, GRPC_UNKNOWN)


def _phrase(status: int, flag: ResponseFlag) -> LocalReply:
    try:
        text = HTTPStatus(status).phrase
    except ValueError:
        text = ""
    return LocalReply(status, flag, text.encode())
