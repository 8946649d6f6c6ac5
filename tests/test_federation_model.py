"""What linked control planes exchange and how an importer merges it: exports, imports, gateway groups."""

from __future__ import annotations

import pytest

from federation._federation_model import (
    ExportSet, build_export, federated_view, gateway_groups, merge_imports, topology_labels,
)
from topology import Endpoint, Labels, Service, ServiceRegistry
from topology._endpoint import Locality, ServicePort

HTTP = (ServicePort("http", 8080, "HTTP2", 8080),)
GATEWAYS = {"east-b": "127.9.2.2:15443", "west": "127.9.3.2:15443"}


def ep(address: str, cluster: str, locality: str, *, version: str = "v1", healthy: bool = True,
       network: str | None = None) -> Endpoint:
    return Endpoint(address, 8080, Labels({"app": "echo", "version": version}), Locality.parse(locality), cluster,
                    network if network is not None else f"net-{cluster}", healthy=healthy, service_account="echo",
                    instance=f"echo-{address.rsplit('.', 1)[1]}", service_port=8080)


def echo(*endpoints: Endpoint, declared: tuple[str, ...] = ("east-a",)) -> Service:
    return Service("echo.demo.svc.cluster.local", "demo", "echo", HTTP, declared_in=declared, endpoints=endpoints)


def test_topology_labels_name_cluster_network_region_and_zone_and_the_workloads_own_label_wins() -> None:
    e = Endpoint("127.9.1.10", 80, Labels({"app": "a", "topology.istio.io/cluster": "mine"}),
                 Locality.parse("us-east/us-east-1a"), "east-a", "net-a")
    assert topology_labels(e) == {"topology.istio.io/cluster": "mine", "topology.istio.io/network": "net-a",
                                  "topology.kubernetes.io/region": "us-east",
                                  "topology.kubernetes.io/zone": "us-east-1a", "app": "a"}


def test_gateway_groups_are_one_entry_per_cluster_locality_and_label_set_weighted_by_healthy_endpoints() -> None:
    eps = [ep("127.9.3.10", "west", "us-west/a"), ep("127.9.3.11", "west", "us-west/a"),
           ep("127.9.3.12", "west", "us-west/a", version="v2"), ep("127.9.3.13", "west", "us-west/a", healthy=False),
           ep("127.9.2.10", "east-b", "us-east/b")]
    groups = gateway_groups(eps, GATEWAYS)
    assert [(g["cluster"], g["labels"]["version"], g["weight"]) for g in groups] == [
        ("west", "v1", 2), ("west", "v2", 1), ("east-b", "v1", 1)]
    assert groups[0] == {
        "address": "127.9.3.2", "port": 15443, "gateway": "127.9.3.2:15443", "cluster": "west",
        "network": "net-west", "locality": "us-west/a", "weight": 2, "servicePort": 8080, "serviceAccount": "echo",
        "labels": {"app": "echo", "version": "v1", "topology.istio.io/cluster": "west",
                   "topology.istio.io/network": "net-west", "topology.kubernetes.io/region": "us-west",
                   "topology.kubernetes.io/zone": "a"}}


@pytest.mark.parametrize("endpoints, expected", [
    ([ep("127.9.3.10", "west", "us-west/a", healthy=False)], []),  # no healthy endpoint: no group
    ([ep("127.9.4.10", "north", "eu/a")], []),  # a cluster without a known gateway is unreachable
    ([], []),
])
def test_gateway_groups_leave_out_what_cannot_take_traffic(endpoints: list[Endpoint], expected: list) -> None:
    assert gateway_groups(endpoints, GATEWAYS) == expected


def test_an_export_holds_the_exported_services_with_the_exporters_own_endpoints_only() -> None:
    reg = ServiceRegistry([
        echo(ep("127.9.1.10", "east-a", "us-east/a"), ep("127.9.3.10", "west", "us-west/a"),
             declared=("east-a", "west")),
        Service("private.demo.svc.cluster.local", "demo", "private", HTTP, declared_in=("east-a",),
                endpoints=(ep("127.9.1.11", "east-a", "us-east/a"),)),
    ])
    export = build_export(reg, "east-a", [("demo", "echo")], network="net-east-a", locality="us-east/a",
                          trust_domain="east-a.example", gateway="127.9.1.2:15443")
    assert [s.hostname for s in export.services] == ["echo.demo.svc.cluster.local"]
    assert [e.address for e in export.services[0].endpoints] == ["127.9.1.10"]
    assert ExportSet.from_json(export.to_json()) == export


