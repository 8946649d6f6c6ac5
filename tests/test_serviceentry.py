"""ServiceEntry (with WorkloadEntry endpoints), the WorkloadEntry and Sidecar kinds:
typed decoding with Istio's defaults and istioctl's resolution-specific checks."""

from __future__ import annotations

import textwrap

import pytest

from topology import ServiceEntry, load_text
from topology._serviceentry import Location, Resolution
from topology._sidecar import OutboundTrafficPolicyMode


def load(spec: str, kind: str = "ServiceEntry"):
    text = (f"apiVersion: networking.istio.io/v1beta1\nkind: {kind}\nmetadata:\n  name: se\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    return load_text(text, "t.yaml")


def findings(spec: str, kind: str = "ServiceEntry") -> list[str]:
    return [f"{d.path}: {'warning: ' if not d.is_error else ''}{d.message}" for d in load(spec, kind).diagnostics]


def entry_of(spec: str) -> ServiceEntry:
    result = load(spec)
    assert result.errors == [], result.errors
    return result.resources[0].spec


def test_static_entry_with_located_weighted_endpoints_decodes() -> None:
    se = entry_of("""
        hosts: [reviews.bookinfo.svc.cluster.local]
        location: MESH_INTERNAL
        resolution: STATIC
        ports:
        - {number: 9080, name: http, protocol: HTTP, targetPort: 19080}
        endpoints:
        - address: 127.1.2.10
          ports: {http: 9090}
          labels: {app: reviews, version: v3}
          network: west
          locality: us-west/us-west-1a
          weight: 3
          serviceAccount: bookinfo-reviews
        """)

    ep = se.endpoints[0]
    assert se.location is Location.MESH_INTERNAL and se.resolution is Resolution.STATIC
    assert se.ports[0].target_port == 19080
    assert (ep.address, ep.ports, ep.network, ep.locality, ep.weight, ep.service_account) == (
        "127.1.2.10", {"http": 9090}, "west", "us-west/us-west-1a", 3, "bookinfo-reviews")


def test_unset_fields_keep_istio_defaults() -> None:
    se = entry_of("hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]\n")

    assert se.location is Location.MESH_EXTERNAL and se.resolution is Resolution.NONE
    assert se.endpoints == () and se.addresses == () and se.export_to == ()


HTTPS = "ports: [{number: 443, name: https, protocol: HTTPS}]\n"

ERRORS = [
    ("no_hosts",
     HTTPS,
     ["spec.hosts: a ServiceEntry needs at least one host"]),
    ("star_host",
     "hosts: ['*']\n" + HTTPS,
     ["spec.hosts[0]: invalid host '*': '*' would match every host"]),
    ("cidr_with_dns_resolution",
     "hosts: [db.example.com]\naddresses: [10.0.0.0/24]\nresolution: DNS\n" + HTTPS,
     ["spec.addresses[0]: CIDR addresses need NONE or STATIC resolution; found DNS with '10.0.0.0/24'"]),
    ("invalid_address",
     "hosts: [db.example.com]\naddresses: [10.0.0.300]\n" + HTTPS,
     ["spec.addresses[0]: must be an IP address or a CIDR block; found string '10.0.0.300'"]),
    ("duplicate_ports_and_bad_protocol",
     "hosts: [db.example.com]\nports:\n- {number: 5432, name: db, protocol: TCP}\n"
     "- {number: 5432, name: db, protocol: POSTGRES}\n",
     ["spec.ports[1].name: duplicate port name 'db'",
      "spec.ports[1].number: duplicate port number 5432",
      "spec.ports[1].protocol: unsupported protocol; found string 'POSTGRES'"]),
    ("port_without_name_or_number",
     "hosts: [db.example.com]\nports:\n- {protocol: TCP}\n",
     ["spec.ports[0]: a port needs a name that is a DNS-1123 label; found null",
      "spec.ports[0]: missing required field 'number'"]),
    ("endpoints_with_none_resolution",
     "hosts: [db.example.com]\n" + HTTPS + "endpoints: [{address: 10.0.0.1}]\n",
     ["spec.endpoints: NONE resolution takes no endpoints; use STATIC or DNS resolution"]),
    ("static_endpoint_with_a_dns_name",
     "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS + "endpoints: [{address: db1.example.com}]\n",
     ["spec.endpoints[0].address: STATIC resolution needs IP addresses; found string 'db1.example.com'"]),
    ("endpoint_port_not_in_the_entry",
     "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS + "endpoints: [{address: 10.0.0.1, ports: {grpc: 9000}}]\n",
     ["spec.endpoints[0].ports.grpc: port 'grpc' is not a port of the ServiceEntry"]),
    ("dns_round_robin_with_two_endpoints",
     "hosts: [db.example.com]\nresolution: DNS_ROUND_ROBIN\n" + HTTPS
     + "endpoints: [{address: a.example.com}, {address: b.example.com}]\n",
     ["spec.endpoints: DNS_ROUND_ROBIN takes at most one endpoint; found 2"]),
    ("dns_without_endpoints_needs_fqdn_hosts",
     "hosts: ['*.example.com']\nresolution: DNS\n" + HTTPS,
     ["spec.hosts[0]: DNS resolution without endpoints needs fully qualified hosts; found '*.example.com'"]),
    ("several_hosts_on_an_opaque_port",
     "hosts: [a.example.com, b.example.com]\nresolution: DNS\nports: [{number: 6379, name: redis, protocol: REDIS}]\n",
     ["spec.hosts: several hosts with DNS resolution need HTTP or TLS ports to tell them apart; "
      "port 6379 is REDIS"]),
    ("selector_and_endpoints",
     "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS
     + "workloadSelector: {labels: {app: db}}\nendpoints: [{address: 10.0.0.1}]\n",
     ["spec.workloadSelector: only one of workloadSelector and endpoints may be set"]),
    ("endpoint_without_address_and_negative_weight",
     "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS + "endpoints: [{weight: -2}]\n",
     ["spec.endpoints[0]: missing required field 'address' (or a network to reach it through)",
      "spec.endpoints[0].weight: must be a non-negative 32-bit integer; found integer -2"]),
    ("unix_endpoint_with_ports",
     "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS
     + "endpoints: [{address: 'unix:///var/run/db.sock', ports: {https: 443}}]\n",
     ["spec.endpoints[0].ports: a unix endpoint must not have ports; found 1"]),
    ("export_to_everyone_and_no_one",
     "hosts: [db.example.com]\n" + HTTPS + "exportTo: ['*', '~']\n",
     ["spec.exportTo: cannot have both public (*) and non-public exportTo values",
      "spec.exportTo: cannot export to no one (~) and to someone"]),
    ("unknown_resolution",
     "hosts: [db.example.com]\nresolution: EDS\n" + HTTPS,
     ["spec.resolution: must be one of NONE, STATIC, DNS, DNS_ROUND_ROBIN; found string 'EDS'"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_service_entry_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert findings(spec) == expected


def test_endpoint_behind_a_network_gateway_may_omit_its_address() -> None:
    spec = "hosts: [db.example.com]\nresolution: STATIC\n" + HTTPS + "endpoints: [{network: west}]\n"

    assert findings(spec) == ["spec.endpoints[0]: warning: address is unset; the endpoint is reached "
                              "through network 'west'"]


def test_workload_entry_kind_uses_the_endpoint_schema() -> None:
    result = load("address: 10.1.0.7\nlabels: {app: vm}\nlocality: us-east/us-east-1a\n", "WorkloadEntry")

    assert result.errors == [] and result.resources[0].spec.labels == {"app": "vm"}
    assert findings("address: 10.1.0.7\nlocality: a//b\n", "WorkloadEntry") == [
        "spec.locality: must be region[/zone[/subzone]]; found string 'a//b'"]


def test_sidecar_kind_decodes_egress_hosts_and_policy() -> None:
    result = load("egress:\n- hosts: ['./*', 'istio-system/*']\noutboundTrafficPolicy: {mode: ALLOW_ANY}\n",
                  "Sidecar")

    spec = result.resources[0].spec
    assert result.errors == [] and spec.egress[0].hosts == ("./*", "istio-system/*")
    assert spec.outbound_traffic_policy.mode is OutboundTrafficPolicyMode.ALLOW_ANY


SIDECAR_ERRORS = [
    ("empty",
     "workloadSelector: {labels: {app: a}}\n",
     ["spec: a Sidecar needs ingress, egress, outboundTrafficPolicy or inboundConnectionPool"]),
    ("host_without_namespace",
     "egress:\n- hosts: [reviews.bookinfo.svc.cluster.local]\n",
     ["spec.egress[0].hosts[0]: invalid host 'reviews.bookinfo.svc.cluster.local': must be of the form "
      "<namespace>/<dnsName>"]),
    ("catch_all_egress_not_last",
     "egress:\n- hosts: ['*/*']\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['./*']\n",
     ["spec.egress[0]: only the last egress listener may omit the port"]),
    ("ingress_default_endpoint",
     "ingress:\n- port: {number: 9080, name: http, protocol: HTTP}\n  defaultEndpoint: 10.0.0.1:9080\n",
     ["spec.ingress[0].defaultEndpoint: must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> "
      "or unix://<path>; found string '10.0.0.1:9080'"]),
    ("egress_proxy_with_registry_only",
     "outboundTrafficPolicy: {egressProxy: {host: proxy.example.com, port: {number: 3128}}}\n",
     ["spec.outboundTrafficPolicy.egressProxy: needs mode ALLOW_ANY"]),
]


@pytest.mark.parametrize("spec,expected", [c[1:] for c in SIDECAR_ERRORS], ids=[c[0] for c in SIDECAR_ERRORS])
def test_invalid_sidecar_reports_exact_message(spec: str, expected: list[str]) -> None:
    assert findings(spec, "Sidecar") == expected
