"""security.istio.io: PeerAuthentication, AuthorizationPolicy and RequestAuthentication.

Field names, defaults and the validation rules are Istio's (istio/api security/v1beta1
protos; pilot's ``ValidateAuthorizationPolicy`` / ``ValidatePeerAuthentication`` /
``ValidateRequestAuthentication`` and ``pkg/config/security``), with messages that name
the field and quote what was found instead of "invalid policy x.y: ...".
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from dataclasses import dataclass
from ._decode import Check, describe, opt
from ._duration import Duration


# -- selection: shared by the three kinds ------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkloadSelector:
    """Which workloads (pods) of the policy's namespace the policy applies to."""

    match_labels: dict[str, str] = opt(factory=dict)
    """Labels a workload must carry, all of them. Wildcards are not supported."""

    def _check(self, c: Check) -> None:
        for k, v in self.match_labels.items():
            if k == "":
                c.error("matchLabels", f"empty label key is not supported in a selector; found {describe(f'{k}={v}')}")
            if "*" in k or "*" in v:
                c.error(f"matchLabels.{k}", f"wildcards are not supported in a selector; found {describe(f'{k}={v}')}")
        if not self.match_labels:
            c.warning("", "workload selector specified without labels: it selects every workload of the namespace")


# istio pilot ``allowedTargetRefs``: (canonical group, kind)
_TARGET_KINDS = {("core", "Service"), ("networking.istio.io", "ServiceEntry"),
                 ("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "GatewayClass")}


@dataclass(frozen=True, slots=True)
class PolicyTargetReference:
    """A Service, ServiceEntry or Gateway the policy attaches to, instead of a selector."""

    name: str = opt(required=True)
    kind: str = opt(required=True)
    group: str = ""
    """API group of the target; empty means the core group (Service)."""
    namespace: str = ""
    """Must stay empty: Istio does not support cross-namespace references."""

    def _check(self, c: Check) -> None:
        if self.namespace:
            c.error("namespace", f"must not be set: cross-namespace references are not supported; found {describe(self.namespace)}")
        group = self.group or "core"
        if (group, self.kind) not in _TARGET_KINDS:
            allowed = ", ".join(f"{g}/{k}" for g, k in sorted(_TARGET_KINDS))
            c.error("kind", f"a policy may target only {allowed}; found {describe(f'{self.group}/{self.kind}')}")


def _check_attachment(c: Check, selector: WorkloadSelector | None, target_ref: PolicyTargetReference | None,
                      target_refs: tuple[PolicyTargetReference, ...]) -> None:
    set_ = [k for k, v in (("selector", selector), ("targetRef", target_ref), ("targetRefs", target_refs or None))
            if v is not None]
    if len(set_) > 1:
        c.error(set_[1], f"only one of selector, targetRef and targetRefs may be set; found {' and '.join(set_)}")


# -- PeerAuthentication ------------------------------------------------------------------
class MtlsMode(enum.Enum):
    UNSET = "UNSET"
    """Inherit from the parent policy (namespace, then mesh); the mesh default is PERMISSIVE."""
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    """Accept plaintext and mutual TLS."""
    STRICT = "STRICT"
    """Accept mutual TLS only."""


@dataclass(frozen=True, slots=True)
class PeerMtls:
    mode: MtlsMode = MtlsMode.UNSET
    """Defaults to UNSET (inherit)."""


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """Which inbound connections a workload accepts: plaintext, mutual TLS, or both.

    In namespace ``istio-system`` (the root namespace) without a selector it is the
    mesh-wide policy; elsewhere without a selector the namespace's.
    """

    selector: WorkloadSelector | None = None
    """Workloads it applies to; unset means every workload of the namespace."""
    mtls: PeerMtls | None = None
    """Unset means UNSET: inherit."""
    port_level_mtls: dict[int, PeerMtls] = opt(factory=dict)
    """Per-port override, keyed by the workload (container) port. Needs a selector."""

    def __post_init__(self) -> None:
        # YAML reads `8080:` as an integer and `"8080":` as a string; Istio's map is uint32.
        norm = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in self.port_level_mtls.items()}
        object.__setattr__(self, "port_level_mtls", norm)

    @property
    def mode(self) -> MtlsMode:
        return self.mtls.mode if self.mtls is not None else MtlsMode.UNSET

    def _check(self, c: Check) -> None:
        for k in self.port_level_mtls:
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 65535:
                c.error(f"portLevelMtls.{k}", f"keys must be port numbers 1..65535; found {describe(k)}")
        if self.port_level_mtls and (self.selector is None or not self.selector.match_labels):
            c.error("portLevelMtls", "a mesh- or namespace-wide PeerAuthentication cannot have port-level mTLS: "
                                     "add a selector with matchLabels; found no selector labels")


# -- AuthorizationPolicy -----------------------------------------------------------------
class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Source:
    """Who sends the request. Every field set must match (AND); values within a field OR."""

    principals: tuple[str, ...] = ()
    """Peer identities ``<trust-domain>/ns/<ns>/sa/<sa>`` (no ``spiffe://``), from mTLS."""
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    """``<iss>/<sub>`` of a validated JWT."""
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    """Namespace of the peer identity (needs mTLS)."""
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    """``<ns>/<sa>`` of the peer identity; not combinable with principals or namespaces."""
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    """IPs or CIDRs of the direct peer (source address of the connection)."""
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    """IPs or CIDRs of the original client (X-Forwarded-For / proxy protocol)."""
    not_remote_ip_blocks: tuple[str, ...] = ()

    def _check(self, c: Check) -> None:
        for key in _SOURCE_KEYS:
            values = getattr(self, key)
            _check_not_empty_values(c, key, values)
            if key.endswith("ip_blocks"):
                _check_ips(c, _camel(key), values)
        for key in ("principals", "not_principals"):
            for i, v in enumerate(getattr(self, key)):
                if v.startswith("spiffe://"):
                    c.warning(f"{_camel(key)}[{i}]", "principals are written without the 'spiffe://' prefix "
                                                    f"(<trust-domain>/ns/<ns>/sa/<sa>); found {describe(v)}")
        for key in ("service_accounts", "not_service_accounts"):
            for i, v in enumerate(getattr(self, key)):
                ns, sep, sa = v.partition("/")
                if v and (not sep or not ns or not sa or "/" in sa):
                    c.error(f"{_camel(key)}[{i}]", f"must be <namespace>/<service-account>; found {describe(v)}")
        if (self.service_accounts or self.not_service_accounts) and (
                self.principals or self.not_principals or self.namespaces or self.not_namespaces):
            c.error("serviceAccounts" if self.service_accounts else "notServiceAccounts",
                    "cannot be set together with principals or namespaces")

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, k) for k in _SOURCE_KEYS)

    @property
    def has_tcp_attributes(self) -> bool:
        """True when the source matches on something a plain TCP connection carries."""
        return any(getattr(self, k) for k in _SOURCE_KEYS if "request" not in k)


