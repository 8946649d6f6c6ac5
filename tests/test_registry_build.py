"""Building the registry from loaded config: Mesh workloads, Kubernetes objects, ServiceEntries."""

import ipaddress
from pathlib import Path

import pytest

from topology import load_paths, load_text
from topology._endpoint import Locality
from topology._errors import RegistryError
from topology._registry_build import AddressBlockFullError, build_registry, placements

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "multi-cluster"
BOOKINFO = Path("/work/shared/corpora/istio/bookinfo/platform/kube/bookinfo.yaml")
BLOCKS = {"east-a": "127.1.1.0/24", "east-b": "127.1.2.0/24", "west": "127.1.3.0/24"}


@pytest.fixture(scope="module")
def example():
    result = load_paths([EXAMPLE])
    assert result.errors == []
    return result


def _hosts(reg) -> list[str]:
    return [str(s.hostname) for s in reg]


def test_example_declares_each_service_once_across_its_clusters(example) -> None:
    reg = build_registry(example)
    assert _hosts(reg) == ["details.bookinfo.svc.cluster.local", "echo.demo.svc.cluster.local",
                           "productpage.bookinfo.svc.cluster.local", "ratings.bookinfo.svc.cluster.local",
                           "reviews.bookinfo.svc.cluster.local"]
    assert repr(reg) == "<ServiceRegistry 5 services, 10 endpoints, 3 clusters>"
    assert {str(s.hostname): s.clusters for s in reg} == {
        "details.bookinfo.svc.cluster.local": ("east-a",),
        "echo.demo.svc.cluster.local": ("east-a", "east-b", "west"),
        "productpage.bookinfo.svc.cluster.local": ("east-a", "east-b"),
        "ratings.bookinfo.svc.cluster.local": ("west",),
        "reviews.bookinfo.svc.cluster.local": ("east-a", "east-b", "west"),
    }
    assert reg.get("echo.demo.svc.cluster.local").ports[0].protocol == "HTTP2"
    assert reg.get("reviews.bookinfo.svc.cluster.local").declared_in == ("east-a", "east-b", "west")


def test_example_reviews_versions_sit_in_their_clusters_with_locality_network_identity(example) -> None:
    reg = build_registry(example)
    rows = [(e.cluster, e.labels["version"], e.locality, e.network, e.service_account, e.instance, e.port)
            for e in reg.endpoints("reviews.bookinfo.svc.cluster.local")]
    assert rows == [
        ("east-a", "v1", Locality("us-east", "us-east-1a"), "network-east-a", "bookinfo-reviews", "reviews-v1-0", 9080),
        ("east-b", "v2", Locality("us-east", "us-east-1b"), "network-east-b", "bookinfo-reviews", "reviews-v2-0", 9080),
        ("west", "v3", Locality("us-west", "us-west-1a"), "network-west", "bookinfo-reviews", "reviews-v3-0", 9080),
    ]
    v2 = reg.endpoints("reviews.bookinfo.svc.cluster.local", subset_labels={"version": "v2"})
    assert [e.cluster for e in v2] == ["east-b"]


def test_example_names_resolve_from_the_client_namespace(example) -> None:
    reg = build_registry(example)
    assert str(reg.lookup("echo", "demo").hostname) == "echo.demo.svc.cluster.local"
    assert str(reg.lookup("reviews.bookinfo", "demo").hostname) == "reviews.bookinfo.svc.cluster.local"
    assert str(reg.lookup("ratings.bookinfo.svc.clusterset.local", "demo").hostname) == (
        "ratings.bookinfo.svc.cluster.local")
    assert reg.lookup("client", "demo") is None  # a client workload serves nothing


def test_every_instance_gets_its_own_address_inside_its_clusters_block(example) -> None:
    placed = placements(example)
    assert len(placed) == 13  # productpage x2, details, reviews x3, ratings, echo x3, client x3
    assert len({p.address for p in placed}) == len(placed)
    for p in placed:
        address = ipaddress.ip_address(p.address)
        assert address in ipaddress.ip_network(BLOCKS[p.cluster])
        assert int(address) & 0xFF >= 10  # .1 control plane, .2 gateway, instances from .10
    assert [(p.cluster, p.instance, p.address) for p in placed if p.namespace == "demo"] == [
        ("east-a", "echo-0", "127.1.1.13"), ("east-b", "echo-0", "127.1.2.12"), ("west", "echo-0", "127.1.3.12"),
        ("east-a", "client-0", "127.1.1.14"), ("east-b", "client-0", "127.1.2.13"), ("west", "client-0", "127.1.3.13"),
    ]
    assert placements(load_paths([EXAMPLE])) == placed  # deterministic


