"""The hash key of a request under a DestinationRule's consistentHash: which input is
hashed, when there is no hash, and the affinity cookie a response must set."""

from __future__ import annotations

import pytest

from gateway import HashDecision, HashPolicy, stable_hash64
from gateway._hashkey import NO_HASH, HashOn, cookie_value, query_value
from topology import Duration
from topology._load_balancer import ConsistentHashLB, HTTPCookie


def test_stable_hash64_is_blake2b_cut_to_eight_bytes_little_endian() -> None:
    assert stable_hash64("abc") == int.from_bytes(bytes.fromhex("d8bb14d833d59559"), "little")
    assert stable_hash64(b"abc") == stable_hash64("abc") == 6455300059550759896
    assert stable_hash64("abc", seed=1) == 4882607893960367073
    assert all(0 <= stable_hash64(str(i)) < 2**64 for i in range(100))


@pytest.mark.parametrize("config, expected", [
    (None, None),
    (ConsistentHashLB(), None),
    (ConsistentHashLB(http_header_name="X-User"), HashPolicy(HashOn.HEADER, "x-user")),
    (ConsistentHashLB(http_cookie=HTTPCookie(name="session")), HashPolicy(HashOn.COOKIE, "session")),
    (ConsistentHashLB(http_cookie=HTTPCookie(name="s", path="/app", ttl=Duration.parse("90.5s"))),
     HashPolicy(HashOn.COOKIE, "s", "/app", 90)),
    (ConsistentHashLB(use_source_ip=True), HashPolicy(HashOn.SOURCE_IP)),
    (ConsistentHashLB(use_source_ip=False), None),
    (ConsistentHashLB(http_query_parameter_name="user"), HashPolicy(HashOn.QUERY_PARAMETER, "user")),
])
def test_compile_reads_the_one_key_of_consistent_hash(config, expected) -> None:
    assert HashPolicy.compile(config) == expected


HEADER = HashPolicy(HashOn.HEADER, "x-user")


@pytest.mark.parametrize("headers", [
    {"x-user": "alice"},
    [("X-User", "alice")],
    [(b"x-user", b"alice"), (b"host", b"reviews")],
])
def test_header_hash_is_the_hash_of_its_value_whatever_the_header_shape(headers) -> None:
    assert HEADER.decide(headers=headers) == HashDecision(stable_hash64("alice"))


def test_header_hash_ignores_the_order_of_repeated_values() -> None:
    one = HEADER.decide(headers=[("x-user", "a"), ("x-user", "b")])
    two = HEADER.decide(headers=[("x-user", "b"), ("x-user", "a")])
    assert one == two and one.hash not in (None, stable_hash64("a"), stable_hash64("b"))


@pytest.mark.parametrize("policy, kwargs", [
    (HEADER, {"headers": {"x-other": "alice"}}),
    (HashPolicy(HashOn.SOURCE_IP), {"source_ip": ""}),
    (HashPolicy(HashOn.QUERY_PARAMETER, "user"), {"query": "id=3"}),
    (HashPolicy(HashOn.COOKIE, "session"), {"headers": {"cookie": "other=1"}}),
])
def test_missing_input_gives_no_hash(policy, kwargs) -> None:
    assert policy.decide(**kwargs) is NO_HASH


def test_source_ip_hash_is_the_hash_of_the_address() -> None:
    assert HashPolicy(HashOn.SOURCE_IP).decide(source_ip="127.1.1.9") == HashDecision(stable_hash64("127.1.1.9"))


@pytest.mark.parametrize("query, expected", [
    ("user=alice", "alice"),
    ("?id=1&user=alice&user=bob", "alice"),
    ("user=a%20b", "a%20b"),  # not decoded, as Envoy's parseQueryString
    ("user", ""),
    ("user=x#frag", "x"),
    ("users=alice", None),
    ("", None),
])
def test_query_value_takes_the_first_raw_value(query, expected) -> None:
    assert query_value(query, "user") == expected


@pytest.mark.parametrize("header, expected", [
    ("session=abc", "abc"),
    ("a=1; session=\"abc\"; b=2", "abc"),
    ("a=1;session=abc", "abc"),
    ("sessionx=1; session=", ""),
    ("nosuch", ""),
])
def test_cookie_value_parses_as_envoy(header, expected) -> None:
    assert cookie_value({"cookie": header}, "session") == expected


def test_cookie_value_looks_in_every_cookie_header() -> None:
    assert cookie_value([("cookie", "a=1"), ("Cookie", "session=z")], "session") == "z"


def test_present_cookie_is_hashed_and_sets_nothing() -> None:
    policy = HashPolicy(HashOn.COOKIE, "session", "/", 60)
    assert policy.decide(headers={"cookie": "session=abc"}) == HashDecision(stable_hash64("abc"))


def test_absent_cookie_with_ttl_is_made_up_and_returned_for_the_response() -> None:
    policy = HashPolicy(HashOn.COOKIE, "session", "/app", 3600)
    first = policy.decide(headers={}, source_address="127.1.1.2:40000", local_address="127.1.1.3:15001")
    value = f"{stable_hash64('127.1.1.2:40000127.1.1.3:15001'):016x}"
    assert first.set_cookie == f'session="{value}"; Max-Age=3600; Path=/app; HttpOnly'
    # The client sends the cookie back and lands where its first request did.
    again = policy.decide(headers={"cookie": f'session="{value}"'}, source_address="127.1.1.2:40001")
    assert again == HashDecision(first.hash)


def test_generated_cookie_is_the_same_for_every_request_of_a_connection() -> None:
    policy = HashPolicy(HashOn.COOKIE, "s", "", 10)
    conn = {"source_address": "127.1.1.2:40000", "local_address": "127.1.1.3:15001"}
    assert policy.decide(**conn) == policy.decide(**conn)
    assert policy.decide(**conn) != policy.decide(source_address="127.1.1.2:40002", local_address="127.1.1.3:15001")


@pytest.mark.parametrize("ttl, path, expected", [
    (0, "", 's="v"; HttpOnly'),  # ttl 0s: a session cookie, no Max-Age
    (5, "", 's="v"; Max-Age=5; HttpOnly'),
    (0, "/x", 's="v"; Path=/x; HttpOnly'),
])
def test_set_cookie_value_has_envoys_shape(ttl, path, expected) -> None:
    assert HashPolicy(HashOn.COOKIE, "s", path, ttl).set_cookie_value("v") == expected


def test_policy_str_names_what_it_hashes() -> None:
    assert [str(p) for p in (HEADER, HashPolicy(HashOn.SOURCE_IP), HashPolicy(HashOn.COOKIE, "s"))] == [
        "httpHeaderName=x-user", "useSourceIp", "httpCookie=s"]
