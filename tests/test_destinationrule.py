"""DestinationRule: subsets and traffic policy decoded with Istio's names and defaults,
and istioctl's checks (locality, hashing, pools, outlier detection, TLS)."""

from __future__ import annotations

import textwrap

import pytest

from topology import DestinationRule, Duration, load_text
from topology._load_balancer import SimpleLB
from topology._traffic_policy import ClientTLSMode, H2UpgradePolicy


def load(spec: str):
    text = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: t\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    return load_text(text, "t.yaml")


def findings(spec: str) -> list[str]:
    return [f"{d.path}: {'warning: ' if not d.is_error else ''}{d.message}" for d in load(spec).diagnostics]


def rule_of(spec: str) -> DestinationRule:
    result = load(spec)
    assert result.errors == [], result.errors
    return result.resources[0].spec


def test_traffic_policy_decodes_to_typed_objects() -> None:
    dr = rule_of("""
        host: helloworld.sample.svc.cluster.local
        trafficPolicy:
          connectionPool:
            tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}
            http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, h2UpgradePolicy: UPGRADE}
          loadBalancer:
            simple: ROUND_ROBIN
            localityLbSetting:
              enabled: true
              failover: [{from: region1, to: region2}]
          outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m}
          tls: {mode: ISTIO_MUTUAL, sni: helloworld}
        subsets:
        - {name: v1, labels: {version: v1}}
        - name: v2
          labels: {version: v2}
          trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}
        """)

    policy = dr.traffic_policy
    assert policy.connection_pool.tcp.connect_timeout == Duration.parse("30ms")
    assert policy.connection_pool.http.h2_upgrade_policy is H2UpgradePolicy.UPGRADE
    assert policy.load_balancer.simple is SimpleLB.ROUND_ROBIN
    failover = policy.load_balancer.locality_lb_setting.failover[0]
    assert (failover.from_, failover.to) == ("region1", "region2")
    assert policy.outlier_detection.consecutive_5xx_errors == 1
    assert policy.outlier_detection.base_ejection_time.seconds == 60
    assert policy.tls.mode is ClientTLSMode.ISTIO_MUTUAL
    assert dr.subset("v2").traffic_policy.load_balancer.consistent_hash.http_cookie.ttl.nanos == 0
    assert dr.subset("v3") is None


def test_unset_policy_fields_keep_istio_defaults() -> None:
    dr = rule_of("host: r\ntrafficPolicy:\n  outlierDetection: {}\n  tls: {}\n")

    od = dr.traffic_policy.outlier_detection
    assert od.consecutive_5xx_errors is None and od.interval is None and od.max_ejection_percent is None
    assert od.split_external_local_origin_errors is False
    assert dr.traffic_policy.tls.mode is ClientTLSMode.DISABLE
    assert dr.subsets == () and dr.export_to == () and dr.workload_selector is None


def test_distribute_weights_per_locality_decode() -> None:
    dr = rule_of("""
        host: r
        trafficPolicy:
          loadBalancer:
            localityLbSetting:
              distribute:
              - from: region1/zone1/*
                to: {"region1/zone1/*": 70, "region1/zone2/*": 20, "region3/zone4/*": 10}
          outlierDetection: {consecutive5xxErrors: 100}
        """)

    dist = dr.traffic_policy.load_balancer.locality_lb_setting.distribute[0]
    assert dist.from_ == "region1/zone1/*" and sum(dist.to.values()) == 100


LB = "host: r\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer:\n"

