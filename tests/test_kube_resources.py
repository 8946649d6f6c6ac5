"""Kubernetes Service, ServiceAccount, Deployment, StatefulSet and the MCS ServiceExport."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from topology import DeploymentSpec, ServiceExportSpec, ServiceSpec, load_paths, load_text
from topology._kube import PullPolicy, istio_protocol

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "istio"
K8S_FILES = [CORPUS / "bookinfo" / "platform" / "kube" / "bookinfo.yaml", CORPUS / "httpbin" / "httpbin.yaml",
             CORPUS / "helloworld" / "helloworld.yaml", CORPUS / "tcp-echo" / "tcp-echo-services.yaml"]
OURS = {"Service", "ServiceAccount", "Deployment", "StatefulSet", "ServiceExport"}


def load(api: str, kind: str, body: str):
    """A one-document file; ``body`` starts on line 5, after name and namespace."""
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: x\n" + textwrap.dedent(body)
    return load_text(text, "k.yaml")


def messages(api: str, kind: str, body: str) -> list[str]:
    return [str(d) for d in load(api, kind, body).diagnostics]


# -- the corpus ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_istio_sample_manifests_load_without_diagnostics(path: Path) -> None:
    result = load_paths([path])
    assert [str(d) for d in result.diagnostics if d.kind in OURS] == []
    assert result.skipped == []
    assert {r.kind for r in result.resources} <= OURS


def test_bookinfo_manifest_gives_services_accounts_and_deployments() -> None:
    result = load_paths([K8S_FILES[0]])
    assert sorted(r.name for r in result.of_kind("Service")) == ["details", "productpage", "ratings", "reviews"]
    assert sorted(r.name for r in result.of_kind("ServiceAccount")) == [
        "bookinfo-details", "bookinfo-productpage", "bookinfo-ratings", "bookinfo-reviews"]
    deployments = {r.name: r.spec for r in result.of_kind("Deployment")}
    assert sorted(deployments) == ["details-v1", "productpage-v1", "ratings-v1", "reviews-v1", "reviews-v2",
                                   "reviews-v3"]
    v2 = deployments["reviews-v2"]
    assert isinstance(v2, DeploymentSpec)
    assert v2.replicas == 1 and v2.pod_labels == {"app": "reviews", "version": "v2"}
    assert v2.service_account == "bookinfo-reviews"
    (container,) = v2.template.spec.containers
    assert container.ports[0].container_port == 9080
    assert container.image_pull_policy is PullPolicy.IF_NOT_PRESENT
    assert [(e.name, e.value) for e in container.env] == [("LOG_DIR", "/tmp/logs")]
    reviews = next(r.spec for r in result.of_kind("Service") if r.name == "reviews")
    assert reviews.selector == {"app": "reviews"}
    assert [(p.name, p.port, p.effective_target_port, p.mesh_protocol) for p in reviews.ports] == [
        ("http", 9080, 9080, "http")]


def test_httpbin_service_maps_port_8000_to_container_port_8080() -> None:
    result = load_paths([K8S_FILES[1]])
    (svc,) = result.of_kind("Service")
    assert [(p.port, p.effective_target_port) for p in svc.spec.ports] == [(8000, 8080)]
    (dep,) = result.of_kind("Deployment")
    assert dep.spec.service_account == "httpbin" and dep.spec.pod_labels["version"] == "v1"


def test_helloworld_without_service_account_runs_as_default_with_free_form_resources() -> None:
    deps = load_paths([K8S_FILES[2]]).of_kind("Deployment")
    assert [d.spec.service_account for d in deps] == ["default", "default"]
    assert deps[0].spec.template.spec.containers[0].resources.requests == {"cpu": "100m"}


def test_tcp_echo_ports_are_tcp_by_name_and_args_are_kept() -> None:
    result = load_paths([K8S_FILES[3]])
    (svc,) = result.of_kind("Service")
    assert [(p.name, p.mesh_protocol) for p in svc.spec.ports] == [("tcp", "tcp"), ("tcp-other", "tcp")]
    v1 = next(d for d in result.of_kind("Deployment") if d.name == "tcp-echo-v1")
    assert v1.spec.template.spec.containers[0].args == ("9000,9001,9002", "one")


@pytest.mark.parametrize("name,app_protocol,expected", [
    ("http", None, "http"), ("http-web", None, "http"), ("HTTP2", None, "http2"), ("grpc-api", None, "grpc"),
    ("grpc-web", None, "grpc-web"), ("tcp-other", None, "tcp"), ("web", None, "auto"), (None, None, "auto"),
    ("web", "kubernetes.io/h2c", "http2"), ("tcp", "http", "http"), ("http", "custom", "http"),
])
def test_istio_protocol_selection_prefers_app_protocol_then_name_prefix(name, app_protocol, expected) -> None:
    assert istio_protocol(name, app_protocol) == expected


def test_service_accepts_common_spec_fields() -> None:
    result = load("v1", "Service", """\
        spec:
          type: NodePort
          clusterIP: 10.0.0.7
          clusterIPs: [10.0.0.7]
          ipFamilies: [IPv4]
          ipFamilyPolicy: SingleStack
          sessionAffinity: ClientIP
          externalTrafficPolicy: Local
          internalTrafficPolicy: Cluster
          publishNotReadyAddresses: true
          selector: {app: web}
          ports:
          - {name: http-web, port: 80, targetPort: http, protocol: TCP, appProtocol: http, nodePort: 30080}
          - {name: grpc, port: 7070, targetPort: 7070}
        """)
    assert [str(d) for d in result.diagnostics] == []
    spec = result.resources[0].spec
    assert isinstance(spec, ServiceSpec)
    assert spec.cluster_ip == "10.0.0.7" and spec.ports[0].target_port == "http"


def test_stateful_set_reads_like_a_deployment() -> None:
    result = load("apps/v1", "StatefulSet", """\
        spec:
          serviceName: db
          replicas: 3
          selector: {matchLabels: {app: db}}
          template:
            metadata: {labels: {app: db}}
            spec:
              serviceAccountName: db
              containers: [{name: db, image: postgres}]
          volumeClaimTemplates: [{metadata: {name: data}}]
        """)
    assert [str(d) for d in result.diagnostics] == []
    spec = result.resources[0].spec
    assert spec.replicas == 3 and spec.service_account == "db" and spec.pod_labels == {"app": "db"}


def test_service_account_body_fields_are_typed() -> None:
    result = load("v1", "ServiceAccount", """\
        automountServiceAccountToken: false
        imagePullSecrets: [{name: regcred}]
        """)
    assert [str(d) for d in result.diagnostics] == []
    body = result.resources[0].body
    assert body.automount_service_account_token is False and body.image_pull_secrets[0].name == "regcred"


@pytest.mark.parametrize("body", ["", "spec: {}\n"], ids=["no spec", "empty spec"])
def test_service_export_has_an_empty_spec(body: str) -> None:
    text = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: echo\n" \
           "  namespace: demo\n" + body
    result = load_text(text, "k.yaml")
    assert [str(d) for d in result.diagnostics] == []
    assert result.resources[0].spec == ServiceExportSpec() and result.resources[0].namespace == "demo"


DEPLOYMENT = """\
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
"""

KUBE_ERRORS = [
    ("service_port_range", "v1", "Service", """\
        spec:
          ports: [{port: 70000}]
        """, ["k.yaml:6: spec.ports[0].port: must be a port number 1..65535; found integer 70000"]),
    ("service_target_port_name", "v1", "Service", """\
        spec:
          ports: [{port: 80, targetPort: Not_A_Name}]
        """, ["k.yaml:6: spec.ports[0].targetPort: must be a port number or a port name (lowercase, at most 15 "
              "characters); found string 'Not_A_Name'"]),
    ("service_target_port_type", "v1", "Service", """\
        spec:
          ports: [{port: 80, targetPort: [1]}]
        """, ["k.yaml:6: spec.ports[0].targetPort: expected an integer or a string, found a list"]),
    ("service_needs_port_names", "v1", "Service", """\
        spec:
          ports:
          - {port: 80}
          - {port: 81, name: b}
        """, ["k.yaml:7: spec.ports[0].name: every port needs a name when a service has several ports; "
              "found none"]),
    ("service_duplicate_port_name", "v1", "Service", """\
        spec:
          ports:
          - {port: 80, name: a}
          - {port: 81, name: a}
        """, ["k.yaml:8: spec.ports[1].name: duplicate port name 'a' (also ports[0])"]),
    ("service_duplicate_port", "v1", "Service", """\
        spec:
          ports:
          - {port: 80, name: a}
          - {port: 80, name: b}
        """, ["k.yaml:8: spec.ports[1].port: duplicate port 80/TCP (also ports[0])"]),
    ("service_without_ports", "v1", "Service", """\
        spec:
          selector: {app: a}
        """, ["k.yaml:5: spec.ports: a service needs at least one port; found none"]),
    ("external_name_needs_name", "v1", "Service", """\
        spec:
          type: ExternalName
        """, ["k.yaml:5: spec.externalName: an ExternalName service needs externalName; found none"]),
    ("service_type", "v1", "Service", """\
        spec:
          type: Internal
          ports: [{port: 80}]
        """, ["k.yaml:6: spec.type: must be one of ClusterIP, NodePort, LoadBalancer, ExternalName; "
              "found string 'Internal'"]),
    ("service_unknown_field", "v1", "Service", """\
        spec:
          port: 80
        """, ["k.yaml:6: spec.port: unknown field 'port' (did you mean 'ports'?)"]),
    ("service_account_unknown_top_level_field", "v1", "ServiceAccount", """\
        automount: true
        """, ["k.yaml:5: automount: unknown field 'automount' at the top level of a ServiceAccount"]),
    ("deployment_selector_mismatch", "apps/v1", "Deployment", DEPLOYMENT.replace("{app: web}}\n  template",
                                                                                 "{app: api}}\n  template"),
     ["k.yaml:8: spec.template.metadata.labels: selector does not match template labels; selector wants "
      "{'app': 'api'}, found {'app': 'web'}"]),
    ("deployment_negative_replicas", "apps/v1", "Deployment", DEPLOYMENT + "  replicas: -1\n",
     ["k.yaml:13: spec.replicas: must be 0 or more; found integer -1"]),
    ("deployment_needs_selector", "apps/v1", "Deployment", """\
        spec:
          template:
            spec:
              containers: [{name: a}]
        """, ["k.yaml:5: spec: missing required field 'selector'"]),
    ("container_typo", "apps/v1", "Deployment", DEPLOYMENT + "        imagePullPolcy: Always\n",
     ["k.yaml:13: spec.template.spec.containers[0].imagePullPolcy: unknown field 'imagePullPolcy' "
      "(did you mean 'imagePullPolicy'?)"]),
    ("pod_spec_typo", "apps/v1", "Deployment", DEPLOYMENT + "      serviceAcountName: web\n",
     ["k.yaml:13: spec.template.spec.serviceAcountName: unknown field 'serviceAcountName' "
      "(did you mean 'serviceAccountName'?)"]),
    ("pull_policy", "apps/v1", "Deployment", DEPLOYMENT + "        imagePullPolicy: Sometimes\n",
     ["k.yaml:13: spec.template.spec.containers[0].imagePullPolicy: must be one of Always, IfNotPresent, "
      "Never; found string 'Sometimes'"]),
    ("container_port_range", "apps/v1", "Deployment", DEPLOYMENT + "        ports: [{containerPort: 0}]\n",
     ["k.yaml:13: spec.template.spec.containers[0].ports[0].containerPort: must be a port number 1..65535; "
      "found integer 0"]),
    ("container_name", "apps/v1", "Deployment", DEPLOYMENT.replace("name: web", "name: Web"),
     ["k.yaml:11: spec.template.spec.containers[0].name: must be a lowercase DNS-1123 label; found string 'Web'"]),
    ("duplicate_container", "apps/v1", "Deployment", DEPLOYMENT + "      - name: web\n",
     ["k.yaml:13: spec.template.spec.containers[1].name: duplicate container name 'web' (also containers[0])"]),
    ("env_needs_name", "apps/v1", "Deployment", DEPLOYMENT + "        env: [{value: x}]\n",
     ["k.yaml:13: spec.template.spec.containers[0].env[0]: missing required field 'name'"]),
    ("selector_expression_values", "apps/v1", "Deployment", DEPLOYMENT.replace(
        "{matchLabels: {app: web}}", "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In}]}"),
     ["k.yaml:6: spec.selector.matchExpressions[0].values: operator In needs values; found none"]),
]


@pytest.mark.parametrize("api,kind,body,expected", [c[1:] for c in KUBE_ERRORS], ids=[c[0] for c in KUBE_ERRORS])
def test_kubernetes_rule_reports_exact_message(api: str, kind: str, body: str, expected: list[str]) -> None:
    assert messages(api, kind, body) == expected


def test_free_form_pod_fields_are_kept_as_plain_values() -> None:
    result = load("apps/v1", "Deployment", DEPLOYMENT + "        volumeMounts: [{name: tmp, mountPath: /tmp}]\n"
                  "      volumes: [{name: tmp, emptyDir: {}}]\n      tolerations: [{key: a, operator: Exists}]\n")
    assert [str(d) for d in result.diagnostics] == []
    pod = result.resources[0].spec.template.spec
    assert pod.volumes == ({"name": "tmp", "emptyDir": {}},)
    assert pod.containers[0].volume_mounts == ({"name": "tmp", "mountPath": "/tmp"},)
