"""Istio standard metrics and meshfed's proxy metrics, read back by name and labels from
the Prometheus text that ``/metrics`` serves (prometheus_client's own parser)."""

import functools

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import BUCKETS, ProxyMetrics, RequestLabels, Service, TlsRefusal, Workload
from gateway._breaker import Overflow, Resource
from gateway._metrics_labels import HTTP_LABELS, STATIC_LABELS, TCP_LABELS, namespace_of
from gateway._outlier import OutlierConfig, OutlierDetector

PRODUCTPAGE = Workload.from_labels("productpage-v1", "bookinfo", {"app": "productpage", "version": "v1"},
                                   principal="spiffe://east.local/ns/bookinfo/sa/productpage", cluster="east")
REVIEWS_V2 = Workload.from_labels("reviews-v2", "bookinfo", {"app": "reviews", "version": "v2"},
                                  principal="spiffe://west.local/ns/bookinfo/sa/reviews", cluster="west")
REVIEWS = Service.from_host("reviews.bookinfo.svc.cluster.local")
OUT = RequestLabels.outbound(PRODUCTPAGE, REVIEWS_V2, REVIEWS)
ENVOY_LE = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
            "60000", "300000", "600000", "1800000", "3600000", "+Inf"]


def families(m: ProxyMetrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


@functools.lru_cache(maxsize=8)
def parse(text: bytes) -> tuple:
    return tuple(s for f in text_string_to_metric_families(text.decode()) for s in f.samples)


def samples(m: ProxyMetrics, name: str, **labels: str) -> list:
    """Samples scraped from ``render()`` (parsed once per distinct scrape)."""
    return [s for s in parse(m.render()) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def only(m: ProxyMetrics, name: str, **labels: str) -> float:
    found = samples(m, name, **labels)
    assert len(found) == 1, found
    return found[0].value


# -- names, types, labels, buckets --------------------------------------------------
def test_istio_metric_names_types_and_label_sets_are_istios() -> None:
    m = ProxyMetrics()
    m.http(OUT).record(code=200, duration_ms=1.0, request_bytes=10, response_bytes=10)
    m.tcp(OUT).opened()
    fams = families(m)
    expected = {"istio_requests": "counter", "istio_request_duration_milliseconds": "histogram",
                "istio_request_bytes": "histogram", "istio_response_bytes": "histogram",
                "istio_tcp_sent_bytes": "counter", "istio_tcp_received_bytes": "counter",
                "istio_tcp_connections_opened": "counter", "istio_tcp_connections_closed": "counter"}
    assert {n: fams[n].type for n in expected} == expected
    assert set(fams["istio_requests"].samples[0].labels) == set(HTTP_LABELS)
    assert set(fams["istio_tcp_sent_bytes"].samples[0].labels) == set(TCP_LABELS)
    assert len(HTTP_LABELS) == 25 and {"source_cluster", "destination_cluster"} <= set(STATIC_LABELS)
    assert [s.name for s in fams["istio_requests"].samples] == ["istio_requests_total"]


@pytest.mark.parametrize("name", ["istio_request_duration_milliseconds", "istio_request_bytes",
                                  "istio_response_bytes"])
def test_histograms_use_envoys_default_buckets(name: str) -> None:
    m = ProxyMetrics()
    m.http(OUT).record(code=200, duration_ms=1.0, request_bytes=10, response_bytes=10)
    assert [s.labels["le"] for s in samples(m, f"{name}_bucket")] == ENVOY_LE
    assert BUCKETS[0] == 0.5 and BUCKETS[-1] == 3600000


def test_no_created_series_and_nothing_in_the_global_registry() -> None:
    m = ProxyMetrics()
    m.http(OUT).record(code=200, duration_ms=1.0, request_bytes=10, response_bytes=10)
    assert b"_created" not in m.render()
    assert prometheus_client.REGISTRY.get_sample_value("istio_requests_total") is None


def test_metrics_join_a_registry_the_proxy_already_has() -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Gauge("meshfed_other", "another collector", registry=registry).set(3)
    m = ProxyMetrics(registry)
    m.http(OUT).record(code=200, duration_ms=1.0, request_bytes=1, response_bytes=1)
    assert (m.value("meshfed_other"), m.value("istio_requests_total")) == (3, 1)


def test_two_proxies_in_one_process_count_apart() -> None:
    a, b = ProxyMetrics(), ProxyMetrics()
    a.http(OUT).record(code=200, duration_ms=1.0, request_bytes=1, response_bytes=1)
    assert (a.value("istio_requests_total"), b.value("istio_requests_total")) == (1, 0)


# -- label values ---------------------------------------------------------------
def test_outbound_labels_name_local_as_source_and_peer_as_destination() -> None:
    assert OUT.as_dict() == {
        "reporter": "source", "source_workload": "productpage-v1", "source_workload_namespace": "bookinfo",
        "source_principal": "spiffe://east.local/ns/bookinfo/sa/productpage", "source_app": "productpage",
        "source_version": "v1", "source_canonical_service": "productpage", "source_canonical_revision": "v1",
        "source_cluster": "east", "destination_workload": "reviews-v2", "destination_workload_namespace": "bookinfo",
        "destination_principal": "spiffe://west.local/ns/bookinfo/sa/reviews", "destination_app": "reviews",
        "destination_version": "v2", "destination_service": "reviews.bookinfo.svc.cluster.local",
        "destination_service_name": "reviews", "destination_service_namespace": "bookinfo",
        "destination_canonical_service": "reviews", "destination_canonical_revision": "v2",
        "destination_cluster": "west", "connection_security_policy": "unknown"}


@pytest.mark.parametrize(("mutual_tls", "policy"), [(True, "mutual_tls"), (False, "none")])
def test_inbound_labels_report_destination_and_the_security_policy(mutual_tls: bool, policy: str) -> None:
    caller = Workload.from_principal("spiffe://east.local/ns/bookinfo/sa/productpage", cluster="east")
    labels = RequestLabels.inbound(REVIEWS_V2, caller, REVIEWS, mutual_tls=mutual_tls).as_dict()
    assert (labels["reporter"], labels["connection_security_policy"]) == ("destination", policy)
    assert (labels["source_workload"], labels["source_workload_namespace"], labels["source_cluster"]) == \
        ("unknown", "bookinfo", "east")
    assert (labels["destination_workload"], labels["destination_cluster"]) == ("reviews-v2", "west")


@pytest.mark.parametrize(("labels", "canonical"), [
    ({"service.istio.io/canonical-name": "rev", "service.istio.io/canonical-revision": "r9",
      "app": "reviews", "version": "v2"}, ("rev", "r9")),
    ({"app.kubernetes.io/name": "k8s-name", "app.kubernetes.io/version": "1.2", "app": "reviews"}, ("k8s-name", "1.2")),
    ({"app": "reviews", "version": "v2"}, ("reviews", "v2")),
    ({}, ("reviews-v2", "latest")),
])
def test_canonical_service_and_revision_default_as_istios_injector(labels: dict, canonical: tuple) -> None:
    w = Workload.from_labels("reviews-v2", "bookinfo", labels)
    assert (w.canonical_service, w.canonical_revision) == canonical


@pytest.mark.parametrize(("principal", "namespace"), [
    ("spiffe://cluster.local/ns/bookinfo/sa/reviews", "bookinfo"),
    ("spiffe://cluster.local/ns/default", "default"),
    ("spiffe://cluster.local/sa/x", "unknown"),
    ("", "unknown"),
])
def test_peer_namespace_comes_from_its_spiffe_id(principal: str, namespace: str) -> None:
    assert namespace_of(principal) == namespace


@pytest.mark.parametrize(("host", "name", "namespace"), [
    ("reviews.bookinfo.svc.cluster.local", "reviews", "bookinfo"),
    ("reviews.bookinfo.svc.clusterset.local", "reviews", "bookinfo"),
    ("api.example.com", "api.example.com", "unknown"),
])
def test_service_name_and_namespace_from_host(host: str, name: str, namespace: str) -> None:
    assert (Service.from_host(host).name, Service.from_host(host).namespace) == (name, namespace)


def test_request_labels_refuse_a_wrong_number_of_values() -> None:
    with pytest.raises(ValueError) as e:
        RequestLabels(("source",), "unknown")
    assert str(e.value) == "RequestLabels needs 20 values, got 1"


# -- recording ------------------------------------------------------------------
def test_requests_are_counted_by_code_flags_and_protocol() -> None:
    m = ProxyMetrics()
    s = m.http(OUT)
    for _ in range(3):
        s.record(code=200, duration_ms=2.0, request_bytes=100, response_bytes=200)
    s.record(code=503, duration_ms=0.1, request_bytes=100, response_bytes=90, flags="UO")
    s.record(code=200, duration_ms=4.0, request_bytes=100, response_bytes=90, grpc_status=14)
    s.record(code=0, duration_ms=4.0, request_bytes=100, response_bytes=0, flags="DC", grpc=True)
    assert only(m, "istio_requests_total", response_code="200", request_protocol="http",
                response_flags="-", grpc_response_status="") == 3
    assert only(m, "istio_requests_total", response_code="503", response_flags="UO") == 1
    assert only(m, "istio_requests_total", request_protocol="grpc", grpc_response_status="14") == 1
    assert only(m, "istio_requests_total", response_code="0", request_protocol="grpc",
                grpc_response_status="", response_flags="DC") == 1
    assert m.value("istio_requests_total", destination_workload="reviews-v2", source_cluster="east") == 6


def test_histogram_buckets_are_cumulative_and_inclusive_of_their_bound() -> None:
    m = ProxyMetrics()
    for ms in (0.2, 5.0, 5.1, 7000.0):
        m.http(OUT).record(code=200, duration_ms=ms, request_bytes=1, response_bytes=100000)
    def bucket(le: str) -> float:
        return only(m, "istio_request_duration_milliseconds_bucket", le=le)
    assert [bucket(le) for le in ("0.5", "1", "5", "10", "5000", "10000", "+Inf")] == [1, 1, 2, 3, 3, 4, 4]
    assert only(m, "istio_request_duration_milliseconds_sum") == pytest.approx(7010.3)
    assert only(m, "istio_request_duration_milliseconds_count") == 4
    assert only(m, "istio_response_bytes_bucket", le="300000") == 4
    assert only(m, "istio_response_bytes_bucket", le="60000") == 0
    assert only(m, "istio_request_bytes_sum") == 4


def test_tcp_counters_follow_one_connection() -> None:
    m = ProxyMetrics()
    t = m.tcp(OUT)
    t.opened()
    t.transferred(sent=100, received=7)
    t.transferred(sent=5, received=0)
    t.closed()
    t.opened("UF"), t.closed("UF")
    base = {"request_protocol": "tcp", "response_flags": "-"}
    assert [only(m, n, **base) for n in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                                         "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")] == \
        [1, 1, 105, 7]
    assert only(m, "istio_tcp_connections_opened_total", response_flags="UF") == 1


def test_equal_label_sets_share_one_series() -> None:
    m = ProxyMetrics()
    again = RequestLabels.outbound(PRODUCTPAGE, REVIEWS_V2, Service.from_host("reviews.bookinfo.svc.cluster.local"))
    assert m.http(OUT) is m.http(again) and m.tcp(OUT) is m.tcp(again)
    assert repr(m) == "<ProxyMetrics 1 http series, 1 tcp series>"


# -- meshfed's own metrics ------------------------------------------------------------
def test_outlier_ejections_are_counted_detected_and_enforced_apart() -> None:
    m = ProxyMetrics()
    d = OutlierDetector(OutlierConfig(), cluster="reviews", hosts=[f"10.0.0.{i}:9080" for i in range(10)], sink=m)
    for _ in range(5):  # five 503s: gateway-failure trigger (Envoy enforces 0%) and 5xx trigger (100%)
        d.record_http_status("10.0.0.0:9080", 503, 0.0)
    detected = "meshfed_outlier_ejections_detected_total"
    enforced = "meshfed_outlier_ejections_enforced_total"
    assert only(m, detected, cluster="reviews", type="consecutive_gateway_failure") == 1
    assert samples(m, enforced, type="consecutive_gateway_failure") == []
    assert only(m, detected, cluster="reviews", type="consecutive_5xx") == 1
    assert only(m, enforced, cluster="reviews", type="consecutive_5xx") == 1
    assert only(m, "meshfed_outlier_ejections_active", cluster="reviews") == 1
    d.sweep(1000.0)
    assert only(m, "meshfed_outlier_ejections_active", cluster="reviews") == 0


def test_breaker_overflow_config_and_tls_refusals_are_counted() -> None:
    m = ProxyMetrics()
    m.record_overflow("outbound|9080||reviews", Overflow(Resource.PENDING_REQUESTS))
    m.record_config(applied=True), m.record_config(applied=True), m.record_config(applied=False)
    m.record_tls_refusal(TlsRefusal.NO_CLIENT_CERTIFICATE)
    m.record_tls_refusal(TlsRefusal.UNTRUSTED_CHAIN, inbound=False)
    assert only(m, "meshfed_upstream_overflow_total", cluster="outbound|9080||reviews", resource="pending") == 1
    assert (only(m, "meshfed_config_applied_total"), only(m, "meshfed_config_refused_total")) == (2, 1)
    assert only(m, "meshfed_tls_handshake_refused_total", direction="inbound", reason="no_client_certificate") == 1
    assert only(m, "meshfed_tls_handshake_refused_total", direction="outbound", reason="untrusted_chain") == 1


def test_bound_stats_and_scrape_time_sources() -> None:
    m = ProxyMetrics()
    active = m.stat("meshfed_upstream_cx_active").labels("reviews")
    active.inc(), active.inc(), active.dec()
    pending = [4]
    m.stat("meshfed_upstream_rq_pending_active").read_at_scrape(lambda: pending[0], "reviews")
    assert families(m)["meshfed_upstream_cx_active"].type == "gauge"
    assert only(m, "meshfed_upstream_cx_active", cluster="reviews") == 1
    assert only(m, "meshfed_upstream_rq_pending_active", cluster="reviews") == 4
    pending[0] = 0
    assert only(m, "meshfed_upstream_rq_pending_active", cluster="reviews") == 0
    assert m.stat("meshfed_upstream_cx_active").labels("reviews") is active


def test_unknown_stat_and_wrong_labels_fail_at_bind_time() -> None:
    m = ProxyMetrics()
    with pytest.raises(KeyError) as e:
        m.stat("meshfed_upstream_cx_totl")
    assert "no proxy metric 'meshfed_upstream_cx_totl'; known: meshfed_access_log_dropped_total," in str(e.value)
    with pytest.raises(ValueError) as v:
        m.stat("meshfed_upstream_overflow_total").labels("reviews")
    assert str(v.value) == "meshfed_upstream_overflow_total takes labels ('cluster', 'resource'), got ('reviews',)"
