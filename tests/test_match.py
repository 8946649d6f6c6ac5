"""Compiled matchers: Istio's HTTPMatchRequest evaluated the way Envoy evaluates it."""

import pytest

from gateway._match import (
    HttpMatchConfig, MatchCompileError, RouteRequest, StringMatcher, header_condition, parse_query, query_condition,
)
from gateway._regex import literal_prefix, regex_fullmatch
from topology import HTTPMatchRequest, StringMatch


def sm(**kw: str) -> StringMatch:
    return StringMatch(**kw)


@pytest.mark.parametrize("match, ignore_case, value, expected", [
    (sm(exact="/a"), False, "/a", True),
    (sm(exact="/a"), False, "/A", False),
    (sm(exact="/a"), True, "/A", True),
    (sm(exact="/a"), False, "/ab", False),
    (sm(prefix="/api"), False, "/api/v1", True),
    (sm(prefix="/api"), False, "/API/v1", False),
    (sm(prefix="/api"), True, "/API/v1", True),
    (sm(prefix="/api"), False, "/ap", False),
    (sm(regex="/v[0-9]+"), False, "/v12", True),
    (sm(regex="/v[0-9]+"), False, "/v12/x", False),  # full match, not search
    (sm(regex="/v[0-9]+"), False, "x/v12", False),
    (sm(regex="/v[0-9]+"), True, "/V12", False),  # Envoy: ignore case does not apply to regex
    (sm(regex="(?i)/v[0-9]+"), False, "/V12", True),
    (sm(regex="a|b"), False, "b", True),
    (sm(regex=".*"), False, "", True),
    (sm(regex=".*"), False, "line\nbreak", False),  # RE2: . does not match newline
    (sm(regex="*"), False, "anything", True),  # Istio: regex `*` is a presence match
    (None, False, "", True),
    (sm(), False, "x", True),
])
def test_string_matcher_follows_envoy_string_match(match, ignore_case, value, expected):
    assert StringMatcher.compile(match, ignore_case=ignore_case)(value) is expected


@pytest.mark.parametrize("pattern, prefix", [
    ("/re/3/[a-z]+", "/re/3/"),
    ("^/api/v1/.*", "/api/v1/"),
    ("/a.b", "/a"),
    ("/ab*", "/a"),
    ("/abc{2}", "/ab"),
    (r"/a\.b/c", "/a.b/c"),
    (r"/v\d+", "/v"),
    ("(?i)/x", ""),
    ("/x|/y", ""),
])
def test_literal_prefix_is_conservative(pattern, prefix):
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize("pattern, value, expected", [
    ("/re/3/[a-z]+", "/re/3/abc", True),
    ("/re/3/[a-z]+", "/re/3/ab1", False),
    ("/re/3/[a-z]+", "/other", False),
    (".*é", "café", True),
    ("/ab*", "/a", True),
    ("/ab*", "/abbb", True),
])
def test_regex_fullmatch_agrees_with_re2_full_match(pattern, value, expected):
    assert regex_fullmatch(pattern)(value) is expected


def test_invalid_regex_raises_with_the_pattern():
    with pytest.raises(MatchCompileError) as e:
        StringMatcher.compile(sm(regex="(a"))
    assert str(e.value) == "invalid RE2 regex '(a': missing ): (a"
    assert e.value.pattern == "(a"


def test_repeated_headers_are_joined_with_commas_and_names_lowercased():
    req = RouteRequest(headers=[("X-Tag", "a"), ("x-tag", "b"), ("Accept", "*/*")])
    assert req.headers == {"x-tag": "a,b", "accept": "*/*"}
    cond, _ = header_condition("x-tag", sm(exact="a,b"))
    assert cond(req)


