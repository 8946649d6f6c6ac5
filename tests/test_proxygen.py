"""Proxy documents: what each proxy is told, what it may see, and what changes between versions."""

from pathlib import Path
from typing import Any

import pytest

from federation._configsource import ConfigSource, ConfigVersion
from federation._proxygen import ProxyGenerator, TlsFiles, cluster_view, proxy_config
from gateway._config import load_proxy_config_text
from topology import Placement

MESH = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters:
  - {name: east, network: net-east, addressBlock: 127.83.0.0/24, locality: {region: us-east, zone: a}}
  - {name: west, network: net-west, addressBlock: 127.84.0.0/24, locality: {region: us-west, zone: b}}
  workloads:
  - {name: productpage, namespace: bookinfo, app: productpage, cluster: east, ports: [{name: http, port: 9080}]}
  - {name: reviews-v1, namespace: bookinfo, service: reviews, app: reviews, version: v1, cluster: east,
     ports: [{name: http, port: 9080}]}
  - {name: reviews-v2, namespace: bookinfo, service: reviews, app: reviews, version: v2, cluster: west,
     ports: [{name: http, port: 9080}]}
  - {name: echo, namespace: demo, app: echo, cluster: east, ports: [{name: http2, port: 8080, targetPort: 18080}]}
"""
ISTIO = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: bookinfo}
spec: {hosts: [private.bookinfo.svc.cluster.local], exportTo: ["."], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: for-demo, namespace: bookinfo}
spec: {hosts: [reviews], exportTo: [demo], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pp-only, namespace: bookinfo}
spec: {host: reviews, workloadSelector: {matchLabels: {app: productpage}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bookinfo, namespace: bookinfo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: demo-allow, namespace: demo}
spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [demo]}}]}]}
"""
ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: bookinfo}}
spec:
  hosts: [api.example.com]
  exportTo: ["."]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {address}}}]
