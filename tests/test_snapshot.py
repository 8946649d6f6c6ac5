"""A ProxyConfig compiled into a Snapshot: clusters, SNIs, targets, DestinationRules, inbound."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway._config import load_proxy_config_text
from gateway._match import RouteRequest
from gateway._snapshot import Snapshot, StatsStore, compile_snapshot
from topology._security import MtlsMode
from trustdomain.testing import MeshPki

SERVICES = """\
  - hostname: reviews.bookinfo.svc.cluster.local
    namespace: bookinfo
    ports: [{name: http, port: 9080, protocol: http}]
    endpoints:
    - {address: 127.9.0.11, port: 9080, labels: {version: v1}, cluster: east}
    - {address: 127.9.0.12, port: 9080, labels: {version: v2}, cluster: east, healthy: false}
    - {address: 127.9.0.13, port: 9080, proxyPort: 0, labels: {version: v3}}
    - {address: 127.9.0.14, port: 9080, labels: {version: v2}, gateway: "127.9.9.1:15443", cluster: west}
  - hostname: details.bookinfo.svc.cluster.local
    namespace: bookinfo
    ports: [{name: http, port: 9080, protocol: http, targetPort: 9999}]
    endpoints:
    - {address: 127.9.0.21, port: 9999}
"""


def document(resources: str = "", *, services: str = SERVICES, tls: str | None = None, app: str = "",
             node: str = "{cluster: east, workload: productpage, namespace: bookinfo, labels: {app: productpage}}"
             ) -> str:
    tls_line = f"  tls: {tls}\n" if tls is not None else ""
    return (f"apiVersion: meshfed.io/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: p}}\nspec:\n"
            f"  version: \"3\"\n  node: {node}\n{tls_line}{app}  services:\n{services}"
            f"  resources:\n" + textwrap.indent(textwrap.dedent(resources), "  "))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> str:
    pki = MeshPki.shared_root("cluster.local")
    folder = tmp_path_factory.mktemp("certs")
    files = pki.write_svid(pki.svid("cluster.local", "bookinfo", "productpage"), folder)
    return (f"{{cert: {files['cert']}, key: {files['key']}, chain: {files['chain']}, "
            f"bundles: {{cluster.local: {files['root']}}}}}")


def compile_text(text: str) -> tuple[Snapshot | None, list[str]]:
    config, diags = load_proxy_config_text(text, "proxy.yaml")
    assert config is not None, [str(d) for d in diags]
    snap, diags = compile_snapshot(config, stats=StatsStore())
    return snap, [str(d) for d in diags if d.is_error]


def ok(text: str) -> Snapshot:
    snap, errors = compile_text(text)
    assert errors == [] and snap is not None
    return snap


DR_SUBSETS = """\
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: reviews, namespace: bookinfo}
  spec:
    host: reviews
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {tcp: {maxConnections: 7, connectTimeout: 2s}, http: {http2MaxRequests: 5}}
    subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      trafficPolicy: {loadBalancer: {simple: RANDOM}}
