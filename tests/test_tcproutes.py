"""TLS and TCP routes: host, then TLS rules by SNI, then TCP rules, then the default."""

import math
import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from gateway._tcproutes import ConnectionInfo, TcpRouteTable
from gateway._vsselect import ClientWorkload
from topology import Service, ServicePort, load_paths, load_text
from topology._registry import RegistryBuilder

TCP_ECHO = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio" / "tcp-echo"
SAMPLES = 20_000
INGRESS = ClientWorkload("istio-system", {"istio": "ingressgateway"}, gateways=("default/tcp-echo-gateway",))


def registry(*services: Service):
    b = RegistryBuilder()
    for s in services:
        b.add_service(s)
    return b.build()


ECHO = registry(Service("tcp-echo.default.svc.cluster.local", "default", "tcp-echo",
                        (ServicePort("tcp", 9000, "TCP"), ServicePort("tcp-other", 9001, "TCP"))))


def yaml(text: str):
    result = load_text(textwrap.dedent(text))
    assert result.errors == []
    return result.resources


def test_tcp_echo_all_v1_sends_every_connection_to_v1():
    table = TcpRouteTable.compile(load_paths([TCP_ECHO / "tcp-echo-all-v1.yaml"]).resources, ECHO, INGRESS)
    decision = table.route(ConnectionInfo(port=31400))
    d = decision.pick(random.Random(0))
    assert (d.host, d.subset, d.port, decision.source, decision.name) == (
        "tcp-echo.default.svc.cluster.local", "v1", 9000, "default/tcp-echo", "tcp[0]")
    assert table.route(ConnectionInfo(port=31401)) is None  # the rule is for the gateway's port 31400


def test_tcp_echo_20_v2_splits_within_tolerance():
    table = TcpRouteTable.compile(load_paths([TCP_ECHO / "tcp-echo-20-v2.yaml"]).resources, ECHO, INGRESS)
    rng = random.Random(11)
    decision = table.route(ConnectionInfo(port=31400, sni=None))
    seen = Counter(decision.pick(rng).subset for _ in range(SAMPLES))
    assert abs(seen["v2"] / SAMPLES - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / SAMPLES)
    assert set(seen) == {"v1", "v2"}


def test_gateway_rules_do_not_configure_sidecars():
    table = TcpRouteTable.compile(load_paths([TCP_ECHO / "tcp-echo-20-v2.yaml"]).resources, ECHO,
                                  ClientWorkload("default"))
    decision = table.route(ConnectionInfo(port=9001, host="tcp-echo"))
    assert decision.kind == "default"
    d = decision.pick(random.Random(0))
    assert (d.host, d.subset, d.port_for(9001)) == ("tcp-echo.default.svc.cluster.local", None, 9001)
    assert table.route(ConnectionInfo(port=9000, host="unknown.example")) is None


SIDECAR_RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: data}
spec:
  hosts: [db.data.svc.cluster.local]
  tls:
  - match: [{sniHosts: [db.data.svc.cluster.local], port: 5433}]
    route: [{destination: {host: db, subset: tls}}]
  tcp:
  - match: [{port: 5432, destinationSubnets: [10.0.0.0/8, 192.0.2.7]}]
    route: [{destination: {host: db, subset: near, port: {number: 5432}}}]
  - match: [{sourceLabels: {app: batch}}]
    route:
    - destination: {host: db, subset: replica}
      weight: 100
    - destination: {host: db, subset: unused}
      weight: 0
  - match: [{sourceNamespace: ops}]
    route: [{destination: {host: db, subset: ops}}]
