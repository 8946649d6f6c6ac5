"""meshfed.io/v1alpha1 ``WorkloadFault``: faults a workload's own sidecar injects into the
requests it receives, optionally only in one cluster or locality.

Istio's ``fault`` sits on a VirtualService route and acts in the *client's* sidecar, so
it slows or fails every call of the service whichever endpoint would have answered. A
failover drill needs the opposite: the endpoints of one locality misbehave, the others
do not, and the clients' load balancing and outlier detection must cope - as when one
zone's instances are slow or failing. Istio users reach for an EnvoyFilter on the
inbound listener for that, which meshfed does not accept; this kind says it in typed
fields, with Istio's ``HTTPFaultInjection`` unchanged::

    apiVersion: meshfed.io/v1alpha1
    kind: WorkloadFault
    metadata: {name: echo-slow-east-a, namespace: demo}
    spec:
      workloadSelector: {matchLabels: {app: echo}}   # the resource's namespace; empty: every workload
      cluster: east-a                                # optional: only this cluster's instances
      locality: us-east/us-east-1a                   # optional: region[/zone[/subzone]], a prefix
      fault:
        delay: {percentage: {value: 50}, fixedDelay: 200ms}
        abort: {percentage: {value: 10}, httpStatus: 503}

The selected sidecars draw the faults per request after authorization and rate limits,
before calling their app (flags ``DI``/``FI`` in their inbound metrics and access log).
Unlike a VirtualService fault, it leaves the callers' retries and timeouts on: the
callers see a slow or failing endpoint, which is the point.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._http_policy import HTTPFaultInjection
from ._istio_types import MatchLabelsSelector


@dataclass(frozen=True, slots=True)
class WorkloadFaultSpec:
    """Where the faults apply and what they are."""

    fault: HTTPFaultInjection = opt(required=True)
    """Istio's HTTPFaultInjection (``delay``, ``abort``, their percentages). Required."""
    workload_selector: MatchLabelsSelector | None = None
    """Workloads of the resource's namespace; omitted or empty selects all of them."""
    cluster: str | None = None
    """Only the instances in this cluster. Defaults to every cluster."""
    locality: str | None = None
    """Only the instances whose locality is this one or below it (``region``,
    ``region/zone`` or ``region/zone/subzone``). Defaults to every locality."""

    def _check(self, c: Check) -> None:
        if self.cluster == "":
            c.error("cluster", "must not be empty; omit it to fault every cluster")
        if self.locality is not None:
            parts = self.locality.split("/")
            if self.locality == "" or len(parts) > 3 or "" in parts or "*" in self.locality:
                c.error("locality", "must be region, region/zone or region/zone/subzone (no '*'; "
                                    f"omit it for every locality); found {describe(self.locality)}")

    def selects(self, labels: dict[str, str], cluster: str, locality: str) -> bool:
        """Whether a workload instance with these labels, in this cluster and locality, is faulted."""
        wanted = self.workload_selector.match_labels if self.workload_selector is not None else {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            return False
        if self.cluster is not None and cluster != self.cluster:
            return False
        if self.locality is not None:
            mine = locality.split("/")
            want = self.locality.split("/")
            if mine[:len(want)] != want:
                return False
        return True
