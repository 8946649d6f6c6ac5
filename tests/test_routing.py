"""The HTTP routing table: Istio's virtual hosts, first-match rules, weighted splits,
delegation, visibility, and the compiled actions (rewrite, redirect, direct response,
header operations). The bookinfo samples route as istio.io documents them."""

import math
import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from gateway._actions import RedirectAction, RewriteConfig
from gateway._headerops import HeaderOps, HeaderStage
from gateway._match import RouteRequest
from gateway._routing import ClientWorkload, RouteCompileError, RouteDecision, RouteTable
from topology import Service, ServicePort, build_registry, load_paths, load_text
from topology._http_actions import DerivePort, HTTPRedirect, HTTPRewrite, RegexRewrite
from topology._registry import RegistryBuilder

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio"
NETWORKING = CORPUS / "bookinfo" / "networking"
KUBE = CORPUS / "bookinfo" / "platform" / "kube" / "bookinfo.yaml"
SAMPLES = 20_000
SIGMAS = 4
"""Splits are measured over SAMPLES seeded draws and must be within SIGMAS standard
deviations of the configured weight (for a 10% weight: +-0.85 points)."""

SIDECAR = ClientWorkload("default", {"app": "productpage", "version": "v1"})


@pytest.fixture(scope="module")
def bookinfo():
    return build_registry(load_paths([KUBE]))


def load(*names: str):
    result = load_paths([NETWORKING / n for n in names])
    assert result.errors == []
    return result.resources


def yaml(text: str):
    result = load_text(textwrap.dedent(text))
    assert result.errors == []
    return result.resources


def registry(*services: Service):
    b = RegistryBuilder()
    for s in services:
        b.add_service(s)
    return b.build()


def svc(name: str, ns: str, *ports: int, protocol: str = "HTTP") -> Service:
    return Service(f"{name}.{ns}.svc.cluster.local", ns, name,
                   tuple(ServicePort(f"http-{p}", p, protocol) for p in ports))


def req(authority: str, path: str = "/", port: int = 9080, **kw) -> RouteRequest:
    return RouteRequest(authority=authority, path=path, port=port, **kw)


def target(decision: RouteDecision, rng: random.Random | None = None) -> tuple[str, str | None, int | None]:
    d = decision.action.pick(rng or random.Random(0))
    return d.host, d.subset, d.port


REVIEWS = "reviews.default.svc.cluster.local"


# -- the bookinfo samples ---------------------------------------------------------------

@pytest.mark.parametrize("headers, subset", [
    ({"end-user": "jason"}, "v2"),
    ({"end-user": "Jason"}, "v1"),  # exact match
    ({"end-user": "jason2"}, "v1"),
    ({"end-user": "bob"}, "v1"),
    ({}, "v1"),
    ([("end-user", "jason"), ("end-user", "jason")], "v1"),  # repeated: "jason,jason"
])
def test_reviews_test_v2_routes_jason_to_v2_and_everyone_else_to_v1(bookinfo, headers, subset):
    vs = load("virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml")  # applied in this order
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    assert target(table.route(req("reviews:9080", headers=headers))) == (REVIEWS, subset, 9080)


@pytest.mark.parametrize("file, weights", [
    ("virtual-service-reviews-90-10.yaml", {"v1": 90, "v2": 10}),
    ("virtual-service-reviews-80-20.yaml", {"v1": 80, "v2": 20}),
    ("virtual-service-reviews-50-v3.yaml", {"v1": 50, "v3": 50}),
    ("virtual-service-reviews-v2-v3.yaml", {"v2": 50, "v3": 50}),
    ("virtual-service-reviews-v3.yaml", {"v3": 100}),
])
def test_weighted_splits_are_measured_within_tolerance(bookinfo, file, weights):
    table = RouteTable.compile(load("virtual-service-all-v1.yaml", file), bookinfo, SIDECAR)
    rng = random.Random(4)
    decision = table.route(req("reviews"))
    seen = Counter(decision.action.pick(rng).subset for _ in range(SAMPLES))
    assert set(seen) == set(weights)
    for subset, weight in weights.items():
        p = weight / 100
        assert abs(seen[subset] / SAMPLES - p) <= SIGMAS * math.sqrt(p * (1 - p) / SAMPLES) + 1e-12