HEADER_CASES = [
    # (name, match, invert, headers, expected)
    ("x-user", sm(exact="jason"), False, {"x-user": "jason"}, True),
    ("x-user", sm(exact="jason"), False, {"x-user": "bob"}, False),
    ("x-user", sm(exact="jason"), False, {}, False),
    ("X-User", sm(exact="jason"), False, {"x-user": "jason"}, True),  # names are case-insensitive
    ("x-user", sm(exact=""), False, {"x-user": ""}, True),
    ("x-user", sm(exact=""), False, {}, False),
    ("x-user", sm(prefix="ja"), False, {"x-user": "jason"}, True),
    ("x-user", sm(regex="j.*n"), False, {"x-user": "jason"}, True),
    ("x-user", None, False, {"x-user": ""}, True),  # {} tests presence
    ("x-user", None, False, {}, False),
    # withoutHeaders: inverted, and a missing header counts as empty for string matches
    ("x-user", sm(exact="jason"), True, {"x-user": "jason"}, False),
    ("x-user", sm(exact="jason"), True, {"x-user": "bob"}, True),
    ("x-user", sm(exact="jason"), True, {}, True),
    ("x-user", sm(exact=""), True, {}, False),
    ("x-user", None, True, {}, True),  # withoutHeaders {} means absent
    ("x-user", None, True, {"x-user": "x"}, False),
    ("@request.auth.claims.group", sm(exact="admin"), False, {}, False),
    ("@request.auth.claims.group", sm(exact="admin"), True, {}, True),
]


@pytest.mark.parametrize("name, match, invert, headers, expected", HEADER_CASES)
def test_header_condition(name, match, invert, headers, expected):
    cond, _ = header_condition(name, match, invert=invert)
    assert bool(cond(RouteRequest(headers=headers))) is expected


@pytest.mark.parametrize("name, match, expected", [
    (":method", sm(exact="POST"), True),
    (":method", sm(exact="GET"), False),
    (":authority", sm(prefix="reviews"), True),
    (":scheme", sm(exact="https"), True),
    (":path", sm(exact="/a?b=1"), True),  # :path carries the query string
    (":method", None, True),
])
def test_pseudo_headers_read_the_request_line(name, match, expected):
    req = RouteRequest(method="POST", scheme="https", authority="reviews:9080", path="/a", query="b=1")
    cond, _ = header_condition(name, match)
    assert bool(cond(req)) is expected


@pytest.mark.parametrize("query, parsed", [
    ("", {}),
    ("a=1&b=2", {"a": "1", "b": "2"}),
    ("a=1&a=2", {"a": "1"}),  # first value wins
    ("flag&x=", {"flag": "", "x": ""}),
    ("q=hello%20world&p=a+b", {"q": "hello world", "p": "a b"}),
    ("&&a=1", {"a": "1"}),
])
def test_query_strings_parse_as_envoy_decodes_them(query, parsed):
    assert parse_query(query) == parsed


@pytest.mark.parametrize("name, match, query, expected", [
    ("v", sm(exact="2"), "v=2", True),
    ("v", sm(exact="2"), "v=1&v=2", False),
    ("v", sm(exact="2"), "", False),
    ("v", sm(regex="[0-9]+"), "v=42", True),
    ("v", sm(prefix="4"), "v=42", True),
    ("v", None, "v", True),
    ("v", None, "w=1", False),
    ("v", sm(regex="*"), "v=anything", True),
])
def test_query_condition(name, match, query, expected):
    cond, _ = query_condition(name, match)
    assert bool(cond(RouteRequest(query=query))) is expected


def match_request(**kw) -> HTTPMatchRequest:
    return HTTPMatchRequest(**kw)


