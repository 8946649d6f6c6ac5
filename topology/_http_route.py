"""HTTP routing rules of a VirtualService: match conditions, weighted destinations and
what a rule does instead of forwarding (redirect, direct response, delegation).

Field names and defaults follow istio/api ``networking/v1`` ``HTTPRoute``; conflicts
between actions and the weight rules are istioctl's (weights of a multi-destination rule
must add up to 100).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._duration import Duration
from ._http_actions import (
    Delegate, Headers, HTTPDirectResponse, HTTPMirrorPolicy, HTTPRedirect, HTTPRewrite,
)
from ._http_policy import CorsPolicy, HTTPFaultInjection, HTTPRetry
from ._istio_checks import (
    JWT_CLAIM_PREFIX, PSEUDO_HEADERS, check_duration, check_header_name, check_labels, check_oneof,
    check_percent_int, check_port, dns_label_problem, has_errors_under,
)
from ._istio_types import Destination, Percent, StringMatch


def check_weights(c: Check, rel: str, weights: list[int | None]) -> None:
    """More than one destination: their weights must add up to 100."""
    if len(weights) < 2 or has_errors_under(c, rel):
        return
    values = [w or 0 for w in weights]
    if sum(values) != 100:
        c.error(rel, f"weights must sum to 100; found {sum(values)} ({' + '.join(map(str, values))})")


def check_weight(c: Check, weight: int | None) -> None:
    if weight is not None and not 0 <= weight <= 100:
        c.error("weight", f"must be between 0 and 100; found {describe(weight)}")


def check_match_header_name(c: Check, rel: str, name: str) -> None:
    if name.startswith(JWT_CLAIM_PREFIX) or name in PSEUDO_HEADERS:
        return
    check_header_name(c, rel, name)


@dataclass(frozen=True, slots=True)
class HTTPMatchRequest:
    """Conditions a request must meet, all of them, for the rule to apply."""

    name: str | None = None
    """Name of the match, appended to the rule's name in access logs."""
    uri: StringMatch | None = None
    """Match on the path (without query string)."""
    scheme: StringMatch | None = None
    """Match on the URI scheme."""
    method: StringMatch | None = None
    """Match on the HTTP method."""
    authority: StringMatch | None = None
    """Match on the Host/:authority."""
    headers: dict[str, StringMatch] = opt(factory=dict)
    """Header matches (keys lower-case); ``{}`` as a value tests presence."""
    port: int | None = None
    """Port the request arrived on, when the host exposes several."""
    source_labels: dict[str, str] = opt(factory=dict)
    """Labels the calling workload must carry."""
    gateways: tuple[str, ...] = ()
    """Gateways this match applies to, overriding the VirtualService's ``gateways``."""
    query_params: dict[str, StringMatch] = opt(factory=dict)
    """Query parameter matches (exact or regex)."""
    ignore_uri_case: bool = False
    """Case-insensitive ``uri`` match. Defaults to false."""
    without_headers: dict[str, StringMatch] = opt(factory=dict)
    """Headers that must not match, same syntax as ``headers``."""
    source_namespace: str | None = None
    """Namespace of the calling workload."""
    stat_prefix: str | None = None
    """Prefix for route-level stats."""

    def _check(self, c: Check) -> None:
        for key, mapping in (("headers", self.headers), ("withoutHeaders", self.without_headers)):
            for name in mapping:
                check_match_header_name(c, f"{key}.{name}", name)
        if self.port is not None:
            check_port(c, "port", self.port)
        check_labels(c, "sourceLabels", self.source_labels)
        check_gateway_names(c, "gateways", self.gateways)
        if self.source_namespace is not None and dns_label_problem(self.source_namespace):
            c.error("sourceNamespace", f"must be a namespace name; found {describe(self.source_namespace)}")