@pytest.mark.parametrize("user, subset", [("jason", "v2"), ("bob", "v3"), (None, "v3")])
def test_jason_v2_v3_sends_jason_to_v2_and_the_rest_to_v3(bookinfo, user, subset):
    table = RouteTable.compile(load("virtual-service-all-v1.yaml", "virtual-service-reviews-jason-v2-v3.yaml"),
                               bookinfo, SIDECAR)
    headers = {"end-user": user} if user else {}
    assert target(table.route(req("reviews.default.svc.cluster.local", headers=headers)))[1] == subset


@pytest.mark.parametrize("method, path, headers", [
    ("GET", "/details/0", {}), ("POST", "/", {"end-user": "jason"}), ("DELETE", "/x?y=1", {"x": "y"}),
])
def test_fault_injection_details_first_rule_catches_every_request(bookinfo, method, path, headers):
    vs = load("fault-injection-details-v1.yaml")
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    decision = table.route(req("details:9080", path, method=method, headers=headers))
    assert decision.spec is vs[0].spec.http[0]
    assert decision.fault.abort.http_status == 555 and decision.fault.abort.percentage.value == 100
    assert target(decision) == ("details.default.svc.cluster.local", "v1", 9080)
    assert len(table.virtual_host("details", 9080).routes) == 1  # translation stops at the catch-all


GATEWAY = ClientWorkload("istio-system", {"istio": "ingressgateway"}, gateways=("default/bookinfo-gateway",))


@pytest.mark.parametrize("path, routed", [
    ("/productpage", True), ("/productpage/", False), ("/Productpage", False),
    ("/static", True), ("/static/bootstrap/css/bootstrap.min.css", True), ("/staticx", True),
    ("/login", True), ("/logout", True), ("/login/x", False),
    ("/api/v1/products", True), ("/api/v1/products/0/reviews", True), ("/api/v2/products", False),
    ("/", False), ("/details/0", False),
])
def test_bookinfo_gateway_routes_only_the_listed_paths(bookinfo, path, routed):
    table = RouteTable.compile(load("bookinfo-gateway.yaml"), bookinfo, GATEWAY, ports=[8080])
    decision = table.route(req("192.0.2.1:8080", path, port=8080))
    if routed:
        assert target(decision) == ("productpage.default.svc.cluster.local", None, 9080)
    else:
        assert decision is None


def test_bookinfo_gateway_answers_any_host_and_only_its_port(bookinfo):
    table = RouteTable.compile(load("bookinfo-gateway.yaml"), bookinfo, GATEWAY, ports=[8080])
    assert table.route(req("bookinfo.example.com", "/productpage", port=8080)) is not None
    assert table.route(req("bookinfo.example.com", "/productpage", port=80)) is None
    assert table.ports == (8080,)


def test_gateway_bound_virtual_services_do_not_configure_sidecars(bookinfo):
    table = RouteTable.compile(load("bookinfo-gateway.yaml"), bookinfo, SIDECAR)
    decision = table.route(req("productpage:9080", "/productpage"))
    assert decision.name == "default" and decision.source == ""
    assert table.route(req("bookinfo.example.com", "/productpage")) is None


def test_a_gateway_table_needs_its_ports(bookinfo):
    with pytest.raises(RouteCompileError) as e:
        RouteTable.compile(load("bookinfo-gateway.yaml"), bookinfo, GATEWAY)
    assert str(e.value) == ("a routing table for gateways ['default/bookinfo-gateway'] needs the ports "
                            "its servers listen on")


# -- virtual hosts and domains ----------------------------------------------------------

