"""The DestinationRule kind: policies for traffic to a host once routing has chosen it,
and the named subsets (versions) that routes refer to.

Subsets inherit the rule-level traffic policy; a subset's own policy overrides it field
by field. Per-field checks live with the policy types (``_traffic_policy``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, opt
from ._istio_checks import check_export_to, check_labels, check_subset_name, check_wildcard_domain
from ._istio_types import MatchLabelsSelector
from ._traffic_policy import TrafficPolicy


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of the host's endpoints, selected by labels."""

    name: str = opt(required=True)
    """Name routes use to address the subset (a DNS-1123 label). Required."""
    labels: dict[str, str] = opt(factory=dict)
    """Labels an endpoint must carry to belong to the subset."""
    traffic_policy: TrafficPolicy | None = None
    """Policy for this subset; overrides the rule-level policy."""

    def _check(self, c: Check) -> None:
        check_subset_name(c, "name", self.name)
        check_labels(c, "labels", self.labels)


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """Policies for traffic to ``host`` and its subsets."""

    host: str = opt(required=True)
    """Service from the registry (short names are qualified with the rule's namespace);
    a wildcard prefix is allowed. Required."""
    traffic_policy: TrafficPolicy | None = None
    """Load balancing, connection pool, outlier detection and TLS for the host."""
    subsets: tuple[Subset, ...] = ()
    """Named subsets (versions) of the host."""
    export_to: tuple[str, ...] = ()
    """Namespaces that see this rule (``.`` own, ``*`` all). Defaults to all."""
    workload_selector: MatchLabelsSelector | None = None
    """Workloads (in this namespace) the rule applies to. Defaults to all workloads."""

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    def _check(self, c: Check) -> None:
        check_wildcard_domain(c, "host", self.host)
        first: dict[str, int] = {}
        for i, subset in enumerate(self.subsets):
            if subset.name in first:
                c.error(f"subsets[{i}].name", f"duplicate subset name {subset.name!r}; "
                                              f"subsets[{first[subset.name]}] has the same name")
            else:
                first[subset.name] = i
        check_export_to(c, "exportTo", self.export_to)
        if self.workload_selector is not None and any(e not in (".",) for e in self.export_to):
            c.warning("exportTo", "a DestinationRule with a workloadSelector only applies in its own "
                                  "namespace; exportTo beyond '.' is refused by Istio")
