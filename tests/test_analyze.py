"""Cross-resource warnings: what no single resource can show."""

from __future__ import annotations

from topology import Severity, load_text
from topology._analyze import analyze

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
"""
DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
"""
VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    mirror: {host: ratings}
"""


def _findings(text: str) -> list[str]:
    result = load_text(text, "f.yaml")
    assert result.errors == []
    found = analyze(result)
    assert all(d.severity is Severity.WARNING for d in found)
    return [str(d) for d in found]


def test_route_to_an_undefined_subset_is_a_warning_at_the_subset_field() -> None:
    assert _findings(SERVICE + DR + VS.replace("mirror: {host: ratings}", "")) == [
        "f.yaml:26: spec.http[0].route[1].destination.subset: warning: subset 'v3' of host 'reviews' is not "
        "defined by any DestinationRule (defined subsets: v1, v2); requests to it fail with 503"]


def test_route_to_a_host_nothing_provides_is_a_warning() -> None:
    found = _findings(SERVICE + DR + VS.replace("subset: v3", "subset: v2"))

    assert found == [
        "f.yaml:28: spec.http[0].mirror.host: warning: host 'ratings' is not provided by any workload, "
        "Service or ServiceEntry in this config (resolved as 'ratings.bookinfo.svc.cluster.local')"]


def test_a_lone_virtual_service_says_nothing_about_hosts_defined_elsewhere() -> None:
    found = _findings(VS.replace("subset: v3", "subset: v1").replace("subset: v1", "").replace("mirror: {host: ratings}", ""))

    assert found == []


def test_subsets_defined_by_a_wildcard_destination_rule_count() -> None:
    wildcard = DR.replace("host: reviews", "host: '*.bookinfo.svc.cluster.local'").replace(
        "{name: v2, labels: {version: v2}}", "{name: v3, labels: {version: v3}}")

    found = _findings(SERVICE + wildcard + VS.replace("mirror: {host: ratings}", ""))

    assert found == []


def test_a_destination_rule_for_an_unknown_host_is_a_warning() -> None:
    found = _findings(SERVICE + DR.replace("host: reviews", "host: reveiws"))

    assert found == [
        "f.yaml:12: spec.host: warning: host 'reveiws' is not provided by any workload, Service or "
        "ServiceEntry in this config (resolved as 'reveiws.bookinfo.svc.cluster.local')"]


def test_service_entry_hosts_count_as_provided() -> None:
    entry = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: bookinfo}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: bookinfo}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{port: 443, sniHosts: [api.example.com]}]
    route:
    - destination: {host: api.example.com, port: {number: 443}}
"""
    assert _findings(SERVICE + entry) == []
