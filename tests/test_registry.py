"""The service registry: namespace sameness, name resolution, endpoint selection, snapshots."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topology._endpoint import Endpoint, Labels, Locality, Resolution, Service, ServicePort, UndeclaredPortError
from topology._hostname import InvalidValueError
from topology._registry import RegistryBuilder, ServiceRegistry, UnknownEndpointError, UnknownServiceError

REVIEWS = "reviews.bookinfo.svc.cluster.local"
CLUSTERS = {  # name: (network, locality, address prefix)
    "east-a": ("net-east-a", Locality("us-east", "us-east-1a"), "127.1.1"),
    "east-b": ("net-east-b", Locality("us-east", "us-east-1b"), "127.1.2"),
    "west": ("net-west", Locality("us-west", "us-west-1a"), "127.1.3"),
}
HTTP = (ServicePort("http", 9080, "HTTP"),)


def _ep(cluster: str, host: int, port: int = 9080, **labels: str) -> Endpoint:
    network, locality, prefix = CLUSTERS[cluster]
    return Endpoint(f"{prefix}.{host}", port, labels, locality, cluster, network)


def _k8s(name: str, namespace: str, cluster: str, ports: tuple[ServicePort, ...] = HTTP) -> Service:
    return Service(f"{name}.{namespace}.svc.cluster.local", namespace, name, ports, declared_in=(cluster,))


def _external(host: str, *endpoints: Endpoint) -> Service:
    return Service(host, "default", host, (ServicePort("https", 443, "TLS"),), Resolution.DNS, True,
                   endpoints=endpoints)


@pytest.fixture(scope="module")
def mesh() -> ServiceRegistry:
    """bookinfo as examples/multi-cluster lays it out, plus a few ServiceEntry hosts."""
    b = RegistryBuilder()
    for cluster in ("east-a", "east-b", "west"):
        b.add_service(_k8s("reviews", "bookinfo", cluster))
    b.add_endpoints(REVIEWS, "east-a", [_ep("east-a", 10, app="reviews", version="v1")])
    b.add_endpoints(REVIEWS, "east-b", [_ep("east-b", 10, app="reviews", version="v2")])
    b.add_endpoints(REVIEWS, "west", [_ep("west", 10, app="reviews", version="v3"),
                                      _ep("west", 11, app="reviews", version="v3")])
    b.add_service(_k8s("ratings", "bookinfo", "west"))
    b.add_endpoints("ratings.bookinfo.svc.cluster.local", "west", [_ep("west", 20, app="ratings", version="v1")])
    b.add_service(_k8s("productpage", "bookinfo", "east-a"))
    b.add_service(_k8s("productpage", "bookinfo", "east-b"))
    b.add_service(_k8s("reviews", "com", "east-a"))  # a namespace that looks like a TLD
    b.add_service(_external("reviews.com", Endpoint("reviews.com", 443)))
    b.add_service(_external("*.example.com"))
    b.add_service(_external("*.api.example.com"))
    b.add_service(_external("exact.api.example.com"))
    return b.build()


def test_same_name_in_several_clusters_is_one_service_with_the_union_of_endpoints(mesh: ServiceRegistry) -> None:
    reviews = mesh.get(REVIEWS)
    assert repr(reviews) == "<Service reviews.bookinfo.svc.cluster.local [4 endpoints in 3 clusters]>"
    assert reviews.declared_in == ("east-a", "east-b", "west")
    assert [(e.cluster, e.network, str(e.locality), e.labels["version"]) for e in reviews.endpoints] == [
        ("east-a", "net-east-a", "us-east/us-east-1a", "v1"),
        ("east-b", "net-east-b", "us-east/us-east-1b", "v2"),
        ("west", "net-west", "us-west/us-west-1a", "v3"),
        ("west", "net-west", "us-west/us-west-1a", "v3"),
    ]
    assert mesh.clusters_of(REVIEWS) == ("east-a", "east-b", "west")
    assert mesh.clusters_of("ratings.bookinfo.svc.cluster.local") == ("west",)


def test_registry_repr_counts_services_endpoints_clusters(mesh: ServiceRegistry) -> None:
    assert repr(mesh) == "<ServiceRegistry 8 services, 6 endpoints, 3 clusters>"
    assert repr(ServiceRegistry()) == "<ServiceRegistry 0 services, 0 endpoints, 0 clusters>"
    assert len(mesh) == 8 and mesh.endpoint_count == 6 and mesh.clusters == ("east-a", "east-b", "west")
    assert [str(s.hostname) for s in mesh][:2] == ["*.api.example.com", "*.example.com"]


@pytest.mark.parametrize("name, client_namespace, expected", [
    ("reviews", "bookinfo", REVIEWS),
    ("reviews.bookinfo", "bookinfo", REVIEWS),
    ("reviews.bookinfo", "demo", REVIEWS),
    ("reviews.bookinfo.svc", "demo", REVIEWS),
    ("reviews.bookinfo.svc.cluster.local", "demo", REVIEWS),
    ("reviews.bookinfo.svc.cluster.local.", "demo", REVIEWS),
    ("REVIEWS.Bookinfo.svc.cluster.local", "demo", REVIEWS),
    ("reviews.bookinfo.svc.clusterset.local", "demo", REVIEWS),
    ("reviews.bookinfo.svc.clusterset.local.", "demo", REVIEWS),
    ("reviews", "demo", None),  # a short name only reaches the client's own namespace
    ("reviews.bookinfo.svc.cluster", "demo", None),
    ("ratings", "bookinfo", "ratings.bookinfo.svc.cluster.local"),
    # resolv.conf order: reviews.com.svc.cluster.local (namespace `com`) is tried before reviews.com
    ("reviews.com", "demo", "reviews.com.svc.cluster.local"),
    ("reviews.com.", "demo", "reviews.com"),
    ("nosuch", "bookinfo", None),
    ("", "bookinfo", None),
    ("not a host", "bookinfo", None),
])
def test_lookup_resolves_through_the_namespace_search_path(mesh: ServiceRegistry, name: str,
                                                           client_namespace: str, expected: str | None) -> None:
    found = mesh.lookup(name, client_namespace)
    assert (str(found.hostname) if found else None) == expected


@pytest.mark.parametrize("name, expected", [
    ("exact.api.example.com", "exact.api.example.com"),  # an exact host beats any wildcard
    ("v1.api.example.com", "*.api.example.com"),  # the most specific wildcard wins
    ("a.b.api.example.com", "*.api.example.com"),
    ("api.example.com", "*.example.com"),  # `*.api.example.com` never matches its own suffix
    ("example.com", None),
    ("badexample.com", None),
])
def test_lookup_answers_from_wildcard_service_entries_as_istio_matches(mesh: ServiceRegistry, name: str,
                                                                       expected: str | None) -> None:
    found = mesh.lookup(name, "demo")
    assert (str(found.hostname) if found else None) == expected


def test_wildcard_catch_all_prefers_the_name_as_written_over_search_expansions() -> None:
    reg = ServiceRegistry([_external("*"), _external("*.local"), _k8s("echo", "demo", "west")])
    assert str(reg.lookup("echo", "demo").hostname) == "echo.demo.svc.cluster.local"
    assert str(reg.lookup("api.example.com", "demo").hostname) == "*"
    assert str(reg.lookup("foo.local", "demo").hostname) == "*.local"


def test_lookup_of_a_hostname_object_is_absolute(mesh: ServiceRegistry) -> None:
    reviews = mesh.get(REVIEWS)
    assert mesh.lookup(reviews.hostname, "anything") is reviews
    assert REVIEWS in mesh and "reviews.bookinfo.svc.clusterset.local" in mesh and "reviews" not in mesh


def test_endpoints_select_by_port_subset_cluster_and_health(mesh: ServiceRegistry) -> None:
    assert len(mesh.endpoints(REVIEWS)) == 4
    assert len(mesh.endpoints(REVIEWS, port=9080)) == 4
    assert len(mesh.endpoints(REVIEWS, port="http")) == 4
    assert [e.address for e in mesh.endpoints(REVIEWS, subset_labels={"version": "v3"})] == ["127.1.3.10", "127.1.3.11"]
    assert len(mesh.endpoints(REVIEWS, subset_labels={})) == 4
    assert mesh.endpoints(REVIEWS, subset_labels={"version": "v3", "track": "canary"}) == ()
    assert [e.address for e in mesh.endpoints(REVIEWS, cluster="east-b")] == ["127.1.2.10"]
    sick = mesh.with_health("127.1.3.10", False)
    assert [e.address for e in sick.endpoints(REVIEWS, subset_labels={"version": "v3"}, healthy_only=True)] == [
        "127.1.3.11"]
    assert len(sick.endpoints(REVIEWS, subset_labels={"version": "v3"})) == 2


def test_endpoints_of_an_undeclared_port_is_an_error_naming_the_declared_ones(mesh: ServiceRegistry) -> None:
    with pytest.raises(UndeclaredPortError) as info:
        mesh.endpoints(REVIEWS, port=8080)
    assert str(info.value) == "reviews.bookinfo.svc.cluster.local: port 8080 is not declared (declared: 9080 (http))"
    assert (info.value.hostname, info.value.port) == (REVIEWS, 8080)


def test_multi_port_service_hands_out_each_ports_endpoints() -> None:
    ports = (ServicePort("http", 8080, "HTTP"), ServicePort("grpc", 9090, "GRPC", 19090))
    reg = ServiceRegistry([_k8s("echo", "demo", "west", ports)])
    reg = reg.with_endpoints("echo.demo.svc.cluster.local", "west", [_ep("west", 5, 8080), _ep("west", 5, 19090)])
    assert [e.port for e in reg.endpoints("echo.demo.svc.cluster.local", port="grpc")] == [19090]
    assert [e.port for e in reg.endpoints("echo.demo.svc.cluster.local", port=8080)] == [8080]


@pytest.mark.parametrize("call", [
    lambda r: r.get("nosuch.bookinfo.svc.cluster.local"),
    lambda r: r.endpoints("nosuch.bookinfo.svc.cluster.local"),
    lambda r: r.clusters_of("nosuch.bookinfo.svc.cluster.local"),
    lambda r: r.with_endpoints("nosuch.bookinfo.svc.cluster.local", "west", []),
    lambda r: r.without_service("nosuch.bookinfo.svc.cluster.local"),
])
def test_unknown_service_errors_carry_the_hostname(mesh: ServiceRegistry, call) -> None:
    with pytest.raises(UnknownServiceError) as info:
        call(mesh)
    assert str(info.value) == "no service 'nosuch.bookinfo.svc.cluster.local' in the registry"
    assert info.value.hostname == "nosuch.bookinfo.svc.cluster.local"


def test_builder_refuses_endpoints_for_an_undeclared_service() -> None:
    b = RegistryBuilder()
    with pytest.raises(UnknownServiceError) as info:
        b.add_endpoints("ghost.demo.svc.cluster.local", "west", [_ep("west", 1)])
    assert str(info.value) == ("cannot add endpoints to 'ghost.demo.svc.cluster.local': "
                               "no such service is declared")
    assert info.value.hostname == "ghost.demo.svc.cluster.local"


def test_with_endpoints_replaces_one_clusters_endpoints_and_leaves_the_old_snapshot_alone(
        mesh: ServiceRegistry) -> None:
    new = mesh.with_endpoints(REVIEWS, "west", [Endpoint("127.1.3.12", 9080, {"version": "v3"})])
    assert [(e.cluster, e.address) for e in new.endpoints(REVIEWS, cluster="west")] == [("west", "127.1.3.12")]
    assert len(new.endpoints(REVIEWS)) == 3
    assert len(mesh.endpoints(REVIEWS)) == 4
    assert new.get("ratings.bookinfo.svc.cluster.local") is mesh.get("ratings.bookinfo.svc.cluster.local")
    assert mesh.with_endpoints("reviews.bookinfo.svc.clusterset.local", "west", []).clusters_of(REVIEWS) == (
        "east-a", "east-b")


def test_with_endpoints_refuses_another_clusters_endpoint_and_an_undeclared_port(mesh: ServiceRegistry) -> None:
    with pytest.raises(InvalidValueError) as info:
        mesh.with_endpoints(REVIEWS, "west", [_ep("east-a", 9)])
    assert str(info.value) == ("reviews.bookinfo.svc.cluster.local: endpoint 127.1.1.9:9080 belongs to cluster "
                               "'east-a', not 'west'")
    with pytest.raises(UndeclaredPortError, match="endpoint 127.1.3.9:8080 listens on no declared target port"):
        mesh.with_endpoints(REVIEWS, "west", [_ep("west", 9, 8080)])


def test_without_cluster_drops_its_endpoints_and_the_services_only_it_had(mesh: ServiceRegistry) -> None:
    new = mesh.without_cluster("west")
    assert "ratings.bookinfo.svc.cluster.local" not in new
    assert new.get(REVIEWS).declared_in == ("east-a", "east-b")
    assert new.clusters_of(REVIEWS) == ("east-a", "east-b")
    assert "reviews.com" in new and "*.example.com" in new  # declared mesh-wide
    assert repr(new) == "<ServiceRegistry 7 services, 3 endpoints, 2 clusters>"
    assert "ratings.bookinfo.svc.cluster.local" in mesh


def test_without_cluster_keeps_a_service_another_cluster_still_has_endpoints_for() -> None:
    reg = ServiceRegistry([_k8s("echo", "demo", "east-a")]).with_endpoints(
        "echo.demo.svc.cluster.local", "west", [_ep("west", 1)])
    assert reg.without_cluster("east-a").clusters_of("echo.demo.svc.cluster.local") == ("west",)
    assert "echo.demo.svc.cluster.local" not in reg.without_cluster("east-a").without_cluster("west")


def test_with_health_marks_every_endpoint_at_the_address_or_only_the_scoped_ones() -> None:
    reg = ServiceRegistry([_k8s("a", "demo", "west"), _k8s("b", "demo", "west")])
    reg = reg.with_endpoints("a.demo.svc.cluster.local", "west", [_ep("west", 1)])
    reg = reg.with_endpoints("b.demo.svc.cluster.local", "west", [_ep("west", 1), _ep("west", 2)])
    down = reg.with_health("127.1.3.1", False)
    assert [e.healthy for e in down.endpoints("a.demo.svc.cluster.local")] == [False]
    assert [e.healthy for e in down.endpoints("b.demo.svc.cluster.local")] == [False, True]
    one = reg.with_health("127.1.3.1", False, hostname="b.demo.svc.cluster.local")
    assert [e.healthy for e in one.endpoints("a.demo.svc.cluster.local")] == [True]
    assert [e.healthy for e in one.with_health("127.1.3.1", True).endpoints("b.demo.svc.cluster.local")] == [True, True]


def test_with_health_of_an_unknown_address_is_an_error() -> None:
    reg = ServiceRegistry([_k8s("a", "demo", "west")])
    with pytest.raises(UnknownEndpointError) as info:
        reg.with_health("127.9.9.9", False, hostname="a.demo.svc.cluster.local", cluster="west", port=9080)
    assert str(info.value) == "no endpoint at '127.9.9.9' of a.demo.svc.cluster.local in cluster 'west' on port 9080"
    assert (info.value.hostname, info.value.address) == ("a.demo.svc.cluster.local", "127.9.9.9")


def test_with_service_replaces_the_whole_service_and_without_service_removes_it(mesh: ServiceRegistry) -> None:
    bare = _k8s("reviews", "bookinfo", "east-a")
    new = mesh.with_service(bare)
    assert new.get(REVIEWS) is bare and new.endpoint_count == mesh.endpoint_count - 4
    assert REVIEWS not in mesh.without_service("reviews.bookinfo.svc.clusterset.local")
    assert len(mesh.without_service(REVIEWS)) == len(mesh) - 1


def test_builder_merges_declarations_ports_by_number_first_one_wins() -> None:
    b = RegistryBuilder()
    b.add_service(_k8s("echo", "demo", "east-a", (ServicePort("http", 8080, "HTTP"),)))
    merged = b.add_service(_k8s("echo", "demo", "west", (ServicePort("web", 8080, "HTTP2"),
                                                         ServicePort("grpc", 9090, "GRPC"))))
    assert merged.ports == (ServicePort("http", 8080, "HTTP"), ServicePort("grpc", 9090, "GRPC"))
    assert merged.declared_in == ("east-a", "west")
    b.add_endpoints("echo.demo.svc.cluster.local", "west", [_ep("west", 1, 9090)])
    assert b.build().endpoints("echo.demo.svc.cluster.local", port="grpc")[0].cluster == "west"


def test_constructor_keeps_the_last_service_of_a_hostname() -> None:
    first, second = _k8s("echo", "demo", "east-a"), _k8s("echo", "demo", "west")
    assert ServiceRegistry([first, second]).get("echo.demo.svc.cluster.local") is second


NAME = st.from_regex(r"[a-z]([a-z0-9-]{0,12}[a-z0-9])?", fullmatch=True)


@given(NAME, NAME, NAME)
def test_every_spelling_of_a_service_resolves_to_it(name: str, namespace: str, client_namespace: str) -> None:
    svc = Service(f"{name}.{namespace}.svc.cluster.local", namespace, name, HTTP)
    reg = ServiceRegistry([svc])
    for spelling in (f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local",
                     f"{name}.{namespace}.svc.cluster.local.", f"{name}.{namespace}.svc.clusterset.local",
                     f"{name.upper()}.{namespace}.svc.cluster.local"):
        assert reg.lookup(spelling, client_namespace) is svc, spelling
    assert reg.lookup(name, namespace) is svc
    assert (reg.lookup(name, client_namespace) is svc) == (client_namespace == namespace)


@given(st.lists(NAME, min_size=1, max_size=3), st.lists(NAME, min_size=1, max_size=3))
def test_a_wildcard_service_entry_answers_every_name_under_it_and_not_its_suffix(prefix: list[str],
                                                                                  suffix: list[str]) -> None:
    host = ".".join(suffix) + ".test"  # `.test` keeps names off cluster.local
    reg = ServiceRegistry([_external("*." + host)])
    assert str(reg.lookup(".".join(prefix) + "." + host, "demo").hostname) == "*." + host
    assert reg.lookup(host, "demo") is None


def test_labels_are_shared_not_copied_between_a_workloads_endpoints() -> None:
    labels = Labels({"app": "echo"})
    a, b = Endpoint("127.1.3.1", 8080, labels), Endpoint("127.1.3.2", 8080, labels)
    assert a.labels is b.labels
