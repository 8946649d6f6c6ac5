"""Compiled route actions: weighted destinations, rewrites, redirects, direct responses and
header operations, as Istio configures Envoy for them (pilot ``route.translateRoute``).

Theory of operation. Everything that does not depend on the request is done here once:
short host names are qualified, destination ports inferred, weights turned into a
cumulative table, header operations of the rule and of each destination flattened into
one op list per destination, the redirect's scheme/host/port fixed. What is left per
request is a bisect for the weighted pick, a string concatenation for a rewrite or a
Location, and a pass over the header list (``_headerops`` says in which order the
rule's and the destination's operations apply).
"""

from __future__ import annotations

import base64
from bisect import bisect_right
from dataclasses import dataclass, field
from random import Random
from typing import TYPE_CHECKING, Iterable

from topology._hostname import DEFAULT_DOMAIN, canonical
from topology._http_actions import Headers, HTTPDirectResponse, HTTPRedirect, HTTPRewrite
from topology._http_route import HTTPRouteDestination
from topology._istio_types import Destination

from ._headerops import NO_OPS, HeaderOps, HeaderStage
from ._match import RouteRequest
from ._regex import compile_regex

if TYPE_CHECKING:
    from topology._registry import ServiceRegistry

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
"""Codes Envoy's ``RedirectAction.response_code`` can express; Istio drops other rules."""
DEFAULT_REDIRECT_CODE = 301