_SOURCE_KEYS = ("principals", "not_principals", "request_principals", "not_request_principals",
                "namespaces", "not_namespaces", "service_accounts", "not_service_accounts",
                "ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks")

# pkg/config/security: a path template may use only {*} and {**} as whole segments.
_UNSUPPORTED_PATH_TEMPLATE = re.compile(r"/\{\w+=\*[*]?\}|\{\w*\}|/\*[*]?|\*[*]?/")


@dataclass(frozen=True, slots=True)
class Operation:
    """What the request does. Every field set must match (AND); values within a field OR."""

    hosts: tuple[str, ...] = ()
    """``Host``/``:authority`` values; ``*`` prefix or suffix wildcards, case-insensitive."""
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    """Destination ports as strings, e.g. ``"8080"``."""
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    """Exact, ``prefix*``, ``*suffix`` or templates with ``{*}``/``{**}`` segments."""
    not_paths: tuple[str, ...] = ()

    def _check(self, c: Check) -> None:
        for key in _OPERATION_KEYS:
            _check_not_empty_values(c, key, getattr(self, key))
        for key in ("ports", "not_ports"):
            _check_ports(c, _camel(key), getattr(self, key))
        for key in ("paths", "not_paths"):
            for i, p in enumerate(getattr(self, key)):
                if ("{*}" in p or "{**}" in p) and _UNSUPPORTED_PATH_TEMPLATE.search(p):
                    c.error(f"{_camel(key)}[{i}]", "invalid or unsupported path template: only whole segments "
                                                  f"'{{*}}' and '{{**}}' are allowed; found {describe(p)}")

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, k) for k in _OPERATION_KEYS)


_OPERATION_KEYS = ("hosts", "not_hosts", "ports", "not_ports", "methods", "not_methods", "paths", "not_paths")


