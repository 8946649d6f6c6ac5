"""meshfed.io/v1alpha1 ``Drill``: a failover drill kept in a repository and run with ``fedctl drill run``.

A drill names a fault (``type``), where it goes (one of ``cluster``, ``zone`` or
``region``), the service to load (``service``) and where the load comes from
(``from``, ``CLUSTER/WORKLOAD``), how long and how hard to load it, and the SLO the
verdict is checked against. ``fedctl drill KIND --flags`` builds the same object from
its flags, so a scenario file and a command line are checked by the same rules.

Importing this module registers the kind (``fedctl`` imports it with its drill commands).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._duration import Duration
from ._resource import register_kind


class DrillType(enum.Enum):
    ENDPOINTS_DOWN = "endpoints-down"
    GATEWAY_DOWN = "gateway-down"
    LINK_DOWN = "link-down"
    CONTROL_PLANE_DOWN = "control-plane-down"
    LATENCY = "latency"
    ERRORS = "errors"
    REGION_EVACUATION = "region-evacuation"
    TRUST_ROTATION = "trust-rotation"


CLUSTER_ONLY = frozenset({DrillType.GATEWAY_DOWN, DrillType.LINK_DOWN, DrillType.CONTROL_PLANE_DOWN,
                          DrillType.TRUST_ROTATION})
"""Faults that belong to a whole cluster: ``cluster`` is the only scope they take."""

MIN_DURATION_S, MAX_DURATION_S = 3.0, 3600.0
MAX_RPS = 1000.0


@dataclass(frozen=True, slots=True)
class DrillSlo:
    """What the verdict is checked against; an unset bound is not checked."""

    max_errors: int | None = None
    """Requests the client may see fail (non-2xx/3xx answers, resets, timeouts). Unset: not checked."""
    max_failover_seconds: float | None = None
    """Seconds from the injection until 95 % of traffic is on healthy localities. Unset: not checked."""

    def _check(self, c: Check) -> None:
        if self.max_errors is not None and self.max_errors < 0:
            c.error("maxErrors", f"must be 0 or more; found {describe(self.max_errors)}")
        if self.max_failover_seconds is not None and self.max_failover_seconds < 0:
            c.error("maxFailoverSeconds", f"must be 0 or more; found {describe(self.max_failover_seconds)}")


@dataclass(frozen=True, slots=True)
class DrillFault:
    """Parameters of ``latency``, ``errors`` and ``region-evacuation``; the others ignore them."""

    delay: Duration = Duration(500_000_000)
    """``latency``: the delay added to each affected request. Defaults to 500ms."""
    percent: float = 100.0
    """``latency``/``errors``: percentage of requests affected, (0, 100]. Defaults to 100."""
    http_status: int = 503
    """``errors``: the status the affected requests get. Defaults to 503."""
    steps: int = 4
    """``region-evacuation``: how many weight shifts take the region from its weight to 0. Defaults to 4."""

    def _check(self, c: Check) -> None:
        if not 0 < self.percent <= 100:
            c.error("percent", f"must be more than 0 and at most 100; found {describe(self.percent)}")
        if not 200 <= self.http_status <= 599:
            c.error("httpStatus", f"must be an HTTP status 200..599; found {describe(self.http_status)}")
        if not 1 <= self.steps <= 20:
            c.error("steps", f"must be 1..20; found {describe(self.steps)}")
        if self.delay.nanos == 0 or self.delay.nanos > 60_000_000_000:
            c.error("delay", f"must be more than 0s and at most 60s; found {self.delay}")


@dataclass(frozen=True, slots=True)
class DrillSpec:
    type: DrillType = opt(required=True)
    """The fault: endpoints-down, gateway-down, link-down, control-plane-down, latency, errors,
    region-evacuation or trust-rotation."""
    service: str = opt(required=True)
    """The service loaded, as the client calls it: ``echo.demo`` or its full name."""
    from_: str = opt(required=True)
    """``CLUSTER/WORKLOAD`` (or ``CLUSTER/NAMESPACE/WORKLOAD``) the load is sent from, through its sidecar."""
    cluster: str | None = None
    zone: str | None = None
    region: str | None = None
    """Where the fault goes: exactly one of cluster, zone (a locality zone) or region."""
    port: int | None = None
    """Service port called. Defaults to the service's first port."""
    path: str = "/"
    """Request path. Defaults to ``/``."""
    duration: Duration = Duration(20_000_000_000)
    """Load time: a quarter before the fault, half with it, a quarter after. Defaults to 20s."""
    rps: float = 20.0
    """Requests per second sent. Defaults to 20."""
    slo: DrillSlo = opt(factory=DrillSlo)
    fault: DrillFault = opt(factory=DrillFault)

    def _check(self, c: Check) -> None:
        scopes = [k for k in ("cluster", "zone", "region") if getattr(self, k) is not None]
        if len(scopes) != 1:
            found = ", ".join(scopes) if scopes else "none"
            c.error("", f"give exactly one of cluster, zone or region (where the fault goes); found {found}")
        elif self.type in CLUSTER_ONLY and scopes != ["cluster"]:
            c.error(scopes[0], f"a {self.type.value} drill acts on a whole cluster: give cluster, not {scopes[0]}")
        elif self.type is DrillType.REGION_EVACUATION and scopes != ["region"]:
            c.error(scopes[0], f"a region-evacuation drill moves traffic off a region: give region, not {scopes[0]}")
        parts = self.from_.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            c.error("from", f"expected CLUSTER/WORKLOAD or CLUSTER/NAMESPACE/WORKLOAD; found {describe(self.from_)}")
        if not self.service or "/" in self.service or self.service.startswith("."):
            c.error("service", f"expected a host such as 'echo.demo'; found {describe(self.service)}")
        seconds = self.duration.nanos / 1e9
        if not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
            c.error("duration", f"must be {MIN_DURATION_S:g}s..{MAX_DURATION_S:g}s; found {self.duration}")
        if not 0 < self.rps <= MAX_RPS:
            c.error("rps", f"must be more than 0 and at most {MAX_RPS:g}; found {describe(self.rps)}")
        if self.port is not None and not 1 <= self.port <= 65535:
            c.error("port", f"must be 1..65535; found {describe(self.port)}")
        if not self.path.startswith("/"):
            c.error("path", f"must start with '/'; found {describe(self.path)}")

    @property
    def scope(self) -> tuple[str, str]:
        """("cluster" | "zone" | "region", name)."""
        for key in ("cluster", "zone", "region"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        return "cluster", ""


register_kind("meshfed.io", "Drill", {"v1alpha1"}, DrillSpec, spec_required=True)