"""
DB = registry(Service("db.data.svc.cluster.local", "data", "db",
                      (ServicePort("tcp", 5432, "TCP"), ServicePort("tls", 5433, "TLS"))))


@pytest.mark.parametrize("client, conn, kind, subset", [
    (ClientWorkload("data"), ConnectionInfo(5432, "db", "10.1.2.3"), "tcp", "near"),
    (ClientWorkload("data"), ConnectionInfo(5432, "db.data", "192.0.2.7"), "tcp", "near"),
    (ClientWorkload("data"), ConnectionInfo(5432, "db", "192.0.2.8"), "default", None),
    (ClientWorkload("data"), ConnectionInfo(5432, "db", "not-an-ip"), "default", None),
    (ClientWorkload("data"), ConnectionInfo(5433, "db", sni="db.data.svc.cluster.local"), "tls", "tls"),
    (ClientWorkload("data"), ConnectionInfo(5433, "db", sni="other.example"), "default", None),
    (ClientWorkload("data", {"app": "batch"}), ConnectionInfo(5433, "db", sni="other.example"), "tcp", "replica"),
    (ClientWorkload("data", {"app": "batch"}), ConnectionInfo(5432, "db", "10.0.0.1"), "tcp", "near"),
    (ClientWorkload("ops"), ConnectionInfo(5432, "db.data.svc.cluster.local"), "tcp", "ops"),
    (ClientWorkload("ops"), ConnectionInfo(5432, "db"), None, None),  # `db` is no name from namespace ops
])
def test_sidecar_rules_first_match_wins(client, conn, kind, subset):
    decision = TcpRouteTable.compile(yaml(SIDECAR_RULES), DB, client).route(conn)
    assert (decision.kind if decision else None) == kind
    if decision:
        assert decision.pick(random.Random(0)).subset == subset


def test_zero_weight_destinations_are_dropped():
    table = TcpRouteTable.compile(yaml(SIDECAR_RULES), DB, ClientWorkload("data", {"app": "batch"}))
    decision = table.route(ConnectionInfo(5432, "db"))
    assert [d.subset for d in decision.destinations.destinations] == ["replica"]


def test_a_table_without_labels_checks_the_source_per_connection():
    table = TcpRouteTable.compile(yaml(SIDECAR_RULES), DB, ClientWorkload("data", None))
    assert table.route(ConnectionInfo(5432, "db", source_labels={"app": "batch"})).pick(random.Random(0)).subset == \
        "replica"
    assert table.route(ConnectionInfo(5432, "db.data", source_namespace="ops")).pick(random.Random(0)).subset == "ops"
    assert table.route(ConnectionInfo(5432, "db", source_namespace="data")).kind == "default"


EGRESS_TLS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wiki, namespace: default}
spec:
  hosts: ['*.wikipedia.org']
  tls:
  - match: [{sniHosts: [en.wikipedia.org]}]
    route: [{destination: {host: en.wikipedia.org, port: {number: 443}}}]
  - match: [{sniHosts: ['*.wikipedia.org'], port: 443}]
    route: [{destination: {host: www.wikipedia.org}}]
"""


@pytest.mark.parametrize("sni, port, host", [
    ("en.wikipedia.org", 443, "en.wikipedia.org"),
    ("de.wikipedia.org", 443, "www.wikipedia.org"),
    ("a.b.wikipedia.org", 443, "www.wikipedia.org"),
    ("de.wikipedia.org", 8443, None),
    ("wikipedia.org", 443, None),  # the wildcard needs a label in front
    (None, 443, None),  # plain TCP: no TLS rule applies, and no default outside the registry
])
def test_tls_rules_route_by_sni_with_wildcards(sni, port, host):
    table = TcpRouteTable.compile(yaml(EGRESS_TLS), DB, ClientWorkload("default"))
    decision = table.route(ConnectionInfo(port, sni=sni))
    assert (decision.pick(random.Random(0)).host if decision else None) == host


def test_repr_counts_hosts_and_rules():
    table = TcpRouteTable.compile(yaml(SIDECAR_RULES), DB, ClientWorkload("data"))
    assert repr(table) == "<TcpRouteTable mesh in data: 1 hosts, 2 rules>"  # the batch and ops rules are not for it
    decision = table.route(ConnectionInfo(5432, "db", "10.0.0.1"))
    assert repr(decision) == ("<L4RouteDecision data/db tcp[0]: port 5432 and destination in ['10.0.0.0/8', "
                              "'192.0.2.7'] -> <WeightedDestinations outbound|5432|near|db.data.svc.cluster.local=100>>")