def test_the_revision_changes_with_the_endpoints_and_only_then() -> None:
    def export(*eps: Endpoint) -> ExportSet:
        return build_export(ServiceRegistry([echo(*eps)]), "east-a", [("demo", "echo")], network="n", locality="l",
                            trust_domain="t", gateway="127.9.1.2:15443")
    one = export(ep("127.9.1.10", "east-a", "us-east/a"))
    assert export(ep("127.9.1.10", "east-a", "us-east/a")).revision == one.revision
    scaled_to_zero = export()
    assert scaled_to_zero.revision != one.revision and scaled_to_zero.services[0].endpoints == ()


def test_imports_merge_by_namespace_sameness_and_add_services_the_importer_lacks() -> None:
    local = ServiceRegistry([echo(ep("127.9.1.10", "east-a", "us-east/a"))])
    west = ExportSet("west", "net-west", "us-west/a", "west.example", "127.9.3.2:15443", (
        *build_export(ServiceRegistry([
            echo(ep("127.9.3.10", "west", "us-west/a"), declared=("west",)),
            Service("ratings.bookinfo.svc.cluster.local", "bookinfo", "ratings", (ServicePort("http", 9080, "HTTP"),),
                    declared_in=("west",), endpoints=(Endpoint("127.9.3.11", 9080, cluster="west", network="net-west",
                                                               service_port=9080),))]),
            "west", [("demo", "echo"), ("bookinfo", "ratings")], network="net-west", locality="us-west/a",
            trust_domain="west.example", gateway="127.9.3.2:15443").services,))
    merged = merge_imports(local, "east-a", [west])
    assert [e.cluster for e in merged.get("echo.demo.svc.cluster.local").endpoints] == ["east-a", "west"]
    assert merged.get("ratings.bookinfo.svc.cluster.local").clusters == ("west",)


def test_an_import_cannot_bring_endpoints_of_another_cluster_least_of_all_the_importers() -> None:
    local = ServiceRegistry([echo(ep("127.9.1.10", "east-a", "us-east/a"))])
    spoof = ExportSet.from_json({"cluster": "west", "gateway": "127.9.3.2:15443", "services": [{
        "hostname": "echo.demo.svc.cluster.local", "namespace": "demo", "name": "echo",
        "ports": [{"name": "http", "port": 8080, "protocol": "HTTP2", "targetPort": 8080}],
        "endpoints": [{"address": "127.9.3.10", "port": 8080, "servicePort": 8080}]}]})
    forged = ExportSet("east-a", "", "", "", "", spoof.services)  # claims to be the importer itself
    merged = merge_imports(local, "east-a", [spoof, forged])
    assert [(e.address, e.cluster) for e in merged.get("echo.demo.svc.cluster.local").endpoints] == [
        ("127.9.1.10", "east-a"), ("127.9.3.10", "west")]


def test_a_re_import_replaces_that_peers_endpoints_and_keeps_the_others() -> None:
    local = ServiceRegistry([echo(ep("127.9.1.10", "east-a", "us-east/a"))])
    first = build_export(ServiceRegistry([echo(ep("127.9.3.10", "west", "us-west/a"), declared=("west",))]), "west",
                         [("demo", "echo")], network="net-west", locality="", trust_domain="", gateway="g:1")
    gone = build_export(ServiceRegistry([echo(declared=("west",))]), "west", [("demo", "echo")], network="net-west",
                        locality="", trust_domain="", gateway="g:1")
    once = merge_imports(local, "east-a", [first])
    assert len(once.get("echo.demo.svc.cluster.local").endpoints) == 2
    assert [e.cluster for e in merge_imports(local, "east-a", [gone]).get(
        "echo.demo.svc.cluster.local").endpoints] == ["east-a"]


def test_the_federated_view_carries_the_gateways_peers_announced() -> None:
    export = ExportSet("west", "net-west", "", "west.example", "127.9.3.2:15443")
    view = federated_view(ServiceRegistry([echo()]), "east-a", [export])
    assert view.gateways == {"west": "127.9.3.2:15443"}