def qualify_host(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Istio's ``ResolveShortnameToFQDN``: a name without dots is ``<name>.<ns>.svc.<domain>``;
    ``*``, IPs and dotted names stay as written (lowercased, ``clusterset.local`` folded)."""
    h = host.strip().lower().removesuffix(".")
    if h != "*" and "." not in h and ":" not in h:
        h = f"{h}.{namespace}.svc.{domain}"
    return canonical(h, domain)


def resolve_destination(dest: Destination, namespace: str, listen_port: int | None,
                        registry: ServiceRegistry | None) -> tuple[str, int | None]:
    """(FQDN, port) of a destination, as Istio's ``GetDestinationCluster``: the port named,
    else the only port of the service, else the port the request arrived on."""
    domain = registry.domain if registry is not None else DEFAULT_DOMAIN
    host = qualify_host(dest.host, namespace, domain)
    if dest.port is not None and dest.port.number:
        return host, dest.port.number
    if registry is not None and host in registry:
        svc = registry.get(host)
        if len(svc.ports) == 1:
            return host, svc.ports[0].port
    return host, listen_port


# -- forwarding ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """One upstream of a rule, with everything applied when it is the one picked."""

    host: str
    """Service FQDN (or the host as written when it is not a short name)."""
    subset: str | None = None
    port: int | None = None
    """Service port; None means the port the request or connection arrived on."""
    weight: int = 100
    authority: str | None = None
    """Host rewrite: the ``:authority`` sent upstream, or None to keep the client's."""
    request_headers: HeaderOps = NO_OPS
    response_headers: HeaderOps = NO_OPS

    def port_for(self, requested: int) -> int:
        return self.port if self.port is not None else requested

    @property
    def cluster(self) -> str:
        """Envoy/Istio cluster name ``outbound|<port>|<subset>|<host>``."""
        return f"outbound|{self.port if self.port is not None else ''}|{self.subset or ''}|{self.host}"

    def __repr__(self) -> str:
        return f"<Destination {self.cluster} weight={self.weight}>"


@dataclass(frozen=True, slots=True, repr=False)
class WeightedDestinations:
    """Destinations with a cumulative-weight table; ``pick(rng)`` chooses one."""

    destinations: tuple[DestinationConfig, ...]
    cumulative: tuple[int, ...] = field(init=False, compare=False)
    total: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("WeightedDestinations needs at least one destination")
        running, cum = 0, []
        for d in self.destinations:
            running += d.weight
            cum.append(running)
        object.__setattr__(self, "cumulative", tuple(cum))
        object.__setattr__(self, "total", running)

    def pick(self, rng: Random) -> DestinationConfig:
        """A destination drawn with probability weight/total (one draw, one bisect)."""
        ds = self.destinations
        if len(ds) == 1:
            return ds[0]
        return ds[bisect_right(self.cumulative, rng.random() * self.total)]

    def __repr__(self) -> str:
        return "<WeightedDestinations " + ", ".join(f"{d.cluster}={d.weight}" for d in self.destinations) + ">"


def weighted(dests: list[DestinationConfig]) -> WeightedDestinations:
    """Istio's rules: a lone destination takes everything; among several, weight 0 (or
    unset) is dropped. If that leaves none, the split is even (validation refuses this)."""
    if len(dests) == 1:
        return WeightedDestinations((_with_weight(dests[0], 100),))
    kept = [d for d in dests if d.weight > 0]
    if not kept:
        kept = [_with_weight(d, 1) for d in dests]
    return WeightedDestinations(tuple(kept))


def _with_weight(d: DestinationConfig, weight: int) -> DestinationConfig:
    return DestinationConfig(d.host, d.subset, d.port, weight, d.authority, d.request_headers, d.response_headers)


@dataclass(frozen=True, slots=True)
class RewriteConfig:
    """Path rewrite before forwarding (Envoy ``prefix_rewrite`` or ``regex_rewrite``)."""

    prefix: str | None = None
    """Replaces what the match consumed: the prefix of a prefix match, the whole path of
    an exact or regex match (``matched_length`` None)."""
    matched_length: int | None = None
    regex: str | None = None
    substitution: str | None = None
    _pattern: object = field(default=None, repr=False, compare=False)
    _pieces: tuple[str | int, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def compile(cls, rewrite: HTTPRewrite | None, matched_length: int | None) -> RewriteConfig | None:
        if rewrite is None:
            return None
        rr = rewrite.uri_regex_rewrite
        if rr is not None and rr.match:
            return cls(None, None, rr.match, rr.rewrite or "", compile_regex(rr.match),
                       _substitution_pieces(rr.rewrite or ""))
        if rewrite.uri:
            return cls(rewrite.uri, matched_length)
        return None

    def apply(self, path: str, query: str = "") -> str:
        """The new request target; the query string is kept, as Envoy keeps it."""
        if self._pattern is not None:
            pieces = self._pieces
            new = self._pattern.sub(
                lambda m: "".join(p if isinstance(p, str) else (m.group(p) or "") for p in pieces), path)
        elif self.matched_length is None:
            new = self.prefix or ""
        else:
            new = (self.prefix or "") + path[self.matched_length:]
        return f"{new}?{query}" if query else new


def _substitution_pieces(sub: str) -> tuple[str | int, ...]:
    """RE2 ``Rewrite`` syntax: ``\\N`` is group N, ``\\\\`` a backslash; all else literal."""
    out: list[str | int] = []
    lit: list[str] = []
    i = 0
    while i < len(sub):
        ch = sub[i]
        if ch == "\\" and i + 1 < len(sub) and (sub[i + 1].isdigit() or sub[i + 1] == "\\"):
            if sub[i + 1] == "\\":
                lit.append("\\")
            else:
                if lit:
                    out.append("".join(lit))
                    lit = []
                out.append(int(sub[i + 1]))
            i += 2
            continue
        lit.append(ch)
        i += 1
    if lit:
        out.append("".join(lit))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ForwardAction:
    """Forward upstream: pick a destination, rewrite the path if configured."""

    destinations: WeightedDestinations
    rewrite: RewriteConfig | None = None
    kind = "forward"

    def pick(self, rng: Random) -> DestinationConfig:
        return self.destinations.pick(rng)


def compile_forward(route: Iterable[HTTPRouteDestination], namespace: str, listen_port: int | None,
                    registry: ServiceRegistry | None, rule_headers: Headers | None,
                    rewrite: HTTPRewrite | None, matched_length: int | None) -> ForwardAction | None:
    """``route`` is the rule's ``HTTPRouteDestination`` list; None when it is empty."""
    dests = list(route)
    if not dests:
        return None
    req_stage, req_auth = HeaderStage.of(rule_headers.request if rule_headers else None)
    resp_stage, _ = HeaderStage.of(rule_headers.response if rule_headers else None)
    rule_authority = (rewrite.authority if rewrite is not None and rewrite.authority else None) or req_auth
    single = len(dests) == 1
    out = []
    for d in dests:
        if d.destination is None:
            continue
        host, port = resolve_destination(d.destination, namespace, listen_port, registry)
        dh = d.headers
        d_req, d_auth = HeaderStage.of(dh.request if dh else None)
        d_resp, _ = HeaderStage.of(dh.response if dh else None)
        if single:  # one parser: the rule's lists with the destination's appended
            req_ops, resp_ops = HeaderOps.of(req_stage + d_req), HeaderOps.of(resp_stage + d_resp)
        else:  # weighted cluster's parser first, then the route's
            req_ops, resp_ops = HeaderOps.of(d_req, req_stage), HeaderOps.of(d_resp, resp_stage)
        out.append(DestinationConfig(host, d.destination.subset, port, d.weight or 0,
                                     rule_authority or d_auth, req_ops, resp_ops))
    if not out:
        return None
    return ForwardAction(weighted(out), RewriteConfig.compile(rewrite, matched_length))


# -- local replies -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RedirectAction:
    """Answer with a redirect; ``location(req)`` builds the Location as Envoy's ``newUri``."""

    status: int
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    response_headers: HeaderOps = NO_OPS
    kind = "redirect"

    @classmethod
    def compile(cls, r: HTTPRedirect, listen_port: int | None, *, is_tls: bool = False,
                response_headers: HeaderOps = NO_OPS) -> RedirectAction | None:
        """Istio's ``ApplyRedirect``; None for a code Envoy cannot send."""
        code = r.redirect_code or DEFAULT_REDIRECT_CODE
        if code not in REDIRECT_CODES:
            return None
        port: int | None = None
        if r.port is not None or r.derive_port is not None:
            if r.port is not None:
                port = r.port
            elif r.derive_port is not None and r.derive_port.value == "FROM_REQUEST_PORT":
                port = listen_port  # Istio: routes are built for one port, so that port
            scheme = r.scheme or ("https" if is_tls else "http")
            if (port == 80 and scheme == "http") or (port == 443 and scheme == "https"):
                port = None  # "Do not put explicit :80 or :443 when its http/https"
        return cls(code, r.scheme or None, r.authority or None, port or None, r.uri or None, response_headers)

    def location(self, req: RouteRequest) -> str:
        scheme = self.scheme or req.scheme
        port = f":{self.port}" if self.port else ""
        host = self.host or _request_host(req, scheme, port)
        if self.path is not None:
            path = self.path if "?" in self.path or not req.query else f"{self.path}?{req.query}"
        else:
            path = req.target
        if not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{host}{port}{path}"


def _request_host(req: RouteRequest, new_scheme: str, new_port: str) -> str:
    """Envoy's ``processRequestHost``: drop the request's port when a port is being set, or
    when the scheme changes away from one whose default port the request named."""
    host = req.authority
    end = host.rfind("]:") + 1 if host.startswith("[") else host.rfind(":")
    if end <= 0:
        return host
    request_port = host[end:]
    proto = req.headers.get("x-forwarded-proto") or req.scheme
    remove = bool(new_port)
    if new_scheme != proto:
        remove |= (proto == "https" and request_port == ":443") or (proto == "http" and request_port == ":80")
    return host[:end] if remove else host


@dataclass(frozen=True, slots=True)
class DirectResponseAction:
    """Answer with a fixed status and body (Envoy ``direct_response``)."""

    status: int
    body: bytes = b""
    response_headers: HeaderOps = NO_OPS
    kind = "direct_response"

    @property
    def content_type(self) -> str | None:
        """Envoy's local replies carry ``text/plain`` when they have a body."""
        return "text/plain" if self.body else None

    @classmethod
    def compile(cls, d: HTTPDirectResponse, response_headers: HeaderOps = NO_OPS) -> DirectResponseAction:
        body = b""
        if d.body is not None:
            if d.body.string_ is not None:
                body = d.body.string_.encode()
            elif d.body.bytes_ is not None:
                body = base64.b64decode(d.body.bytes_)
        return cls(d.status, body, response_headers)