@dataclass(frozen=True, slots=True)
class RuleFrom:
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class RuleTo:
    operation: Operation | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    """An extra match on a request attribute (``when``)."""

    key: str = opt(required=True)
    """One of Istio's condition keys, e.g. ``request.headers[x-token]`` or ``source.ip``."""
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def _check(self, c: Check) -> None:
        problem = condition_key_problem(self.key)
        if problem:
            c.error("key", f"{problem}; found {describe(self.key)}")
            return
        if not self.values and not self.not_values:
            c.error("", f"at least one of values or notValues must be set for key {self.key!r}")
        for field_ in ("values", "not_values"):
            values = getattr(self, field_)
            _check_not_empty_values(c, field_, values)
            if self.key in ("source.ip", "remote.ip", "destination.ip"):
                _check_ips(c, _camel(field_), values)
            elif self.key == "destination.port":
                _check_ports(c, _camel(field_), values)


_PLAIN_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "source.serviceAccount",
               "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
               "destination.ip", "destination.port", "connection.sni")
_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")


def condition_key_problem(key: str) -> str:
    """Why ``key`` is not an Istio condition key ("" when it is one)."""
    if key in _PLAIN_KEYS:
        return ""
    for prefix in _MAP_KEYS:
        if key.startswith(prefix):
            head, sep, rest = key.partition("[")
            if sep and head and rest.endswith("]") and len(rest) > 1:
                return ""
            return f"bad key: {prefix.rstrip('.')} keys have the form {head or prefix}[NAME]"
    if key == "destination.namespace":
        return "attribute destination.namespace is replaced by the policy's metadata.namespace"
    if key.startswith("destination.labels"):
        return "attribute destination.labels is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return ("unknown condition key; known keys are request.headers[NAME], request.auth.claims[NAME], "
            + ", ".join(_PLAIN_KEYS) + ", experimental.envoy.filters.*[NAME]")


@dataclass(frozen=True, slots=True)
class Rule:
    """Matches when any ``from``, any ``to`` and every ``when`` match; an empty rule matches all."""

    from_: tuple[RuleFrom, ...] | None = None
    to: tuple[RuleTo, ...] | None = None
    when: tuple[Condition, ...] = ()

    def _check(self, c: Check) -> None:
        for name, items, inner in (("from", self.from_, "source"), ("to", self.to, "operation")):
            if items is not None and len(items) == 0:
                c.error(name, f"`{name}` must not be empty; found an empty list (leave it out to match any)")
            for i, item in enumerate(items or ()):
                value = getattr(item, inner)
                if _has_errors_under(c, f"{name}[{i}]"):
                    continue  # an item dropped for a type error must not also read as "empty"
                if value is None:
                    c.error(f"{name}[{i}]", f"`{name}.{inner}` must be set")
                elif value.is_empty:
                    c.error(f"{name}[{i}].{inner}", f"`{name}.{inner}` must not be empty; found no fields set")

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(f.source for f in self.from_ or () if f.source is not None)

    @property
    def operations(self) -> tuple[Operation, ...]:
        return tuple(t.operation for t in self.to or () if t.operation is not None)


@dataclass(frozen=True, slots=True)
class ExtensionProvider:
    name: str = ""
    """Name of an extension provider defined in mesh config (an external authorizer)."""


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """Access control for workloads: ALLOW / DENY / AUDIT / CUSTOM rules on who may do what.

    Evaluated as Istio does: CUSTOM, then DENY, then ALLOW; when no ALLOW policy selects
    a workload every request not denied is allowed. An ALLOW policy without rules (an
    empty spec: the ``allow-nothing`` sample) matches nothing, so it denies everything.
    """

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    rules: tuple[Rule, ...] = ()
    """Requests matching any rule get the action. No rules: matches nothing."""
    action: Action = Action.ALLOW
    """Defaults to ALLOW."""
    provider: ExtensionProvider | None = None
    """The external authorizer; required with CUSTOM and only allowed with it."""

    def _check(self, c: Check) -> None:
        _check_attachment(c, self.selector, self.target_ref, self.target_refs)
        if self.action is Action.CUSTOM:
            if not self.rules:
                c.error("rules", "CUSTOM action without rules is never triggered; add an empty rule {} "
                                 "to trigger it for every request")
            elif self.provider is None or not self.provider.name:
                c.error("provider.name" if self.provider is not None else "provider",
                        "a CUSTOM action needs provider.name (an extension provider); found none")
            for i, rule in enumerate(self.rules):
                _check_custom_rule(c.at(f"rules[{i}]"), rule)
        elif self.provider is not None:
            c.error("provider", f"provider is only allowed with action CUSTOM; found action {self.action.value}")
        if self.action is Action.DENY and not self.rules:
            c.error("rules", "DENY action without rules is never triggered; add an empty rule {} "
                             "to deny every request")
        if self.action is Action.DENY:
            for i, rule in enumerate(self.rules):
                from_tcp = any(s.has_tcp_attributes for s in rule.sources)
                to_tcp = any(o.ports or o.not_ports for o in rule.operations)
                if (rule.sources and not rule.operations and not from_tcp) or (rule.operations and not to_tcp):
                    c.warning(f"rules[{i}]", "this DENY rule uses only HTTP attributes, so it denies all traffic "
                                             "to TCP ports under its scope; name the port explicitly")


