"""The meshfed Mesh kind, its defaults and rules, and examples/multi-cluster with the names others rely on."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from topology import DemoApp, Mesh, WorkloadProtocol, load_paths, load_text
from topology._mesh import LocalitySpec as Locality

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multi-cluster"


def load(spec: str):
    """A Mesh document whose spec starts on line 6."""
    text = "apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: m\nspec:\n" + \
        textwrap.indent(textwrap.dedent(spec), "  ")
    return load_text(text, "mesh.yaml")


def messages(spec: str) -> list[str]:
    return [str(d) for d in load(spec).diagnostics]


def only(spec: str) -> Mesh:
    result = load(spec)
    assert [str(d) for d in result.diagnostics] == []
    return result.resources[0].spec


TWO_CLUSTERS = """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24}
        - {name: b, addressBlock: 127.1.2.0/24}
"""
"""Indented like the cases' own text, so that one dedent fits both."""

# -- examples/multi-cluster ----------------------------------------------------------------
@pytest.fixture(scope="module")
def example():
    return load_paths([EXAMPLE])


def test_example_loads_with_zero_diagnostics(example) -> None:
    assert [str(d) for d in example.diagnostics] == []
    assert len(example.of_kind("Mesh")) == 1


def test_example_has_every_istio_file_loaded_or_known(example) -> None:
    kinds = {r.kind for r in example.resources} | {s.kind for s in example.skipped}
    assert {"Mesh", "PeerAuthentication", "ServiceExport", "DestinationRule", "VirtualService"} <= kinds


def test_example_clusters_regions_zones_networks_and_blocks(example) -> None:
    mesh = example.of_kind("Mesh")[0].spec
    got = [(c.name, str(c.locality), c.network, c.trust_domain, c.address_block) for c in mesh.clusters]
    assert got == [
        ("east-a", "us-east/us-east-1a", "network-east-a", "east-a.meshfed.local", "127.1.1.0/24"),
        ("east-b", "us-east/us-east-1b", "network-east-b", "east-b.meshfed.local", "127.1.2.0/24"),
        ("west", "us-west/us-west-1a", "network-west", "west.meshfed.local", "127.1.3.0/24"),
    ]


def _placement(mesh: Mesh, namespace: str) -> dict[tuple[str, str | None], set[str]]:
    out: dict[tuple[str, str | None], set[str]] = {}
    for w in mesh.workloads:
        if w.namespace == namespace:
            out.setdefault((w.service, w.version), set()).update(w.cluster_names)
    return out


def test_example_bookinfo_placement(example) -> None:
    mesh = example.of_kind("Mesh")[0].spec
    assert _placement(mesh, "bookinfo") == {
        ("productpage", "v1"): {"east-a", "east-b"},
        ("details", "v1"): {"east-a"},
        ("reviews", "v1"): {"east-a"},
        ("reviews", "v2"): {"east-b"},
        ("reviews", "v3"): {"west"},
        ("ratings", "v1"): {"west"},
    }
    for w in mesh.workloads:
        if w.namespace == "bookinfo":
            assert w.service_account == f"bookinfo-{w.service}"
            assert [(p.port, p.protocol) for p in w.ports] == [(9080, WorkloadProtocol.HTTP)]
            assert w.app is DemoApp(w.service)


def test_example_demo_echo_and_client_in_every_cluster(example) -> None:
    mesh = example.of_kind("Mesh")[0].spec
    demo = {w.name: w for w in mesh.workloads if w.namespace == "demo"}
    assert sorted(demo) == ["client", "echo"]
    assert set(demo["echo"].cluster_names) == set(demo["client"].cluster_names) == {"east-a", "east-b", "west"}
    assert demo["echo"].app is DemoApp.ECHO
    assert 8080 in [p.port for p in demo["echo"].ports]
    assert demo["client"].service_account == "client"
    for cluster in ("east-a", "east-b", "west"):
        assert {w.name for w in mesh.workloads_in(cluster) if w.namespace == "demo"} == {"client", "echo"}


def test_example_istio_config_names(example) -> None:
    exports = sorted((r.namespace, r.name) for r in example.of_kind("ServiceExport"))
    assert exports == [("bookinfo", "details"), ("bookinfo", "productpage"), ("bookinfo", "ratings"),
                       ("bookinfo", "reviews"), ("demo", "echo")]
    (pa,) = example.of_kind("PeerAuthentication")
    assert pa.namespace == "istio-system" and pa.spec.selector is None and pa.spec.mode.value == "STRICT"