def test_bookinfo_manifest_gives_kubernetes_services_their_deployments_pods() -> None:
    reg = build_registry(load_paths([BOOKINFO]))
    assert _hosts(reg) == ["details.default.svc.cluster.local", "productpage.default.svc.cluster.local",
                           "ratings.default.svc.cluster.local", "reviews.default.svc.cluster.local"]
    reviews = reg.endpoints("reviews.default.svc.cluster.local", port="http")
    assert [(e.labels["version"], e.service_account, e.instance, e.cluster) for e in reviews] == [
        ("v1", "bookinfo-reviews", "reviews-v1-0", "Kubernetes"),
        ("v2", "bookinfo-reviews", "reviews-v2-0", "Kubernetes"),
        ("v3", "bookinfo-reviews", "reviews-v3-0", "Kubernetes"),
    ]
    assert all(ipaddress.ip_address(e.address) in ipaddress.ip_network("127.254.0.0/16") for e in reviews)
    assert reg.get("productpage.default.svc.cluster.local").ports[0].protocol == "HTTP"
    assert str(reg.lookup("reviews", "default").hostname) == "reviews.default.svc.cluster.local"


KUBE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http-main, port: 80, targetPort: http-alt}
  - {name: grpc, port: 9000, targetPort: 9001, appProtocol: grpc}
  - {name: metrics, port: 15090, targetPort: nope}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: shop}
spec:
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: web
        ports: [{name: http-alt, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: other}}
    spec:
      containers: [{name: c, image: x}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-elsewhere, namespace: elsewhere}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: x}]
"""


def test_kubernetes_selector_replicas_named_target_ports_and_protocols() -> None:
    loaded = load_text(KUBE, "kube.yaml")
    assert loaded.errors == []
    reg = build_registry(loaded)
    web = reg.get("web.shop.svc.cluster.local")
    assert [(p.name, p.port, p.protocol) for p in web.ports] == [
        ("http-main", 80, "HTTP"), ("grpc", 9000, "GRPC"), ("metrics", 15090, "UNSUPPORTED")]
    http = reg.endpoints("web.shop.svc.cluster.local", port=80)
    assert [(e.instance, e.port, e.service_account) for e in http] == [
        ("web-v1-0", 8080, "web"), ("web-v1-1", 8080, "web"), ("web-v1-2", 8080, "web")]
    assert [e.port for e in reg.endpoints("web.shop.svc.cluster.local", port="grpc")] == [9001] * 3
    assert reg.endpoints("web.shop.svc.cluster.local", port="metrics") == ()  # the pods have no port `nope`
    assert reg.endpoints("manual.shop.svc.cluster.local") == ()  # no selector: endpoints are managed by hand
    assert repr(reg) == "<ServiceRegistry 2 services, 6 endpoints, 1 cluster>"


MESH = """
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters:
  - {name: east, addressBlock: 127.2.1.0/28, locality: {region: us-east, zone: z1}}
  - {name: west, addressBlock: 127.2.2.0/24, network: wan, locality: {region: us-west, zone: w1}}
  workloads:
  - name: echo
    namespace: demo
    app: echo
    replicas: {replicas}
    clusters: [east, west]
    locality: {subzone: rack7}
    ports: [{port: 8080, protocol: http2}, {name: grpc, port: 9090, targetPort: 19090}]