def _check_custom_rule(c: Check, rule: Rule) -> None:
    unsupported = ("principals", "not_principals", "request_principals", "not_request_principals",
                   "namespaces", "not_namespaces", "service_accounts", "not_service_accounts")
    for i, f in enumerate(rule.from_ or ()):
        for key in unsupported:
            if f.source is not None and getattr(f.source, key):
                c.error(f"from[{i}].source.{_camel(key)}", "is not supported with action CUSTOM")
    for i, cond in enumerate(rule.when):
        if cond.key in ("source.namespace", "source.serviceAccount", "source.principal") \
                or cond.key.startswith("request.auth."):
            c.error(f"when[{i}].key", f"is not supported with action CUSTOM; found {describe(cond.key)}")


# -- RequestAuthentication ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JwtHeader:
    name: str = opt(required=True)
    prefix: str = ""
    """Stripped before the token, e.g. ``"Bearer "``."""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str = opt(required=True)
    claim: str = opt(required=True)


_HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    """The JSON Web Key Set inline, instead of ``jwksUri``."""
    from_headers: tuple[JwtHeader, ...] = ()
    """Defaults to ``Authorization: Bearer <token>``."""
    from_params: tuple[str, ...] = ()
    """Defaults to ``access_token``."""
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    forward_original_token: bool = False
    """Defaults to false: the token is removed before the request reaches the app."""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout: Duration | None = None
    """JWKS fetch timeout (a duration); Istio's default is 5s."""

    def _check(self, c: Check) -> None:
        if not self.issuer and not self.jwks_uri:
            c.error("", "issuer or jwksUri must be set")
        _check_not_empty_values(c, "audiences", self.audiences)
        if self.jwks_uri and not (self.jwks_uri.startswith("http://") or self.jwks_uri.startswith("https://")):
            c.error("jwksUri", f"the URI scheme must be http or https; found {describe(self.jwks_uri)}")
        if self.jwks:
            try:
                parsed = json.loads(self.jwks)
            except ValueError as exc:
                c.error("jwks", f"is not a JSON Web Key Set: {exc}")
            else:
                if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
                    c.error("jwks", "is not a JSON Web Key Set: expected an object with a 'keys' list")
        _check_not_empty_values(c, "from_params", self.from_params)
        _check_not_empty_values(c, "from_cookies", self.from_cookies)
        for i, h in enumerate(self.output_claim_to_headers):
            if h.header and not _HEADER_NAME.match(h.header):
                c.error(f"outputClaimToHeaders[{i}].header", f"is not a valid header name; found {describe(h.header)}")


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    """Which JWTs a workload accepts; requests with an invalid token are rejected (401)."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    jwt_rules: tuple[JwtRule, ...] = ()

    def _check(self, c: Check) -> None:
        _check_attachment(c, self.selector, self.target_ref, self.target_refs)


# -- helpers -----------------------------------------------------------------------------
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _has_errors_under(c: Check, rel: str) -> bool:
    prefix = c.path(rel)
    return any(d.is_error and (d.path == prefix or d.path.startswith((prefix + ".", prefix + "[")))
               for d in c.decoder.diagnostics)


def _check_not_empty_values(c: Check, field_: str, values: tuple[str, ...]) -> None:
    for i, v in enumerate(values):
        if v == "":
            c.error(f"{_camel(field_)}[{i}]", "empty value not allowed; found string ''")


def _check_ips(c: Check, key: str, values: tuple[str, ...]) -> None:
    for i, v in enumerate(values):
        if not v:
            continue
        try:
            if "/" in v:
                ipaddress.ip_network(v, strict=False)
            else:
                ipaddress.ip_address(v)
        except ValueError:
            what = "CIDR range" if "/" in v else "IP address"
            c.error(f"{key}[{i}]", f"bad {what}; found {describe(v)}")


def _check_ports(c: Check, key: str, values: tuple[str, ...]) -> None:
    for i, v in enumerate(values):
        if v and not (v.isascii() and v.isdigit() and 1 <= int(v) <= 65535):
            c.error(f"{key}[{i}]", f"must be a port number 1..65535 written as a string; found {describe(v)}")
