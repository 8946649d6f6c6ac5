"""Kubernetes objects found beside Istio config: Service, ServiceAccount, Deployment, StatefulSet.

meshfed reads them for what the mesh needs (service ports and selectors, workload
labels, service accounts, replicas, container ports) and decodes those strictly. The
rest of a PodSpec is huge and irrelevant to the mesh: those keys are accepted as
free-form values, but a key that is not a Kubernetes field at all is still an error,
as ``kubectl apply --validate=strict`` would say.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from ._decode import Check, describe, opt
from ._resource import is_dns1123_label

_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _check_port(c: Check, rel: str, port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        c.error(rel, f"must be a port number 1..65535; found {describe(port)}")


def _check_named_port(c: Check, rel: str, value: int | str | None) -> None:
    """IntOrString: a number, or the name of a container port (IANA_SVC_NAME, <= 15 chars)."""
    if isinstance(value, int):
        _check_port(c, rel, value)
    elif isinstance(value, str):
        if not (len(value) <= 15 and _IANA_SVC_NAME.match(value) and re.search("[a-z]", value) and "--" not in value):
            c.error(rel, f"must be a port number or a port name (lowercase, at most 15 characters); found {describe(value)}")


# -- Service ----------------------------------------------------------------------------
class PortProtocol(enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ServiceType(enum.Enum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


# Istio's protocol selection: appProtocol first, then the port name's prefix up to '-'.
_ISTIO_PROTOCOLS = {"http": "http", "http2": "http2", "grpc": "grpc", "grpc-web": "grpc-web", "https": "https",
                    "tls": "tls", "tcp": "tcp", "udp": "udp", "mongo": "mongo", "mysql": "mysql",
                    "redis": "redis", "h2c": "http2", "kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http",
                    "kubernetes.io/wss": "https"}


def istio_protocol(name: str | None, app_protocol: str | None = None) -> str:
    """The protocol Istio assumes for a Service port ("auto" when it would sniff).

    Explicit selection per Istio's docs: ``appProtocol`` wins, else the port name
    ``<protocol>[-<suffix>]`` (``grpc-web`` is matched whole before ``grpc``).
    """
    if app_protocol:
        found = _ISTIO_PROTOCOLS.get(app_protocol.lower())
        if found:
            return found
    if name:
        low = name.lower()
        if low.startswith("grpc-web"):
            return "grpc-web"
        found = _ISTIO_PROTOCOLS.get(low.split("-", 1)[0])
        if found:
            return found
    return "auto"


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int = opt(required=True)
    """Port the Service answers on."""
    name: str | None = None
    """Required when the Service has several ports; its prefix selects Istio's protocol."""
    target_port: int | str | None = None
    """Container port number or name; defaults to ``port``."""
    protocol: PortProtocol = PortProtocol.TCP
    """L4 protocol; defaults to TCP."""
    app_protocol: str | None = None
    """Application protocol (``http``, ``grpc``, ``kubernetes.io/h2c``...); wins over the name."""
    node_port: int | None = None

    def _check(self, c: Check) -> None:
        _check_port(c, "port", self.port)
        _check_named_port(c, "targetPort", self.target_port)
        _check_port(c, "nodePort", self.node_port)
        if self.name is not None and not is_dns1123_label(self.name):
            c.error("name", f"must be a lowercase DNS-1123 label; found {describe(self.name)}")

    @property
    def effective_target_port(self) -> int | str:
        return self.target_port if self.target_port is not None else self.port

    @property
    def mesh_protocol(self) -> str:
        """Istio's protocol for this port: http, http2, grpc, tcp, ... or auto."""
        if self.protocol is PortProtocol.UDP:
            return "udp"
        return istio_protocol(self.name, self.app_protocol)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """core/v1 Service: the ports a service answers on and the pods (by label) behind it."""

    ports: tuple[ServicePort, ...] = ()
    selector: dict[str, str] = opt(factory=dict)
    """Pods whose labels include all of these back the service; none means no endpoints are managed."""
    type: ServiceType = ServiceType.CLUSTER_IP
    """Defaults to ClusterIP."""
    cluster_ip: str | None = opt(key="clusterIP")
    cluster_ips: tuple[str, ...] = opt((), key="clusterIPs")
    external_ips: tuple[str, ...] = opt((), key="externalIPs")
    external_name: str | None = None
    session_affinity: str | None = None
    session_affinity_config: Any = None
    load_balancer_ip: str | None = opt(key="loadBalancerIP")
    load_balancer_source_ranges: tuple[str, ...] = ()
    load_balancer_class: str | None = None
    allocate_load_balancer_node_ports: bool | None = None
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool | None = None
    ip_families: tuple[str, ...] = ()
    ip_family_policy: str | None = None
    traffic_distribution: str | None = None

    def _check(self, c: Check) -> None:
        if self.type is ServiceType.EXTERNAL_NAME:
            if not self.external_name:
                c.error("externalName", "an ExternalName service needs externalName; found none")
        elif not self.ports:
            c.error("ports", "a service needs at least one port; found none")
        names: dict[str, int] = {}
        numbers: dict[tuple[int, PortProtocol], int] = {}
        for i, p in enumerate(self.ports):
            if p.name is None:
                if len(self.ports) > 1:
                    c.error(f"ports[{i}].name", "every port needs a name when a service has several ports; found none")
            elif p.name in names:
                c.error(f"ports[{i}].name", f"duplicate port name {p.name!r} (also ports[{names[p.name]}])")
            else:
                names[p.name] = i
            key = (p.port, p.protocol)
            if key in numbers:
                c.error(f"ports[{i}].port", f"duplicate port {p.port}/{p.protocol.value} (also ports[{numbers[key]}])")
            else:
                numbers[key] = i