def test_example_reviews_destination_rule_has_three_subsets_and_outlier_detection(example) -> None:
    # The DestinationRule schema is registered by the networking module; read the file
    # as YAML so this test holds whichever module decodes it.
    import yaml
    docs = list(yaml.safe_load_all((EXAMPLE / "istio" / "destination-rules.yaml").read_text()))
    reviews = next(d for d in docs if d["metadata"]["name"] == "reviews")
    assert [s["name"] for s in reviews["spec"]["subsets"]] == ["v1", "v2", "v3", "us-east", "us-west"]  # + regions
    assert "outlierDetection" in reviews["spec"]["trafficPolicy"]


# -- defaults ---------------------------------------------------------------------------
def test_defaults_are_filled_when_built() -> None:
    mesh = only("""\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, locality: {region: r1, zone: z1}}
        workloads:
        - name: api
          namespace: shop
          cluster: a
          command: [python3, -m, http.server]
          locality: {zone: z2}
          ports:
          - {port: 8000}
          - {name: grpc-api, port: 9000, targetPort: 19000}
        - {name: echo, cluster: a, app: echo}
        """)
    (cluster,) = mesh.clusters
    assert cluster.network == "a" and cluster.trust_domain == "a.meshfed.local"
    assert cluster.control_plane_address == "127.1.1.1" and cluster.gateway_address == "127.1.1.2"
    assert next(cluster.workload_hosts()) == ipaddress.IPv4Address("127.1.1.10")
    assert list(cluster.workload_hosts())[-1] == ipaddress.IPv4Address("127.1.1.254")
    api, echo = mesh.workloads
    assert (api.service, api.service_account, api.version, api.replicas) == ("api", "api", None, 1)
    assert api.labels == {"app": "api"}
    assert [(p.name, p.port, p.protocol, p.target_port) for p in api.ports] == [
        ("http", 8000, WorkloadProtocol.HTTP, 8000), ("grpc-api", 9000, WorkloadProtocol.GRPC, 19000)]
    assert mesh.locality_of(api, "a") == Locality("r1", "z2")
    assert (echo.namespace, echo.version, echo.labels) == ("default", "v1", {"app": "echo", "version": "v1"})


def test_service_defaults_to_the_app_label() -> None:
    mesh = only(TWO_CLUSTERS + """\
        workloads:
        - {name: reviews-v2, labels: {app: reviews, version: v2}, cluster: a, app: reviews}
        """)
    (w,) = mesh.workloads
    assert (w.service, w.version, w.service_account) == ("reviews", "v2", "reviews-v2")


@pytest.mark.parametrize("text,expected", [("us-east/us-east-1a", Locality("us-east", "us-east-1a")),
                                           ("r", Locality("r")), ("r/z/s", Locality("r", "z", "s")),
                                           ("", Locality())])
def test_locality_parses_and_prints_envoy_style(text: str, expected: Locality) -> None:
    assert Locality.parse(text) == expected
    assert str(expected) == text


