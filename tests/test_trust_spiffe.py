"""SpiffeId and TrustDomain: the SPIFFE-ID spec's rules, checked once at construction."""

import pytest

from trustdomain import SpiffeId, SpiffeIdError, TrustDomain


@pytest.mark.parametrize("text, td, path", [
    ("spiffe://east.example/ns/bookinfo/sa/reviews", "east.example", "/ns/bookinfo/sa/reviews"),
    ("spiffe://cluster.local", "cluster.local", ""),
    ("spiffe://td_1-x.y/a/B/c.d/e-f/g_h", "td_1-x.y", "/a/B/c.d/e-f/g_h"),
    ("spiffe://a/..x/x..", "a", "/..x/x.."),
])
def test_valid_spiffe_ids_parse_into_trust_domain_and_path(text: str, td: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert (sid.trust_domain, sid.path, str(sid)) == (TrustDomain(td), path, text)


@pytest.mark.parametrize("text, problem", [
    ("", "cannot be empty"),
    ("http://east.example/ns/a/sa/b", "scheme is missing or invalid (must be 'spiffe://')"),
    ("SPIFFE://east.example", "scheme is missing or invalid (must be 'spiffe://')"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///ns/a", "trust domain is missing"),
    ("spiffe://East.example/ns/a", "trust domain characters are limited to lowercase letters, numbers, dots, "
                                   "dashes, and underscores; found 'E'"),
    ("spiffe://east.example:443/ns/a", "a SPIFFE ID cannot contain a port"),
    ("spiffe://user@east.example/ns/a", "a SPIFFE ID cannot contain userinfo"),
    ("spiffe://east.example/ns/a?x=1", "a SPIFFE ID cannot contain a query"),
    ("spiffe://east.example/ns/a#frag", "a SPIFFE ID cannot contain a fragment"),
    ("spiffe://east.example/ns//a", "path cannot contain empty segments or a trailing slash"),
    ("spiffe://east.example/ns/a/", "path cannot contain empty segments or a trailing slash"),
    ("spiffe://east.example/", "path cannot contain empty segments or a trailing slash"),
    ("spiffe://east.example/ns/./a", "path cannot contain dot segments"),
    ("spiffe://east.example/ns/../a", "path cannot contain dot segments"),
    ("spiffe://east.example/ns/a%20b", "path segment characters are limited to letters, numbers, dots, dashes, "
                                       "and underscores; found '%'"),
    ("spiffe://east.example/ns/é", "path segment characters are limited to letters, numbers, dots, dashes, "
                                   "and underscores; found 'é'"),
])
def test_invalid_spiffe_ids_are_refused_with_the_spec_rule_they_break(text: str, problem: str) -> None:
    with pytest.raises(SpiffeIdError) as info:
        SpiffeId.parse(text)
    assert info.value.problem == problem
    assert str(info.value) == f"invalid SPIFFE ID or trust domain {text!r}: {problem}"


def test_overlong_spiffe_id_is_refused() -> None:
    with pytest.raises(SpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse("spiffe://td/" + "a" * 2048)


def test_overlong_trust_domain_is_refused() -> None:
    with pytest.raises(SpiffeIdError, match="trust domain is longer than 255 characters"):
        TrustDomain("a" * 256)


def test_spiffe_ids_are_hashable_values() -> None:
    a = SpiffeId.parse("spiffe://east.example/ns/bookinfo/sa/reviews")
    b = SpiffeId.workload("east.example", "bookinfo", "reviews")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert {TrustDomain("east.example"): 1}[a.trust_domain] == 1


def test_istio_shaped_id_exposes_namespace_and_service_account() -> None:
    sid = SpiffeId.parse("spiffe://east.example/ns/bookinfo/sa/reviews")
    assert (sid.namespace, sid.service_account) == ("bookinfo", "reviews")
    other = SpiffeId.parse("spiffe://east.example/workload/x")
    assert (other.namespace, other.service_account) == (None, None)


@pytest.mark.parametrize("ns, sa, problem", [
    ("a/b", "x", "namespace 'a/b' must be one non-empty path segment"),
    ("a", "", "service account '' must be one non-empty path segment"),
])
def test_workload_id_refuses_names_that_are_not_one_segment(ns: str, sa: str, problem: str) -> None:
    with pytest.raises(SpiffeIdError) as info:
        TrustDomain("east.example").workload_id(ns, sa)
    assert info.value.problem == problem


def test_trust_domain_parse_accepts_a_name_or_a_spiffe_id() -> None:
    assert TrustDomain.parse("east.example") == TrustDomain.parse("spiffe://east.example/ns/a/sa/b")
    assert TrustDomain("east.example").id_string == "spiffe://east.example"


def test_spiffe_id_is_member_only_of_its_own_trust_domain() -> None:
    sid = SpiffeId.parse("spiffe://east.example/ns/a/sa/b")
    assert sid.is_member_of(TrustDomain("east.example"))
    assert not sid.is_member_of(TrustDomain("west.example"))
