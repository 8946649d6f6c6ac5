"""meshfed ``WorkloadFault`` resources compiled for one sidecar's inbound side.

``InboundFaults.compile`` keeps the resources of the proxy's namespace that select its
workload, cluster and locality (``topology._workload_fault``), each as the
``FaultPolicy`` a VirtualService fault would give, in (namespace, name) order so that
two proxies given the same resources draw them alike. ``decide`` draws every one of
them for a request: the delays add up (Envoy's fault filters in a chain each hold the
request), and the first abort drawn answers it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from topology import Resource

from ._fault import NO_FAULT, FaultDecision, FaultPolicy

KIND = "WorkloadFault"


@dataclass(frozen=True, slots=True)
class InboundFault:
    source: str
    """``namespace/name`` of the WorkloadFault (the metrics' label)."""
    policy: FaultPolicy


@dataclass(frozen=True, slots=True)
class InboundFaults:
    faults: tuple[InboundFault, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.faults)

    def decide(self, rng: random.Random) -> tuple[FaultDecision, tuple[str, ...], tuple[str, ...]]:
        """The faults for one request, and the sources of its delays and of its abort."""
        delay = 0.0
        delayed: list[str] = []
        abort = None
        aborted: tuple[str, ...] = ()
        for f in self.faults:
            d = f.policy.decide(rng)
            if d.delay is not None:
                delay += d.delay
                delayed.append(f.source)
            if d.abort is not None and abort is None:
                abort, aborted = d.abort, (f.source,)
        if not delayed and abort is None:
            return NO_FAULT, (), ()
        return FaultDecision(delay if delayed else None, abort), tuple(delayed), aborted

    @classmethod
    def compile(cls, resources: Iterable[Resource], *, namespace: str, labels: Mapping[str, str],
                cluster: str, locality: str) -> InboundFaults:
        found = [r for r in resources
                 if r.kind == KIND and r.namespace == namespace and r.spec.selects(dict(labels), cluster, locality)]
        found.sort(key=lambda r: (r.namespace, r.name))
        return cls(tuple(InboundFault(f"{r.namespace}/{r.name}", FaultPolicy.from_istio(r.spec.fault))  # type: ignore[arg-type]
                         for r in found))


NO_INBOUND_FAULTS = InboundFaults()