MATCH_CASES = [
    # (match, request fields, expected)
    (None, {"path": "/anything"}, True),
    (match_request(uri=sm(exact="/productpage")), {"path": "/productpage"}, True),
    (match_request(uri=sm(exact="/productpage")), {"path": "/productpage", "query": "u=1"}, True),
    (match_request(uri=sm(exact="/productpage")), {"path": "/productpage/"}, False),
    (match_request(uri=sm(exact="/Login"), ignore_uri_case=True), {"path": "/login"}, True),
    (match_request(uri=sm(prefix="/static")), {"path": "/static/css/x.css"}, True),
    (match_request(uri=sm(prefix="/static")), {"path": "/staticfile"}, True),  # a plain prefix, not a segment
    (match_request(uri=sm(prefix="/Static"), ignore_uri_case=True), {"path": "/STATIC/x"}, True),
    (match_request(uri=sm(regex="/api/v[12]/.*")), {"path": "/api/v2/books"}, True),
    (match_request(uri=sm(regex="/api/v[12]/.*"), ignore_uri_case=True), {"path": "/API/v2/books"}, False),
    (match_request(method=sm(exact="GET")), {"method": "GET"}, True),
    (match_request(method=sm(exact="GET")), {"method": "POST"}, False),
    (match_request(authority=sm(prefix="reviews")), {"authority": "reviews.default:9080"}, True),
    (match_request(scheme=sm(exact="https")), {"scheme": "http"}, False),
    # all conditions of one match must hold
    (match_request(uri=sm(prefix="/a"), headers={"end-user": sm(exact="jason")}, method=sm(exact="GET")),
     {"path": "/a/b", "headers": {"end-user": "jason"}}, True),
    (match_request(uri=sm(prefix="/a"), headers={"end-user": sm(exact="jason")}, method=sm(exact="GET")),
     {"path": "/a/b", "headers": {"end-user": "jason"}, "method": "PUT"}, False),
    (match_request(headers={"a": sm(exact="1")}, without_headers={"b": sm()}, query_params={"q": sm(exact="x")}),
     {"headers": {"a": "1"}, "query": "q=x"}, True),
    (match_request(headers={"a": sm(exact="1")}, without_headers={"b": sm()}, query_params={"q": sm(exact="x")}),
     {"headers": {"a": "1", "b": "present"}, "query": "q=x"}, False),
    # decided at compile time by the routing table, not here
    (match_request(port=9999, source_labels={"app": "x"}, gateways=("gw",)), {"port": 80}, True),
]


@pytest.mark.parametrize("match, fields, expected", MATCH_CASES)
def test_http_match_requires_every_condition(match, fields, expected):
    assert HttpMatchConfig.compile(match).matches(RouteRequest(**fields)) is expected


def test_a_match_without_conditions_is_a_catch_all_with_istio_prefix_slash():
    m = HttpMatchConfig.compile(match_request(name="all"))
    assert m.is_catch_all and m.path.kind == "prefix" and m.path.value == "/"
    assert str(m) == "path prefix '/'"
    assert not HttpMatchConfig.compile(match_request(uri=sm(prefix="/a"))).is_catch_all


def test_description_lists_conditions_in_evaluation_order():
    m = HttpMatchConfig.compile(match_request(uri=sm(prefix="/a"), method=sm(exact="GET"),
                                              headers={"b": sm(exact="1"), "a": sm()}))
    assert str(m) == "path prefix '/a' and header :method exact 'GET' and header a present and header b exact '1'"


@pytest.mark.parametrize("kind, value, matched", [("prefix", "/api", 4), ("exact", "/api", None), ("regex", "/a.*", None)])
def test_path_match_reports_what_a_prefix_rewrite_replaces(kind, value, matched):
    m = HttpMatchConfig.compile(match_request(uri=StringMatch(**{kind: value})))
    assert m.path.matched_length == matched


def test_source_conditions_are_checked_per_request_only_when_asked():
    m = match_request(source_labels={"app": "productpage"}, source_namespace="bookinfo")
    runtime = HttpMatchConfig.compile(m, runtime_source=True)
    assert runtime.matches(RouteRequest(source_labels={"app": "productpage", "v": "1"}, source_namespace="bookinfo"))
    assert not runtime.matches(RouteRequest(source_labels={"app": "other"}, source_namespace="bookinfo"))
    assert not runtime.matches(RouteRequest(source_labels={"app": "productpage"}, source_namespace="default"))
    assert HttpMatchConfig.compile(m).matches(RouteRequest())


def test_query_params_are_parsed_once_and_only_when_needed():
    req = RouteRequest(query="a=1")
    assert req._query_params is None
    first = req.query_params
    assert first == {"a": "1"} and req.query_params is first
