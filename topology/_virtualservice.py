"""The VirtualService kind: routing rules for HTTP, TLS (by SNI) and opaque TCP traffic.

A VirtualService with no ``hosts`` is a delegate: it only makes sense as the target of
another VirtualService's ``delegate`` and may hold HTTP rules only. Checks that need the
whole resource (host overlap, SNI hosts within ``hosts``, delegation, rules that can
never match) live here; per-rule checks live with the rule types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._http_route import (
    HTTPMatchRequest, HTTPRoute, check_gateway_names, check_weight, check_weights,
)
from ._istio_checks import (
    JWT_CLAIM_PREFIX, check_export_to, check_labels, check_port, check_subnet, dns_label_problem,
    host_subset_of, hosts_match, is_ip, wildcard_domain_problem,
)
from ._istio_types import Destination, StringMatch

MESH_GATEWAY = "mesh"
"""The reserved gateway name meaning every sidecar in the mesh."""


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """A destination of a TLS or TCP rule with its share of the connections."""

    destination: Destination | None = None
    """Where connections go. Required."""
    weight: int | None = None
    """Share of connections in percent, 0..100; several weights must add up to 100."""

    def _check(self, c: Check) -> None:
        if self.destination is None:
            c.error("", "missing required field 'destination'")
        check_weight(c, self.weight)


@dataclass(frozen=True, slots=True)
class L4MatchAttributes:
    """Conditions on a TCP connection."""

    destination_subnets: tuple[str, ...] = ()
    """Destination IPs or CIDR blocks."""
    port: int | None = None
    """Destination port, when the host exposes several."""
    source_subnet: str | None = None
    """Deprecated; not supported by Istio."""
    source_labels: dict[str, str] = opt(factory=dict)
    """Labels the calling workload must carry."""
    gateways: tuple[str, ...] = ()
    """Gateways this match applies to."""
    source_namespace: str | None = None
    """Namespace of the calling workload."""

    def _check(self, c: Check) -> None:
        _check_l4(c, self)


@dataclass(frozen=True, slots=True)
class TLSMatchAttributes:
    """Conditions on a TLS connection that is not terminated."""

    sni_hosts: tuple[str, ...] = ()
    """SNI values to match; each must be within the VirtualService's hosts. Required."""
    destination_subnets: tuple[str, ...] = ()
    """Destination IPs or CIDR blocks."""
    port: int | None = None
    """Destination port, when the host exposes several."""
    source_labels: dict[str, str] = opt(factory=dict)
    """Labels the calling workload must carry."""
    gateways: tuple[str, ...] = ()
    """Gateways this match applies to."""
    source_namespace: str | None = None
    """Namespace of the calling workload."""

    def _check(self, c: Check) -> None:
        if not self.sni_hosts:
            c.error("", "a TLS match needs at least one entry in sniHosts")
        for i, sni in enumerate(self.sni_hosts):
            problem = wildcard_domain_problem(sni)
            if problem and is_ip(sni):
                c.warning(f"sniHosts[{i}]", f"an IP address as SNI ({sni!r}) is not supported by most clients")
            elif problem:
                c.error(f"sniHosts[{i}]", f"invalid SNI host {sni!r}: {problem}")
        _check_l4(c, self)


def _check_l4(c: Check, m: L4MatchAttributes | TLSMatchAttributes) -> None:
    for i, subnet in enumerate(m.destination_subnets):
        check_subnet(c, f"destinationSubnets[{i}]", subnet)
    if m.port is not None:
        check_port(c, "port", m.port)
    check_labels(c, "sourceLabels", m.source_labels)
    check_gateway_names(c, "gateways", m.gateways)
    if m.source_namespace is not None and dns_label_problem(m.source_namespace):
        c.error("sourceNamespace", f"must be a namespace name; found {describe(m.source_namespace)}")


@dataclass(frozen=True, slots=True)
class TLSRoute:
    """A rule for TLS traffic routed by SNI without terminating it."""

    match: tuple[TLSMatchAttributes, ...] = ()
    """Conditions, any one of which selects this rule. Required."""
    route: tuple[RouteDestination, ...] = ()
    """Weighted destinations. Required."""

    def _check(self, c: Check) -> None:
        if not self.match:
            c.error("", "a TLS rule needs at least one match (with sniHosts)")
        if not self.route:
            c.error("", "a TLS rule needs a route")
        check_weights(c, "route", [d.weight for d in self.route])


@dataclass(frozen=True, slots=True)
class TCPRoute:
    """A rule for opaque TCP traffic."""

    match: tuple[L4MatchAttributes, ...] = ()
    """Conditions, any one of which selects this rule; none matches every connection."""
    route: tuple[RouteDestination, ...] = ()
    """Weighted destinations. Required."""

    def _check(self, c: Check) -> None:
        if not self.route:
            c.error("", "a TCP rule needs a route")
        check_weights(c, "route", [d.weight for d in self.route])