"""


_SOURCES: dict[Path, ConfigSource] = {}


def load(folder: Path, **files: str) -> ConfigVersion:
    """Write ``files`` into ``folder`` and return the next version of its (one) config source."""
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    src = _SOURCES.setdefault(folder, ConfigSource(folder, in_thread=False))
    version = src.poll()
    assert isinstance(version, ConfigVersion), version
    return version


@pytest.fixture
def version(tmp_path: Path) -> ConfigVersion:
    return load(tmp_path, mesh=MESH, istio=ISTIO, entry=ENTRY.format(address="10.0.0.1"))


def placed(version: ConfigVersion, instance: str) -> Placement:
    return next(p for p in version.placements if p.instance == instance)


def tls(p: Placement) -> TlsFiles:
    return TlsFiles(f"/certs/{p.instance}/cert.pem", f"/certs/{p.instance}/key.pem", None,
                    {"east.meshfed.local": "/certs/root.pem"})


def doc(version: ConfigVersion, instance: str, **kw: Any) -> dict[str, Any]:
    return proxy_config(version, placed(version, instance), **kw)


def test_head_names_node_listeners_app_ports_and_tls_files(version: ConfigVersion) -> None:
    spec = doc(version, "echo-0", tls=tls)["spec"]
    assert spec["node"] == {"cluster": "east", "namespace": "demo", "workload": "echo", "instance": "echo-0",
                            "serviceAccount": "echo", "labels": {"app": "echo", "version": "v1"},
                            "locality": "us-east/a", "network": "net-east", "trustDomain": "east.meshfed.local",
                            "rootNamespace": "istio-system"}
    assert spec["listeners"] == {"outbound": "127.83.0.12:15001", "inbound": "127.83.0.12:15006",
                                 "admin": "127.83.0.12:15000"}
    assert spec["app"] == {"address": "127.83.0.12", "ports": [{"port": 18080, "protocol": "http2"}]}
    assert spec["tls"] == {"cert": "/certs/echo-0/cert.pem", "key": "/certs/echo-0/key.pem",
                           "bundles": {"east.meshfed.local": "/certs/root.pem"}}
    assert spec["version"] == "1"


def test_document_decodes_as_the_proxy_decodes_it(version: ConfigVersion) -> None:
    document = ProxyGenerator(version, tls=tls).document(placed(version, "productpage-0"))
    config, diagnostics = load_proxy_config_text(document.text())
    assert diagnostics == [] and config is not None
    assert config.version == "1"
    assert repr(config.registry) == "<ServiceRegistry 4 services, 5 endpoints, 2 clusters>"
    assert [r.name for r in config.resources] == ["external", "reviews", "private", "reviews", "pp-only", "default",
                                                  "bookinfo"]


@pytest.mark.parametrize(("instance", "expected"), [
    ("productpage-0", ["ServiceEntry/bookinfo/external", "VirtualService/bookinfo/reviews",
                       "VirtualService/bookinfo/private", "DestinationRule/bookinfo/reviews",
                       "DestinationRule/bookinfo/pp-only", "PeerAuthentication/istio-system/default",
                       "PeerAuthentication/bookinfo/bookinfo"]),
    ("echo-0", ["VirtualService/bookinfo/reviews", "VirtualService/bookinfo/for-demo",
                "DestinationRule/bookinfo/reviews", "PeerAuthentication/istio-system/default",
                "AuthorizationPolicy/demo/demo-allow"]),
])
def test_resources_follow_export_to_and_policies_their_namespace_and_the_root(
        version: ConfigVersion, instance: str, expected: list[str]) -> None:
    resources = doc(version, instance)["spec"]["resources"]
    assert [f"{r['kind']}/{r['metadata']['namespace']}/{r['metadata']['name']}" for r in resources] == expected


MESHFED_KINDS = """\
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: callers-of-reviews, namespace: bookinfo}
spec: {targetRef: {host: reviews}, maxTokens: 10, fillInterval: 1s}
---
apiVersion: meshfed.io/v1alpha1
kind: RateLimit
metadata: {name: productpage-receives, namespace: bookinfo}
spec: {workloadSelector: {matchLabels: {app: productpage}}, maxTokens: 10, fillInterval: 1s}
---
apiVersion: meshfed.io/v1alpha1
kind: WorkloadFault
metadata: {name: echo-slow, namespace: demo}
spec: {cluster: east, fault: {delay: {fixedDelay: 1s, percentage: {value: 10}}}}
"""


@pytest.mark.parametrize(("instance", "expected"), [
    ("productpage-0", ["RateLimit/bookinfo/callers-of-reviews", "RateLimit/bookinfo/productpage-receives"]),
    ("echo-0", ["RateLimit/bookinfo/callers-of-reviews", "WorkloadFault/demo/echo-slow"]),
])
def test_meshfed_rate_limits_and_workload_faults_reach_the_proxies_they_concern(
        tmp_path: Path, instance: str, expected: list[str]) -> None:
    version = load(tmp_path, mesh=MESH, meshfed=MESHFED_KINDS)
    resources = doc(version, instance)["spec"]["resources"]
    assert [f"{r['kind']}/{r['metadata']['namespace']}/{r['metadata']['name']}" for r in resources] == expected


def test_service_entry_export_to_hides_its_host_from_other_namespaces(version: ConfigVersion) -> None:
    def hosts(instance: str) -> list[str]:
        return [s["hostname"] for s in doc(version, instance)["spec"]["services"]]
    assert "api.example.com" in hosts("productpage-0")
    assert "api.example.com" not in hosts("echo-0")


def test_endpoints_behind_sidecars_use_port_15006_and_external_ones_none(version: ConfigVersion) -> None:
    services = {s["hostname"]: s for s in doc(version, "productpage-0")["spec"]["services"]}
    assert services["api.example.com"]["external"] is True
    assert services["api.example.com"]["endpoints"] == [{"address": "10.0.0.1", "port": 443, "proxyPort": 0,
                                                         "servicePort": 443}]
    assert services["reviews.bookinfo.svc.cluster.local"]["endpoints"][0] == {
        "address": "127.83.0.11", "port": 9080, "proxyPort": 15006,
        "labels": {"app": "reviews", "version": "v1", "topology.istio.io/cluster": "east",
                   "topology.istio.io/network": "net-east", "topology.kubernetes.io/region": "us-east",
                   "topology.kubernetes.io/zone": "a"},
        "locality": "us-east/a", "cluster": "east", "network": "net-east", "serviceAccount": "reviews-v1",
        "instance": "reviews-v1-0", "servicePort": 9080}


def test_cluster_view_keeps_only_the_clusters_own_endpoints(version: ConfigVersion) -> None:
    spec = doc(version, "productpage-0", registry=cluster_view(version.registry, "east"))["spec"]
    reviews = next(s for s in spec["services"] if s["hostname"] == "reviews.bookinfo.svc.cluster.local")
    assert [e["instance"] for e in reviews["endpoints"]] == ["reviews-v1-0"]


def test_endpoints_on_another_network_go_through_that_clusters_gateway(version: ConfigVersion) -> None:
    spec = doc(version, "productpage-0")["spec"]  # the whole topology's registry
    reviews = next(s for s in spec["services"] if s["hostname"] == "reviews.bookinfo.svc.cluster.local")
    assert [(e.get("instance"), e.get("gateway")) for e in reviews["endpoints"]] == [
        ("reviews-v1-0", None), (None, "127.84.0.2:15443")]
    group = reviews["endpoints"][1]
    assert (group["address"], group["port"], group["weight"], group["cluster"]) == ("127.84.0.2", 15443, 1, "west")


def test_kubernetes_workload_app_ports_come_from_the_services_selecting_it(tmp_path: Path) -> None:
    version = load(tmp_path, kube="""\
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}, {name: tcp-db, port: 5432}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings-v1, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  template:
    metadata: {labels: {app: ratings}}
    spec: {containers: [{name: ratings, image: ratings}]}