@pytest.mark.parametrize("namespace, authority, found", [
    ("default", "reviews", True), ("default", "reviews:9080", True), ("default", "REVIEWS:9080", True),
    ("default", "reviews.default", True), ("default", "reviews.default.svc", True),
    ("default", "reviews.default.svc.cluster.local", True), ("default", "reviews.default.svc.cluster.local:9080", True),
    ("default", "reviews.default.svc.clusterset.local", True), ("default", "reviews:1234", True),
    ("default", "reviews.other", False), ("default", "reviewsx", False),
    ("other", "reviews", False),  # a short name only works from the service's namespace
    ("other", "reviews.default", True), ("other", "reviews.default.svc.cluster.local", True),
])
def test_every_way_a_client_may_name_the_service(bookinfo, namespace, authority, found):
    vs = load("virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml")
    table = RouteTable.compile(vs, bookinfo, ClientWorkload(namespace))
    decision = table.route(req(authority, headers={"end-user": "jason"}))
    assert (decision is not None) is found
    if found:
        assert decision.source == "default/reviews" and target(decision)[1] == "v2"


def test_a_service_without_virtual_service_gets_the_default_route(bookinfo):
    table = RouteTable.compile([], bookinfo, SIDECAR)
    decision = table.route(req("ratings.default:9080", "/ratings/0", method="POST"))
    assert decision.name == "default" and decision.spec is None and decision.timeout is None
    assert target(decision) == ("ratings.default.svc.cluster.local", None, 9080)
    assert decision.action.destinations.destinations[0].cluster == "outbound|9080||ratings.default.svc.cluster.local"
    assert table.route(req("ratings", port=8080)) is None  # no HTTP service listens on 8080
    assert table.ports == (9080,)
    assert repr(table) == "<RouteTable mesh in default: 1 ports, 4 virtual hosts, 4 routes>"


def test_route_returns_the_compiled_entry_without_allocating(bookinfo):
    table = RouteTable.compile(load("virtual-service-reviews-test-v2.yaml"), bookinfo, SIDECAR)
    a = table.route(req("reviews", "/a"))
    assert a is table.route(req("reviews.default:9080", "/b"))
    assert repr(a) == ("<RouteDecision reviews.default.svc.cluster.local:9080 - from default/reviews: "
                       "path prefix '/' -> forward>")


def test_egress_port_80_is_rewritten_to_443_and_https_ports_get_no_http_routes():
    objs = load_paths([KUBE, NETWORKING / "egress-rule-google-apis.yaml"])
    table = RouteTable.compile(objs.resources, build_registry(objs), SIDECAR)
    assert table.ports == (80, 9080)
    assert target(table.route(req("www.googleapis.com", "/books/v1", port=80))) == ("www.googleapis.com", None, 443)


OUTSIDE = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: %(name)s, namespace: web}
    spec:
      hosts: [%(host)s]
      http:
      - route:
        - destination: {host: %(dest)s}
"""


def outside(name: str, host: str, dest: str):
    return yaml(OUTSIDE % {"name": name, "host": host, "dest": dest})


@pytest.mark.parametrize("authority, dest", [
    ("api.example.com", "exact.web.svc.cluster.local"),
    ("x.b.example.com", "narrow.web.svc.cluster.local"),
    ("x.y.b.example.com", "narrow.web.svc.cluster.local"),
    ("b.example.com", "broad.web.svc.cluster.local"),
    ("example.com", None),  # `*.example.com` needs at least one label in front
    ("other.org", None),
])
def test_exact_domains_beat_wildcards_and_the_longest_wildcard_wins(authority, dest):
    vs = outside("a", "'*.example.com'", "broad") + outside("b", "'*.b.example.com'", "narrow") + \
        outside("c", "api.example.com", "exact")
    table = RouteTable.compile(vs, registry(svc("web", "web", 8080)), ClientWorkload("web"))
    assert table.ports == (80, 8080)  # hosts outside the registry are routed on port 80 only
    decision = table.route(req(authority, port=80))
    assert (target(decision)[0] if decision else None) == dest
    assert table.route(req(authority, port=8080)) is None


def test_a_wildcard_host_takes_the_services_it_covers_under_all_their_names():
    vs = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: all-shop, namespace: shop}
        spec:
          hosts: ['*.shop.svc.cluster.local']
          http:
          - route:
            - destination: {host: cart, subset: canary}
    """)
    reg = registry(svc("cart", "shop", 8080), svc("pay", "shop", 8080), svc("pay", "bank", 8080))
    table = RouteTable.compile(vs, reg, ClientWorkload("shop"))
    assert target(table.route(req("pay", port=8080))) == ("cart.shop.svc.cluster.local", "canary", 8080)
    assert target(table.route(req("cart.shop:8080", port=8080)))[1] == "canary"
    assert table.route(req("pay.bank", port=8080)).name == "default"
    assert table.route(req("nothing.shop.svc.cluster.local", port=8080)) is None


