"""VirtualService: typed decoding with Istio's names and defaults, and istioctl's checks
with messages that name the field and quote what was found."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from topology import Duration, HTTPRoute, VirtualService, load_paths, load_text
from topology._http_actions import DerivePort

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio"
NETWORKING_KINDS = {"VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "WorkloadEntry"}


def load(spec: str, version: str = "v1", kind: str = "VirtualService"):
    text = (f"apiVersion: networking.istio.io/{version}\nkind: {kind}\nmetadata:\n  name: t\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    return load_text(text, "t.yaml")


def findings(spec: str, kind: str = "VirtualService") -> list[str]:
    """Every diagnostic as ``path: [warning: ]message`` (errors and warnings, in order)."""
    return [f"{d.path}: {'warning: ' if not d.is_error else ''}{d.message}" for d in load(spec, kind=kind).diagnostics]


def spec_of(spec: str) -> VirtualService:
    result = load(spec)
    assert result.errors == [], result.errors
    return result.resources[0].spec


def test_every_istio_corpus_file_loads_without_networking_errors() -> None:
    result = load_paths([CORPUS])

    assert [str(d) for d in result.errors if d.kind in NETWORKING_KINDS] == []
    kinds = {r.kind for r in result.resources}
    assert NETWORKING_KINDS - {"Sidecar", "WorkloadEntry"} <= kinds


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
def test_every_served_api_version_decodes_the_same_spec(version: str) -> None:
    result = load("hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n", version)

    assert result.errors == []
    assert result.resources[0].spec.hosts == ("reviews",)


def test_header_match_and_weighted_route_decode_to_typed_objects() -> None:
    vs = spec_of("""
        hosts: [reviews]
        http:
        - match:
          - headers:
              end-user: {exact: jason}
            uri: {prefix: /api}
            ignoreUriCase: true
          route:
          - destination: {host: reviews, subset: v2, port: {number: 9080}}
            weight: 80
          - destination: {host: reviews, subset: v3}
            weight: 20
          timeout: 0.5s
          retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,503,unavailable"}
          redirect: null
        """)

    rule: HTTPRoute = vs.http[0]
    assert rule.match[0].headers["end-user"].exact == "jason"
    assert rule.match[0].uri.kind == "prefix" and rule.match[0].ignore_uri_case is True
    assert [(d.destination.subset, d.weight) for d in rule.route] == [("v2", 80), ("v3", 20)]
    assert rule.route[0].destination.port.number == 9080
    assert rule.timeout == Duration.parse("500ms")
    assert rule.retries.conditions == ("5xx", "503", "unavailable")
    assert vs.gateways == () and not vs.applies_to_gateway


def test_unset_fields_keep_istio_defaults() -> None:
    vs = spec_of("hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n")

    rule = vs.http[0]
    assert rule.timeout is None and rule.retries is None and rule.fault is None
    assert rule.route[0].weight is None and rule.mirror_percentage is None
    assert vs.export_to == () and vs.tls == () and vs.tcp == ()


def test_redirect_direct_response_and_fault_decode() -> None:
    vs = spec_of("""
        hosts: [web.example.com]
        http:
        - match: [{uri: {exact: /old}}]
          redirect: {uri: /new, derivePort: FROM_REQUEST_PORT, redirectCode: 308}
        - match: [{uri: {exact: /teapot}}]
          directResponse: {status: 418, body: {string: "short and stout"}}
        - fault:
            delay: {fixedDelay: 7s, percentage: {value: 100.0}}
            abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.5}}
          route: [{destination: {host: web.example.com}}]
        """)

    assert vs.http[0].redirect.derive_port is DerivePort.FROM_REQUEST_PORT
    assert vs.http[1].direct_response.body.string_ == "short and stout"
    assert vs.http[2].fault.delay.fixed_delay.seconds == 7.0
    assert vs.http[2].fault.abort.percentage.value == 0.5


ERRORS = [
    ("weights_over_100",
     "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r, subset: v1}\n    weight: 70\n"
     "  - destination: {host: r, subset: v2}\n    weight: 50\n",
     ["spec.http[0].route: weights must sum to 100; found 120 (70 + 50)"]),
    ("unset_weights_of_two_destinations",
     "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r, subset: v1}\n  - destination: {host: r, subset: v2}\n",
     ["spec.http[0].route: weights must sum to 100; found 0 (0 + 0)"]),
    ("weight_out_of_range_hides_the_sum",
     "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n    weight: 101\n  - destination: {host: r}\n    weight: 5\n",
     ["spec.http[0].route[0].weight: must be between 0 and 100; found integer 101"]),
    ("negative_weight",
     "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n    weight: -1\n",
     ["spec.http[0].route[0].weight: must be between 0 and 100; found integer -1"]),
    ("invalid_re2_regex",
     "hosts: [r]\nhttp:\n- match: [{uri: {regex: 'a(b'}}]\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].match[0].uri.regex: invalid RE2 regex 'a(b': missing ): a(b"]),
    ("lookbehind_is_python_but_not_re2",
     "hosts: [r]\nhttp:\n- match: [{headers: {x: {regex: '(?<=a)b'}}}]\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].match[0].headers.x.regex: invalid RE2 regex '(?<=a)b': invalid perl operator: (?<="]),
    ("two_kinds_in_one_string_match",
     "hosts: [r]\nhttp:\n- match: [{uri: {exact: /a, prefix: /b}}]\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].match[0].uri.prefix: only one of exact, prefix, regex may be set; found exact and prefix"]),
    ("unknown_retry_on_condition",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  retries: {attempts: 2, retryOn: '5xx,reset,bogus,503,599'}\n",
     ["spec.http[0].retries.retryOn: unknown retryOn condition 'bogus'; expected a comma-separated list of "
      "Envoy retry conditions (5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, "
      "unavailable, ...) or HTTP status codes",
      "spec.http[0].retries.retryOn: unknown retryOn condition '599'; expected a comma-separated list of "
      "Envoy retry conditions (5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, "
      "unavailable, ...) or HTTP status codes"]),
    ("zero_per_try_timeout",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  retries: {attempts: 2, perTryTimeout: 0s}\n",
     ["spec.http[0].retries.perTryTimeout: must be at least 1ms; found '0s'"]),
    ("sub_millisecond_timeout",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  timeout: 1500us\n",
     ["spec.http[0].timeout: only millisecond precision is supported; found '1500us'"]),
    ("negative_timeout",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  timeout: -1s\n",
     ["spec.http[0].timeout: invalid duration '-1s': must not be negative"]),
    ("retry_fields_with_zero_attempts",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  retries: {retryOn: 5xx}\n",
     ["spec.http[0].retries.attempts: retry policy configured while attempts is 0 (retries disabled); "
      "set attempts or remove the other retry fields"]),
    ("redirect_together_with_route",
     "hosts: [r]\nhttp:\n- redirect: {uri: /x}\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].redirect: an HTTP rule cannot have both redirect and route"]),
    ("redirect_code_not_3xx",
     "hosts: [r]\nhttp:\n- redirect: {uri: /x, redirectCode: 200}\n",
     ["spec.http[0].redirect.redirectCode: must be a 3xx status code; found integer 200"]),
    ("direct_response_with_route_and_bad_status",
     "hosts: [r]\nhttp:\n- directResponse: {status: 600}\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].directResponse.status: HTTP status must be in the range 200..599; found integer 600",
      "spec.http[0].directResponse: an HTTP rule cannot have both directResponse and route"]),
    ("direct_response_bytes_not_base64",
     "hosts: [r]\nhttp:\n- directResponse: {status: 200, body: {bytes: 'not base64!'}}\n",
     ["spec.http[0].directResponse.body.bytes: must be base64; found string 'not base64!'"]),
    ("rule_without_action",
     "hosts: [r]\nhttp:\n- match: [{uri: {prefix: /}}]\n",
     ["spec.http[0]: an HTTP rule needs route, redirect, directResponse or delegate"]),
    ("fault_percentage_and_status_out_of_range",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  fault:\n"
     "    delay: {fixedDelay: 1s, percentage: {value: 120}}\n    abort: {httpStatus: 700}\n",
     ["spec.http[0].fault.delay.percentage.value: must be between 0 and 100; found number 120",
      "spec.http[0].fault.abort.httpStatus: HTTP status must be in the range 200..599; found integer 700"]),
    ("empty_fault",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  fault: {}\n",
     ["spec.http[0].fault: a fault needs an abort, a delay or both"]),
    ("mirror_percentage_above_100",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  mirror: {host: m}\n  mirrorPercentage: {value: 150}\n",
     ["spec.http[0].mirrorPercentage.value: must be between 0 and 100; found number 150"]),
    ("cors_method_and_max_age",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  corsPolicy: {allowMethods: [GET, FETCH], maxAge: 1500ms}\n",
     ["spec.http[0].corsPolicy.allowMethods[1]: unsupported HTTP method 'FETCH'; expected one of GET, HEAD, "
      "POST, PUT, PATCH, DELETE, CONNECT, OPTIONS, TRACE, *",
      "spec.http[0].corsPolicy.maxAge: only whole seconds are supported; found '1500ms'"]),
    ("rewrite_uri_and_regex",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n"
     "  rewrite: {uri: /a, uriRegexRewrite: {match: '^/b', rewrite: /c}}\n",
     ["spec.http[0].rewrite.uriRegexRewrite: only one of uri and uriRegexRewrite may be set"]),
    ("pseudo_header_set",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  headers: {request: {set: {':path': /x}}}\n",
     ["spec.http[0].headers.request.set.:path: pseudo-header ':path' cannot be changed"]),
    ("match_port_zero",
     "hosts: [r]\nhttp:\n- match: [{port: 0}]\n  route: [{destination: {host: r}}]\n",
     ["spec.http[0].match[0].port: port number must be in the range 1..65535; found integer 0"]),
    ("star_host_for_sidecars",
     "hosts: ['*']\nhttp:\n- route: [{destination: {host: r}}]\n",
     ["spec.hosts[0]: wildcard host '*' is not allowed for a VirtualService bound to the mesh (sidecars); "
      "bind it to a gateway or name the hosts"]),
    ("overlapping_hosts",
     "hosts: [a.example.com, '*.example.com']\nhttp:\n- route: [{destination: {host: r}}]\n",
     ["spec.hosts[0]: duplicate hosts: 'a.example.com' and '*.example.com' overlap"]),
    ("invalid_host",
     "hosts: [bad_host.example.com]\nhttp:\n- route: [{destination: {host: r}}]\n",
     ["spec.hosts[0]: invalid host 'bad_host.example.com': label 'bad_host' is not a DNS-1123 label "
      "(letters, digits, '-', at most 63)"]),
    ("no_rules",
     "hosts: [r]\n",
     ["spec: a VirtualService needs http, tcp or tls rules"]),
    ("delegate_vs_with_tcp",
     "tcp:\n- route: [{destination: {host: r}}]\n",
     ["spec.tcp: a delegate VirtualService (one without hosts) cannot have tcp"]),
    ("delegation_from_sidecars",
     "hosts: [r]\nhttp:\n- delegate: {name: child}\n",
     ["spec.http[0].delegate: delegation only applies to VirtualServices bound to gateways"]),
    ("tls_sni_outside_hosts",
     "hosts: [a.example.com]\ngateways: [gw]\ntls:\n- match: [{sniHosts: [b.example.com]}]\n"
     "  route: [{destination: {host: b.example.com}}]\n",
     ["spec.tls[0].match[0].sniHosts[0]: SNI host 'b.example.com' is not within the VirtualService's hosts "
      "['a.example.com']"]),
    ("tls_rule_without_match",
     "hosts: [a.example.com]\ntls:\n- route: [{destination: {host: a.example.com}}]\n",
     ["spec.tls[0]: a TLS rule needs at least one match (with sniHosts)"]),
    ("tcp_weights",
     "hosts: [r]\ntcp:\n- route:\n  - {destination: {host: r, subset: a}, weight: 60}\n"
     "  - {destination: {host: r, subset: b}, weight: 60}\n",
     ["spec.tcp[0].route: weights must sum to 100; found 120 (60 + 60)"]),
    ("bad_destination_subnet",
     "hosts: [r]\ntcp:\n- match: [{destinationSubnets: [10.0.0.0/33]}]\n  route: [{destination: {host: r}}]\n",
     ["spec.tcp[0].match[0].destinationSubnets[0]: must be an IP address or a CIDR block; found string '10.0.0.0/33'"]),
    ("unknown_field_with_suggestion",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  retries: {atempts: 3}\n",
     ["spec.http[0].retries.atempts: unknown field 'atempts' (did you mean 'attempts'?)"]),
    ("destination_star",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: '*'}}]\n",
     ["spec.http[0].route[0].destination.host: '*' cannot be a destination; name one host"]),
    ("duplicate_export_to",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\nexportTo: ['.', '.']\n",
     ["spec.exportTo[1]: duplicate entry in exportTo; found string '.' twice"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_virtual_service_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert findings(spec) == expected


def test_errors_point_at_the_line_of_the_field() -> None:
    result = load("hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  timeout: 0s\n")

    assert [(d.line, d.path) for d in result.errors] == [(10, "spec.http[0].timeout")]
    assert str(result.errors[0]) == "t.yaml:10: spec.http[0].timeout: must be at least 1ms; found '0s'"


def test_a_document_with_errors_is_left_out_of_the_resources() -> None:
    result = load("hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  timeout: 0s\n")

    assert result.resources == [] and len(result.errors) == 1


WARNINGS = [
    ("rule_after_catch_all",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n- route: [{destination: {host: r}}]\n",
     ["spec.http[1]: warning: rule is never used: http[0] before it has no match and takes everything"]),
    ("duplicate_match",
     "hosts: [r]\nhttp:\n- match: [{uri: {exact: /a}}]\n  route: [{destination: {host: r}}]\n"
     "- match: [{uri: {exact: /a}, name: again}]\n  route: [{destination: {host: r}}]\n",
     ["spec.http[1].match[0]: warning: match is never used: http[0] has the same match",
      "spec.http[1]: warning: rule is never used: every match is taken by earlier rules"]),
    ("deprecated_mirror_percent",
     "hosts: [r]\nhttp:\n- route: [{destination: {host: r}}]\n  mirror: {host: m}\n  mirrorPercent: 5\n",
     ["spec.http[0].mirrorPercent: warning: 'mirrorPercent' is deprecated; use 'mirrorPercentage: {value: ...}'"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS])
def test_questionable_virtual_service_loads_with_a_warning(spec: str, expected: list[str]) -> None:
    result = load(spec)

    assert result.errors == [] and len(result.resources) == 1
    assert findings(spec) == expected


def test_gateway_bound_service_may_use_star_and_delegate() -> None:
    vs = spec_of("""
        hosts: ['*']
        gateways: [istio-system/ingress]
        http:
        - match: [{uri: {prefix: /reviews}}]
          delegate: {name: reviews, namespace: bookinfo}
        """)

    assert vs.applies_to_gateway and vs.http[0].delegate.namespace == "bookinfo"


def test_delegate_virtual_service_has_no_hosts() -> None:
    vs = spec_of("http:\n- match: [{uri: {prefix: /reviews/v1}}]\n  route: [{destination: {host: reviews}}]\n")

    assert vs.is_delegate
