"""security.istio.io kinds: the Istio docs' samples load, and each istioctl rule reports exactly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from topology import AuthorizationPolicy, PeerAuthentication, RequestAuthentication, load_paths, load_text
from topology._security import Action, MtlsMode, condition_key_problem

ROOT = Path(__file__).resolve().parents[1]
SECURITY_CORPUS = ROOT.parent / "shared" / "corpora" / "istio" / "docs" / "security"
OURS = {"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"}


def load(kind: str, spec: str, api: str = "security.istio.io/v1"):
    """A one-document file whose spec starts on line 7."""
    text = (f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: p\n  namespace: ns\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))
    return load_text(text, "p.yaml")


def messages(kind: str, spec: str) -> list[str]:
    return [str(d) for d in load(kind, spec).diagnostics]


def only(kind: str, spec: str):
    result = load(kind, spec)
    assert [str(d) for d in result.diagnostics] == []
    (res,) = result.resources
    return res.spec


# -- the corpus ---------------------------------------------------------------------------
SECURITY_FILES = sorted(SECURITY_CORPUS.rglob("*.yaml"))


def test_security_corpus_is_present() -> None:
    assert len(SECURITY_FILES) == 6


@pytest.mark.parametrize("path", SECURITY_FILES, ids=lambda p: p.name)
def test_every_istio_security_sample_loads_without_diagnostics(path: Path) -> None:
    result = load_paths([path])
    assert [str(d) for d in result.diagnostics if d.kind in OURS] == []
    assert result.resources and {r.kind for r in result.resources} <= OURS


def test_allow_nothing_sample_is_an_allow_policy_without_rules() -> None:
    (res,) = load_paths([SECURITY_CORPUS / "authz-http" / "01-allow-nothing.yaml"]).resources
    assert res.spec == AuthorizationPolicy()
    assert res.spec.action is Action.ALLOW and res.spec.rules == ()
    assert res.api_version == "security.istio.io/v1beta1"


def test_details_viewer_sample_decodes_principal_and_method() -> None:
    (res,) = load_paths([SECURITY_CORPUS / "authz-http" / "03-details-viewer.yaml"]).resources
    (rule,) = res.spec.rules
    assert res.spec.selector.match_labels == {"app": "details"}
    assert rule.sources[0].principals == ("cluster.local/ns/default/sa/bookinfo-productpage",)
    assert rule.operations[0].methods == ("GET",)


def test_strict_sample_is_namespace_wide_strict() -> None:
    (res,) = load_paths([SECURITY_CORPUS / "mtls-migration"]).resources
    assert isinstance(res.spec, PeerAuthentication)
    assert res.spec.selector is None and res.spec.mode is MtlsMode.STRICT


# -- AuthorizationPolicy -----------------------------------------------------------------
def test_full_authorization_policy_decodes_every_field() -> None:
    spec = only("AuthorizationPolicy", """\
        selector: {matchLabels: {app: httpbin}}
        action: DENY
        rules:
        - from:
          - source:
              principals: [cluster.local/ns/a/sa/b]
              notPrincipals: [x/ns/y/sa/z]
              requestPrincipals: [iss/sub]
              notRequestPrincipals: ["*"]
              namespaces: [foo]
              notNamespaces: [bar]
              ipBlocks: [10.0.0.0/8, 127.0.0.1]
              notIpBlocks: ["::1"]
              remoteIpBlocks: [192.168.0.0/16]
              notRemoteIpBlocks: [fd00::/8]
          to:
          - operation:
              hosts: [a.example]
              notHosts: ["*.b"]
              ports: ["8000"]
              notPorts: ["65535"]
              methods: [GET]
              notMethods: [POST]
              paths: [/info*, "/api/{*}/x", "/a/{**}"]
              notPaths: [/admin]
          when:
          - key: request.headers[x-token]
            values: [secret]
          - key: source.ip
            notValues: [10.1.0.0/16]
          - key: experimental.envoy.filters.network.mysql_proxy[db.table]
            values: ["[update]"]
        """)
    assert spec.action is Action.DENY
    (rule,) = spec.rules
    assert rule.sources[0].ip_blocks == ("10.0.0.0/8", "127.0.0.1")
    assert rule.operations[0].ports == ("8000",)
    assert [c.key for c in rule.when] == ["request.headers[x-token]", "source.ip",
                                          "experimental.envoy.filters.network.mysql_proxy[db.table]"]


def test_custom_action_with_provider_and_target_refs_loads() -> None:
    spec = only("AuthorizationPolicy", """\
        targetRefs:
        - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
        action: CUSTOM
        provider: {name: ext-authz}
        rules:
        - to:
          - operation: {paths: [/admin]}
        """)
    assert spec.provider.name == "ext-authz" and spec.target_refs[0].name == "waypoint"


def test_v1beta1_is_served_too() -> None:
    assert load("AuthorizationPolicy", "{}\n").resources
    assert load("AuthorizationPolicy", "{}\n", api="security.istio.io/v1beta1").resources
    assert [str(d) for d in load("AuthorizationPolicy", "{}\n", api="security.istio.io/v1alpha1").diagnostics] == [
        "p.yaml:1: apiVersion: AuthorizationPolicy is not served at 'security.istio.io/v1alpha1'; "
        "use security.istio.io/ with one of v1beta1, v1"]


AUTHZ_ERRORS = [
    ("custom_needs_provider", """\
        action: CUSTOM
        rules: [{}]
        """, ["p.yaml:6: spec.provider: a CUSTOM action needs provider.name (an extension provider); found none"]),
    ("custom_needs_provider_name", """\
        action: CUSTOM
        provider: {}
        rules: [{}]
        """, ["p.yaml:8: spec.provider.name: a CUSTOM action needs provider.name (an extension provider); found none"]),
    ("custom_needs_rules", """\
        action: CUSTOM
        provider: {name: x}
        """, ["p.yaml:6: spec.rules: CUSTOM action without rules is never triggered; "
              "add an empty rule {} to trigger it for every request"]),
    ("provider_only_with_custom", """\
        action: DENY
        provider: {name: x}
        rules: [{}]
        """, ["p.yaml:8: spec.provider: provider is only allowed with action CUSTOM; found action DENY"]),
    ("deny_needs_rules", """\
        action: DENY
        """, ["p.yaml:6: spec.rules: DENY action without rules is never triggered; add an empty rule {} "
              "to deny every request"]),
    ("unknown_action", """\
        action: REJECT
        """, ["p.yaml:7: spec.action: must be one of ALLOW, DENY, AUDIT, CUSTOM; found string 'REJECT'"]),
    ("custom_rejects_principals", """\
        action: CUSTOM
        provider: {name: x}
        rules:
        - from:
          - source: {principals: [a/ns/b/sa/c]}
        """, ["p.yaml:11: spec.rules[0].from[0].source.principals: is not supported with action CUSTOM"]),
    ("custom_rejects_auth_condition", """\
        action: CUSTOM
        provider: {name: x}
        rules:
        - when:
          - key: request.auth.claims[iss]
            values: [a]
        """, ["p.yaml:11: spec.rules[0].when[0].key: is not supported with action CUSTOM; "
              "found string 'request.auth.claims[iss]'"]),
    ("bad_ip_block", """\
        rules:
        - from:
          - source:
              ipBlocks: [10.0.0.300]
        """, ["p.yaml:10: spec.rules[0].from[0].source.ipBlocks[0]: bad IP address; found string '10.0.0.300'"]),
    ("bad_cidr", """\
        rules:
        - from:
          - source:
              notRemoteIpBlocks: [10.0.0.0/33]
        """, ["p.yaml:10: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: bad CIDR range; "
              "found string '10.0.0.0/33'"]),
    ("port_not_numeric", """\
        rules:
        - to:
          - operation:
              ports: [http]
        """, ["p.yaml:10: spec.rules[0].to[0].operation.ports[0]: must be a port number 1..65535 written as a "
              "string; found string 'http'"]),
    ("port_out_of_range", """\
        rules:
        - to:
          - operation:
              notPorts: ["65536"]
        """, ["p.yaml:10: spec.rules[0].to[0].operation.notPorts[0]: must be a port number 1..65535 written as "
              "a string; found string '65536'"]),
    ("port_as_integer", """\
        rules:
        - to:
          - operation:
              ports: [8080]
        """, ["p.yaml:10: spec.rules[0].to[0].operation.ports[0]: expected a string, found integer 8080"]),
    ("unknown_condition_key", """\
        rules:
        - when:
          - key: source.name
            values: [a]
        """, ["p.yaml:9: spec.rules[0].when[0].key: unknown condition key; known keys are request.headers[NAME], "
              "request.auth.claims[NAME], source.ip, remote.ip, source.namespace, source.principal, "
              "source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, "
              "destination.ip, destination.port, connection.sni, experimental.envoy.filters.*[NAME]; "
              "found string 'source.name'"]),
    ("header_key_without_brackets", """\
        rules:
        - when:
          - key: request.headers
            values: [a]
        """, ["p.yaml:9: spec.rules[0].when[0].key: bad key: request.headers keys have the form "
              "request.headers[NAME]; found string 'request.headers'"]),
    ("condition_without_values", """\
        rules:
        - when:
          - key: source.namespace
        """, ["p.yaml:9: spec.rules[0].when[0]: at least one of values or notValues must be set for key "
              "'source.namespace'"]),
    ("condition_bad_ip_value", """\
        rules:
        - when:
          - key: remote.ip
            values: [not-an-ip]
        """, ["p.yaml:10: spec.rules[0].when[0].values[0]: bad IP address; found string 'not-an-ip'"]),
    ("condition_bad_port_value", """\
        rules:
        - when:
          - key: destination.port
            notValues: ["0"]
        """, ["p.yaml:10: spec.rules[0].when[0].notValues[0]: must be a port number 1..65535 written as a "
              "string; found string '0'"]),
    ("destination_labels_key", """\
        rules:
        - when:
          - key: destination.labels[app]
            values: [a]
        """, ["p.yaml:9: spec.rules[0].when[0].key: attribute destination.labels is replaced by the workload "
              "selector; found string 'destination.labels[app]'"]),
    ("empty_from_list", """\
        rules:
        - from: []
        """, ["p.yaml:8: spec.rules[0].from: `from` must not be empty; found an empty list (leave it out to "
              "match any)"]),
    ("from_without_source", """\
        rules:
        - from:
          - {}
        """, ["p.yaml:9: spec.rules[0].from[0]: `from.source` must be set"]),
    ("empty_source", """\
        rules:
        - from:
          - source: {}
        """, ["p.yaml:9: spec.rules[0].from[0].source: `from.source` must not be empty; found no fields set"]),
    ("empty_operation", """\
        rules:
        - to:
          - operation: {}
        """, ["p.yaml:9: spec.rules[0].to[0].operation: `to.operation` must not be empty; found no fields set"]),
    ("empty_value", """\
        rules:
        - to:
          - operation:
              methods: [""]
        """, ["p.yaml:10: spec.rules[0].to[0].operation.methods[0]: empty value not allowed; found string ''"]),
    ("bad_path_template", """\
        rules:
        - to:
          - operation:
              paths: ["/{*}/foo/{bar}"]
        """, ["p.yaml:10: spec.rules[0].to[0].operation.paths[0]: invalid or unsupported path template: only "
              "whole segments '{*}' and '{**}' are allowed; found string '/{*}/foo/{bar}'"]),
    ("service_accounts_with_namespaces", """\
        rules:
        - from:
          - source:
              serviceAccounts: [ns/sa]
              namespaces: [ns]
        """, ["p.yaml:10: spec.rules[0].from[0].source.serviceAccounts: cannot be set together with principals "
              "or namespaces"]),
    ("service_account_format", """\
        rules:
        - from:
          - source:
              serviceAccounts: [sa-only]
        """, ["p.yaml:10: spec.rules[0].from[0].source.serviceAccounts[0]: must be <namespace>/<service-account>; "
              "found string 'sa-only'"]),
    ("selector_and_target_ref", """\
        selector: {matchLabels: {app: a}}
        targetRef: {kind: Service, name: a}
        """, ["p.yaml:8: spec.targetRef: only one of selector, targetRef and targetRefs may be set; "
              "found selector and targetRef"]),
    ("target_ref_kind", """\
        targetRef: {kind: Deployment, group: apps, name: a}
        """, ["p.yaml:7: spec.targetRef.kind: a policy may target only core/Service, "
              "gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass, "
              "networking.istio.io/ServiceEntry; found string 'apps/Deployment'"]),
    ("target_ref_namespace", """\
        targetRef: {kind: Service, name: a, namespace: other}
        """, ["p.yaml:7: spec.targetRef.namespace: must not be set: cross-namespace references are not "
              "supported; found string 'other'"]),
    ("selector_wildcard", """\
        selector: {matchLabels: {app: "web-*"}}
        """, ["p.yaml:7: spec.selector.matchLabels.app: wildcards are not supported in a selector; "
              "found string 'app=web-*'"]),
    ("unknown_field_in_source", """\
        rules:
        - from:
          - source:
              principal: [a]
        """, ["p.yaml:10: spec.rules[0].from[0].source.principal: unknown field 'principal' "
              "(did you mean 'principals'?)"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in AUTHZ_ERRORS], ids=[c[0] for c in AUTHZ_ERRORS])
def test_authorization_policy_rule_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert messages("AuthorizationPolicy", spec) == expected


AUTHZ_WARNINGS = [
    ("spiffe_prefix", """\
        rules:
        - from:
          - source:
              principals: [spiffe://cluster.local/ns/a/sa/b]
        """, ["p.yaml:10: spec.rules[0].from[0].source.principals[0]: warning: principals are written without "
              "the 'spiffe://' prefix (<trust-domain>/ns/<ns>/sa/<sa>); found string "
              "'spiffe://cluster.local/ns/a/sa/b'"]),
    ("deny_http_only", """\
        action: DENY
        rules:
        - to:
          - operation: {methods: [POST]}
        """, ["p.yaml:9: spec.rules[0]: warning: this DENY rule uses only HTTP attributes, so it denies all "
              "traffic to TCP ports under its scope; name the port explicitly"]),
    ("selector_without_labels", """\
        selector: {}
        """, ["p.yaml:7: spec.selector: warning: workload selector specified without labels: it selects every "
              "workload of the namespace"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in AUTHZ_WARNINGS], ids=[c[0] for c in AUTHZ_WARNINGS])
def test_authorization_policy_warnings_load_but_are_reported(spec: str, expected: list[str]) -> None:
    result = load("AuthorizationPolicy", spec)
    assert [str(d) for d in result.diagnostics] == expected
    assert len(result.resources) == 1


def test_deny_with_port_is_not_warned() -> None:
    only("AuthorizationPolicy", """\
        action: DENY
        rules:
        - to:
          - operation: {methods: [POST], ports: ["8080"]}
        """)


@pytest.mark.parametrize("key", ["request.headers[User-Agent]", "source.ip", "remote.ip", "source.namespace",
                                 "source.principal", "request.auth.principal", "request.auth.audiences",
                                 "request.auth.presenter", "request.auth.claims[groups]", "destination.ip",
                                 "destination.port", "connection.sni",
                                 "experimental.envoy.filters.network.mysql_proxy[db.table]"])
def test_istio_condition_keys_are_known(key: str) -> None:
    assert condition_key_problem(key) == ""


# -- PeerAuthentication ------------------------------------------------------------------
def test_port_level_mtls_with_selector_loads_with_integer_ports() -> None:
    spec = only("PeerAuthentication", """\
        selector: {matchLabels: {app: a}}
        mtls: {mode: STRICT}
        portLevelMtls:
          8080: {mode: DISABLE}
          "9090": {mode: PERMISSIVE}
        """)
    assert spec.port_level_mtls[8080].mode is MtlsMode.DISABLE
    assert spec.port_level_mtls[9090].mode is MtlsMode.PERMISSIVE


def test_peer_authentication_mode_defaults_to_unset() -> None:
    assert only("PeerAuthentication", "{}\n").mode is MtlsMode.UNSET
    assert only("PeerAuthentication", "mtls: {}\n").mode is MtlsMode.UNSET


PEER_ERRORS = [
    ("port_level_needs_selector", """\
        mtls: {mode: STRICT}
        portLevelMtls:
          8080: {mode: DISABLE}
        """, ["p.yaml:8: spec.portLevelMtls: a mesh- or namespace-wide PeerAuthentication cannot have port-level "
              "mTLS: add a selector with matchLabels; found no selector labels"]),
    ("port_out_of_range", """\
        selector: {matchLabels: {app: a}}
        portLevelMtls:
          0: {mode: DISABLE}
        """, ["p.yaml:9: spec.portLevelMtls.0: keys must be port numbers 1..65535; found integer 0"]),
    ("port_not_a_number", """\
        selector: {matchLabels: {app: a}}
        portLevelMtls:
          http: {mode: DISABLE}
        """, ["p.yaml:9: spec.portLevelMtls.http: keys must be port numbers 1..65535; found string 'http'"]),
    ("unknown_mode", """\
        mtls: {mode: REQUIRED}
        """, ["p.yaml:7: spec.mtls.mode: must be one of UNSET, DISABLE, PERMISSIVE, STRICT; "
              "found string 'REQUIRED'"]),
    ("unknown_field", """\
        mtls: {mode: STRICT}
        targetRef: {kind: Service, name: a}
        """, ["p.yaml:8: spec.targetRef: unknown field 'targetRef'"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in PEER_ERRORS], ids=[c[0] for c in PEER_ERRORS])
def test_peer_authentication_rule_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert messages("PeerAuthentication", spec) == expected


# -- RequestAuthentication ---------------------------------------------------------------
def test_request_authentication_decodes_jwt_rules() -> None:
    spec = only("RequestAuthentication", """\
        selector: {matchLabels: {app: a}}
        jwtRules:
        - issuer: testing@secure.istio.io
          jwksUri: https://example.com/jwks.json
          fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
          forwardOriginalToken: true
          timeout: 3s
        """)
    assert isinstance(spec, RequestAuthentication)
    (rule,) = spec.jwt_rules
    assert rule.from_headers[0].prefix == "Bearer " and rule.forward_original_token
    assert rule.timeout is not None


REQUEST_AUTHN_ERRORS = [
    ("needs_issuer_or_uri", """\
        jwtRules:
        - audiences: [a]
        """, ["p.yaml:8: spec.jwtRules[0]: issuer or jwksUri must be set"]),
    ("jwks_uri_scheme", """\
        jwtRules:
        - jwksUri: ftp://example.com/keys
        """, ["p.yaml:8: spec.jwtRules[0].jwksUri: the URI scheme must be http or https; "
              "found string 'ftp://example.com/keys'"]),
    ("jwks_not_json", """\
        jwtRules:
        - issuer: a
          jwks: "{not json"
        """, ["p.yaml:9: spec.jwtRules[0].jwks: is not a JSON Web Key Set: Expecting property name enclosed in "
              "double quotes: line 1 column 2 (char 1)"]),
    ("bad_timeout", """\
        jwtRules:
        - issuer: a
          timeout: 5x
        """, ["p.yaml:9: spec.jwtRules[0].timeout: invalid duration '5x': expected a number followed by a "
              "unit (h, m, s, ms, us, ns), as in '5s' or '1m30s'"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in REQUEST_AUTHN_ERRORS],
                         ids=[c[0] for c in REQUEST_AUTHN_ERRORS])
def test_request_authentication_rule_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert messages("RequestAuthentication", spec) == expected
