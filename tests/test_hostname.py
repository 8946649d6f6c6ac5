"""Hostnames, wildcard hosts and the Kubernetes namespace search path."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topology._hostname import (Hostname, InvalidHostnameError, canonical, host_matches, resolution_candidates,
                                search_path, service_fqdn, split_service_fqdn, wildcard_keys)
from topology._errors import RegistryError

LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize("text, name", [
    ("reviews.bookinfo.svc.cluster.local", "reviews.bookinfo.svc.cluster.local"),
    ("Reviews.BookInfo.SVC.cluster.local.", "reviews.bookinfo.svc.cluster.local"),
    ("  api.example.com ", "api.example.com"),
    ("*.example.com", "*.example.com"),
    ("*", "*"),
    ("*-foo.example.com", "*-foo.example.com"),
    ("localhost", "localhost"),
])
def test_parse_normalizes_case_and_trailing_dot(text: str, name: str) -> None:
    assert Hostname.parse(text) == Hostname(name)
    assert str(Hostname.parse(text)) == name


@pytest.mark.parametrize("text, message", [
    ("", "hostname '' is empty"),
    ("a..b", "hostname 'a..b' has an invalid label '' (a-z, 0-9, '-', not starting or ending with '-')"),
    ("-a.com", "hostname '-a.com' has an invalid label '-a' (a-z, 0-9, '-', not starting or ending with '-')"),
    ("foo.*.com", "hostname 'foo.*.com' has a '*' in label '*'; a wildcard may only begin the first label"),
    ("f*o.com", "hostname 'f*o.com' has a '*' in label 'f*o'; a wildcard may only begin the first label"),
    ("**.com", "hostname '**.com' has a wildcard label '**'; only '*' or a '*' prefix in the first label is allowed"),
    ("a_b.com", "hostname 'a_b.com' has an invalid label 'a_b' (a-z, 0-9, '-', not starting or ending with '-')"),
    ("x" * 64 + ".com", f"hostname '{'x' * 64}.com' has a label of 64 characters; DNS allows 63"),
    ("a." * 127 + "bc", "hostname '" + "a." * 127 + "bc' is 256 characters long; DNS allows 253"),
])
def test_parse_rejects_what_is_not_a_host_and_names_it(text: str, message: str) -> None:
    with pytest.raises(InvalidHostnameError) as info:
        Hostname.parse(text)
    assert str(info.value) == message
    assert info.value.hostname == text.strip().lower()
    assert isinstance(info.value, RegistryError)


def test_constructor_refuses_non_canonical_spelling() -> None:
    with pytest.raises(InvalidHostnameError, match="is not lowercase; use Hostname.parse"):
        Hostname("Reviews.bookinfo")
    with pytest.raises(InvalidHostnameError, match="must be a string; found integer 5"):
        Hostname.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern, name, expected", [
    # Istio host.Name.Matches, one direction: pattern covers a concrete name.
    ("foo.com", "foo.com", True),
    ("foo.com", "bar.com", False),
    ("*.com", "foo.com", True),
    ("*.foo.com", "foo.com", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*", "anything.at.all", True),
    ("*foo.com", "barfoo.com", True),
    ("*foo.com", "foo.com", True),
])
def test_wildcard_matching_follows_istio(pattern: str, name: str, expected: bool) -> None:
    assert host_matches(pattern, name) is expected
    assert Hostname.parse(pattern).matches(name) is expected


def test_wildcard_keys_go_from_most_to_least_specific() -> None:
    assert list(wildcard_keys("a.b.example.com")) == ["*.b.example.com", "*.example.com", "*.com", "*"]
    assert list(wildcard_keys("localhost")) == ["*"]


def test_search_path_is_the_pods_resolv_conf() -> None:
    assert search_path("bookinfo") == ("bookinfo.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert search_path("demo", "corp.internal") == ("demo.svc.corp.internal", "svc.corp.internal", "corp.internal")


@pytest.mark.parametrize("name, expected", [
    ("reviews", ("reviews.demo.svc.cluster.local", "reviews.svc.cluster.local", "reviews.cluster.local", "reviews")),
    ("reviews.bookinfo", ("reviews.bookinfo.demo.svc.cluster.local", "reviews.bookinfo.svc.cluster.local",
                          "reviews.bookinfo.cluster.local", "reviews.bookinfo")),
    # Four dots is still below ndots:5, so the search list comes first.
    ("reviews.bookinfo.svc.cluster.local", ("reviews.bookinfo.svc.cluster.local.demo.svc.cluster.local",
                                            "reviews.bookinfo.svc.cluster.local.svc.cluster.local",
                                            "reviews.bookinfo.svc.cluster.local.cluster.local",
                                            "reviews.bookinfo.svc.cluster.local")),
    # Five dots or more: tried as given first.
    ("a.b.c.d.e.f", ("a.b.c.d.e.f", "a.b.c.d.e.f.demo.svc.cluster.local", "a.b.c.d.e.f.svc.cluster.local",
                     "a.b.c.d.e.f.cluster.local")),
    ("API.Example.com.", ("api.example.com",)),
    ("", ()),
    ("not a name", ()),
])
def test_resolution_candidates_follow_ndots_5(name: str, expected: tuple[str, ...]) -> None:
    assert resolution_candidates(name, "demo") == expected


@pytest.mark.parametrize("name, expected", [
    ("reviews.bookinfo.svc.clusterset.local", "reviews.bookinfo.svc.cluster.local"),
    ("reviews.bookinfo.svc.cluster.local", "reviews.bookinfo.svc.cluster.local"),
    ("clusterset.local", "clusterset.local"),
    ("api.example.com", "api.example.com"),
])
def test_clusterset_names_are_canonical_cluster_local_names(name: str, expected: str) -> None:
    assert canonical(name) == expected


@pytest.mark.parametrize("host, expected", [
    ("reviews.bookinfo.svc.cluster.local", ("reviews", "bookinfo")),
    ("reviews.bookinfo.svc.clusterset.local", ("reviews", "bookinfo")),
    ("a.reviews.bookinfo.svc.cluster.local", None),
    ("bookinfo.svc.cluster.local", None),
    ("api.example.com", None),
])
def test_split_service_fqdn(host: str, expected: tuple[str, str] | None) -> None:
    assert split_service_fqdn(host) == expected


@given(LABEL, LABEL)
def test_service_fqdn_and_split_round_trip(name: str, namespace: str) -> None:
    fqdn = service_fqdn(name, namespace)
    assert split_service_fqdn(fqdn) == (name, namespace)
    assert Hostname.parse(str(fqdn) + ".") == fqdn


@given(st.lists(LABEL, min_size=1, max_size=4), st.lists(LABEL, min_size=1, max_size=3))
def test_star_dot_suffix_matches_one_or_more_labels_never_the_suffix(prefix: list[str], suffix: list[str]) -> None:
    pattern = "*." + ".".join(suffix)
    assert host_matches(pattern, ".".join(prefix + suffix))
    assert not host_matches(pattern, ".".join(suffix))
    assert pattern in wildcard_keys(".".join(prefix + suffix))


@given(st.lists(LABEL, min_size=1, max_size=7), LABEL)
def test_candidates_end_with_the_name_or_start_with_it_by_dot_count(labels: list[str], namespace: str) -> None:
    name = ".".join(labels)
    cands = resolution_candidates(name, namespace)
    assert len(cands) == 4 and name in cands
    assert (cands[0] == name) == (name.count(".") >= 5)
    assert resolution_candidates(name + ".", namespace) == (name,)