# -- which VirtualServices apply --------------------------------------------------------

def named_vs(name: str, ns: str, subset: str, *, created: str | None = None, export_to: str | None = None,
             gateways: str | None = None, host: str = "reviews.default.svc.cluster.local") -> str:
    meta = f"{{name: {name}, namespace: {ns}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    extra = (f"\n  exportTo: [{export_to}]" if export_to else "") + (f"\n  gateways: [{gateways}]" if gateways else "")
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {meta}
spec:
  hosts: ['{host}']{extra}
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}
"""


@pytest.mark.parametrize("client_ns, export_to, visible", [
    ("default", "'.'", True), ("other", "'.'", False), ("other", "'*'", True), ("other", "other", True),
    ("third", "other", False), ("other", None, True),
])
def test_export_to_decides_who_sees_a_virtual_service(bookinfo, client_ns, export_to, visible):
    vs = yaml(named_vs("r", "default", "v2", export_to=export_to))
    decision = RouteTable.compile(vs, bookinfo, ClientWorkload(client_ns)).route(req("reviews.default"))
    assert target(decision)[1] == ("v2" if visible else None)


def test_sidecars_keep_the_oldest_virtual_service_for_a_host_and_report_the_others(bookinfo):
    vs = yaml(named_vs("b-old", "default", "v1", created="2024-01-01T00:00:00Z") + "---\n"
              + named_vs("a-new", "team", "v3", created="2024-06-01T00:00:00Z"))
    table = RouteTable.compile(vs, bookinfo, ClientWorkload("team"))
    assert target(table.route(req("reviews.default")))[1] == "v1"
    assert table.conflicts == (
        "team/a-new: host 'reviews.default.svc.cluster.local' is already routed by default/b-old; "
        "for sidecars the oldest VirtualService wins (IST0109)",
        "team/a-new: host 'reviews.default' is already routed by default/b-old; "
        "for sidecars the oldest VirtualService wins (IST0109)",
        "team/a-new: host 'reviews.default.svc' is already routed by default/b-old; "
        "for sidecars the oldest VirtualService wins (IST0109)",
        "team/a-new: host 'reviews.default.svc.clusterset.local' is already routed by default/b-old; "
        "for sidecars the oldest VirtualService wins (IST0109)",
    )


def test_without_creation_times_the_name_decides(bookinfo):
    vs = yaml(named_vs("zeta", "default", "v3") + "---\n" + named_vs("alpha", "default", "v2"))
    assert target(RouteTable.compile(vs, bookinfo, SIDECAR).route(req("reviews")))[1] == "v2"


def test_a_later_resource_of_the_same_name_replaces_the_earlier(bookinfo):
    vs = yaml(named_vs("reviews", "default", "v1") + "---\n" + named_vs("reviews", "default", "v3"))
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    assert target(table.route(req("reviews")))[1] == "v3" and table.conflicts == ()


def test_gateways_merge_the_routes_of_every_virtual_service_for_a_host(bookinfo):
    a = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a, namespace: default, creationTimestamp: '2024-01-01T00:00:00Z'}
        spec:
          hosts: [shop.example.com]
          gateways: [web]
          http:
          - match: [{uri: {prefix: /reviews}}]
            route: [{destination: {host: reviews}}]
    """)
    b = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: b, namespace: default, creationTimestamp: '2024-02-01T00:00:00Z'}
        spec:
          hosts: [shop.example.com]
          gateways: [default/web]
          http:
          - match: [{uri: {prefix: /ratings}}]
            route: [{destination: {host: ratings}}]
          - route: [{destination: {host: productpage}}]
    """)
    gw = ClientWorkload("istio-system", gateways=("default/web",))
    table = RouteTable.compile(b + a, bookinfo, gw, ports=[443])
    assert [r.source for r in table.virtual_host("shop.example.com", 443).routes] == ["default/a", "default/b", "default/b"]
    for path, host in (("/reviews/1", "reviews"), ("/ratings/1", "ratings"), ("/", "productpage")):
        assert target(table.route(req("shop.example.com:443", path, port=443)))[0] == f"{host}.default.svc.cluster.local"
    assert table.route(req("other.example.com", port=443)) is None


MATCH_SCOPED = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: scoped, namespace: default}
spec:
  hosts: [reviews]
  gateways: [mesh, web]
  http:
  - name: by-port
    match: [{port: 9081, name: p}]
    route: [{destination: {host: reviews, subset: port}}]
  - name: from-productpage
    match: [{sourceLabels: {app: productpage}, name: pp}]
    route: [{destination: {host: reviews, subset: labels}}]
  - name: from-test
    match: [{sourceNamespace: test, name: ns}]
    route: [{destination: {host: reviews, subset: namespace}}]
  - name: gw-only
    match: [{gateways: [web], name: g}]
    route: [{destination: {host: reviews, subset: gateway}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


@pytest.mark.parametrize("client, port, subset", [
    (ClientWorkload("default", {"app": "productpage"}), 9080, "labels"),
    (ClientWorkload("default", {"app": "productpage"}), 9081, "port"),
    (ClientWorkload("test", {"app": "other"}), 9080, "namespace"),
    (ClientWorkload("default", {"app": "other"}), 9080, "v1"),
    (ClientWorkload("default", {"app": "other"}, gateways=("web",)), 9080, "gateway"),
])
def test_port_source_and_gateway_conditions_are_decided_for_the_client(client, port, subset):
    reg = registry(svc("reviews", "default", 9080, 9081))
    table = RouteTable.compile(yaml(MATCH_SCOPED), reg, client, ports=[9080, 9081])
    # a gateway knows a host only by the name the VirtualService gives it
    assert target(table.route(req("reviews.default.svc.cluster.local", port=port)))[1] == subset


def test_a_table_compiled_without_labels_checks_the_source_per_request():
    reg = registry(svc("reviews", "default", 9080, 9081))
    table = RouteTable.compile(yaml(MATCH_SCOPED), reg, ClientWorkload("default", None))
    pick = lambda **kw: target(table.route(req("reviews.default", **kw)))[1]  # noqa: E731
    assert pick(source_labels={"app": "productpage"}) == "labels"
    assert pick(source_namespace="test") == "namespace"
    assert pick(source_labels={"app": "x"}, source_namespace="default") == "v1"
    assert [r.name for r in table.virtual_host("reviews.default", 9080).routes] == \
        ["from-productpage.pp", "from-test.ns", ""]


def test_each_match_of_a_rule_is_its_own_route_and_any_of_them_selects_it(bookinfo):
    vs = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: multi, namespace: default}
        spec:
          hosts: [ratings]
          http:
          - name: api
            match:
            - {name: get, method: {exact: GET}, uri: {prefix: /ratings}}
            - {name: admin, headers: {x-admin: {exact: "1"}}}
            route: [{destination: {host: ratings, subset: v2}}]
          - route: [{destination: {host: ratings, subset: v1}}]
    """)
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    assert table.route(req("ratings", "/ratings/1")).name == "api.get"
    assert table.route(req("ratings", "/x", method="PUT", headers={"x-admin": "1"})).name == "api.admin"
    assert target(table.route(req("ratings", "/ratings/1", method="POST")))[1] == "v1"


