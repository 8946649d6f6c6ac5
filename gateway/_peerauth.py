"""Which inbound connections a workload accepts: the effective PeerAuthentication mode.

Theory of operation, as Istio composes it (pilot ``ComposePeerAuthentication``). Of the
PeerAuthentications that concern a workload, at most one is kept per level:

1. **workload** - a policy with a non-empty ``selector.matchLabels`` in the workload's
   namespace whose labels the workload carries. Selector policies in the root namespace
   are ignored, as Istio ignores them;
2. **namespace** - a policy without selector (or with empty ``matchLabels``) in the
   workload's namespace;
3. **mesh** - a policy without selector in the root namespace (``istio-system``).

If several policies tie at one level Istio keeps the oldest (``creationTimestamp``).
meshfed's documents carry no timestamps, so the **lowest name** stands in for the oldest:
the choice is deterministic and stable when files are reordered.

The mode starts at PERMISSIVE (Istio's default) and each level, mesh then namespace then
workload, replaces it unless its mode is UNSET ("inherit from the parent"). The workload
policy's ``portLevelMtls`` then overrides single ports - keyed by the workload's own
(target) port - where an UNSET entry keeps the workload-level result.

Everything is composed once by ``PeerAuthConfig.compile``; a connection asks
``mode_for(port)``, a dict lookup, and gets a decision naming the policy that decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from topology import PeerAuthentication, Resource
from topology._security import MtlsMode, WorkloadSelector

ROOT_NAMESPACE = "istio-system"  # Istio's meshConfig.rootNamespace default
DEFAULT_MODE = MtlsMode.PERMISSIVE  # Istio: "if all peer authentications are UNSET" the mode is PERMISSIVE


def selects(selector: WorkloadSelector | None, labels: Mapping[str, str]) -> bool:
    """True when every label of the selector is on the workload (an absent selector selects all)."""
    if selector is None:
        return True
    return all(labels.get(k) == v for k, v in selector.match_labels.items())


def has_labels(selector: WorkloadSelector | None) -> bool:
    """Istio treats ``selector: {}`` like no selector at all."""
    return selector is not None and bool(selector.match_labels)


@dataclass(frozen=True, slots=True)
class MtlsDecision:
    """The mode in force on one inbound port and the policy that set it."""

    mode: MtlsMode
    """STRICT, PERMISSIVE or DISABLE; never UNSET."""
    why: str
    """One line for logs and ``/config_dump``, naming the deciding policy."""
    policy: str | None = None
    """``namespace/name`` of the deciding PeerAuthentication; None for the built-in default."""

    @property
    def accepts_plaintext(self) -> bool:
        return self.mode is not MtlsMode.STRICT

    @property
    def accepts_mtls(self) -> bool:
        """DISABLE hands TLS bytes to the app untouched instead of terminating them."""
        return self.mode is not MtlsMode.DISABLE


@dataclass(frozen=True, slots=True)
class PeerAuthConfig:
    """The composed PeerAuthentication of one workload: a default and per-port overrides."""

    namespace: str
    default: MtlsDecision
    """The workload-level result: what every port without an override gets."""
    ports: Mapping[int, MtlsDecision] = field(default_factory=dict)
    """portLevelMtls overrides, by workload (target) port."""

    @classmethod
    def compile(cls, resources: Iterable[Resource], *, namespace: str, labels: Mapping[str, str] | None = None,
                root_namespace: str = ROOT_NAMESPACE) -> "PeerAuthConfig":
        """Compose the policies among ``resources`` (other kinds are skipped) for the workload in
        ``namespace`` carrying ``labels``."""
        labels = labels or {}
        mesh: Resource | None = None
        ns: Resource | None = None
        workload: Resource | None = None
        for res in resources:
            spec = res.spec
            if not isinstance(spec, PeerAuthentication):
                continue
            if not has_labels(spec.selector):
                if res.namespace == root_namespace:
                    mesh = _oldest(mesh, res)
                elif res.namespace == namespace:
                    ns = _oldest(ns, res)
            elif res.namespace == namespace and res.namespace != root_namespace and selects(spec.selector, labels):
                workload = _oldest(workload, res)

        decision = MtlsDecision(DEFAULT_MODE, f"{DEFAULT_MODE.value}: Istio's default, no PeerAuthentication "
                                              "sets a mode for this workload")
        for res, level in ((mesh, "mesh-wide"), (ns, "namespace-wide"), (workload, "workload selector")):
            if res is not None and res.spec.mode is not MtlsMode.UNSET:
                key = f"{res.namespace}/{res.name}"
                decision = MtlsDecision(res.spec.mode, f"{res.spec.mode.value}: PeerAuthentication {key} "
                                                       f"({level})", key)
        ports: dict[int, MtlsDecision] = {}
        if workload is not None:
            key = f"{workload.namespace}/{workload.name}"
            for port, mtls in sorted(workload.spec.port_level_mtls.items()):
                if mtls.mode is MtlsMode.UNSET:
                    ports[port] = decision
                else:
                    ports[port] = MtlsDecision(mtls.mode, f"{mtls.mode.value}: PeerAuthentication {key} "
                                                          f"portLevelMtls[{port}]", key)
        return cls(namespace, decision, ports)

    def mode_for(self, port: int) -> MtlsDecision:
        """The decision for inbound connections to the workload's ``port``."""
        return self.ports.get(port, self.default)

    def __repr__(self) -> str:
        extra = ", ".join(f"{p}={d.mode.value}" for p, d in self.ports.items())
        return f"<PeerAuthConfig {self.namespace} {self.default.mode.value}" + (f" [{extra}]>" if extra else ">")


def _oldest(current: Resource | None, candidate: Resource) -> Resource:
    """Istio keeps the oldest policy of a level; without timestamps the lowest name stands in."""
    if current is None or candidate.name < current.name:
        return candidate
    return current