ERRORS = [
    ("duplicate_subset_names",
     "host: r\nsubsets:\n- {name: v1, labels: {version: v1}}\n- {name: v1, labels: {version: v2}}\n",
     ["spec.subsets[1].name: duplicate subset name 'v1'; subsets[0] has the same name"]),
    ("invalid_subset_name",
     "host: r\nsubsets:\n- {name: V_1}\n",
     ["spec.subsets[0].name: subset name must be a DNS-1123 label (letters, digits, '-'); found string 'V_1'"]),
    ("invalid_subset_label",
     "host: r\nsubsets:\n- {name: v1, labels: {'bad key!': v1}}\n",
     ["spec.subsets[0].labels.bad key!: label key 'bad key!' is not a valid label name "
      "(alphanumerics, '-', '_', '.', at most 63)"]),
    ("distribute_and_failover",
     LB + "    localityLbSetting:\n      distribute: [{from: r1/*, to: {r1/*: 100}}]\n"
          "      failover: [{from: r1, to: r2}]\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.failover: only one of distribute, failover and "
      "failoverPriority may be set; found distribute and failover"]),
    ("failover_and_failover_priority",
     LB + "    localityLbSetting:\n      failover: [{from: r1, to: r2}]\n"
          "      failoverPriority: [topology.istio.io/network]\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority: only one of distribute, failover "
      "and failoverPriority may be set; found failover and failoverPriority"]),
    ("distribute_weights_not_100",
     LB + "    localityLbSetting:\n      distribute:\n      - from: r1/z1/*\n        to: {r1/z1/*: 70, r1/z2/*: 20}\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights must sum to 100; "
      "found 90 (70 + 20)"]),
    ("distribute_weight_zero",
     LB + "    localityLbSetting:\n      distribute:\n      - from: r1/z1/*\n        to: {r1/z1/*: 100, r1/z2/*: 0}\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to.r1/z2/*: locality weight must be "
      "between 1 and 100; found integer 0"]),
    ("distribute_from_shadowed_by_earlier_one",
     LB + "    localityLbSetting:\n      distribute:\n      - {from: 'r1/*', to: {r1/*: 100}}\n"
          "      - {from: 'r1/z1/*', to: {r1/*: 100}}\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[1].from: locality 'r1/z1/*' is already "
      "covered by 'r1' listed before it"]),
    ("wildcard_inside_locality",
     LB + "    localityLbSetting:\n      distribute: [{from: 'r1/*/z', to: {r1/*: 100}}]\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from: a locality may only end in a "
      "single '*'; found string 'r1/*/z'"]),
    ("failover_to_same_region_and_to_a_zone",
     LB + "    localityLbSetting:\n      failover: [{from: r1, to: r1}, {from: r1/z1, to: r2}]\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to: must differ from 'from'; "
      "found string 'r1' for both",
      "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1].from: failover takes a region only, "
      "not a zone; found string 'r1/z1'"]),
    ("simple_and_consistent_hash",
     LB + "    simple: RANDOM\n    consistentHash: {useSourceIp: true}\n",
     ["spec.trafficPolicy.loadBalancer.consistentHash: only one of simple, consistentHash may be set; "
      "found simple and consistentHash"]),
    ("two_hash_keys",
     LB + "    consistentHash: {httpHeaderName: x-user, httpQueryParameterName: user}\n",
     ["spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName: only one of httpHeaderName, "
      "httpCookie, useSourceIp, httpQueryParameterName may be set; found httpHeaderName and httpQueryParameterName"]),
    ("maglev_table_not_prime",
     LB + "    consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}\n",
     ["spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: must be a prime number; found integer 65536"]),
    ("cookie_without_name",
     LB + "    consistentHash: {httpCookie: {ttl: 10s}}\n",
     ["spec.trafficPolicy.loadBalancer.consistentHash.httpCookie: an httpCookie needs a name"]),
    ("unknown_simple_algorithm",
     LB + "    simple: FASTEST\n",
     ["spec.trafficPolicy.loadBalancer.simple: must be one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, "
      "ROUND_ROBIN, LEAST_REQUEST; found string 'FASTEST'"]),
    ("warmup_aggression_below_one",
     LB + "    warmup: {duration: 10s, aggression: 0.5}\n",
     ["spec.trafficPolicy.loadBalancer.warmup.aggression: must be at least 1; found number 0.5"]),
    ("empty_connection_pool",
     "host: r\ntrafficPolicy:\n  connectionPool: {}\n",
     ["spec.trafficPolicy.connectionPool: connectionPool needs tcp or http settings"]),
    ("negative_limits_and_zero_connect_timeout",
     "host: r\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: -1, connectTimeout: 0s}\n"
     "    http: {http2MaxRequests: -5}\n",
     ["spec.trafficPolicy.connectionPool.tcp.maxConnections: must not be negative; found integer -1",
      "spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be at least 1ms; found '0s'",
      "spec.trafficPolicy.connectionPool.http.http2MaxRequests: must not be negative; found integer -5"]),
    ("client_protocol_with_upgrade",
     "host: r\ntrafficPolicy:\n  connectionPool:\n    http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}\n",
     ["spec.trafficPolicy.connectionPool.http.useClientProtocol: cannot be true when h2UpgradePolicy is UPGRADE"]),
    ("outlier_percent_and_local_origin",
     "host: r\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 150, consecutiveLocalOriginFailures: 3}\n",
     ["spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: has no effect unless "
      "splitExternalLocalOriginErrors is true",
      "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100; found integer 150"]),
    ("outlier_interval_bad_duration",
     "host: r\ntrafficPolicy:\n  outlierDetection: {interval: 5x}\n",
     ["spec.trafficPolicy.outlierDetection.interval: invalid duration '5x': expected a number followed by a "
      "unit (h, m, s, ms, us, ns), as in '5s' or '1m30s'"]),
    ("mutual_tls_without_certificates",
     "host: r\ntrafficPolicy:\n  tls: {mode: MUTUAL}\n",
     ["spec.trafficPolicy.tls: MUTUAL TLS needs clientCertificate (or credentialName)",
      "spec.trafficPolicy.tls: MUTUAL TLS needs privateKey (or credentialName)"]),
    ("credential_name_with_files",
     "host: r\ntrafficPolicy:\n  tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}\n",
     ["spec.trafficPolicy.tls.credentialName: cannot be combined with clientCertificate, privateKey, "
      "caCertificates or caCrl"]),
    ("tunnel_and_proxy_protocol",
     "host: r\ntrafficPolicy:\n  tunnel: {protocol: GET, targetHost: x.example.com, targetPort: 8080}\n"
     "  proxyProtocol: {version: V2}\n",
     ["spec.trafficPolicy.tunnel.protocol: must be 'CONNECT' or 'POST'; found string 'GET'",
      "spec.trafficPolicy.proxyProtocol: tunnel and proxyProtocol cannot be set together"]),
    ("empty_traffic_policy",
     "host: r\ntrafficPolicy: {}\n",
     ["spec.trafficPolicy: a traffic policy needs at least one field"]),
    ("port_level_policy_without_port",
     "host: r\ntrafficPolicy:\n  portLevelSettings:\n  - tls: {mode: SIMPLE}\n",
     ["spec.trafficPolicy.portLevelSettings[0]: a port-level policy needs a port"]),
    ("port_level_port_out_of_range",
     "host: r\ntrafficPolicy:\n  portLevelSettings:\n  - {port: {number: 0}, tls: {mode: SIMPLE}}\n",
     ["spec.trafficPolicy.portLevelSettings[0].port.number: port number must be in the range 1..65535; "
      "found integer 0"]),
    ("missing_host",
     "subsets: [{name: v1}]\n",
     ["spec: missing required field 'host'"]),
    ("wildcard_in_the_middle",
     "host: a.*.example.com\n",
     ["spec.host: invalid host 'a.*.example.com': label '*' is not a DNS-1123 label (letters, digits, '-', "
      "at most 63)"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_destination_rule_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert findings(spec) == expected


WARNINGS = [
    ("failover_without_outlier_detection",
     "host: r\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting: {failover: [{from: r1, to: r2}]}\n",
     ["spec.trafficPolicy.loadBalancer.localityLbSetting: warning: locality failover does nothing without "
      "outlierDetection in the same policy; add outlierDetection so unhealthy endpoints are detected"]),
    ("deprecated_consecutive_errors",
     "host: r\ntrafficPolicy:\n  outlierDetection: {consecutiveErrors: 5}\n",
     ["spec.trafficPolicy.outlierDetection.consecutiveErrors: warning: 'consecutiveErrors' is deprecated; "
      "use consecutive5xxErrors or consecutiveGatewayErrors"]),
    ("empty_workload_selector",
     "host: r\nworkloadSelector: {matchLabels: {}}\n",
     ["spec.workloadSelector.matchLabels: warning: workload selector without labels selects every workload "
      "in the namespace"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in WARNINGS], ids=[c[0] for c in WARNINGS])
def test_questionable_destination_rule_loads_with_a_warning(spec: str, expected: list[str]) -> None:
    result = load(spec)

    assert result.errors == [] and len(result.resources) == 1
    assert findings(spec) == expected


def test_duplicate_subset_error_points_at_the_second_name() -> None:
    result = load("host: r\nsubsets:\n- name: v1\n- name: v2\n- name: v1\n")

    assert [str(d) for d in result.errors] == [
        "t.yaml:10: spec.subsets[2].name: duplicate subset name 'v1'; subsets[0] has the same name"]