# -- ServiceAccount ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LocalObjectReference:
    name: str = ""


@dataclass(frozen=True, slots=True)
class ServiceAccountBody:
    """core/v1 ServiceAccount has no spec: these are its top-level fields.

    Its name is the workload identity: ``spiffe://<td>/ns/<ns>/sa/<name>``.
    """

    automount_service_account_token: bool | None = None
    image_pull_secrets: tuple[LocalObjectReference, ...] = ()
    secrets: tuple[Any, ...] = ()


# -- Pod templates ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TemplateMeta:
    """ObjectMeta of a pod template: like a resource's, without a required name."""

    labels: dict[str, str] = opt(factory=dict)
    annotations: dict[str, str] = opt(factory=dict)
    name: str | None = None
    namespace: str | None = None
    generate_name: str | None = None
    creation_timestamp: Any = None
    finalizers: tuple[str, ...] = ()
    owner_references: Any = None


class PullPolicy(enum.Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int = opt(required=True)
    name: str | None = None
    protocol: PortProtocol = PortProtocol.TCP
    host_port: int | None = None
    host_ip: str | None = opt(key="hostIP")

    def _check(self, c: Check) -> None:
        _check_port(c, "containerPort", self.container_port)
        _check_port(c, "hostPort", self.host_port)
        if self.name is not None:
            _check_named_port(c, "name", self.name)


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str = opt(required=True)
    value: str | None = None
    value_from: Any = None


@dataclass(frozen=True, slots=True)
class ResourceRequirements:
    limits: dict[str, Any] = opt(factory=dict)
    requests: dict[str, Any] = opt(factory=dict)
    claims: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Container:
    name: str = opt(required=True)
    """A DNS-1123 label, unique in the pod."""
    image: str | None = None
    command: tuple[str, ...] = ()
    """Replaces the image's ENTRYPOINT."""
    args: tuple[str, ...] = ()
    """Replaces the image's CMD."""
    ports: tuple[ContainerPort, ...] = ()
    env: tuple[EnvVar, ...] = ()
    image_pull_policy: PullPolicy | None = None
    working_dir: str | None = None
    resources: ResourceRequirements | None = None
    env_from: tuple[Any, ...] = ()
    volume_mounts: tuple[Any, ...] = ()
    volume_devices: tuple[Any, ...] = ()
    security_context: Any = None
    liveness_probe: Any = None
    readiness_probe: Any = None
    startup_probe: Any = None
    lifecycle: Any = None
    resize_policy: tuple[Any, ...] = ()
    restart_policy: str | None = None
    termination_message_path: str | None = None
    termination_message_policy: str | None = None
    stdin: bool | None = None
    stdin_once: bool | None = None
    tty: bool | None = None

    def _check(self, c: Check) -> None:
        if self.name is not None and not is_dns1123_label(self.name):
            c.error("name", f"must be a lowercase DNS-1123 label; found {describe(self.name)}")


@dataclass(frozen=True, slots=True)
class PodSpec:
    containers: tuple[Container, ...] = opt(required=True)
    service_account_name: str | None = None
    """Identity of the pod; defaults to the namespace's ``default`` service account."""
    service_account: str | None = None
    """Deprecated alias of serviceAccountName."""
    init_containers: tuple[Container, ...] = ()
    ephemeral_containers: tuple[Any, ...] = ()
    volumes: tuple[Any, ...] = ()
    restart_policy: str | None = None
    termination_grace_period_seconds: int | None = None
    active_deadline_seconds: int | None = None
    dns_policy: str | None = None
    dns_config: Any = None
    node_selector: dict[str, str] = opt(factory=dict)
    node_name: str | None = None
    automount_service_account_token: bool | None = None
    host_network: bool | None = None
    host_pid: bool | None = opt(key="hostPID")
    host_ipc: bool | None = opt(key="hostIPC")
    host_users: bool | None = None
    share_process_namespace: bool | None = None
    security_context: Any = None
    image_pull_secrets: tuple[Any, ...] = ()
    hostname: str | None = None
    subdomain: str | None = None
    set_hostname_as_fqdn: bool | None = opt(key="setHostnameAsFQDN")
    affinity: Any = None
    scheduler_name: str | None = None
    tolerations: tuple[Any, ...] = ()
    host_aliases: tuple[Any, ...] = ()
    priority_class_name: str | None = None
    priority: int | None = None
    preemption_policy: str | None = None
    readiness_gates: tuple[Any, ...] = ()
    runtime_class_name: str | None = None
    enable_service_links: bool | None = None
    overhead: Any = None
    topology_spread_constraints: tuple[Any, ...] = ()
    os: Any = None
    scheduling_gates: tuple[Any, ...] = ()
    resource_claims: tuple[Any, ...] = ()
    resources: Any = None

    def _check(self, c: Check) -> None:
        if not self.containers:
            c.error("containers", "a pod needs at least one container; found none")
        seen: dict[str, str] = {}
        for kind, items in (("containers", self.containers), ("initContainers", self.init_containers)):
            for i, ct in enumerate(items):
                if ct.name in seen:
                    c.error(f"{kind}[{i}].name", f"duplicate container name {ct.name!r} (also {seen[ct.name]})")
                elif ct.name is not None:
                    seen[ct.name] = f"{kind}[{i}]"

    @property
    def effective_service_account(self) -> str:
        return self.service_account_name or self.service_account or "default"


@dataclass(frozen=True, slots=True)
class PodTemplateSpec:
    metadata: TemplateMeta = opt(factory=TemplateMeta)
    spec: PodSpec | None = opt(required=True)


class SelectorOperator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str = opt(required=True)
    operator: SelectorOperator = opt(required=True)
    values: tuple[str, ...] = ()

    def _check(self, c: Check) -> None:
        wants_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if wants_values and not self.values:
            c.error("values", f"operator {self.operator.value} needs values; found none")
        if not wants_values and self.values:
            c.error("values", f"operator {self.operator.value} takes no values; found {len(self.values)}")

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator is SelectorOperator.IN:
            return labels.get(self.key) in self.values
        if self.operator is SelectorOperator.NOT_IN:
            return labels.get(self.key) not in self.values
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: dict[str, str] = opt(factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and \
            all(e.matches(labels) for e in self.match_expressions)


def _check_workload(c: Check, replicas: int | None, selector: LabelSelector | None,
                    template: PodTemplateSpec | None) -> None:
    if replicas is not None and replicas < 0:
        c.error("replicas", f"must be 0 or more; found {describe(replicas)}")
    if selector is not None and template is not None:
        if not selector.match_labels and not selector.match_expressions:
            c.error("selector", "an empty selector would select every pod; give matchLabels")
        elif not _has_errors_under(c, "selector") and not selector.matches(template.metadata.labels):
            wants = str(dict(selector.match_labels))
            if selector.match_expressions:
                wants += f" and {len(selector.match_expressions)} matchExpressions"
            c.error("template.metadata.labels", "selector does not match template labels; selector wants "
                    f"{wants}, found {dict(template.metadata.labels)}")


def _has_errors_under(c: Check, rel: str) -> bool:
    prefix = c.path(rel)
    return any(d.is_error and (d.path == prefix or d.path.startswith((prefix + ".", prefix + "[")))
               for d in c.decoder.diagnostics)


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """apps/v1 Deployment: ``replicas`` copies of a pod template, labelled for services to select."""

    selector: LabelSelector | None = opt(required=True)
    template: PodTemplateSpec | None = opt(required=True)
    replicas: int = 1
    """Defaults to 1."""
    strategy: Any = None
    min_ready_seconds: int | None = None
    revision_history_limit: int | None = None
    progress_deadline_seconds: int | None = None
    paused: bool | None = None

    def _check(self, c: Check) -> None:
        _check_workload(c, self.replicas, self.selector, self.template)

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.template.metadata.labels) if self.template else {}

    @property
    def service_account(self) -> str:
        return self.template.spec.effective_service_account if self.template and self.template.spec else "default"


@dataclass(frozen=True, slots=True)
class StatefulSetSpec:
    """apps/v1 StatefulSet: read like a Deployment (pods, labels, identity, replicas)."""

    selector: LabelSelector | None = opt(required=True)
    template: PodTemplateSpec | None = opt(required=True)
    service_name: str | None = None
    """The headless service that gives pods stable names."""
    replicas: int = 1
    """Defaults to 1."""
    volume_claim_templates: tuple[Any, ...] = ()
    pod_management_policy: str | None = None
    update_strategy: Any = None
    revision_history_limit: int | None = None
    min_ready_seconds: int | None = None
    persistent_volume_claim_retention_policy: Any = None
    ordinals: Any = None

    def _check(self, c: Check) -> None:
        _check_workload(c, self.replicas, self.selector, self.template)

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.template.metadata.labels) if self.template else {}

    @property
    def service_account(self) -> str:
        return self.template.spec.effective_service_account if self.template and self.template.spec else "default"
