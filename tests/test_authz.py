"""AuthorizationPolicy evaluation as Istio does it: every field and not-form, order, TCP, trust domains."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from gateway._authz import DENIED_BODY, DENIED_STATUS, Authorizer
from gateway._authz_match import AuthzRequest, expand_principals, template_regex
from topology import load_paths, load_text
from topology._security import Action
from trustdomain import SpiffeId

AUTHZ_HTTP = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio" / "docs" / "security" / "authz-http"


def ap(spec: str, name: str = "p", namespace: str = "foo") -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n" + textwrap.indent(textwrap.dedent(spec).rstrip("\n") + "\n", "  "))


def authorizer(*docs: str, namespace: str = "foo", labels: dict[str, str] | None = None, **kw) -> Authorizer:
    result = load_text("---\n".join(docs), "ap.yaml")
    assert [str(d) for d in result.errors] == []
    return Authorizer.compile(result.resources, namespace=namespace,
                              labels={"app": "httpbin"} if labels is None else labels, **kw)


REQUEST = AuthzRequest(
    source_ip="10.1.2.3", destination_port=8000, peer=SpiffeId.parse("spiffe://cluster.local/ns/foo/sa/sleep"),
    destination_ip="10.9.0.5", sni="outbound_.8000_._.httpbin.foo.svc.cluster.local", method="GET",
    path="/status/200?x=1#frag", host="httpbin.foo:8000",
    headers=[(b"x-token", b"abc"), (b"User-Agent", b"curl/8"), (b"x-multi", b"a"), (b"x-multi", b"b"),
             (b"x-empty", b"")])
PLAINTEXT = dataclasses.replace(REQUEST, peer=None)


def src(fields: str) -> str:
    return f"{{from: [{{source: {{{fields}}}}}]}}"


def op(fields: str) -> str:
    return f"{{to: [{{operation: {{{fields}}}}}]}}"


def when(key: str, values: str = "", not_values: str = "") -> str:
    parts = [f"key: '{key}'"] + ([f"values: {values}"] if values else []) + ([f"notValues: {not_values}"] if not_values else [])
    return f"{{when: [{{{', '.join(parts)}}}]}}"


# (rule, request, matches)
FIELD_CASES = [
    # principals: exact, prefix, suffix, presence; plaintext has none
    (src('principals: ["cluster.local/ns/foo/sa/sleep"]'), REQUEST, True),
    (src('principals: ["cluster.local/ns/foo/sa/other"]'), REQUEST, False),
    (src('principals: ["cluster.local/ns/foo/*"]'), REQUEST, True),
    (src('principals: ["*/sa/sleep"]'), REQUEST, True),
    (src('principals: ["*"]'), REQUEST, True),
    (src('principals: ["*"]'), PLAINTEXT, False),
    (src('notPrincipals: ["cluster.local/ns/foo/sa/sleep"]'), REQUEST, False),
    (src('notPrincipals: ["cluster.local/ns/bar/*"]'), REQUEST, True),
    (src('notPrincipals: ["*"]'), PLAINTEXT, True),
    # namespaces (from the peer's SPIFFE ID)
    (src('namespaces: ["foo"]'), REQUEST, True),
    (src('namespaces: ["bar", "foo"]'), REQUEST, True),
    (src('namespaces: ["fo"]'), REQUEST, False),
    (src('namespaces: ["f*"]'), REQUEST, True),
    (src('namespaces: ["foo"]'), PLAINTEXT, False),
    (src('notNamespaces: ["foo"]'), REQUEST, False),
    (src('notNamespaces: ["bar"]'), REQUEST, True),
    # serviceAccounts
    (src('serviceAccounts: ["foo/sleep"]'), REQUEST, True),
    (src('serviceAccounts: ["bar/sleep"]'), REQUEST, False),
    (src('notServiceAccounts: ["foo/sleep"]'), REQUEST, False),
    # ipBlocks: the direct peer
    (src('ipBlocks: ["10.1.0.0/16"]'), REQUEST, True),
    (src('ipBlocks: ["10.1.2.3"]'), REQUEST, True),
    (src('ipBlocks: ["10.2.0.0/16", "fd00::/8"]'), REQUEST, False),
    (src('ipBlocks: ["fd00::/8"]'), dataclasses.replace(REQUEST, source_ip="fd00::1"), True),
    (src('notIpBlocks: ["10.1.0.0/16"]'), REQUEST, False),
    (src('notIpBlocks: ["192.168.0.0/16"]'), REQUEST, True),
    # remoteIpBlocks: numTrustedProxies 0, so the peer even with X-Forwarded-For
    (src('remoteIpBlocks: ["10.1.2.3/32"]'), REQUEST, True),
    (src('remoteIpBlocks: ["203.0.113.7"]'),
     dataclasses.replace(REQUEST, headers=[(b"x-forwarded-for", b"203.0.113.7")]), False),
    (src('notRemoteIpBlocks: ["10.0.0.0/8"]'), REQUEST, False),
    # requestPrincipals: no JWT in meshfed yet
    (src('requestPrincipals: ["*"]'), REQUEST, False),
    (src('requestPrincipals: ["https://issuer/sub"]'), REQUEST, False),
    (src('notRequestPrincipals: ["*"]'), REQUEST, True),
    # hosts: the whole authority, case-insensitive
    (op('hosts: ["httpbin.foo:8000"]'), REQUEST, True),
    (op('hosts: ["HTTPBIN.Foo:8000"]'), REQUEST, True),
    (op('hosts: ["httpbin.foo"]'), REQUEST, False),
    (op('hosts: ["httpbin.foo", "httpbin.foo:*"]'), REQUEST, True),
    (op('hosts: ["*.FOO:8000"]'), REQUEST, True),
    (op('hosts: ["*"]'), REQUEST, True),
    (op('hosts: ["*"]'), dataclasses.replace(REQUEST, host=""), False),
    (op('notHosts: ["httpbin.foo:8000"]'), REQUEST, False),
    (op('notHosts: ["evil.example"]'), REQUEST, True),
    # ports
    (op('ports: ["8000"]'), REQUEST, True),
    (op('ports: ["9000"]'), REQUEST, False),
    (op('notPorts: ["8000"]'), REQUEST, False),
    (op('notPorts: ["9000"]'), REQUEST, True),
    # methods
    (op('methods: ["GET", "HEAD"]'), REQUEST, True),
    (op('methods: ["POST"]'), REQUEST, False),
    (op('methods: ["get"]'), REQUEST, False),
    (op('notMethods: ["GET"]'), REQUEST, False),
    (op('notMethods: ["POST"]'), REQUEST, True),
    # paths: query and fragment ignored; exact, prefix, suffix, presence, templates
    (op('paths: ["/status/200"]'), REQUEST, True),
    (op('paths: ["/status"]'), REQUEST, False),
    (op('paths: ["/status/*"]'), REQUEST, True),
    (op('paths: ["*/200"]'), REQUEST, True),
    (op('paths: ["*"]'), REQUEST, True),
    (op('paths: ["/status/{*}"]'), REQUEST, True),
    (op('paths: ["/{*}"]'), REQUEST, False),
    (op('paths: ["/{*}/200"]'), REQUEST, True),
    (op('paths: ["/{*}/{*}"]'), REQUEST, True),
    (op('paths: ["/{**}"]'), REQUEST, True),
    (op('paths: ["/status/{**}"]'), REQUEST, True),
    (op('paths: ["/headers/{**}"]'), REQUEST, False),
    (op('notPaths: ["/status/*"]'), REQUEST, False),
    (op('notPaths: ["/admin/{**}"]'), REQUEST, True),
    # when: request.headers[...] (names case-insensitive, repeated values joined by ',')
    (when("request.headers[X-Token]", '["abc"]'), REQUEST, True),
    (when("request.headers[x-token]", '["a*"]'), REQUEST, True),
    (when("request.headers[x-token]", '["*c"]'), REQUEST, True),
    (when("request.headers[x-token]", '["zzz"]'), REQUEST, False),
    (when("request.headers[x-multi]", '["a,b"]'), REQUEST, True),
    (when("request.headers[x-empty]", '["*"]'), REQUEST, True),
    (when("request.headers[x-missing]", '["*"]'), REQUEST, False),
    (when("request.headers[x-token]", not_values='["abc"]'), REQUEST, False),
    (when("request.headers[x-missing]", not_values='["*"]'), REQUEST, True),
    # when: connection and peer attributes
    (when("source.ip", '["10.1.0.0/16"]'), REQUEST, True),
    (when("source.ip", not_values='["10.1.2.3"]'), REQUEST, False),
    (when("remote.ip", '["10.1.2.3"]'), REQUEST, True),
    (when("source.namespace", '["foo"]'), REQUEST, True),
    (when("source.namespace", not_values='["foo"]'), REQUEST, False),
    (when("source.principal", '["cluster.local/ns/foo/sa/sleep"]'), REQUEST, True),
    (when("source.principal", '["*"]'), PLAINTEXT, False),
    (when("source.serviceAccount", '["sleep"]'), REQUEST, True),  # <name> means the policy's namespace
    (when("source.serviceAccount", '["bar/sleep"]'), REQUEST, False),
    (when("destination.ip", '["10.9.0.0/24"]'), REQUEST, True),
    (when("destination.ip", '["10.8.0.0/24"]'), REQUEST, False),
    (when("destination.port", '["8000"]'), REQUEST, True),
    (when("destination.port", not_values='["8000"]'), REQUEST, False),
    (when("connection.sni", '["*.svc.cluster.local"]'), REQUEST, True),
    (when("connection.sni", '["*"]'), dataclasses.replace(REQUEST, sni=""), False),
    # when: JWT attributes and filter metadata never match without them; not-forms always do
    (when("request.auth.principal", '["*"]'), REQUEST, False),
    (when("request.auth.claims[iss]", '["https://issuer"]'), REQUEST, False),
    (when("request.auth.audiences", not_values='["x"]'), REQUEST, True),
    (when("experimental.envoy.filters.network.mysql_proxy[db.table]", '["[update]"]'), REQUEST, False),
    # combining: AND inside a source/operation, OR across them, AND across when, empty rule matches all
    (src('principals: ["cluster.local/ns/foo/sa/sleep"], namespaces: ["bar"]'), REQUEST, False),
    (src('principals: ["cluster.local/ns/foo/sa/sleep"], ipBlocks: ["10.0.0.0/8"]'), REQUEST, True),
    ('{from: [{source: {namespaces: ["bar"]}}, {source: {namespaces: ["foo"]}}]}', REQUEST, True),
    ('{to: [{operation: {methods: ["POST"]}}, {operation: {paths: ["/status/*"]}}]}', REQUEST, True),
    ('{from: [{source: {namespaces: ["foo"]}}], to: [{operation: {methods: ["POST"]}}]}', REQUEST, False),
    ('{when: [{key: source.ip, values: ["10.1.2.3"]}, {key: destination.port, values: ["9000"]}]}', REQUEST, False),
    ("{}", REQUEST, True),
]


@pytest.mark.parametrize(("rule", "request_", "matches"), FIELD_CASES, ids=[f"{i}:{c[0]}" for i, c in enumerate(FIELD_CASES)])
def test_rule_field_matching(rule: str, request_: AuthzRequest, matches: bool) -> None:
    deny = authorizer(ap(f"action: DENY\nrules: [{rule}]", "deny")).check(request_)
    allow = authorizer(ap(f"action: ALLOW\nrules: [{rule}]", "allow")).check(request_)
    assert (deny.allowed, allow.allowed) == (not matches, matches)


def test_remote_ip_reads_x_forwarded_for_with_trusted_proxies() -> None:
    rule = ap('action: DENY\nrules: [{from: [{source: {remoteIpBlocks: ["203.0.113.7"]}}]}]')
    xff = dataclasses.replace(REQUEST, headers=[(b"x-forwarded-for", b"198.51.100.1, 203.0.113.7"),
                                                (b"X-Forwarded-For", b"10.0.0.9")])
    assert [authorizer(rule, num_trusted_proxies=n).check(xff).allowed for n in (0, 1, 2, 3, 4)] == \
        [True, True, False, True, True]  # 0: peer; 1: 10.0.0.9; 2: 203.0.113.7; 3: 198.51.100.1; 4: too few, peer


# -- evaluation order and decisions --------------------------------------------------------
DENY_GET = ap('action: DENY\nrules: [{to: [{operation: {methods: ["GET"]}}]}]', "deny-get")
DENY_POST = ap('action: DENY\nrules: [{to: [{operation: {methods: ["POST"]}}]}]', "deny-post")
ALLOW_GET = ap('action: ALLOW\nrules: [{to: [{operation: {methods: ["POST"]}}]}, {to: [{operation: {methods: ["GET"]}}]}]',
               "allow-get")
ALLOW_POST = ap('action: ALLOW\nrules: [{to: [{operation: {methods: ["POST"]}}]}]', "allow-post")
ALLOW_NOTHING = ap("{}", "allow-nothing")
AUDIT_GET = ap('action: AUDIT\nrules: [{to: [{operation: {methods: ["GET"]}}]}]', "audit-get")
AUDIT_POST = ap('action: AUDIT\nrules: [{to: [{operation: {methods: ["POST"]}}]}]', "audit-post")
CUSTOM_GET = ap('action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{to: [{operation: {methods: ["GET"]}}]}]', "ext")
CUSTOM_POST = ap('action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{to: [{operation: {methods: ["POST"]}}]}]', "ext")

ORDER_CASES = [
    ("no-policy-allows", [], True, "allowed: no AuthorizationPolicy applies", None, None),
    ("deny-matches", [DENY_GET], False, "denied by AuthorizationPolicy foo/deny-get rules[0]", "foo/deny-get", 0),
    ("deny-not-matching-allows", [DENY_POST], True, "allowed: no DENY policy matched and no ALLOW policy applies",
     None, None),
    ("deny-before-allow", [ALLOW_GET, DENY_GET], False, "denied by AuthorizationPolicy foo/deny-get rules[0]",
     "foo/deny-get", 0),
    ("allow-names-matching-rule", [ALLOW_GET, DENY_POST], True, "allowed by AuthorizationPolicy foo/allow-get rules[1]",
     "foo/allow-get", 1),
    ("allow-applies-but-nothing-matches", [ALLOW_POST], False, "no ALLOW policy matched (1 applied: foo/allow-post)",
     None, None),
    ("allow-nothing-denies", [ALLOW_NOTHING], False, "no ALLOW policy matched (1 applied: foo/allow-nothing)",
     None, None),
    ("any-allow-suffices", [ALLOW_NOTHING, ALLOW_GET], True, "allowed by AuthorizationPolicy foo/allow-get rules[1]",
     "foo/allow-get", 1),
    ("custom-matching-is-refused", [CUSTOM_GET, ALLOW_GET], False,
     "denied by AuthorizationPolicy foo/ext rules[0]: action CUSTOM (provider 'ext-authz') is not supported by "
     "meshfed, so requests for the external authorizer are refused", "foo/ext", 0),
    ("custom-not-matching-falls-through", [CUSTOM_POST], True,
     "allowed: no DENY policy matched and no ALLOW policy applies", None, None),
    ("audit-never-decides", [AUDIT_GET], True, "allowed: no AuthorizationPolicy applies", None, None),
]


@pytest.mark.parametrize(("docs", "allowed", "reason", "policy", "rule"), [c[1:] for c in ORDER_CASES],
                         ids=[c[0] for c in ORDER_CASES])
def test_evaluation_order_and_reason(docs: list[str], allowed: bool, reason: str, policy: str | None,
                                     rule: int | None) -> None:
    decision = authorizer(*docs).check(REQUEST)
    assert (decision.allowed, decision.reason, decision.policy, decision.rule) == (allowed, reason, policy, rule)
    assert decision.status == (None if allowed else DENIED_STATUS)


def test_denial_is_403_rbac_access_denied() -> None:
    assert (DENIED_STATUS, DENIED_BODY) == (403, b"RBAC: access denied")
    assert authorizer(DENY_GET).check(REQUEST).status == 403


def test_first_matching_deny_in_name_order_is_named() -> None:
    second = ap('action: DENY\nrules: [{to: [{operation: {paths: ["/status/*"]}}]}]', "a-deny-status")
    decision = authorizer(DENY_GET, second).check(REQUEST)
    assert (decision.policy, decision.action) == ("foo/a-deny-status", Action.DENY)


def test_audit_marks_the_decision_without_changing_it() -> None:
    denied = authorizer(AUDIT_GET, DENY_GET).check(REQUEST)
    assert (denied.allowed, denied.audited, denied.audit_policy) == (False, True, "foo/audit-get")
    assert denied.reason == "denied by AuthorizationPolicy foo/deny-get rules[0]"
    assert authorizer(AUDIT_POST).check(REQUEST).audited is False


# -- which policies apply ------------------------------------------------------------------
@pytest.mark.parametrize(("doc", "namespace", "labels", "kw", "applies"), [
    (ap("{}", namespace="istio-system"), "foo", {"app": "httpbin"}, {}, True),
    (ap("{}", namespace="istio-system"), "bar", {"app": "anything"}, {}, True),
    (ap("selector: {matchLabels: {app: httpbin}}", namespace="istio-system"), "bar", {"app": "httpbin"}, {}, True),
    (ap("selector: {matchLabels: {app: httpbin}}", namespace="istio-system"), "bar", {"app": "other"}, {}, False),
    (ap("{}", namespace="mesh-root"), "foo", {}, {"root_namespace": "mesh-root"}, True),
    (ap("{}", namespace="mesh-root"), "foo", {}, {}, False),
    (ap("{}", namespace="bar"), "foo", {"app": "httpbin"}, {}, False),
    (ap("selector: {matchLabels: {app: httpbin, version: v1}}"), "foo", {"app": "httpbin"}, {}, False),
    (ap("selector: {matchLabels: {app: httpbin, version: v1}}"), "foo", {"app": "httpbin", "version": "v1"}, {}, True),
    (ap("targetRef: {kind: Service, group: '', name: httpbin}"), "foo", {"app": "httpbin"}, {}, False),
    (ap("targetRef: {kind: Service, group: '', name: httpbin}"), "foo", {},
     {"targets": {("Service", "httpbin")}}, True),
    (ap("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]"), "foo", {},
     {"targets": {("Gateway", "ingress")}}, True),
    (ap("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]", namespace="bar"), "foo",
     {}, {"targets": {("Gateway", "ingress")}}, False),
    (ap("targetRef: {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio}", namespace="istio-system"),
     "foo", {}, {"targets": {("GatewayClass", "istio")}}, True),
    (ap("targetRef: {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio}"),
     "foo", {}, {"targets": {("GatewayClass", "istio")}}, False),
], ids=["root-applies", "root-applies-everywhere", "root-selector-everywhere", "root-selector-narrows",
        "root-configurable", "non-root-other-ns", "other-namespace", "selector-missing-label", "selector-all-labels",
        "service-target-not-a-sidecar", "service-target-named", "gateway-target", "gateway-target-other-ns",
        "gatewayclass-from-root", "gatewayclass-not-from-namespace"])
def test_which_policies_apply(doc: str, namespace: str, labels: dict, kw: dict, applies: bool) -> None:
    # the allow-nothing shape: when it applies, everything is denied
    assert authorizer(doc, namespace=namespace, labels=labels, **kw).check(REQUEST).allowed is (not applies)


def test_other_kinds_are_skipped_and_repr_counts_actions() -> None:
    pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: foo}\nspec: {}\n"
    a = authorizer(pa, DENY_GET, ALLOW_GET, AUDIT_GET, CUSTOM_GET)
    assert repr(a) == "<Authorizer foo [1 CUSTOM, 1 DENY, 1 ALLOW, 1 AUDIT]>"
    assert a.policies == ("foo/ext", "foo/deny-get", "foo/allow-get", "foo/audit-get")


# -- TCP: HTTP-only fields -----------------------------------------------------------------
TCP = AuthzRequest(source_ip="10.1.2.3", destination_port=9000, peer="cluster.local/ns/foo/sa/sleep", tcp=True)


@pytest.mark.parametrize(("doc", "allowed"), [
    (ap('action: ALLOW\nrules: [{to: [{operation: {ports: ["9000"]}}]}]'), True),
    (ap('action: ALLOW\nrules: [{to: [{operation: {ports: ["9000"], methods: ["GET"]}}]}]'), False),
    (ap('action: ALLOW\nrules: [{to: [{operation: {ports: ["1"]}}, {operation: {paths: ["/x"]}}]}, '
        '{from: [{source: {namespaces: ["foo"]}}]}]'), True),
    (ap('action: ALLOW\nrules: [{from: [{source: {namespaces: ["foo"]}}], when: [{key: "request.headers[x]", '
        'values: ["y"]}]}]'), False),
    (ap('action: DENY\nrules: [{to: [{operation: {methods: ["GET"]}}]}]'), False),
    (ap('action: DENY\nrules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]'), False),
    (ap('action: DENY\nrules: [{from: [{source: {namespaces: ["bar"]}}], to: [{operation: {paths: ["/admin"]}}]}]'),
     True),
    (ap('action: DENY\nrules: [{from: [{source: {namespaces: ["foo"]}}], to: [{operation: {paths: ["/admin"]}}]}]'),
     False),
    (ap('action: DENY\nrules: [{to: [{operation: {ports: ["9000"], hosts: ["x"]}}], when: [{key: "request.auth.claims[iss]", '
        'values: ["i"]}]}]'), False),
    (ap('action: DENY\nrules: [{to: [{operation: {ports: ["9001"], methods: ["GET"]}}]}]'), True),
], ids=["allow-ports-only", "allow-with-method-is-ignored", "allow-other-rule-still-counts",
        "allow-with-header-condition-ignored", "deny-http-only-denies-all-tcp", "deny-not-request-principals-denies-all",
        "deny-keeps-tcp-fields", "deny-drops-http-fields", "deny-drops-when-and-hosts", "deny-port-still-narrows"])
def test_tcp_http_only_fields_follow_istio(doc: str, allowed: bool) -> None:
    assert authorizer(doc).check(TCP).allowed is allowed


def test_tcp_explain_says_an_allow_rule_was_ignored() -> None:
    a = authorizer(ap('action: ALLOW\nrules: [{to: [{operation: {ports: ["9000"], methods: ["GET"]}}]}]'))
    assert a.explain(TCP) == ("ALLOW foo/p rules[0]: ignored for TCP, it uses HTTP-only "
                              "rules[0].to[0].operation.methods",)


def test_explain_names_the_field_that_refused() -> None:
    a = authorizer(ALLOW_NOTHING, ap('rules: [{from: [{source: {principals: ["cluster.local/ns/bar/sa/x"]}}, '
                                     '{source: {ipBlocks: ["192.168.0.0/16"]}}]}, {}]', "viewer"))
    assert a.explain(PLAINTEXT) == (
        "ALLOW foo/allow-nothing: no rules, matches nothing",
        "ALLOW foo/viewer rules[0].from[0].source.principals: source.principal is absent (no mTLS peer); wanted one "
        "of ['cluster.local/ns/bar/sa/x']; rules[0].from[1].source.ipBlocks: source.ip '10.1.2.3' is not one of "
        "['192.168.0.0/16']",
        "ALLOW foo/viewer rules[1]: matched",
    )
    deny = authorizer(ap('action: DENY\nrules: [{when: [{key: "request.headers[x-token]", notValues: ["abc"]}]}]'))
    assert deny.explain(REQUEST) == ("DENY foo/p rules[0].when[0].notValues: request.headers[x-token] 'abc' is one "
                                     "of ['abc']",)


# -- principals and trust domains ------------------------------------------------------------
@pytest.mark.parametrize(("principals", "domains", "expanded"), [
    (["cluster.local/ns/foo/sa/a"], ["cluster.local"], ("cluster.local/ns/foo/sa/a",)),
    (["cluster.local/ns/foo/sa/a"], ["east.example"], ("east.example/ns/foo/sa/a",)),
    (["cluster.local/ns/foo/sa/a"], ["td2", "td1"], ("td2/ns/foo/sa/a", "td1/ns/foo/sa/a")),
    (["td1/ns/foo/sa/a"], ["td2", "td1"], ("td2/ns/foo/sa/a", "td1/ns/foo/sa/a")),
    (["other/ns/foo/sa/a"], ["td2", "td1"], ("other/ns/foo/sa/a",)),
    (["*/ns/foo/sa/a"], ["td2", "td1"], ("*/ns/foo/sa/a",)),
    (["*-td/ns/foo/sa/a"], ["new-td", "old-td"], ("*-td/ns/foo/sa/a",)),
    (["*td/ns/foo/sa/a", "sa/x"], ["td", "old"], ("*td/ns/foo/sa/a", "old/ns/foo/sa/a", "sa/x")),
    (["cluster.local/ns/foo/sa/a", "td1/ns/foo/sa/a"], ["td1"], ("td1/ns/foo/sa/a",)),
])
def test_principals_expand_over_trust_domain_and_aliases(principals, domains, expanded) -> None:
    assert expand_principals(principals, domains) == expanded


@pytest.mark.parametrize(("trust_domain", "aliases", "peer", "allowed"), [
    ("cluster.local", (), "spiffe://cluster.local/ns/foo/sa/sleep", True),
    ("east.example", (), "spiffe://east.example/ns/foo/sa/sleep", True),
    ("east.example", (), "spiffe://cluster.local/ns/foo/sa/sleep", False),
    ("east.example", ("old.example",), "spiffe://old.example/ns/foo/sa/sleep", True),
    ("east.example", ("cluster.local",), "spiffe://cluster.local/ns/foo/sa/sleep", True),
    ("east.example", ("old.example",), "spiffe://west.example/ns/foo/sa/sleep", False),
])
def test_cluster_local_principal_means_this_mesh(trust_domain, aliases, peer, allowed) -> None:
    a = authorizer(ap('rules: [{from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]}]'),
                   trust_domain=trust_domain, trust_domain_aliases=aliases)
    assert a.check(dataclasses.replace(REQUEST, peer=SpiffeId.parse(peer))).allowed is allowed


def test_not_principals_and_when_source_principal_expand_too() -> None:
    east = dataclasses.replace(REQUEST, peer="spiffe://east.example/ns/foo/sa/sleep")
    for rule in ('{from: [{source: {notPrincipals: ["cluster.local/ns/foo/sa/sleep"]}}]}',
                 '{when: [{key: source.principal, notValues: ["cluster.local/ns/foo/sa/sleep"]}]}'):
        assert authorizer(ap(f"action: DENY\nrules: [{rule}]"), trust_domain="east.example").check(east).allowed


@pytest.mark.parametrize(("template", "path", "matches"), [
    ("/a/{*}", "/a/b", True), ("/a/{*}", "/a/", False), ("/a/{*}", "/a/b/c", False),
    ("/a/{**}", "/a/", True), ("/a/{**}", "/a/b/c", True), ("/a/{**}", "/a", False),
    ("/{*}/b.txt", "/x/b.txt", True), ("/{*}/b.txt", "/x/bxtxt", False), ("/a/{*}/c", "/a/b%20/c", True),
])
def test_path_templates_are_envoy_uri_templates(template: str, path: str, matches: bool) -> None:
    import re
    assert (re.fullmatch(template_regex(template), path) is not None) is matches


# -- tasks/security/authorization/authz-http, step by step as EXPECTED.md lists it ----------
PRODUCTPAGE, DETAILS, REVIEWS, RATINGS = "productpage", "details", "reviews", "ratings"
CALLS = [  # (callee, caller's service account, path)
    (PRODUCTPAGE, "istio-system/sa/istio-ingressgateway-service-account", "/productpage"),
    (DETAILS, "default/sa/bookinfo-productpage", "/details/0"),
    (REVIEWS, "default/sa/bookinfo-productpage", "/reviews/0"),
    (RATINGS, "default/sa/bookinfo-reviews", "/ratings/0"),
]
BOOKINFO_STEPS = [
    (1, {PRODUCTPAGE: False, DETAILS: False, REVIEWS: False, RATINGS: False}),
    (2, {PRODUCTPAGE: True, DETAILS: False, REVIEWS: False, RATINGS: False}),
    (4, {PRODUCTPAGE: True, DETAILS: True, REVIEWS: True, RATINGS: False}),
    (5, {PRODUCTPAGE: True, DETAILS: True, REVIEWS: True, RATINGS: True}),
]


def bookinfo_checks(applied: int, method: str = "GET") -> dict[str, bool]:
    resources = load_paths(sorted(AUTHZ_HTTP.glob("*.yaml"))[:applied]).resources
    out = {}
    for callee, caller, path in CALLS:
        a = Authorizer.compile(resources, namespace="default", labels={"app": callee, "version": "v1"})
        ns, _, sa = caller.partition("/sa/")
        request = AuthzRequest("10.0.0.9", 9080, peer=SpiffeId.workload("cluster.local", ns, sa),
                               method=method, path=path, host=f"{callee}:9080")
        out[callee] = a.check(request).allowed
    return out


@pytest.mark.parametrize(("applied", "expected"), BOOKINFO_STEPS, ids=[f"01-to-0{s}" for s, _ in BOOKINFO_STEPS])
def test_authz_http_task_step_by_step(applied: int, expected: dict[str, bool]) -> None:
    assert bookinfo_checks(applied) == expected


def test_authz_http_step_one_productpage_reason_names_allow_nothing() -> None:
    (res,) = load_paths([AUTHZ_HTTP / "01-allow-nothing.yaml"]).resources
    decision = Authorizer.compile([res], namespace="default", labels={"app": "productpage"}).check(
        AuthzRequest("10.0.0.9", 9080, method="GET", path="/productpage"))
    assert (decision.status, decision.reason) == (403, "no ALLOW policy matched (1 applied: default/allow-nothing)")


def test_authz_http_viewers_allow_only_get() -> None:
    assert bookinfo_checks(5, method="POST") == {PRODUCTPAGE: False, DETAILS: False, REVIEWS: False, RATINGS: False}


def test_twenty_policies_compile_and_decide() -> None:
    docs = [ap(f'action: ALLOW\nrules: [{{from: [{{source: {{principals: ["cluster.local/ns/n{i}/sa/s{i}"]}}}}], '
               f'to: [{{operation: {{methods: ["GET"], paths: ["/api/{i}/*"]}}}}]}}]', f"allow-{i:02}")
            for i in range(18)]
    docs += [ap('action: DENY\nrules: [{from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]', "deny-testnet"),
             ap('action: DENY\nrules: [{when: [{key: "request.headers[x-debug]", values: ["*"]}]}]', "deny-debug")]
    a = authorizer(*docs)
    req = dataclasses.replace(REQUEST, peer="spiffe://cluster.local/ns/n17/sa/s17", path="/api/17/items")
    assert a.check(req).reason == "allowed by AuthorizationPolicy foo/allow-17 rules[0]"
    assert a.check(dataclasses.replace(req, path="/api/16/items")).reason.startswith("no ALLOW policy matched (18 applied:")