""")
    spec = doc(version, "ratings-v1-0")["spec"]
    assert spec["app"]["ports"] == [{"port": 9080, "protocol": "http"}, {"port": 5432, "protocol": "tcp"}]
    assert spec["node"]["trustDomain"] == "cluster.local"


def test_digest_ignores_the_version_and_changes_only_for_proxies_the_change_reaches(tmp_path: Path) -> None:
    first = load(tmp_path, mesh=MESH, istio=ISTIO)
    second = load(tmp_path, istio=ISTIO.replace("namespaces: [demo]", "namespaces: [demo, bookinfo]"))
    gen1 = ProxyGenerator(first)
    gen2 = ProxyGenerator(second, previous=gen1)
    before = {i: gen1.document(placed(first, i)) for i in ("productpage-0", "echo-0")}
    after = {i: gen2.document(placed(second, i)) for i in ("productpage-0", "echo-0")}
    assert before["productpage-0"].digest == after["productpage-0"].digest  # the policy is demo's
    assert before["echo-0"].digest != after["echo-0"].digest
    assert before["productpage-0"].text().replace('"version":"1"}}', '"version":"2"}}') == \
        after["productpage-0"].text()  # only the version differs


def test_a_changed_service_changes_one_bucket_of_the_services_list(tmp_path: Path) -> None:
    first = load(tmp_path, mesh=MESH, istio=ISTIO, entry=ENTRY.format(address="10.0.0.1"))
    second = load(tmp_path, entry=ENTRY.format(address="10.0.0.2"))
    a = ProxyGenerator(first).document(placed(first, "productpage-0"))
    b = ProxyGenerator(second).document(placed(second, "productpage-0"))
    assert len(a.ids) == len(b.ids) == 7  # head, 4 service buckets, resources, version tail
    changed = [i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y]
    bucket = next(i for i, part in enumerate(a.parts) if b'"hostname":"api.example.com"' in part)
    assert changed == [bucket, 5, 6]  # its bucket, the resources (the entry is one), the version tail


def test_generator_reuses_encoded_services_when_only_istio_resources_changed(tmp_path: Path) -> None:
    first = load(tmp_path, mesh=MESH, istio=ISTIO)
    second = load(tmp_path, istio=ISTIO.replace("mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: "
                                                "AuthorizationPolicy", "mode: PERMISSIVE}}\n---\napiVersion: "
                                                "security.istio.io/v1\nkind: AuthorizationPolicy"))
    assert second.registry is first.registry
    gen1 = ProxyGenerator(first)
    a = gen1.document(placed(first, "echo-0"))
    b = ProxyGenerator(second, previous=gen1).document(placed(second, "echo-0"))
    assert a.parts[1:-2] == b.parts[1:-2] and all(x is y for x, y in zip(a.parts[1:-2], b.parts[1:-2]))


def test_only_changed_services_are_encoded_again_across_versions(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import federation._proxygen as proxygen
    encoded: list[str] = []
    real = proxygen._dumps

    def counting(value: Any) -> bytes:
        if isinstance(value, dict) and "hostname" in value:
            encoded.append(value["hostname"])
        return real(value)
    monkeypatch.setattr(proxygen, "_dumps", counting)
    v1 = load(tmp_path, mesh=MESH, istio=ISTIO, entry=ENTRY.format(address="10.0.0.1"))
    gen = ProxyGenerator(v1)
    gen.document(placed(v1, "productpage-0"))
    assert len(encoded) == 4
    v2 = load(tmp_path, istio=ISTIO.replace("mode: STRICT", "mode: PERMISSIVE"))  # Istio resources only
    gen = ProxyGenerator(v2, previous=gen)
    gen.document(placed(v2, "productpage-0"))
    v3 = load(tmp_path, entry=ENTRY.format(address="10.0.0.2"))  # one service's endpoints
    gen = ProxyGenerator(v3, previous=gen)
    gen.document(placed(v3, "productpage-0"))
    assert encoded[4:] == ["api.example.com"]
