"""Value types of the registry: Locality, Labels, ServicePort, Endpoint, Service."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topology._endpoint import (EMPTY_LOCALITY, Endpoint, Labels, Locality, Service, ServicePort,
                                UndeclaredPortError)
from topology._hostname import Hostname, InvalidValueError

TIER = st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True)


@pytest.mark.parametrize("text, locality", [
    ("us-east/us-east-1a/rack1", Locality("us-east", "us-east-1a", "rack1")),
    ("us-east/us-east-1a", Locality("us-east", "us-east-1a")),
    ("us-east", Locality("us-east")),
    ("", EMPTY_LOCALITY),
])
def test_locality_parses_region_zone_subzone(text: str, locality: Locality) -> None:
    assert Locality.parse(text) == locality
    assert str(locality) == text


@pytest.mark.parametrize("text, message", [
    ("a/b/c/d", "locality has at most 3 tiers (region/zone/subzone); found 'a/b/c/d'"),
    ("/zone", "locality '/zone/' names a lower tier without the one above it"),
    ("us-east/*", "locality tier must be a string without '/' or '*'; found string '*'"),
])
def test_locality_parse_refuses_malformed_text(text: str, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        Locality.parse(text)
    assert str(info.value) == message


@given(TIER, st.one_of(st.just(""), TIER), st.one_of(st.just(""), TIER))
def test_locality_string_round_trips(region: str, zone: str, subzone: str) -> None:
    if subzone and not zone:
        zone = "z"
    loc = Locality(region, zone, subzone)
    assert Locality.parse(str(loc)) == loc


EAST_1A = Locality("us-east", "us-east-1a", "rack1")


@pytest.mark.parametrize("pattern, expected", [
    # Istio LocalityMatch: a tier is literal, '*', or left out (matches anything below).
    ("us-east", True),
    ("us-east/*", True),
    ("us-east/us-east-1a", True),
    ("us-east/us-east-1a/*", True),
    ("us-east/us-east-1a/rack1", True),
    ("us-east/us-east-1a/rack2", False),
    ("us-east/us-east-1b/*", False),
    ("us-west", False),
    ("us-west/*", False),
    ("*", True),
    ("*/us-east-1a", True),
    ("*/us-east-1b", False),
])
def test_matches_pattern_follows_istio_locality_match(pattern: str, expected: bool) -> None:
    assert EAST_1A.matches_pattern(pattern) is expected


@pytest.mark.parametrize("prefix, expected", [
    (Locality("us-east"), True),
    (Locality("us-east", "us-east-1a"), True),
    (Locality("us-east", "us-east-1a", "rack1"), True),
    (Locality("us-east", "us-east-1b"), False),
    (Locality("us-west"), False),
])
def test_matches_tells_whether_a_locality_lies_within_a_prefix(prefix: Locality, expected: bool) -> None:
    assert EAST_1A.matches(prefix) is expected


@pytest.mark.parametrize("other, shared", [
    (Locality("us-east", "us-east-1a", "rack1"), 3),
    (Locality("us-east", "us-east-1a", "rack2"), 2),
    (Locality("us-east", "us-east-1b", "rack1"), 1),
    (Locality("us-west", "us-east-1a", "rack1"), 0),
])
def test_proximity_counts_shared_leading_tiers(other: Locality, shared: int) -> None:
    assert EAST_1A.proximity(other) == shared
    assert other.proximity(EAST_1A) == shared


def test_labels_select_by_subset_and_empty_selector_selects_all() -> None:
    labels = Labels({"app": "reviews", "version": "v2"})
    assert labels.selects({})
    assert labels.selects({"version": "v2"})
    assert labels.selects({"app": "reviews", "version": "v2"})
    assert not labels.selects({"version": "v3"})
    assert not labels.selects({"version": "v2", "track": "canary"})


def test_labels_are_an_immutable_hashable_mapping() -> None:
    labels = Labels({"app": "reviews"})
    assert labels == {"app": "reviews"} and labels == Labels([("app", "reviews")])
    assert hash(labels) == hash(Labels({"app": "reviews"}))
    assert dict(labels) == {"app": "reviews"} and labels["app"] == "reviews" and len(labels) == 1
    assert repr(labels) == "Labels({'app': 'reviews'})"
    with pytest.raises(TypeError):
        labels["app"] = "x"  # type: ignore[index]
    with pytest.raises(InvalidValueError, match="labels must map strings to strings; found string 'v': integer 2"):
        Labels({"v": 2})  # type: ignore[dict-item]


def test_endpoint_takes_plain_labels_and_locality_text() -> None:
    ep = Endpoint("127.1.1.5", 9080, {"version": "v1"}, "us-east/us-east-1a", "east-a", "net-east-a")
    assert ep.labels == Labels({"version": "v1"})
    assert ep.locality == Locality("us-east", "us-east-1a")
    assert hash(ep) == hash(Endpoint("127.1.1.5", 9080, Labels({"version": "v1"}), Locality("us-east", "us-east-1a"),
                                     "east-a", "net-east-a"))
    assert repr(ep) == "<Endpoint 127.1.1.5:9080 east-a us-east/us-east-1a healthy>"
    assert repr(Endpoint("10.0.0.1", 80, healthy=False)) == "<Endpoint 10.0.0.1:80 unhealthy>"


@pytest.mark.parametrize("kwargs, message", [
    ({"address": "", "port": 80}, "endpoint address must be a non-empty string; found string ''"),
    ({"address": "127.0.0.1", "port": 70000}, "endpoint port must be 0..65535; found integer 70000"),
    ({"address": "127.0.0.1", "port": 80, "weight": 0}, "endpoint weight must be an integer >= 1; found integer 0"),
    ({"address": "127.0.0.1", "port": 80, "weight": True}, "endpoint weight must be an integer >= 1; found boolean true"),
])
def test_endpoint_refuses_impossible_values(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        Endpoint(**kwargs)
    assert str(info.value) == message


def test_service_port_defaults_target_to_port_and_normalizes_protocol() -> None:
    assert ServicePort("http", 9080, "http") == ServicePort("http", 9080, "HTTP", 9080)
    assert ServicePort("grpc", 80, "grpc", 8080).target_port == 8080
    with pytest.raises(InvalidValueError, match="protocol must be one of .*; found string 'quic'"):
        ServicePort("x", 80, "quic")
    with pytest.raises(InvalidValueError, match="service port must be 1..65535; found integer 0"):
        ServicePort("x", 0)


def _svc(*endpoints: Endpoint) -> Service:
    return Service("reviews.bookinfo.svc.cluster.local", "bookinfo", "reviews",
                   (ServicePort("http", 9080, "HTTP"), ServicePort("metrics", 15090, "HTTP", 9090)),
                   endpoints=endpoints)


def test_service_repr_counts_endpoints_and_clusters() -> None:
    assert repr(_svc()) == "<Service reviews.bookinfo.svc.cluster.local [0 endpoints in 0 clusters]>"
    one = _svc(Endpoint("127.1.1.5", 9080, cluster="east-a"))
    assert repr(one) == "<Service reviews.bookinfo.svc.cluster.local [1 endpoint in 1 cluster]>"
    assert one.hostname == Hostname("reviews.bookinfo.svc.cluster.local")


def test_endpoint_serves_ports_by_target_port_or_explicit_service_port() -> None:
    http, metrics = _svc().ports
    plain = Endpoint("127.1.1.5", 9090)
    assert plain.serves(metrics) and not plain.serves(http)
    override = Endpoint("10.0.0.1", 7777, service_port=9080)
    assert override.serves(http) and not override.serves(metrics)


def test_service_refuses_endpoints_on_undeclared_ports() -> None:
    with pytest.raises(UndeclaredPortError) as info:
        _svc(Endpoint("127.1.1.5", 8080))
    assert str(info.value) == ("reviews.bookinfo.svc.cluster.local: endpoint 127.1.1.5:8080 listens on no declared "
                               "target port (declared: 9080, 9090)")
    assert (info.value.hostname, info.value.port) == ("reviews.bookinfo.svc.cluster.local", 8080)
    with pytest.raises(UndeclaredPortError, match="serves port 81, which the service does not declare"):
        _svc(Endpoint("127.1.1.5", 9080, service_port=81))


def test_service_refuses_a_port_number_declared_twice() -> None:
    with pytest.raises(UndeclaredPortError, match="port 80 is declared twice \\('a' and 'b'\\)"):
        Service("x.default.svc.cluster.local", "default", "x", (ServicePort("a", 80), ServicePort("b", 80)))
