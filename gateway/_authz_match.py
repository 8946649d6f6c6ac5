"""The field matchers AuthorizationPolicy rules compile to, and the request they read.

Each ``from``/``to``/``when`` field becomes one ``FieldMatcher``: an attribute getter and a
precompiled test (strings pre-split into exact, prefix, suffix and presence; CIDRs into
integer masks; namespaces, service accounts and path templates into regexes), negated for
the ``not*`` forms. A matcher that fails can say why (``why_not``), quoting the value seen.
The request's attributes are derived at most once per check, on first use (``Ctx``).

Semantics are Envoy's as Istio's generators configure it (pilot ``authz/model``,
``authz/matcher``): ``*`` alone is presence (a non-empty value; any value for headers and
hosts), ``*x`` a suffix, ``x*`` a prefix, anything else exact. Namespaces match the
principal with ``.*/ns/<ns>/.*`` and service accounts with ``.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?``
(Istio's regexes, without the ``spiffe://`` they are written against). Path templates are
Envoy's URI templates: ``{*}`` one segment of RFC 3986 pchars, ``{**}`` any run of pchars
and slashes, the whole path without query and fragment.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from operator import attrgetter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from topology._security import Condition, Operation, Source
from trustdomain import SpiffeId

CLUSTER_LOCAL = "cluster.local"  # Istio constants.DefaultClusterLocalDomain
_SCHEME = "spiffe://"
_PCHAR = r"a-zA-Z0-9\-._~%!$&'()+,;:@="  # Envoy uri_template kLiteral (RFC 3986 pchar minus '*')

HeaderValue = Union[str, bytes]
Headers = Union[Mapping[str, HeaderValue], Iterable[tuple[HeaderValue, HeaderValue]]]
Test = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """What one check sees: the connection, and for HTTP the request line and headers."""

    source_ip: str
    """The direct peer's address (``source.ip``)."""
    destination_port: int
    """The workload port the connection arrived for."""
    peer: SpiffeId | str | None = None
    """The verified mTLS peer identity; None for plaintext. A string may omit ``spiffe://``."""
    destination_ip: str = ""
    sni: str = ""
    tcp: bool = False
    """True for a TCP connection check: HTTP-only fields then follow Istio's TCP rules."""
    method: str = ""
    path: str = ""
    """As received; the query and fragment are ignored for matching, as Envoy does."""
    host: str = ""
    """``Host`` / ``:authority``."""
    headers: Headers = ()


