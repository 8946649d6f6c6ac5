"""One outbound request on its way through the layers: what each layer learned so far.

The layers (``_layers``, ``_attempts``) are stateless objects compiled once; everything
about one request lives here, in a slotted object created per request: the snapshot it
started on, the route and its compiled policies, the destination and cluster picked, the
head to send upstream, the body kept for replay, the current attempt's host, the
response flags collected on the way, and the ``Exchange`` progress the telemetry layer
reports at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._exchange import Exchange
from ._flags import ResponseFlag, format_flags
from ._match import join_headers
from ._rescue import DownstreamProtocolError
from ._route_policy import DEFAULT_ROUTE_CONFIG, RouteConfig

if TYPE_CHECKING:
    from ._actions import DestinationConfig
    from ._balancer import Host
    from ._clusters import ClusterConfig, UpstreamTarget
    from ._downstream import Downstream
    from ._events import Request, Response
    from ._match import RouteRequest
    from ._proxy import Proxy
    from ._replay import RequestBody
    from ._routing import RouteDecision
    from ._snapshot import Snapshot
    from ._timeouts import RequestTimer
    from ._tracing import Hop


class OutboundRequest:
    """Per-request state of the outbound stack (see the module docstring)."""

    __slots__ = ("proxy", "snap", "down", "req", "started", "wall_start", "state", "flags", "details", "keep_alive",
                 "authority", "path_q", "rr", "route", "policy", "dest", "cluster", "head", "has_body", "upgrade",
                 "body", "envoy_headers", "timer", "hash", "exclude", "host", "target", "inflight", "accept",
                 "attempt_accept", "attempts", "hop")

    def __init__(self, proxy: Proxy, snap: Snapshot, down: Downstream, req: Request) -> None:
        self.proxy = proxy
        self.snap = snap
        self.down = down
        self.req = req
        self.started = proxy.now()
        self.wall_start = time.time()
        self.state = Exchange()
        self.flags: list[ResponseFlag] = []
        self.details: str | None = None
        """Envoy's response code details when the proxy answered itself."""
        self.keep_alive = True
        self.authority = b""
        self.path_q = b""
        self.rr: RouteRequest | None = None
        self.route: RouteDecision | None = None
        self.policy: RouteConfig = DEFAULT_ROUTE_CONFIG
        self.dest: DestinationConfig | None = None
        self.cluster: ClusterConfig | None = None
        self.head: Request | None = None
        """The request head sent upstream (routed, rewritten, headers applied)."""
        self.has_body = False
        self.upgrade = False
        self.body: RequestBody | None = None
        self.envoy_headers: dict[str, str] | None = None
        """Trusted ``x-envoy-upstream-rq-*timeout-ms`` headers of the caller, if any."""
        self.hash: int | None = None
        """Consistent-hash key of the request, when the cluster balances by one."""
        self.exclude: frozenset[str] = frozenset()
        """Hosts earlier attempts used (``PickContext.exclude``)."""
        self.host: Host | None = None
        """The current (or last) attempt's host."""
        self.target: UpstreamTarget | None = None
        self.inflight: Host | None = None
        """Set while an attempt runs; a timeout that cancels it finds its host here."""
        self.timer: RequestTimer | None = None
        """The request's deadlines, when its route has timeouts."""
        self.accept: Any = None
        """The retry layer's verdict on a response head (``_exchange.Accept``), or None."""
        self.attempt_accept: Any = None
        """What the endpoint calls with the response head: outlier recording, then ``accept``."""
        self.attempts = 0
        self.hop: Hop | None = None

    async def reply(self, status: int, body: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                    flag: ResponseFlag | None = None, details: str | None = None) -> None:
        """Answer locally (redirect, preflight, fault abort, rate limit ...)."""
        if flag is not None:
            self.flags.append(flag)
        self.details = details
        self.state.status = status
        extra = self.state.extra_headers
        self.keep_alive = await self.down.local_reply(status, body, list(headers) + extra if extra else headers)

    def add_response_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        extra = self.state.extra_headers
        if extra is None:
            self.state.extra_headers = list(headers)
        else:
            extra.extend(headers)

    def new_attempt(self) -> None:
        """Forget the previous attempt's progress (its response never went downstream)."""
        state = self.state
        state.status = 0
        state.bytes_in = 0
        state.request_done = False
        state.peer = ""
        state.response_headers = ()

    @property
    def flag_string(self) -> str:
        return format_flags(self.flags) if self.flags else "-"

    def __repr__(self) -> str:
        route = self.route.name if self.route is not None else "-"
        cluster = self.cluster.name if self.cluster is not None else "-"
        return (f"<OutboundRequest {self.req.method.decode()} {self.req.target[:80]!r} route={route} "
                f"cluster={cluster} status={self.state.status} attempts={self.attempts} flags={self.flag_string}>")


class LazyHeaders(Mapping[str, str]):
    """Request headers as routing reads them (lower-case str names, repeated values joined
    with ``,``), decoded only if a route condition asks for a header."""

    __slots__ = ("_pairs", "_map")

    def __init__(self, pairs: object) -> None:
        self._pairs = pairs
        self._map: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        m = self._map
        if m is None:
            m = self._map = join_headers((n.decode("latin-1"), v.decode("latin-1"))
                                         for n, v in self._pairs)  # type: ignore[attr-defined]
        return m

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return self._get().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._get()


def split_target(target: bytes, headers: object) -> tuple[bytes, bytes]:
    """(authority, path-and-query) of an absolute-form or origin-form request target."""
    if target[:7].lower() == b"http://":
        rest = target[7:]
        cut = rest.find(b"/")
        query = rest.find(b"?", 0, len(rest) if cut < 0 else cut)
        if query >= 0:
            cut = query
        if cut < 0:
            authority, path = rest, b"/"
        else:
            authority, path = rest[:cut], rest[cut:]
            if path[0] != 0x2F:  # "/": a query right after the authority
                path = b"/" + path
        if not authority:
            raise DownstreamProtocolError(f"request target {target!r} names no host")
        return authority, path
    if target.startswith(b"/"):
        for name, value in headers:  # type: ignore[attr-defined]
            if name == b"host":
                return value, target
        raise DownstreamProtocolError("origin-form request without a Host header")
    raise DownstreamProtocolError(f"request target {target[:200]!r} is neither absolute-form http:// nor origin-form")


def request_id() -> bytes:
    """A random UUID (version 4) for ``x-request-id``, as Envoy makes one."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex().encode()
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
