"""The documents federation changes: a client's view of imported endpoints, and each cluster's gateway."""

from __future__ import annotations


import pytest

from federation._configsource import ConfigSource, ConfigVersion
from federation._federation_gateway import exported_names, gateway_placements
from federation._federation_model import build_export, federated_view
from federation._proxygen import ProxyGenerator, cluster_view
from gateway._config import load_proxy_config_text

MESH = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters:
  - {name: east-a, addressBlock: 127.31.1.0/24, locality: {region: us-east, zone: us-east-1a}}
  - {name: east-b, addressBlock: 127.31.2.0/24, locality: {region: us-east, zone: us-east-1b}}
  - {name: west, addressBlock: 127.31.3.0/24, locality: {region: us-west, zone: us-west-1a}}
  workloads:
  - {name: echo, namespace: demo, app: echo, clusters: [east-a, east-b, west], ports: [{name: http2, port: 8080}]}
  - {name: echo-v2, namespace: demo, service: echo, app: echo, version: v2, cluster: west, replicas: 2,
     ports: [{name: http2, port: 8080}]}
  - {name: ratings, namespace: bookinfo, app: ratings, cluster: west, ports: [{name: http, port: 9080}]}
  - {name: secret, namespace: bookinfo, app: echo, cluster: west, ports: [{name: http, port: 9080}]}
  - {name: client, namespace: demo, app: sleep, cluster: east-a}
"""
ISTIO = """\
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: echo, namespace: demo}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: ratings, namespace: bookinfo}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: demo}
spec:
  host: echo.demo.svc.cluster.local
  subsets: [{name: west, labels: {topology.istio.io/cluster: west}}]
"""


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> ConfigVersion:
    folder = tmp_path_factory.mktemp("fed")
    (folder / "mesh.yaml").write_text(MESH)
    (folder / "istio.yaml").write_text(ISTIO)
    v = ConfigSource(folder, in_thread=False).poll()
    assert isinstance(v, ConfigVersion), v
    return v


def export_of(version: ConfigVersion, cluster: str, gateway: str):  # type: ignore[no-untyped-def]
    return build_export(cluster_view(version.registry, cluster), cluster, exported_names(version.resources),
                        network=cluster, locality="", trust_domain=f"{cluster}.meshfed.local", gateway=gateway)


def client_doc(version: ConfigVersion, registry) -> dict:  # type: ignore[no-untyped-def]
    p = next(p for p in version.placements if p.cluster == "east-a" and p.workload == "client")
    return ProxyGenerator(version, registry=registry).document(p).to_dict()


def services(doc: dict) -> dict[str, dict]:
    return {s["hostname"]: s for s in doc["spec"]["services"]}


def test_before_a_link_a_client_sees_only_its_own_clusters_endpoints(version: ConfigVersion) -> None:
    got = services(client_doc(version, cluster_view(version.registry, "east-a")))
    assert [e["address"] for e in got["echo.demo.svc.cluster.local"]["endpoints"]] == ["127.31.1.10"]
    assert "ratings.bookinfo.svc.cluster.local" not in got


def test_imported_endpoints_reach_the_client_as_gateway_groups_and_only_exported_services(
        version: ConfigVersion) -> None:
    west = export_of(version, "west", "127.31.3.2:15443")
    view = federated_view(cluster_view(version.registry, "east-a"), "east-a", [west])
    doc = client_doc(version, view)
    got = services(doc)
    assert "secret.bookinfo.svc.cluster.local" not in got  # not exported
    echo = got["echo.demo.svc.cluster.local"]["endpoints"]
    assert [(e["address"], e.get("gateway"), e.get("weight", 1), e["labels"].get("version")) for e in echo] == [
        ("127.31.1.10", None, 1, "v1"), ("127.31.3.2", "127.31.3.2:15443", 1, "v1"),
        ("127.31.3.2", "127.31.3.2:15443", 2, "v2")]
    assert got["ratings.bookinfo.svc.cluster.local"]["endpoints"][0]["locality"] == "us-west/us-west-1a"
    config, diagnostics = load_proxy_config_text(ProxyGenerator(version, registry=view).document(
        next(p for p in version.placements if p.workload == "client")).text())
    assert config is not None, [str(d) for d in diagnostics]


def test_each_cluster_has_a_gateway_whose_document_lists_its_own_endpoints_and_marks_exports(
        version: ConfigVersion) -> None:
    gateways = {p.cluster: p for p in gateway_placements(version.mesh)}
    assert {c: (p.address, p.namespace, p.instance, p.service_account) for c, p in gateways.items()} == {
        c: (f"127.31.{n}.2", "istio-system", "istio-eastwestgateway-0", "istio-eastwestgateway")
        for n, c in enumerate(("east-a", "east-b", "west"), start=1)}
    gen = ProxyGenerator(version, registry=cluster_view(version.registry, "west"))
    assert gen.placement("west", "istio-system", "istio-eastwestgateway-0") == gateways["west"]
    doc = gen.document(gateways["west"]).to_dict()["spec"]
    assert doc["node"]["role"] == "eastwest"
    assert doc["listeners"] == {"eastwest": "127.31.3.2:15443", "admin": "127.31.3.2:15000"}
    got = services({"spec": doc})
    assert {h: s.get("exported", False) for h, s in got.items()} == {
        "echo.demo.svc.cluster.local": True, "ratings.bookinfo.svc.cluster.local": True,
        "secret.bookinfo.svc.cluster.local": False}
    assert {e["address"] for e in got["echo.demo.svc.cluster.local"]["endpoints"]} == {
        "127.31.3.10", "127.31.3.11", "127.31.3.12"}
    assert got["echo.demo.svc.cluster.local"]["endpoints"][0]["labels"]["topology.istio.io/cluster"] == "west"
    assert [r["kind"] for r in doc["resources"]] == ["DestinationRule"]
    config, diagnostics = load_proxy_config_text(gen.document(gateways["west"]).text())
    assert config is not None, [str(d) for d in diagnostics]


def test_a_gateways_document_ignores_endpoints_imported_from_other_clusters(version: ConfigVersion) -> None:
    west = export_of(version, "west", "127.31.3.2:15443")
    view = federated_view(cluster_view(version.registry, "east-a"), "east-a", [west])
    gateway = next(p for p in gateway_placements(version.mesh) if p.cluster == "east-a")
    doc = ProxyGenerator(version, registry=view).document(gateway).to_dict()["spec"]
    assert {h: [e["address"] for e in s["endpoints"]] for h, s in services({"spec": doc}).items()} == {
        "echo.demo.svc.cluster.local": ["127.31.1.10"]}