"""


def test_one_cluster_per_service_port_and_subset_named_as_istio(certs: str) -> None:
    snap = ok(document(DR_SUBSETS, tls=certs))
    assert {c.name for c in snap.clusters.values()} == {
        "outbound|9080||details.bookinfo.svc.cluster.local",
        "outbound|9080||reviews.bookinfo.svc.cluster.local",
        "outbound|9080|v1|reviews.bookinfo.svc.cluster.local",
        "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
    }


@pytest.mark.parametrize("subset, sni", [
    ("", "outbound_.9080_._.reviews.bookinfo.svc.cluster.local"),
    ("v1", "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local"),
])
def test_cluster_sni_follows_the_auto_passthrough_convention(certs: str, subset: str, sni: str) -> None:
    cluster = ok(document(DR_SUBSETS, tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", subset, 9080)
    assert cluster is not None and cluster.sni == sni
    assert {h.endpoint.sni for h in cluster.hosts if h.endpoint.tls} == {sni}


def test_endpoints_are_reached_through_sidecar_gateway_or_directly(certs: str) -> None:
    cluster = ok(document(tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", "", 9080)
    assert cluster is not None
    got = {h.key: (h.endpoint.address, h.endpoint.port, h.endpoint.tls) for h in cluster.hosts}
    assert got == {
        "127.9.0.11:9080": ("127.9.0.11", 15006, True),    # its sidecar's inbound port, mTLS
        "127.9.0.12:9080": ("127.9.0.12", 15006, True),
        "127.9.0.13:9080": ("127.9.0.13", 9080, False),    # proxyPort 0: no sidecar, plaintext
        "127.9.0.14:9080": ("127.9.9.1", 15443, True),     # another network: its east-west gateway
    }


def test_unhealthy_endpoints_are_listed_but_never_balanced(certs: str) -> None:
    cluster = ok(document(tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", "", 9080)
    assert cluster is not None and cluster.balancer is not None
    picked = {cluster.balancer.pick().key for _ in range(200)}
    assert "127.9.0.12:9080" not in picked and len(cluster.hosts) == 4 and cluster.healthy == 3


def test_subset_hosts_policy_and_breaker_come_from_the_destination_rule(certs: str) -> None:
    snap = ok(document(DR_SUBSETS, tls=certs))
    v1 = snap.cluster("reviews.bookinfo.svc.cluster.local", "v1", 9080)
    v2 = snap.cluster("reviews.bookinfo.svc.cluster.local", "v2", 9080)
    assert v1 is not None and v2 is not None
    assert [h.key for h in v1.hosts] == ["127.9.0.11:9080"]
    assert [h.key for h in v2.hosts] == ["127.9.0.12:9080", "127.9.0.14:9080"]
    assert type(v1.balancer).__name__ == "RoundRobinBalancer"
    assert type(v2.balancer).__name__ == "RandomBalancer"
    assert v1.breaker.config.max_connections == 7 and v1.breaker.config.max_requests == 5
    assert v1.timeouts.connect_timeout == 2.0
    assert v1.destination_rule == "bookinfo/reviews"


def test_a_subset_without_healthy_hosts_has_no_balancer(certs: str) -> None:
    dr = DR_SUBSETS.replace("{name: v1, labels: {version: v1}}", "{name: v9, labels: {version: v9}}")
    cluster = ok(document(dr, tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", "v9", 9080)
    assert cluster is not None and cluster.balancer is None and cluster.hosts == ()


def dr(namespace: str, host: str, lb: str, extra: str = "") -> str:
    return (f"- apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n"
            f"  metadata: {{name: r-{namespace}-{lb.lower().replace('_', '-')}, namespace: {namespace}}}\n"
            f"  spec: {{host: \"{host}\", trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}{extra}}}\n")


@pytest.mark.parametrize("rules, expected", [
    ([dr("bookinfo", "reviews", "RANDOM"), dr("istio-system", "reviews.bookinfo.svc.cluster.local", "ROUND_ROBIN")],
     "RandomBalancer"),
    ([dr("other", "reviews.bookinfo.svc.cluster.local", "RANDOM"),
      dr("istio-system", "*.bookinfo.svc.cluster.local", "ROUND_ROBIN")], "RoundRobinBalancer"),
    ([dr("bookinfo", "*.svc.cluster.local", "RANDOM"), dr("bookinfo", "reviews", "ROUND_ROBIN")],
     "RoundRobinBalancer"),
    ([dr("other", "reviews.bookinfo.svc.cluster.local", "RANDOM", ", exportTo: ['.']")], "LeastRequestBalancer"),
])
def test_destination_rule_choice_prefers_own_namespace_then_exact_host(certs: str, rules: list[str],
                                                                       expected: str) -> None:
    cluster = ok(document("".join(rules), tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", "", 9080)
    assert cluster is not None and type(cluster.balancer).__name__ == expected


def test_destination_rule_tls_disable_sends_plaintext_to_the_sidecar(certs: str) -> None:
    rule = dr("bookinfo", "reviews", "RANDOM").replace("{simple: RANDOM}}", "{simple: RANDOM}, tls: {mode: DISABLE}}")
    cluster = ok(document(rule, tls=certs)).cluster("reviews.bookinfo.svc.cluster.local", "", 9080)
    assert cluster is not None
    first = cluster.hosts[0].endpoint
    assert (first.address, first.port, first.tls, first.pool_key) == ("127.9.0.11", 15006, False,
                                                                      ("127.9.0.11", 15006, "", ""))


def test_service_target_port_selects_endpoints(certs: str) -> None:
    cluster = ok(document(tls=certs)).cluster("details.bookinfo.svc.cluster.local", "", 9080)
    assert cluster is not None and [h.key for h in cluster.hosts] == ["127.9.0.21:9999"]


def test_routes_reach_the_service_clusters(certs: str) -> None:
    snap = ok(document(tls=certs))
    decision = snap.routes.route(RouteRequest(authority="reviews.bookinfo.svc.cluster.local:9080", port=9080))
    assert decision is not None
    dest = decision.action.destinations.destinations[0]
    assert (dest.host, dest.subset, dest.port_for(9080)) in {k[:2] + (k[2],) for k in snap.clusters} | {
        ("reviews.bookinfo.svc.cluster.local", None, 9080)}


def test_mtls_endpoints_without_a_certificate_are_refused_with_the_field() -> None:
    snap, errors = compile_text(document())
    assert snap is None
    assert errors == ["proxy.yaml:1: spec.tls: endpoints behind sidecars are reached over mTLS, but no certificate "
                      "is configured (set spec.tls, or proxyPort: 0 on endpoints without a sidecar)"]


def test_unreadable_certificate_is_refused_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    snap, errors = compile_text(document(tls=f"{{cert: {missing}, key: {missing}, bundles: {{a.b: {missing}}}}}"))
    assert snap is None
    assert len(errors) == 1 and errors[0].startswith("proxy.yaml:")
    assert f"spec.tls: {missing}: cannot read: No such file or directory" in errors[0]


def test_tls_material_is_loaded_and_fingerprinted(certs: str) -> None:
    snap = ok(document(tls=certs))
    assert snap.tls is not None
    assert str(snap.tls.svid.spiffe_id) == "spiffe://cluster.local/ns/bookinfo/sa/productpage"
    assert [td.name for td in snap.tls.bundles.trust_domains] == ["cluster.local"]
    assert ok(document(tls=certs)).tls.fingerprint == snap.tls.fingerprint  # type: ignore[union-attr]


APP = "  app: {address: 127.9.0.30, ports: [{port: 9999, protocol: http}, {port: 7000, protocol: tcp}]}\n"
PA_STRICT_7000 = """\
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: details, namespace: bookinfo}
  spec:
    selector: {matchLabels: {app: details}}
    mtls: {mode: PERMISSIVE}
    portLevelMtls: {7000: {mode: STRICT}}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: deny-get, namespace: bookinfo}
  spec:
    action: DENY
    rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def test_inbound_maps_service_ports_to_app_ports_and_composes_policy(certs: str) -> None:
    snap = ok(document(PA_STRICT_7000, tls=certs, app=APP,
                       node="{cluster: east, workload: details, namespace: bookinfo, labels: {app: details}}"))
    inbound = snap.inbound
    assert inbound.app_address == "127.9.0.30"
    assert dict(inbound.app_ports) == {9999: "http", 7000: "tcp"}
    assert inbound.port_for("details.bookinfo.svc.cluster.local", 9080) == 9999   # service port -> target port
    assert inbound.port_for("unknown.svc", 7000) == 7000                           # an app port itself
    assert inbound.port_for("unknown.svc", 1234) is None                           # two ports: no guess
    assert inbound.peer_auth.mode_for(7000).mode is MtlsMode.STRICT
    assert inbound.peer_auth.mode_for(9999).mode is MtlsMode.PERMISSIVE
    assert inbound.has_authz and inbound.authorizer.policies == ("bookinfo/deny-get",)
    assert inbound.xfcc is not None and inbound.xfcc.by == ("spiffe://cluster.local/ns/bookinfo/sa/productpage",)


