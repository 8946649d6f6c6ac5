"""Inbound authorization: Istio's AuthorizationPolicy evaluation over compiled matchers.

Theory of operation. ``Authorizer.compile`` picks the policies that apply to the workload
and compiles each rule twice - once for HTTP requests, once for TCP connections - into
tuples of ``FieldMatcher`` (``_authz_match``). A check reads only those tuples and
returns decisions built at compile time, so the per-request cost is the matching itself.

Which policies apply (pilot ``AuthorizationPolicies.ListAuthorizationPolicies``): those in
the root namespace (``istio-system``) and in the workload's namespace whose
``selector.matchLabels`` the workload carries - root-namespace selectors reach matching
workloads of every namespace. A policy with ``targetRef(s)`` instead applies only to the
proxies named in ``targets``: ``(kind, name)`` pairs such as ``("Gateway", "ingress")``;
Istio binds Service and ServiceEntry targets to waypoints, never to a sidecar, so a
sidecar passes no targets and such policies skip it. GatewayClass targets bind only from
the root namespace, the others only from the workload's own namespace.

Evaluation is Istio's: CUSTOM, then DENY (any match denies), then ALLOW (when at least one
ALLOW policy applies the request must match one of its rules; an ALLOW policy without
rules matches nothing - the ``allow-nothing`` sample), else allow. AUDIT policies never
change the outcome; a request any of them matches is marked ``audited``.

Deliberate limits, each what Istio or Envoy does in the same situation:

* CUSTOM (external authorizers) is not supported: a request a CUSTOM rule matches - one
  Istio would send to the ext_authz provider - is denied, and the reason says so.
* No JWT yet: ``requestPrincipals`` and ``request.auth.*`` values never match; their
  ``not`` forms always do (Envoy negates a matcher that found nothing), so the common
  "DENY notRequestPrincipals ['*']" denies every HTTP request, as it must without JWTs.
* TCP: ``hosts``, ``methods``, ``paths``, ``requestPrincipals``, ``request.headers`` and
  ``request.auth.*`` are HTTP-only. Istio's builder (pilot ``authz/model`` ``checkError``):
  for ALLOW the error "will make all rules in the current permission ignored, effectively
  result in a smaller allow policy" - the whole rule is skipped; for DENY and AUDIT (and
  CUSTOM) it is ignored, "effectively resulting in a wider deny": only the HTTP-only field
  is dropped, so a DENY rule made only of HTTP fields denies every TCP connection.
* Principals follow pilot ``trustdomain.Bundle.ReplaceTrustDomainAliases``: a principal
  ``<td>/ns/<ns>/sa/<sa>`` (five ``/``-parts, ``td`` not ``*``) whose trust domain is
  ``cluster.local`` or matches the trust domain or an alias stands for one principal per
  member of [trust domain, *aliases]; other principals are used as written. So
  ``cluster.local/...`` means "this mesh" whatever its trust domain - and a literal
  ``cluster.local`` peer matches only if ``cluster.local`` is the trust domain or an alias.
* ``hosts`` match the whole ``:authority``, port included, case-insensitively: write
  ``example.com:*`` as well to match requests that name a port (Istio's advice).
* Among several matching DENY (or ALLOW) policies the one named is the first in
  (namespace, name, rule) order, close to Envoy's sorted ``ns[..]-policy[..]-rule[..]`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from topology import AuthorizationPolicy, Resource
from topology._security import Action, Rule

from ._authz_match import CLUSTER_LOCAL, AuthzRequest, Ctx, FieldCompiler, FieldMatcher
from ._peerauth import ROOT_NAMESPACE, selects

DENIED_STATUS = 403  # Envoy RBAC filter's local reply: 403 Forbidden ...
DENIED_BODY = b"RBAC: access denied"  # ... with this body

Fields = tuple[FieldMatcher, ...]
Step = tuple[Callable[[Ctx], Any], Callable[[Any], bool], bool]
Steps = tuple[Step, ...]
Plan = tuple[tuple[Steps, "AuthzDecision"], ...]


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """Allowed or not, and why: the policy and rule that decided, or why none did."""

    allowed: bool
    reason: str
    policy: str | None = None
    """``namespace/name`` of the deciding AuthorizationPolicy."""
    rule: int | None = None
    """Index in that policy's ``rules``."""
    action: Action | None = None
    audited: bool = False
    audit_policy: str | None = None
    """``namespace/name`` of the first AUDIT policy that matched."""

    @property
    def status(self) -> int | None:
        """403 for a denial (send ``DENIED_BODY``); None when the request may pass."""
        return None if self.allowed else DENIED_STATUS


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: every ``when``, any ``from`` (none: any), any ``to`` (none: any)."""

    index: int
    when: Fields
    sources: tuple[Fields, ...]
    operations: tuple[Fields, ...]
    skipped: str = ""
    """Non-empty when the rule can never match here (an ALLOW rule with HTTP fields on TCP): why."""

    def why_not(self, ctx: Ctx) -> str | None:
        if self.skipped:
            return self.skipped
        for f in self.when:
            if (why := f.why_not(ctx)) is not None:
                return why
        for group in (self.sources, self.operations):
            if group and not _any_all(group, ctx):
                return "; ".join(next(w for f in fields if (w := f.why_not(ctx)) is not None) for fields in group)
        return None

    def steps(self) -> Steps | None:
        """The rule as one AND of (getter, test, negate), cheapest first; None when it never matches.
        A ``from`` or ``to`` with several entries stays one OR step."""
        if self.skipped:
            return None
        fields = list(self.when)
        either: list[Step] = []
        for group in (self.sources, self.operations):
            if len(group) == 1:
                fields.extend(group[0])
            elif group:
                either.append((_itself, lambda ctx, g=group: _any_all(g, ctx), False))
        fields.sort(key=lambda f: f.cost)
        return tuple((f.get, f.test, f.negate) for f in fields) + tuple(either)

    def for_tcp(self, action: Action) -> "CompiledRule":
        http = [f.path for f in (*self.when, *(f for s in self.sources for f in s),
                                 *(f for o in self.operations for f in o)) if f.http_only]
        if not http:
            return self
        if action is Action.ALLOW:
            return replace(self, skipped=f"rules[{self.index}]: ignored for TCP, it uses HTTP-only {', '.join(http)}")
        keep = lambda fs: tuple(f for f in fs if not f.http_only)  # noqa: E731
        return replace(self, when=keep(self.when), sources=tuple(keep(s) for s in self.sources),
                       operations=tuple(keep(o) for o in self.operations))


def _itself(ctx: Ctx) -> Ctx:
    return ctx


def _any_all(groups: tuple[Fields, ...], ctx: Ctx) -> bool:
    if not groups:
        return True
    for fields in groups:
        for f in fields:
            if f.test(f.get(ctx)) == f.negate:
                break
        else:
            return True
    return False


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    key: str
    """``namespace/name``."""
    action: Action
    http: tuple[CompiledRule, ...]
    tcp: tuple[CompiledRule, ...]
    decisions: tuple[AuthzDecision, ...]
    """The decision for a match of each rule, built once."""

    @classmethod
    def compile(cls, res: Resource, trust_domains: tuple[str, ...]) -> "CompiledPolicy":
        spec: AuthorizationPolicy = res.spec
        key = f"{res.namespace}/{res.name}"
        compiler = FieldCompiler(trust_domains, res.namespace)
        http = tuple(_compile_rule(compiler, i, rule) for i, rule in enumerate(spec.rules))
        return cls(key, spec.action, http, tuple(r.for_tcp(spec.action) for r in http),
                   tuple(_match_decision(key, spec, i) for i in range(len(spec.rules))))

    def plan(self, tcp: bool) -> Plan:
        return tuple((steps, self.decisions[r.index]) for r in (self.tcp if tcp else self.http)
                     if (steps := r.steps()) is not None)


def _compile_rule(c: FieldCompiler, index: int, rule: Rule) -> CompiledRule:
    base = f"rules[{index}]"
    when = tuple(f for i, cond in enumerate(rule.when) for f in c.condition(f"{base}.when[{i}]", cond))
    sources = tuple(c.source(f"{base}.from[{i}].source", f.source) if f.source is not None else ()
                    for i, f in enumerate(rule.from_ or ()))
    operations = tuple(c.operation(f"{base}.to[{i}].operation", t.operation) if t.operation is not None else ()
                       for i, t in enumerate(rule.to or ()))
    return CompiledRule(index, when, sources, operations)


def _match_decision(key: str, spec: AuthorizationPolicy, index: int) -> AuthzDecision:
    where = f"AuthorizationPolicy {key} rules[{index}]"
    if spec.action is Action.ALLOW:
        return AuthzDecision(True, f"allowed by {where}", key, index, Action.ALLOW)
    if spec.action is Action.CUSTOM:
        provider = spec.provider.name if spec.provider is not None else ""
        return AuthzDecision(False, f"denied by {where}: action CUSTOM (provider {provider!r}) is not supported by "
                                    "meshfed, so requests for the external authorizer are refused", key, index,
                             Action.CUSTOM)
    if spec.action is Action.AUDIT:
        return AuthzDecision(True, f"audited by {where}", key, index, Action.AUDIT)
    return AuthzDecision(False, f"denied by {where}", key, index, Action.DENY)


class Authorizer:
    """Every AuthorizationPolicy that applies to one workload, compiled; ``check`` per request."""

    __slots__ = ("namespace", "custom", "deny", "allow", "audit", "_hops", "_no_allow", "_default", "_plans")

    def __init__(self, namespace: str, policies: Iterable[CompiledPolicy], num_trusted_proxies: int = 0) -> None:
        by_action: dict[Action, list[CompiledPolicy]] = {a: [] for a in Action}
        for p in sorted(policies, key=lambda p: p.key):
            by_action[p.action].append(p)
        self.namespace = namespace
        self.custom, self.deny = tuple(by_action[Action.CUSTOM]), tuple(by_action[Action.DENY])
        self.allow, self.audit = tuple(by_action[Action.ALLOW]), tuple(by_action[Action.AUDIT])
        self._hops = num_trusted_proxies
        names = ", ".join(p.key for p in self.allow)
        self._no_allow = AuthzDecision(False, f"no ALLOW policy matched ({len(self.allow)} applied: {names})")
        self._default = AuthzDecision(True, "allowed: no DENY policy matched and no ALLOW policy applies"
                                      if self.deny or self.custom else "allowed: no AuthorizationPolicy applies")
        # per protocol: (CUSTOM then DENY, ALLOW, AUDIT) as flat lists of (steps, decision)
        self._plans = {tcp: tuple(sum((p.plan(tcp) for p in group), ()) for group in
                                  ((*self.custom, *self.deny), self.allow, self.audit)) for tcp in (False, True)}

    @classmethod
    def compile(cls, resources: Iterable[Resource], *, namespace: str, labels: Mapping[str, str] | None = None,
                root_namespace: str = ROOT_NAMESPACE, trust_domain: str = CLUSTER_LOCAL,
                trust_domain_aliases: Iterable[str] = (), num_trusted_proxies: int = 0,
                targets: Collection[tuple[str, str]] = ()) -> "Authorizer":
        """Compile the AuthorizationPolicies among ``resources`` (other kinds are skipped) that apply
        to the workload in ``namespace`` with ``labels``; ``targets`` names this proxy for targetRefs."""
        labels = labels or {}
        domains = tuple(dict.fromkeys((trust_domain, *trust_domain_aliases)))
        picked = [CompiledPolicy.compile(r, domains) for r in resources if isinstance(r.spec, AuthorizationPolicy)
                  and applies(r, namespace, labels, root_namespace, targets)]
        return cls(namespace, picked, num_trusted_proxies)

    def check(self, request: AuthzRequest) -> AuthzDecision:
        ctx = Ctx(request, self._hops)
        refuse, allow, audit = self._plans[request.tcp]
        decision = _first(refuse, ctx)
        if decision is None:
            decision = (_first(allow, ctx) or self._no_allow) if self.allow else self._default
        if audit:
            audited = _first(audit, ctx)
            if audited is not None:
                return replace(decision, audited=True, audit_policy=audited.policy)
        return decision

    def explain(self, request: AuthzRequest) -> tuple[str, ...]:
        """Per policy and rule, in evaluation order: "matched" or the first field that refused."""
        ctx = Ctx(request, self._hops)
        lines = []
        for p in (*self.custom, *self.deny, *self.allow, *self.audit):
            rules = p.tcp if request.tcp else p.http
            if not rules:
                lines.append(f"{p.action.value} {p.key}: no rules, matches nothing")
            for rule in rules:
                why = rule.why_not(ctx)
                lines.append(f"{p.action.value} {p.key} {why or f'rules[{rule.index}]: matched'}")
        return tuple(lines)

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(p.key for p in (*self.custom, *self.deny, *self.allow, *self.audit))

    def __repr__(self) -> str:
        return (f"<Authorizer {self.namespace} [{len(self.custom)} CUSTOM, {len(self.deny)} DENY, "
                f"{len(self.allow)} ALLOW, {len(self.audit)} AUDIT]>")


def _first(plan: Plan, ctx: Ctx) -> AuthzDecision | None:
    """The decision of the first rule whose every step passes."""
    for steps, decision in plan:
        for get, test, negate in steps:
            if test(get(ctx)) == negate:
                break
        else:
            return decision
    return None


def applies(res: Resource, namespace: str, labels: Mapping[str, str], root_namespace: str,
            targets: Collection[tuple[str, str]]) -> bool:
    """Whether the AuthorizationPolicy ``res`` reaches the workload (see the module docstring)."""
    spec: AuthorizationPolicy = res.spec
    refs = spec.target_refs or ((spec.target_ref,) if spec.target_ref is not None else ())
    if refs:
        return any((ref.kind, ref.name) in targets
                   and res.namespace == (root_namespace if ref.kind == "GatewayClass" else namespace) for ref in refs)
    return res.namespace in (namespace, root_namespace) and selects(spec.selector, labels)