@functools.lru_cache(maxsize=4096)  # peers repeat: parse each address once, not per request
def _ip_key(text: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return ip.version, int(ip)


class Ctx:
    """The request's attributes, each derived once and only when a matcher asks for it; the
    peer principal (``spiffe://`` stripped) up front, as nearly every policy reads it."""

    __slots__ = ("req", "hops", "principal", "_source", "_remote", "_dest", "_headers")

    def __init__(self, req: AuthzRequest, hops: int = 0) -> None:
        self.req, self.hops = req, hops
        peer = req.peer
        text = None if peer is None else str(peer)
        self.principal = text[len(_SCHEME):] if text and text.startswith(_SCHEME) else text
        self._source = self._remote = self._dest = self._headers = _UNSET

    def source_ip(self) -> tuple[int, int] | None:
        if self._source is _UNSET:
            self._source = _ip_key(self.req.source_ip)
        return self._source

    def remote_ip(self) -> tuple[int, int] | None:
        """Envoy with ``xff_num_trusted_hops`` N (Istio's ``numTrustedProxies``): the Nth address
        from the right of X-Forwarded-For; the peer when N is 0, XFF is shorter, or not an IP."""
        if self._remote is _UNSET:
            remote = None
            if self.hops > 0:
                xff = [p for p in self.headers().get("x-forwarded-for", "").split(",") if p.strip()]
                if len(xff) >= self.hops:
                    remote = _ip_key(xff[-self.hops])
            self._remote = remote or self.source_ip()
        return self._remote

    def destination_ip(self) -> tuple[int, int] | None:
        if self._dest is _UNSET:
            self._dest = _ip_key(self.req.destination_ip)
        return self._dest

    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ',' as Envoy's header matchers see them."""
        if self._headers is _UNSET:
            raw = self.req.headers
            out: dict[str, str] = {}
            for k, v in raw.items() if isinstance(raw, Mapping) else raw:
                name = (k.decode("latin-1") if isinstance(k, bytes) else k).lower()
                value = v.decode("latin-1") if isinstance(v, bytes) else v
                out[name] = f"{out[name]},{value}" if name in out else value
            self._headers = out
        return self._headers

    def path(self) -> str | None:
        p = self.req.path
        return p.split("?", 1)[0].split("#", 1)[0] if p else None


_UNSET: Any = object()


def _never(_ctx: Ctx) -> None:
    return None


_PRINCIPAL = attrgetter("principal")
# C-level getters where the raw value will do: an empty method or SNI matches no pattern that
# None would not (values are never empty, and "*" presence tests for a non-empty string)
_ATTRIBUTE_GETTERS: dict[str, Callable[[Ctx], Any]] = {
    "source.principal": _PRINCIPAL, "source.namespace": _PRINCIPAL, "source.serviceAccount": _PRINCIPAL,
    "source.ip": Ctx.source_ip, "remote.ip": Ctx.remote_ip, "destination.ip": Ctx.destination_ip,
    "destination.port": attrgetter("req.destination_port"),
    "connection.sni": attrgetter("req.sni"),
    "request.host": lambda c: c.req.host.lower() if c.req.host else None,
    "request.method": attrgetter("req.method"),
    "request.path": Ctx.path,
}


@dataclass(frozen=True, slots=True)
class FieldMatcher:
    """One policy field (``from[0].source.principals``) over one request attribute."""

    path: str
    """Where the field is in the policy, e.g. ``rules[0].from[1].source.notNamespaces``."""
    attribute: str
    """Istio's attribute name, e.g. ``source.principal``."""
    get: Callable[[Ctx], Any]
    test: Test
    negate: bool
    http_only: bool
    values: tuple[str, ...]
    cost: int = 0
    """Rough price of one evaluation; a rule tries its cheap fields first (AND commutes)."""

    def matches(self, ctx: Ctx) -> bool:
        return self.test(self.get(ctx)) != self.negate

    def why_not(self, ctx: Ctx) -> str | None:
        """None when it matches; else what was seen and what the field wanted."""
        value = self.get(ctx)
        if self.test(value) != self.negate:
            return None
        wanted = ", ".join(repr(v) for v in self.values)
        if value is None or value == "":
            seen = f"{self.attribute} is absent" + (" (no mTLS peer)" if self.get is _PRINCIPAL else "")
            return f"{self.path}: {seen}; wanted one of [{wanted}]"
        if isinstance(value, tuple):
            value = str(ipaddress.IPv4Address(value[1]) if value[0] == 4 else ipaddress.IPv6Address(value[1]))
        shown = repr(value)
        relation = "is one of" if self.negate else "is not one of"
        return f"{self.path}: {self.attribute} {shown} {relation} [{wanted}]"


# -- tests --------------------------------------------------------------------------------
def string_test(patterns: Iterable[str], *, lower: bool = False, empty_is_present: bool = False) -> Test:
    """Istio's ``StringMatcher``/``HeaderMatcher``: ``*`` presence, ``*x`` suffix, ``x*`` prefix, exact."""
    exact, prefixes, suffixes, presence = set(), [], [], False
    for p in patterns:
        p = p.lower() if lower else p
        if p == "*":
            presence = True
        elif p.startswith("*"):
            suffixes.append(p[1:])
        elif p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    pre, suf = tuple(prefixes), tuple(suffixes)
    if not (pre or suf or presence):
        return frozenset(exact).__contains__  # no Python frame per test

    def test(v: str | None) -> bool:
        if v is None:
            return False
        return ((presence and (empty_is_present or v != "")) or v in exact
                or (bool(pre) and v.startswith(pre)) or (bool(suf) and v.endswith(suf)))
    return test


def regex_test(patterns: Iterable[str]) -> Test:
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return lambda v: v is not None and rx.fullmatch(v) is not None


def cidr_test(values: Iterable[str]) -> Test:
    nets = []
    for v in values:
        net = ipaddress.ip_network(v.strip(), strict=False)
        nets.append((net.version, int(net.network_address), int(net.netmask)))
    return lambda ip: ip is not None and any(ip[0] == ver and ip[1] & mask == base for ver, base, mask in nets)


def port_test(values: Iterable[str]) -> Test:
    return frozenset(int(v) for v in values).__contains__


def path_test(values: Iterable[str]) -> Test:
    """Templates (``{*}``/``{**}``) as Envoy URI templates, the rest as string matches."""
    plain = [v for v in values if "{*}" not in v and "{**}" not in v]
    templates = [template_regex(v) for v in values if "{*}" in v or "{**}" in v]
    strings = string_test(plain)
    rx = re.compile("|".join(f"(?:{t})" for t in templates)) if templates else None
    return lambda v: strings(v) or (rx is not None and v is not None and rx.fullmatch(v) is not None)


_TEMPLATE_TOKEN = re.compile(r"\{\*\*\}|\{\*\}|\*\*|\*")


def template_regex(template: str) -> str:
    """Istio replaces ``{*}``/``{**}`` by Envoy's ``*``/``**``: one segment of pchars, or pchars
    and slashes (Envoy ``kPathGlobRegex`` / ``kTextGlobRegex``)."""
    out, pos = [], 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"[{_PCHAR}/]*" if "**" in m.group() else f"[{_PCHAR}]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return "".join(out)


def _never_matches(_v: Any) -> bool:
    return False


# -- trust domains ------------------------------------------------------------------------
def _prefix_match(a: str, pattern: str) -> bool:
    return pattern.endswith("*") and a.startswith(pattern[:-1])


def _suffix_match(a: str, pattern: str) -> bool:
    return pattern.startswith("*") and a.endswith(pattern[1:])


def _td_match(td: str, trust_domains: Sequence[str]) -> bool:
    return any(td == s or s == "*" or _prefix_match(td, s) or _prefix_match(s, td)
               or _suffix_match(td, s) or _suffix_match(s, td) for s in trust_domains)


def expand_principals(principals: Iterable[str], trust_domains: Sequence[str]) -> tuple[str, ...]:
    """Istio's ``Bundle.ReplaceTrustDomainAliases``; ``trust_domains`` is [trust domain, *aliases]."""
    out: list[str] = []
    for p in principals:
        parts = p.split("/")
        td = parts[0]
        if len(parts) != 5 or td == "*" or not (td == CLUSTER_LOCAL or _td_match(td, trust_domains)):
            candidates = [p]
        else:
            candidates = [p if _suffix_match(member, td) else "/".join([member, *parts[1:]]) for member in trust_domains]
        out.extend(c for c in candidates if c not in out)
    return tuple(out)


# -- compiling fields ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FieldCompiler:
    """What compiling a field needs beyond the field: the trust domains, the policy's namespace."""

    trust_domains: tuple[str, ...]
    policy_namespace: str

    def field(self, path: str, attribute: str, values: Sequence[str], negate: bool, key: str = "") -> FieldMatcher:
        """``attribute`` is Istio's name for what is read; ``key`` the full condition key, if any."""
        get = _ATTRIBUTE_GETTERS.get(attribute, _never)
        http_only = attribute.startswith("request.")  # Istio's generators: "%q is HTTP only"
        if attribute == "source.principal":
            test = string_test(expand_principals(values, self.trust_domains))
        elif attribute == "source.namespace":
            test = regex_test(f".*/ns/{_glob(v)}/.*" for v in values)
        elif attribute == "source.serviceAccount":
            test = regex_test(self._service_account_regex(v) for v in values)
        elif attribute in ("source.ip", "remote.ip", "destination.ip"):
            test = cidr_test(values)
        elif attribute == "destination.port":
            test = port_test(values)
        elif attribute in ("connection.sni", "request.method"):
            test = string_test(values)
        elif attribute == "request.host":
            test = string_test(values, lower=True, empty_is_present=True)
        elif attribute == "request.path":
            test = path_test(values)
        elif attribute == "request.headers":
            name = key[key.index("[") + 1:-1].lower()
            get = lambda c, _n=name: c.headers().get(_n)  # noqa: E731
            test = string_test(values, empty_is_present=True)
        else:  # request.auth.* (no JWT yet), experimental.envoy.filters.* (no filter metadata)
            test = _never_matches
        return FieldMatcher(path, key or attribute, get, test, negate, http_only, tuple(values),
                            _COSTS.get(attribute, 0 if test is _never_matches else 5))

    def _service_account_regex(self, value: str) -> str:
        ns, sep, sa = value.partition("/")
        if not sep:
            ns, sa = self.policy_namespace, value
        return f".+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?"

    def source(self, path: str, s: Source) -> tuple[FieldMatcher, ...]:
        return self._fields(path, s, _SOURCE_FIELDS)

    def operation(self, path: str, o: Operation) -> tuple[FieldMatcher, ...]:
        return self._fields(path, o, _OPERATION_FIELDS)

    def condition(self, path: str, c: Condition) -> tuple[FieldMatcher, ...]:
        attribute = c.key.partition("[")[0]
        if attribute.startswith("experimental.envoy.filters."):
            attribute = "experimental.envoy.filters"
        out = []
        if c.values:
            out.append(self.field(f"{path}.values", attribute, c.values, False, c.key))
        if c.not_values:
            out.append(self.field(f"{path}.notValues", attribute, c.not_values, True, c.key))
        return tuple(out)

    def _fields(self, path: str, spec: Any, table: Sequence[tuple[str, str, str]]) -> tuple[FieldMatcher, ...]:
        out = []
        for name, camel, attribute in table:
            for negate, attr_name, yaml_name in ((False, name, camel), (True, f"not_{name}", _not(camel))):
                values = getattr(spec, attr_name)
                if values:
                    out.append(self.field(f"{path}.{yaml_name}", attribute, values, negate))
        return tuple(out)


def _glob(value: str) -> str:
    """Istio: ``strings.Replace(value, "*", ".*")`` - the rest taken literally."""
    return ".*".join(re.escape(part) for part in value.split("*"))


def _not(camel: str) -> str:
    return "not" + camel[0].upper() + camel[1:]


_COSTS = {"destination.port": 0, "request.method": 1, "connection.sni": 1, "source.principal": 2,
          "request.host": 2, "request.path": 3, "source.ip": 3, "destination.ip": 3, "remote.ip": 4,
          "source.namespace": 4, "source.serviceAccount": 4, "request.headers": 5}
_SOURCE_FIELDS = (("principals", "principals", "source.principal"),
                  ("request_principals", "requestPrincipals", "request.auth.principal"),
                  ("namespaces", "namespaces", "source.namespace"),
                  ("service_accounts", "serviceAccounts", "source.serviceAccount"),
                  ("ip_blocks", "ipBlocks", "source.ip"),
                  ("remote_ip_blocks", "remoteIpBlocks", "remote.ip"))
_OPERATION_FIELDS = (("hosts", "hosts", "request.host"), ("ports", "ports", "destination.port"),
                     ("methods", "methods", "request.method"), ("paths", "paths", "request.path"))