"""


def _mesh(replicas: int) -> str:
    text = MESH.replace("{replicas}", str(replicas))
    assert load_text(text).errors == []
    return text


def test_mesh_workload_replicas_ports_and_locality_overlay() -> None:
    reg = build_registry(load_text(_mesh(2), "mesh.yaml"))
    echo = reg.get("echo.demo.svc.cluster.local")
    assert [(p.name, p.port, p.protocol, p.target_port) for p in echo.ports] == [
        ("http2", 8080, "HTTP2", 8080), ("grpc", 9090, "GRPC", 19090)]
    grpc = reg.endpoints("echo.demo.svc.cluster.local", port="grpc")
    assert [(e.cluster, e.address, e.port, str(e.locality), e.network) for e in grpc] == [
        ("east", "127.2.1.10", 19090, "us-east/z1/rack7", "east"),
        ("east", "127.2.1.11", 19090, "us-east/z1/rack7", "east"),
        ("west", "127.2.2.10", 19090, "us-west/w1/rack7", "wan"),
        ("west", "127.2.2.11", 19090, "us-west/w1/rack7", "wan"),
    ]
    assert len(reg.endpoints("echo.demo.svc.cluster.local")) == 8


def test_zero_replicas_declare_the_service_without_endpoints() -> None:
    reg = build_registry(load_text(_mesh(0), "mesh.yaml"))
    assert repr(reg.get("echo.demo.svc.cluster.local")) == "<Service echo.demo.svc.cluster.local [0 endpoints in 0 clusters]>"


def test_a_full_address_block_is_an_error_naming_the_cluster() -> None:
    with pytest.raises(AddressBlockFullError) as info:
        build_registry(load_text(_mesh(6), "mesh.yaml"))  # a /28 holds .10 to .14
    assert str(info.value) == ("cluster 'east': address block 127.2.1.0/28 has no address left for another "
                               "instance (instances start at .10)")
    assert (info.value.cluster, info.value.block) == ("east", "127.2.1.0/28")


def test_kubernetes_objects_beside_a_multi_cluster_mesh_need_a_cluster() -> None:
    loaded = load_text(_mesh(1) + "---\n" + KUBE, "all.yaml")
    with pytest.raises(RegistryError) as info:
        build_registry(loaded)
    assert str(info.value) == ("Kubernetes Services or Deployments were loaded beside a mesh of 2 clusters "
                               "(east, west); say which cluster they belong to (kube_cluster)")
    reg = build_registry(loaded, kube_cluster="west")
    web = reg.endpoints("web.shop.svc.cluster.local", port=80)
    assert [(e.cluster, e.address, e.network, str(e.locality)) for e in web] == [
        ("west", "127.2.2.11", "wan", "us-west/w1"), ("west", "127.2.2.12", "wan", "us-west/w1"),
        ("west", "127.2.2.13", "wan", "us-west/w1")]
    with pytest.raises(RegistryError, match="kube_cluster 'north' is not a cluster of the mesh \\(east, west\\)"):
        build_registry(loaded, kube_cluster="north")


def test_two_meshes_are_an_error() -> None:
    loaded = load_text(_mesh(1) + "---\n" + _mesh(1), "twice.yaml")
    with pytest.raises(RegistryError, match=r"found 2 Mesh resources \(twice.yaml:2, twice.yaml:\d+\); "
                                            "a topology has exactly one"):
        build_registry(loaded)


def test_dns_service_entry_without_endpoints_resolves_its_own_host() -> None:
    loaded = load_paths([BOOKINFO.parent.parent.parent / "networking" / "egress-rule-google-apis.yaml"])
    reg = build_registry(loaded)
    svc = reg.lookup("www.googleapis.com", "default")
    assert repr(svc) == "<Service www.googleapis.com [2 endpoints in 0 clusters]>"
    assert (svc.is_external, svc.resolution.value, svc.declared_in) == (True, "DNS", ())
    assert [(e.address, e.port) for e in reg.endpoints("www.googleapis.com", port="https")] == [
        ("www.googleapis.com", 443)]


SERVICE_ENTRIES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.internal, pay.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 9000, name: grpc, protocol: GRPC}
  endpoints:
  - address: 10.0.0.1
    labels: {version: v1}
    locality: us-east/z1
    network: wan
    weight: 3
    serviceAccount: pay
  - address: 10.0.0.2
    ports: {http: 7070}
    labels: {version: v2}
    locality: us-west
    weight: 0
  - network: wan
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: selected, namespace: demo}
spec:
  hosts: [echo.mesh.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-vm, namespace: demo}
spec: {address: 10.9.9.9, labels: {app: echo, version: vm}, network: vm-net}
"""


def test_static_service_entry_endpoints_keep_locality_network_weight_and_port_map() -> None:
    loaded = load_text(_mesh(1) + "---\n" + SERVICE_ENTRIES, "entries.yaml")
    assert loaded.errors == []
    reg = build_registry(loaded)
    payments = reg.lookup("payments.internal", "demo")
    assert (payments.is_external, payments.resolution.value, payments.namespace) == (False, "STATIC", "shop")
    http = reg.endpoints("payments.internal", port="http")
    assert [(e.address, e.port, str(e.locality), e.network, e.cluster, e.weight, e.service_account)
            for e in http] == [
        ("10.0.0.1", 8080, "us-east/z1", "wan", "west", 3, "pay"),  # `wan` is west's network only
        ("10.0.0.2", 7070, "us-west", "", "", 1, ""),  # weight 0 is Istio's unset
    ]
    assert [e.port for e in reg.endpoints("payments.internal", port=9000)] == [9000, 9000]
    assert [e.address for e in reg.endpoints("pay.internal", subset_labels={"version": "v2"})] == ["10.0.0.2"] * 2
    assert reg.clusters_of("payments.internal") == ("west",)


def test_wildcard_service_entry_answers_names_under_it_without_endpoints() -> None:
    reg = build_registry(load_text(SERVICE_ENTRIES, "entries.yaml"))
    svc = reg.lookup("api.example.com", "shop")
    assert str(svc.hostname) == "*.example.com" and svc.resolution.value == "NONE"
    assert reg.endpoints("*.example.com") == ()
    assert reg.lookup("example.com", "shop") is None


def test_workload_selector_picks_instances_and_workload_entries_of_its_namespace() -> None:
    reg = build_registry(load_text(_mesh(1) + "---\n" + SERVICE_ENTRIES, "entries.yaml"))
    eps = reg.endpoints("echo.mesh.internal", port=80)
    assert [(e.address, e.port, e.cluster, e.labels.get("version")) for e in eps] == [
        ("127.2.1.10", 8080, "east", "v1"), ("127.2.2.10", 8080, "west", "v1"), ("10.9.9.9", 8080, "", "vm")]
