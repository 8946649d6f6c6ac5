"""CORS answered by the proxy, as Envoy's CORS filter applies Istio's corsPolicy."""

import pytest

from gateway._cors import CorsConfig, CorsDecision, is_preflight
from topology import Duration, StringMatch
from topology._http_policy import CorsPolicy, UnmatchedPreflights

SHOP = "https://shop.example"
POLICY = CorsPolicy(
    allow_origins=(StringMatch(exact=SHOP), StringMatch(prefix="https://dev."), StringMatch(regex=r"https://[a-z]+\.test")),
    allow_methods=("GET", "POST"), allow_headers=("content-type", "x-token"), expose_headers=("x-request-id",),
    max_age=Duration.parse("24h"), allow_credentials=True)


def preflight(origin: str, method: str = "POST", headers: str | None = None) -> dict[str, str]:
    h = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        h["access-control-request-headers"] = headers
    return h


@pytest.mark.parametrize("origin, allowed", [
    (SHOP, True), ("https://shop.example.evil", False), ("https://dev.anything", True),
    ("https://abc.test", True), ("https://abc.test.evil", False), ("http://shop.example", False),
])
def test_origins_are_matched_by_the_string_match_list(origin, allowed):
    assert CorsConfig.compile(POLICY).is_origin_allowed(origin) is allowed


PREFLIGHT_HEADERS = (
    ("access-control-allow-credentials", "true"), ("access-control-allow-methods", "GET,POST"),
    ("access-control-allow-headers", "content-type,x-token"), ("access-control-max-age", "86400"),
)

CASES = [
    # (policy, method, headers, decision)
    (POLICY, "GET", {}, None),  # no Origin: not a CORS request
    (POLICY, "GET", {"origin": ""}, None),
    (POLICY, "GET", {"origin": SHOP}, CorsDecision(False, (
        ("access-control-allow-origin", SHOP), ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-request-id")))),
    (POLICY, "GET", {"origin": "https://evil.example"}, None),
    (POLICY, "OPTIONS", preflight(SHOP), CorsDecision(True, (("access-control-allow-origin", SHOP),) + PREFLIGHT_HEADERS)),
    # OPTIONS without Access-Control-Request-Method is an actual request
    (POLICY, "OPTIONS", {"origin": SHOP}, CorsDecision(False, (
        ("access-control-allow-origin", SHOP), ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-request-id")))),
    (POLICY, "OPTIONS", preflight("https://evil.example"), None),  # forwarded upstream by default
    (CorsPolicy(allow_origins=(StringMatch(exact=SHOP),), unmatched_preflights=UnmatchedPreflights.FORWARD),
     "OPTIONS", preflight("https://evil.example"), None),
    (CorsPolicy(allow_origins=(StringMatch(exact=SHOP),), allow_methods=("GET",),
                unmatched_preflights=UnmatchedPreflights.IGNORE),
     "OPTIONS", preflight("https://evil.example"), CorsDecision(True, (("access-control-allow-methods", "GET"),))),
    (CorsPolicy(allow_origins=(StringMatch(exact=SHOP),), allow_methods=("*",), allow_headers=("*",)),
     "OPTIONS", preflight(SHOP, "PATCH", "x-a,x-b"), CorsDecision(True, (
         ("access-control-allow-origin", SHOP), ("access-control-allow-methods", "PATCH"),
         ("access-control-allow-headers", "x-a,x-b")))),
    (CorsPolicy(allow_origins=(StringMatch(exact=SHOP),), allow_headers=("*",)),
     "OPTIONS", preflight(SHOP), CorsDecision(True, (("access-control-allow-origin", SHOP),))),
    (CorsPolicy(allow_origin=(SHOP, "https://other.example")), "GET", {"origin": "https://other.example"},
     CorsDecision(False, (("access-control-allow-origin", "https://other.example"),))),
    # a matcher that accepts "*" opens every origin; the origin is echoed, never "*"
    (CorsPolicy(allow_origins=(StringMatch(exact="*"),)), "GET", {"origin": "https://any.example"},
     CorsDecision(False, (("access-control-allow-origin", "https://any.example"),))),
    (CorsPolicy(allow_origins=(StringMatch(regex=".*"),)), "GET", {"origin": "https://any.example"},
     CorsDecision(False, (("access-control-allow-origin", "https://any.example"),))),
    (CorsPolicy(), "GET", {"origin": SHOP}, None),  # no origins: nothing allowed
]


@pytest.mark.parametrize("policy, method, headers, decision", CASES)
def test_cors_decisions(policy, method, headers, decision):
    assert CorsConfig.compile(policy).decide(method, headers) == decision


def test_policy_fields_are_compiled_as_istio_translates_them():
    c = CorsConfig.compile(POLICY)
    assert (c.allow_methods, c.allow_headers, c.expose_headers, c.max_age, c.allow_credentials,
            c.forward_unmatched_preflights) == ("GET,POST", "content-type,x-token", "x-request-id", "86400", True, True)
    assert CorsConfig.compile(CorsPolicy(allow_origins=(StringMatch(exact="*"),))).allow_all_origins
    assert not c.allow_all_origins


@pytest.mark.parametrize("method, headers, expected", [
    ("OPTIONS", preflight(SHOP), True),
    ("OPTIONS", {"origin": SHOP}, False),
    ("OPTIONS", {"access-control-request-method": "GET"}, False),
    ("OPTIONS", {"origin": SHOP, "access-control-request-method": ""}, False),
    ("POST", preflight(SHOP), False),
])
def test_preflight_detection(method, headers, expected):
    assert is_preflight(method, headers) is expected