def check_gateway_names(c: Check, rel: str, names: tuple[str, ...]) -> None:
    """``mesh``, ``<name>``, ``<namespace>/<name>`` or the legacy ``<name>.<namespace>...``."""
    for i, name in enumerate(names):
        ns, slash, gw = name.partition("/")
        where = f"{rel}[{i}]"
        if not slash:
            if not name or any(dns_label_problem(p) for p in name.rstrip(".").split(".")):
                c.error(where, f"invalid gateway name {name!r}; expected <name> or <namespace>/<name>")
            elif "." in name:
                c.warning(where, f"legacy gateway name format {name!r}; prefer <namespace>/<name>")
        elif dns_label_problem(ns) or dns_label_problem(gw):
            c.error(where, f"invalid gateway reference {name!r}; namespace and name must be DNS-1123 labels")


@dataclass(frozen=True, slots=True)
class HTTPRouteDestination:
    """A destination of an HTTP rule with its share of the traffic."""

    destination: Destination | None = None
    """Where requests go. Required."""
    weight: int | None = None
    """Share of traffic in percent, 0..100. A lone destination takes all traffic; with
    several, the weights must add up to 100."""
    headers: Headers | None = None
    """Header changes applied only when this destination is chosen."""

    def _check(self, c: Check) -> None:
        if self.destination is None:
            c.error("", "missing required field 'destination'")
        check_weight(c, self.weight)


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """One HTTP rule: conditions, and what to do with a request that meets them."""

    name: str | None = None
    """Name of the rule, used in access logs and delegation."""
    match: tuple[HTTPMatchRequest, ...] = ()
    """Conditions, any one of which selects this rule; none matches every request."""
    route: tuple[HTTPRouteDestination, ...] = ()
    """Weighted destinations requests are forwarded to."""
    redirect: HTTPRedirect | None = None
    """Redirect instead of forwarding."""
    direct_response: HTTPDirectResponse | None = None
    """Fixed response instead of forwarding."""
    delegate: Delegate | None = None
    """Delegate the rule to another VirtualService (gateway-bound rules only)."""
    rewrite: HTTPRewrite | None = None
    """Path/authority rewrite before forwarding."""
    timeout: Duration | None = None
    """Timeout of the whole request, retries included; at least 1ms. Defaults to none."""
    retries: HTTPRetry | None = None
    """Retry policy. Defaults to Istio's mesh-wide retry policy (2 attempts)."""
    fault: HTTPFaultInjection | None = None
    """Faults injected on the client side."""
    mirror: Destination | None = None
    """Send a copy of requests there."""
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    """Several mirror destinations, each with its percentage."""
    mirror_percentage: Percent | None = None
    """Share of requests mirrored to ``mirror``. Defaults to 100%."""
    mirror_percent: int | None = None
    """Deprecated integer form of ``mirrorPercentage``."""
    cors_policy: CorsPolicy | None = None
    """CORS answered by the proxy."""
    headers: Headers | None = None
    """Header changes for every destination of the rule."""

    def _check(self, c: Check) -> None:
        if self.redirect is not None:
            for other, key in ((bool(self.route), "route"), (self.fault is not None, "fault"),
                               (self.rewrite is not None, "rewrite"),
                               (self.direct_response is not None, "directResponse")):
                if other:
                    c.error("redirect", f"an HTTP rule cannot have both redirect and {key}")
        elif self.direct_response is not None:
            if self.route:
                c.error("directResponse", "an HTTP rule cannot have both directResponse and route")
        elif not self.route and self.delegate is None:
            c.error("", "an HTTP rule needs route, redirect, directResponse or delegate")
        check_weights(c, "route", [d.weight for d in self.route])
        check_duration(c, "timeout", self.timeout)
        if self.mirror_percent is not None:
            check_percent_int(c, "mirrorPercent", self.mirror_percent)
            c.warning("mirrorPercent", "'mirrorPercent' is deprecated; use 'mirrorPercentage: {value: ...}'")
        check_oneof(c, self, ("mirror_percentage", "mirror_percent"))
        writes = [w for w in ((self.rewrite.authority,) if self.rewrite and self.rewrite.authority else ())]
        writes += list(self.headers.authority if self.headers else ())
        if len(writes) > 1:
            c.error("headers", f"the authority is set more than once; found {' and '.join(map(repr, writes))}")