def test_host_counters_survive_a_recompile(certs: str) -> None:
    config, _ = load_proxy_config_text(document(tls=certs), "proxy.yaml")
    assert config is not None
    stats = StatsStore()
    first, _ = compile_snapshot(config, stats=stats)
    second, _ = compile_snapshot(config, stats=stats)
    assert first is not None and second is not None
    a = first.cluster("reviews.bookinfo.svc.cluster.local", "", 9080).hosts[0].endpoint.stats  # type: ignore[union-attr]
    b = second.cluster("reviews.bookinfo.svc.cluster.local", "", 9080).hosts[0].endpoint.stats  # type: ignore[union-attr]
    assert a is b


def outlier_rule(base_ejection: str) -> str:
    return f"""\
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {{name: reviews, namespace: bookinfo}}
  spec:
    host: reviews
    trafficPolicy:
      outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: {base_ejection}, maxEjectionPercent: 100}}
"""


UNRELATED = """\
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: anything, namespace: bookinfo}
  spec: {}
"""


def test_an_ejection_survives_a_config_update_that_leaves_outlier_detection_alone(certs: str) -> None:
    fqdn = "reviews.bookinfo.svc.cluster.local"
    stats = StatsStore()

    def compiled(resources: str, services: str = SERVICES) -> Snapshot:
        config, _ = load_proxy_config_text(document(resources, tls=certs, services=services), "proxy.yaml")
        assert config is not None
        snap, _ = compile_snapshot(config, stats=stats)
        assert snap is not None
        return snap

    first = compiled(outlier_rule("30s"))
    od = first.cluster(fqdn, "", 9080).outlier  # type: ignore[union-attr]
    assert od is not None and od.hosts == ("127.9.0.11:9080", "127.9.0.13:9080", "127.9.0.14:9080")
    od.record_http_status("127.9.0.11:9080", 503, 1.0)
    assert od.is_ejected("127.9.0.11:9080")
    # another resource of the namespace, then an endpoint gone: the same detector, the host still ejected
    second = compiled(outlier_rule("30s") + UNRELATED)
    assert second.cluster(fqdn, "", 9080).outlier is od and od.is_ejected("127.9.0.11:9080")  # type: ignore[union-attr]
    picker = second.cluster(fqdn, "", 9080).picker  # type: ignore[union-attr]
    assert picker.ejected == {"127.9.0.11:9080"}
    assert {picker.pick().key for _ in range(20)} == {"127.9.0.13:9080", "127.9.0.14:9080"}  # type: ignore[union-attr]
    # a request begun under the first snapshot ends after the swap: its 503 counts for the new picker too
    first.cluster(fqdn, "", 9080).picker.record_status("127.9.0.13:9080", 503, 2.0)  # type: ignore[union-attr]
    assert picker.ejected == {"127.9.0.11:9080", "127.9.0.13:9080"}
    assert {picker.pick().key for _ in range(20)} == {"127.9.0.14:9080"}  # type: ignore[union-attr]
    od.sweep(40.0)  # both ejections over: back for both pickers
    assert picker.ejected == frozenset() and first.cluster(fqdn, "", 9080).picker.ejected == frozenset()  # type: ignore[union-attr]
    od.record_http_status("127.9.0.11:9080", 503, 41.0)
    fewer = SERVICES.replace("    - {address: 127.9.0.13, port: 9080, proxyPort: 0, labels: {version: v3}}\n", "")
    third = compiled(outlier_rule("30s") + UNRELATED, fewer)
    # the gone host stays one snapshot more: requests begun before still end (and retry) on it
    assert third.cluster(fqdn, "", 9080).outlier is od and "127.9.0.13:9080" in od.hosts  # type: ignore[union-attr]
    compiled(outlier_rule("30s") + UNRELATED, fewer)
    assert od.hosts == ("127.9.0.11:9080", "127.9.0.14:9080")
    assert od.is_ejected("127.9.0.11:9080")
    # a refused config changes nothing
    config, _ = load_proxy_config_text(document(outlier_rule("10s"), services=fewer), "proxy.yaml")
    assert config is not None  # decodes, but its mTLS endpoints have no certificate: refused after its clusters
    refused, errors = compile_snapshot(config, stats=stats)
    assert refused is None and any(d.path == "spec.tls" for d in errors)
    assert compiled(outlier_rule("30s") + UNRELATED, fewer).cluster(fqdn, "", 9080).outlier is od  # type: ignore[union-attr]
    # a changed outlierDetection starts afresh, as Envoy rebuilds a changed cluster
    fourth = compiled(outlier_rule("10s"))
    fresh = fourth.cluster(fqdn, "", 9080).outlier  # type: ignore[union-attr]
    assert fresh is not od and fresh is not None and not fresh.is_ejected("127.9.0.11:9080")


def test_tcp_cluster_resolves_short_names_in_the_node_namespace(certs: str) -> None:
    snap = ok(document(tls=certs))
    found = snap.tcp_cluster("reviews", 9080)
    assert found is not None and found.name == "outbound|9080||reviews.bookinfo.svc.cluster.local"
    assert snap.tcp_cluster("nothing.example", 9080) is None


TCP_SPLIT = """\
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {name: reviews-tcp, namespace: bookinfo}
  spec:
    hosts: [reviews]
    tcp:
    - match: [{port: 9080}]
      route: [{destination: {host: reviews, subset: v1}}]
"""


def test_tcp_routes_pick_the_subset_cluster(certs: str) -> None:
    snap = ok(document(DR_SUBSETS + TCP_SPLIT, tls=certs))
    found = snap.tcp_cluster("reviews.bookinfo.svc.cluster.local", 9080)
    assert found is not None and found.name == "outbound|9080|v1|reviews.bookinfo.svc.cluster.local"