# -- rules ------------------------------------------------------------------------------
MESH_ERRORS = [
    ("no_clusters", "clusters: []\n", ["mesh.yaml:6: spec.clusters: a mesh needs at least one cluster; found none"]),
    ("clusters_required", "workloads: []\n", ["mesh.yaml:5: spec: missing required field 'clusters'"]),
    ("duplicate_cluster", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24}
        - {name: a, addressBlock: 127.1.2.0/24, trustDomain: other}
        """, ["mesh.yaml:8: spec.clusters[1].name: duplicate cluster name 'a' (also clusters[0])"]),
    ("duplicate_trust_domain", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, trustDomain: td.local}
        - {name: b, addressBlock: 127.1.2.0/24, trustDomain: td.local}
        """, ["mesh.yaml:8: spec.clusters[1].trustDomain: trust domain 'td.local' is already clusters[0]'s: "
              "each cluster needs its own"]),
    ("overlapping_blocks", """\
        clusters:
        - {name: a, addressBlock: 127.1.0.0/16}
        - {name: b, addressBlock: 127.1.2.0/24}
        """, ["mesh.yaml:8: spec.clusters[1].addressBlock: 127.1.2.0/24 overlaps clusters[0]'s 127.1.0.0/16 (a)"]),
    ("block_not_loopback", """\
        clusters:
        - {name: a, addressBlock: 10.1.1.0/24}
        """, ["mesh.yaml:7: spec.clusters[0].addressBlock: must lie inside the loopback range 127.0.0.0/8; "
              "found string '10.1.1.0/24'"]),
    ("block_host_bits", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.5/24}
        """, ["mesh.yaml:7: spec.clusters[0].addressBlock: has host bits set: the network is 127.1.1.0/24; "
              "found string '127.1.1.5/24'"]),
    ("block_too_small", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/30}
        """, ["mesh.yaml:7: spec.clusters[0].addressBlock: is too small: use a /28 or larger (a /24 is usual); "
              "found string '127.1.1.0/30'"]),
    ("block_garbage", """\
        clusters:
        - {name: a, addressBlock: loopback}
        """, ["mesh.yaml:7: spec.clusters[0].addressBlock: must be an IPv4 network such as 127.1.1.0/24; "
              "found string 'loopback'"]),
    ("block_ipv6", """\
        clusters:
        - {name: a, addressBlock: "::1/128"}
        """, ["mesh.yaml:7: spec.clusters[0].addressBlock: must lie inside the loopback range 127.0.0.0/8; "
              "found string '::1/128'"]),
    ("control_plane_outside_block", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, controlPlaneAddress: 127.1.2.1}
        """, ["mesh.yaml:7: spec.clusters[0].controlPlaneAddress: must be a host address inside addressBlock "
              "127.1.1.0/24; found string '127.1.2.1'"]),
    ("gateway_same_as_control_plane", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, gatewayAddress: 127.1.1.1}
        """, ["mesh.yaml:7: spec.clusters[0].gatewayAddress: must differ from controlPlaneAddress; "
              "found string '127.1.1.1'"]),
    ("cluster_name", """\
        clusters:
        - {name: East_A, addressBlock: 127.1.1.0/24, trustDomain: a.local}
        """, ["mesh.yaml:7: spec.clusters[0].name: must be a lowercase DNS-1123 label (a-z, 0-9, '-'); "
              "found string 'East_A'"]),
    ("trust_domain_scheme", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, trustDomain: "spiffe://a.local"}
        """, ["mesh.yaml:7: spec.clusters[0].trustDomain: must be a SPIFFE trust domain (lowercase letters, "
              "digits, '.', '-', '_'; no scheme); found string 'spiffe://a.local'"]),
    ("zone_without_region", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, locality: {zone: z1}}
        """, ["mesh.yaml:7: spec.clusters[0].locality.zone: a zone needs a region; found zone 'z1' without region"]),
    ("locality_slash", """\
        clusters:
        - {name: a, addressBlock: 127.1.1.0/24, locality: {region: us/east}}
        """, ["mesh.yaml:7: spec.clusters[0].locality.region: must be a non-empty name without '/'; "
              "found string 'us/east'"]),
    ("workload_zone_without_region", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, app: echo, locality: {zone: z9}}
        """, ["mesh.yaml:10: spec.workloads[0].locality.zone: in cluster 'a': a zone needs a region; "
              "found zone 'z9' without region"]),
    ("unknown_cluster", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: c, app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].cluster: unknown cluster 'c'; the clusters are: a, b"]),
    ("unknown_cluster_in_list", TWO_CLUSTERS + """\
        workloads:
        - {name: w, clusters: [a, west], app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].clusters[1]: unknown cluster 'west'; the clusters are: a, b"]),
    ("duplicate_workload_in_cluster", TWO_CLUSTERS + """\
        workloads:
        - {name: w, clusters: [a, b], app: echo}
        - {name: w, cluster: b, app: echo}
        """, ["mesh.yaml:11: spec.workloads[1].name: duplicate workload default/w in cluster 'b' "
              "(also workloads[0])"]),
    ("command_and_app", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, app: echo, command: [./server]}
        """, ["mesh.yaml:10: spec.workloads[0].app: set either command (your own app) or app (a built-in demo), "
              "not both"]),
    ("neither_command_nor_app", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a}
        """, ["mesh.yaml:10: spec.workloads[0]: a workload needs either command (your own app) or app (a built-in "
              "demo: echo, productpage, details, reviews, ratings, sleep); found neither"]),
    ("empty_command", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, command: []}
        """, ["mesh.yaml:10: spec.workloads[0].command: must name a program to run; found an empty command"]),
    ("unknown_app", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, app: httpbin}
        """, ["mesh.yaml:10: spec.workloads[0].app: must be one of echo, productpage, details, reviews, ratings, "
              "sleep; found string 'httpbin'"]),
    ("reviews_version", TWO_CLUSTERS + """\
        workloads:
        - {name: reviews-v4, cluster: a, app: reviews, version: v4}
        """, ["mesh.yaml:10: spec.workloads[0].version: the reviews demo app comes in versions v1, v2, v3; "
              "found string 'v4'"]),
    ("negative_replicas", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, app: echo, replicas: -1}
        """, ["mesh.yaml:10: spec.workloads[0].replicas: must be 0 or more; found integer -1"]),
    ("cluster_and_clusters", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, clusters: [b], app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].clusters: set either cluster or clusters, not both"]),
    ("no_placement", TWO_CLUSTERS + """\
        workloads:
        - {name: w, app: echo}
        """, ["mesh.yaml:10: spec.workloads[0]: say where the workload runs: cluster: NAME or clusters: "
              "[NAME, ...]; found neither"]),
    ("duplicate_cluster_in_list", TWO_CLUSTERS + """\
        workloads:
        - {name: w, clusters: [a, a], app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].clusters[1]: duplicate cluster 'a' (also clusters[0])"]),
    ("workload_name", TWO_CLUSTERS + """\
        workloads:
        - {name: My.App, cluster: a, app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].name: must be a lowercase DNS-1123 label (a-z, 0-9, '-'); "
              "found string 'My.App'"]),
    ("label_app_differs_from_service", TWO_CLUSTERS + """\
        workloads:
        - {name: w, service: api, labels: {app: web}, cluster: a, app: echo}
        """, ["mesh.yaml:10: spec.workloads[0].labels.app: differs from service 'api'; found string 'web'"]),
    ("duplicate_port", TWO_CLUSTERS + """\
        workloads:
        - name: w
          cluster: a
          app: echo
          ports: [{name: a, port: 80}, {name: b, port: 80}]
        """, ["mesh.yaml:13: spec.workloads[0].ports[1].port: duplicate port 80 (also ports[0])"]),
    ("duplicate_port_name", TWO_CLUSTERS + """\
        workloads:
        - name: w
          cluster: a
          app: echo
          ports: [{port: 80}, {port: 81}]
        """, ["mesh.yaml:13: spec.workloads[0].ports[1].name: duplicate port name 'http' (also ports[0])"]),
    ("port_range", TWO_CLUSTERS + """\
        workloads:
        - name: w
          cluster: a
          app: echo
          ports: [{port: 80, targetPort: 0}]
        """, ["mesh.yaml:13: spec.workloads[0].ports[0].targetPort: must be a port number 1..65535; found integer 0"]),
    ("unknown_protocol", TWO_CLUSTERS + """\
        workloads:
        - name: w
          cluster: a
          app: echo
          ports: [{port: 80, protocol: HTTP}]
        """, ["mesh.yaml:13: spec.workloads[0].ports[0].protocol: must be one of http, http2, grpc, tcp; "
              "found string 'HTTP'"]),
    ("service_port_protocol_conflict", TWO_CLUSTERS + """\
        workloads:
        - {name: r1, service: r, cluster: a, app: echo, ports: [{port: 80, protocol: http}]}
        - {name: r2, service: r, cluster: b, app: echo, ports: [{port: 80, protocol: tcp}]}
        """, ["mesh.yaml:11: spec.workloads[1].ports[0].protocol: service default/r port 80 is http in "
              "workloads[0]; found tcp"]),
    ("unknown_field", TWO_CLUSTERS + """\
        workloads:
        - {name: w, cluster: a, app: echo, replica: 2}
        """, ["mesh.yaml:10: spec.workloads[0].replica: unknown field 'replica' (did you mean 'replicas'?)"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in MESH_ERRORS], ids=[c[0] for c in MESH_ERRORS])
def test_mesh_rule_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert messages(spec) == expected


def test_block_holding_127_0_0_1_is_a_warning_not_an_error() -> None:
    result = load("clusters:\n- {name: a, addressBlock: 127.0.0.0/24}\n")
    assert [str(d) for d in result.diagnostics] == [
        "mesh.yaml:7: spec.clusters[0].addressBlock: warning: contains 127.0.0.1, where local services usually "
        "listen; prefer a block such as 127.1.1.0/24; found string '127.0.0.0/24'"]
    assert len(result.resources) == 1


def test_zero_replicas_is_allowed() -> None:
    mesh = only(TWO_CLUSTERS + "        workloads:\n        - {name: w, cluster: a, app: echo, replicas: 0}\n")
    assert mesh.workloads[0].replicas == 0