# -- delegation ---------------------------------------------------------------------------

DELEGATION = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: gw}
spec:
  hosts: [shop.example.com]
  gateways: [web]
  http:
  - name: reviews
    match: [{uri: {prefix: /reviews}}]
    timeout: 3s
    delegate: {name: reviews-routes, namespace: default}
  - name: missing
    match: [{uri: {prefix: /gone}}]
    delegate: {name: nothing}
  - name: private
    match: [{uri: {prefix: /private}}]
    delegate: {name: private-routes, namespace: default}
  - route: [{destination: {host: productpage.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-routes, namespace: default}
spec:
  http:
  - name: v2
    match: [{uri: {exact: /reviews/v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: elsewhere
    match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
  - name: rest
    timeout: 1s
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private-routes, namespace: default}
spec:
  exportTo: ['.']
  http:
  - route: [{destination: {host: details}}]
"""


@pytest.mark.parametrize("path, name, host, subset, timeout", [
    ("/reviews/v2", "reviews-v2", "reviews", "v2", "3s"),  # the root's timeout fills the gap
    ("/reviews/v2/x", "reviews-rest", "reviews", "v1", "1s"),
    ("/reviews", "reviews-rest", "reviews", "v1", "1s"),
    ("/ratings", "", "productpage", None, None),  # outside the root's prefix: dropped
    ("/gone", "", "productpage", None, None),
    ("/private", "", "productpage", None, None),
])
def test_delegate_rules_are_spliced_under_the_root_match(bookinfo, path, name, host, subset, timeout):
    gw = ClientWorkload("gw", gateways=("web",))
    table = RouteTable.compile(yaml(DELEGATION), bookinfo, gw, ports=[80])
    decision = table.route(req("shop.example.com", path, port=80))
    assert decision.name == name
    assert target(decision) == (f"{host}.default.svc.cluster.local", subset, 9080)
    assert (str(decision.timeout) if decision.timeout else None) == timeout
    assert table.warnings == (
        "gw/root: http[1]: delegate gw/nothing not found; rule ignored",
        "gw/root: http[2]: delegate default/private-routes is not exported to 'gw'; rule ignored",
    )


# -- actions -------------------------------------------------------------------------------

@pytest.mark.parametrize("match, rewrite, path, query, expected", [
    ("{uri: {prefix: /api/v1}}", "{uri: /v2}", "/api/v1/books", "x=1", "/v2/books?x=1"),
    ("{uri: {prefix: /API}, ignoreUriCase: true}", "{uri: /}", "/api/books", "", "//books"),
    ("{uri: {exact: /old}}", "{uri: /new}", "/old", "q", "/new?q"),
    ("{uri: {regex: '/r/[0-9]+'}}", "{uri: /fixed}", "/r/42", "", "/fixed"),
    ("{headers: {x: {exact: y}}}", "{uri: /v2}", "/foo", "", "/v2foo"),  # no uri match: prefix "/"
    ("{uri: {prefix: /service}}", "{uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}",
     "/service/foo/bar", "a=b", "/bar/instance/foo?a=b"),
])
def test_rewrites_replace_what_the_match_consumed(bookinfo, match, rewrite, path, query, expected):
    vs = yaml(f"""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: rw, namespace: default}}
        spec:
          hosts: [details]
          http:
          - match: [{match}]
            rewrite: {rewrite}
            route: [{{destination: {{host: details}}}}]
    """)
    decision = RouteTable.compile(vs, bookinfo, SIDECAR).route(
        req("details", path, query=query, headers={"x": "y"}))
    assert decision.action.rewrite.apply(path, query) == expected


def test_regex_rewrite_substitution_follows_re2_syntax():
    rw = RewriteConfig.compile(HTTPRewrite(uri_regex_rewrite=RegexRewrite(match="(a)(b)", rewrite=r"\2\\\0")), None)
    assert rw.apply("xaby") == r"xb\aby"


HEADERS_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hdr, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {split: {exact: "no"}}}]
    headers:
      request: {set: {x-level: route, x-route: "1"}, add: {x-trace: route}, remove: [x-drop]}
      response: {set: {x-served: route}}
    route:
    - destination: {host: reviews, subset: v1}
      headers:
        request: {set: {x-level: destination}, add: {x-trace: destination}}
        response: {remove: [x-served]}
  - headers:
      request: {set: {x-level: route, ':authority': route.example}}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 50
      headers:
        request: {set: {x-level: destination, host: ignored.example}, remove: [x-route]}
    - destination: {host: reviews, subset: v2}
      weight: 50
"""


def test_a_lone_destination_shares_the_rules_header_lists(bookinfo):
    decision = RouteTable.compile(yaml(HEADERS_VS), bookinfo, SIDECAR).route(req("reviews", headers={"split": "no"}))
    d = decision.action.pick(random.Random(0))
    sent = d.request_headers.apply([("x-drop", "1"), ("x-level", "client"), ("x-trace", "client")])
    # one parser: removes, then every set (the destination's last), then every add
    assert sent == [("x-trace", "client"), ("x-route", "1"), ("x-level", "destination"), ("x-trace", "route"),
                    ("x-trace", "destination")]
    assert d.response_headers.apply([("x-served", "app")]) == [("x-served", "route")]  # removes go first
    assert d.authority is None


def test_weighted_destinations_apply_their_headers_before_the_rules(bookinfo):
    decision = RouteTable.compile(yaml(HEADERS_VS), bookinfo, SIDECAR).route(req("reviews"))
    v1, v2 = decision.action.destinations.destinations
    assert v1.request_headers.apply([("x-route", "client")]) == [("x-level", "route")]
    assert v2.request_headers.apply([]) == [("x-level", "route")]
    assert (v1.authority, v2.authority) == ("route.example", "route.example")  # the rule's authority wins
    assert repr(v1.request_headers) == "<HeaderOps remove x-route, set x-level='destination', set x-level='route'>"


def test_header_stages_drop_pseudo_headers_and_empty_values_and_unescape_percent():
    from topology._http_actions import HeaderOperations
    stage, authority = HeaderStage.of(HeaderOperations(set={"X-Rate": "100%%", "x-empty": "", "host": "h"},
                                                       add={":authority": "a"}, remove=(":path", "X-Gone")))
    assert stage == HeaderStage(remove=("x-gone",), set=(("x-rate", "100%"),))
    assert authority == "h"
    assert HeaderOps.of(stage).apply([("X-GONE", "1"), ("keep", "2")]) == [("keep", "2"), ("x-rate", "100%")]


REDIRECT_CASES = [
    # (redirect, listen port, request, expected Location)
    (HTTPRedirect(uri="/v1/bookRatings"), 9080, dict(authority="ratings:9080", path="/v1/getProductRatings"),
     "http://ratings:9080/v1/bookRatings"),
    (HTTPRedirect(uri="/new"), 80, dict(authority="a.example", path="/old", query="x=1"), "http://a.example/new?x=1"),
    (HTTPRedirect(uri="/new?y=2"), 80, dict(authority="a.example", path="/old", query="x=1"), "http://a.example/new?y=2"),
    (HTTPRedirect(uri="new"), 80, dict(authority="a.example", path="/old"), "http://a.example/new"),
    (HTTPRedirect(authority="b.example"), 80, dict(authority="a.example:8080", path="/p", query="q"),
     "http://b.example/p?q"),
    (HTTPRedirect(scheme="https"), 80, dict(authority="a.example:80", path="/p"), "https://a.example/p"),
    (HTTPRedirect(scheme="https"), 80, dict(authority="a.example:8080", path="/p"), "https://a.example:8080/p"),
    (HTTPRedirect(scheme="https", port=8443), 80, dict(authority="a.example:80", path="/p"), "https://a.example:8443/p"),
    (HTTPRedirect(scheme="https", port=443), 80, dict(authority="a.example:80", path="/p"), "https://a.example/p"),
    # Istio drops an explicit :80 for http, so Envoy keeps the request's own port
    (HTTPRedirect(port=80), 8080, dict(authority="a.example:8080", path="/p"), "http://a.example:8080/p"),
    (HTTPRedirect(derive_port=DerivePort.FROM_REQUEST_PORT, authority="b.example"), 8080,
     dict(authority="a.example", path="/p"), "http://b.example:8080/p"),
    (HTTPRedirect(derive_port=DerivePort.FROM_PROTOCOL_DEFAULT, scheme="https"), 8080,
     dict(authority="a.example:8080", path="/p"), "https://a.example:8080/p"),
    (HTTPRedirect(authority="[::1]", scheme="http"), 80, dict(authority="x", path="/"), "http://[::1]/"),
    (HTTPRedirect(scheme="https"), 80, dict(authority="[::1]:80", path="/"), "https://[::1]/"),
]


@pytest.mark.parametrize("redirect, port, request_fields, location", REDIRECT_CASES)
def test_redirect_location_is_built_as_envoy_builds_it(redirect, port, request_fields, location):
    action = RedirectAction.compile(redirect, port)
    assert action.location(RouteRequest(**request_fields)) == location
    assert action.status == 301


@pytest.mark.parametrize("code, status", [(None, 301), (301, 301), (302, 302), (303, 303), (307, 307), (308, 308)])
def test_redirect_codes(code, status):
    assert RedirectAction.compile(HTTPRedirect(uri="/x", redirect_code=code), 80).status == status


def test_a_redirect_code_envoy_cannot_send_drops_the_rule_with_a_warning(bookinfo):
    vs = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: odd, namespace: default}
        spec:
          hosts: [details]
          http:
          - match: [{uri: {prefix: /old}}]
            redirect: {uri: /new, redirectCode: 300}
          - route: [{destination: {host: details}}]
    """)
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    assert table.warnings == ("default/odd: http[0]: redirect code 300 is not supported (301, 302, 303, 307, 308); "
                              "rule ignored",)
    assert table.route(req("details", "/old")).action.kind == "forward"


def test_direct_response_and_redirect_carry_the_rules_response_headers(bookinfo):
    vs = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: local, namespace: default}
        spec:
          hosts: [details]
          http:
          - match: [{uri: {exact: /health}}]
            directResponse: {status: 503, body: {string: "unavailable"}}
            headers: {response: {set: {retry-after: "5"}}}
          - match: [{uri: {exact: /blob}}]
            directResponse: {status: 200, body: {bytes: "AAEC"}}
          - match: [{uri: {exact: /empty}}]
            directResponse: {status: 204}
          - match: [{uri: {prefix: /old}}]
            redirect: {uri: /new, redirectCode: 308}
            headers: {response: {add: {x-moved: "yes"}}}
    """)
    table = RouteTable.compile(vs, bookinfo, SIDECAR)
    health = table.route(req("details", "/health")).action
    assert (health.kind, health.status, health.body, health.content_type) == ("direct_response", 503, b"unavailable",
                                                                                "text/plain")
    assert health.response_headers.apply([]) == [("retry-after", "5")]
    assert table.route(req("details", "/blob")).action.body == b"\x00\x01\x02"
    empty = table.route(req("details", "/empty")).action
    assert (empty.status, empty.body, empty.content_type) == (204, b"", None)
    moved = table.route(req("details:9080", "/old/x"))
    assert (moved.action.status, moved.action.location(req("details:9080", "/old/x"))) == (308, "http://details:9080/new")
    assert moved.action.response_headers.apply([]) == [("x-moved", "yes")]
    assert table.route(req("details", "/other")) is None


def test_cors_policy_is_compiled_on_the_route(bookinfo):
    vs = yaml("""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: cors, namespace: default}
        spec:
          hosts: [ratings]
          http:
          - corsPolicy: {allowOrigins: [{exact: "https://shop.example"}], allowMethods: [GET]}
            route: [{destination: {host: ratings}}]
    """)
    decision = RouteTable.compile(vs, bookinfo, SIDECAR).route(req("ratings"))
    assert decision.cors.is_origin_allowed("https://shop.example")
    assert decision.retries is None and decision.fault is None