@dataclass(frozen=True, slots=True)
class VirtualService:
    """Routing rules applied when one of ``hosts`` is addressed."""

    hosts: tuple[str, ...] = ()
    """Hosts the rules apply to: DNS names (wildcard prefix allowed), short names qualified
    with the resource's namespace, or IPs (gateways only). Empty for a delegate."""
    gateways: tuple[str, ...] = ()
    """Gateways and sidecars that apply the rules; ``mesh`` means every sidecar.
    Defaults to ``mesh``."""
    http: tuple[HTTPRoute, ...] = ()
    """HTTP rules, first match wins."""
    tls: tuple[TLSRoute, ...] = ()
    """Rules for non-terminated TLS, first match wins."""
    tcp: tuple[TCPRoute, ...] = ()
    """Rules for opaque TCP, first match wins."""
    export_to: tuple[str, ...] = ()
    """Namespaces that see this VirtualService (``.`` own, ``*`` all). Defaults to all."""

    @property
    def is_delegate(self) -> bool:
        return not self.hosts

    @property
    def applies_to_gateway(self) -> bool:
        return bool(self.gateways) and MESH_GATEWAY not in self.gateways

    def _check(self, c: Check) -> None:
        if self.is_delegate:
            for field, present in (("gateways", self.gateways), ("tls", self.tls), ("tcp", self.tcp)):
                if present:
                    c.error(field, f"a delegate VirtualService (one without hosts) cannot have {field}")
        check_gateway_names(c, "gateways", self.gateways)
        self._check_hosts(c)
        if not (self.http or self.tcp or self.tls):
            c.error("", "a VirtualService needs http, tcp or tls rules")
        for i, rule in enumerate(self.http):
            self._check_http_rule(c.at(f"http[{i}]"), rule)
        for i, rule in enumerate(self.tls):
            for j, m in enumerate(rule.match):
                for k, sni in enumerate(m.sni_hosts):
                    if not wildcard_domain_problem(sni) and not any(host_subset_of(sni, h) for h in self.hosts):
                        c.error(f"tls[{i}].match[{j}].sniHosts[{k}]",
                                f"SNI host {sni!r} is not within the VirtualService's hosts {list(self.hosts)}")
        check_export_to(c, "exportTo", self.export_to)
        _warn_unreachable(c, "http", self.http)
        _warn_unreachable(c, "tcp", self.tcp)

    def _check_hosts(self, c: Check) -> None:
        all_valid = True
        for i, host in enumerate(self.hosts):
            problem = wildcard_domain_problem(host)
            if problem and not is_ip(host) and not (self.applies_to_gateway and host.startswith("outbound_")):
                c.error(f"hosts[{i}]", f"invalid host {host!r}: {problem}")
                all_valid = False
            elif host == "*" and not self.applies_to_gateway:
                c.error(f"hosts[{i}]", "wildcard host '*' is not allowed for a VirtualService bound to the mesh "
                                       "(sidecars); bind it to a gateway or name the hosts")
                all_valid = False
        if all_valid:
            for i, a in enumerate(self.hosts):
                for b in self.hosts[i + 1:]:
                    if hosts_match(a, b):
                        c.error(f"hosts[{i}]", f"duplicate hosts: {a!r} and {b!r} overlap")

    def _check_http_rule(self, c: Check, rule: HTTPRoute) -> None:
        if rule.delegate is not None:
            if self.is_delegate:
                c.error("delegate", "a delegate VirtualService cannot delegate again")
            elif not self.applies_to_gateway:
                c.error("delegate", "delegation only applies to VirtualServices bound to gateways")
            for key, present in (("route", rule.route), ("redirect", rule.redirect)):
                if present:
                    c.error(key, f"a rule that delegates cannot also have {key}")
        for j, m in enumerate(rule.match):
            if not self.applies_to_gateway:
                for key, mapping in (("headers", m.headers), ("withoutHeaders", m.without_headers)):
                    for name in mapping:
                        if name.startswith(JWT_CLAIM_PREFIX):
                            c.error(f"match[{j}].{key}.{name}",
                                    "JWT claim based routing is only supported on gateways")
            if self.is_delegate or rule.delegate is not None:
                for key, sm in _string_matches(m):
                    if sm.regex is not None:
                        c.error(f"match[{j}].{key}.regex", "regex matches are not supported when delegating")


def _string_matches(m: HTTPMatchRequest) -> list[tuple[str, StringMatch]]:
    out = [(k, v) for k, v in (("uri", m.uri), ("scheme", m.scheme), ("method", m.method),
                               ("authority", m.authority)) if v is not None]
    for key, mapping in (("headers", m.headers), ("queryParams", m.query_params),
                         ("withoutHeaders", m.without_headers)):
        out.extend((f"{key}.{name}", sm) for name, sm in mapping.items())
    return out


def _warn_unreachable(c: Check, field: str, rules: tuple[HTTPRoute, ...] | tuple[TCPRoute, ...]) -> None:
    """istioctl's VirtualServiceUnreachableRule / IneffectiveMatch warnings."""
    catch_all: int | None = None
    seen: dict[object, int] = {}
    compare = sum(len(rule.match) for rule in rules) > 1  # rendering keys costs; skip when nothing to compare
    for i, rule in enumerate(rules):
        if catch_all is not None:
            c.warning(f"{field}[{i}]", f"rule is never used: {field}[{catch_all}] before it has no match "
                                       "and takes everything")
            continue
        if not rule.match:
            catch_all = i
            continue
        dups = 0
        for j, m in enumerate(rule.match if compare else ()):
            key = repr(dataclasses.replace(m, name=None) if isinstance(m, HTTPMatchRequest) else m)
            if key in seen:
                dups += 1
                c.warning(f"{field}[{i}].match[{j}]", f"match is never used: {field}[{seen[key]}] has the same match")
            else:
                seen[key] = i
        if compare and dups == len(rule.match):
            c.warning(f"{field}[{i}]", "rule is never used: every match is taken by earlier rules")
