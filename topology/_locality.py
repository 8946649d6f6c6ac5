"""Locality load-balancer settings of a DestinationRule: weighted distribution across
localities, or failover between regions, or failover by label priority.

Localities are ``region/zone/subzone``; a trailing ``*`` matches everything below. The
rules are istioctl's ``ValidateLocalityLbSetting`` except that setting more than one of
``distribute``, ``failover`` and ``failoverPriority`` is an error, as the API reference
states ("only one of distribute, failover or failoverPriority can be set").
"""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import has_errors_under


@dataclass(frozen=True, slots=True)
class LocalityDistribute:
    """How traffic from one locality is spread over others."""

    from_: str = opt(required=True)
    """Originating locality, ``region/zone/subzone`` with an optional trailing ``*``."""
    to: dict[str, int] = opt(factory=dict)
    """Upstream localities and their weights, 1..100 each, adding up to 100. Localities
    not listed get no traffic."""

    def _check(self, c: Check) -> None:
        for loc, weight in self.to.items():
            if not 1 <= weight <= 100:
                c.error(f"to.{loc}", f"locality weight must be between 1 and 100; found {describe(weight)}")
        if not has_errors_under(c, "to"):
            total = sum(self.to.values())
            if total != 100:
                parts = " + ".join(str(w) for w in self.to.values()) or "nothing"
                c.error("to", f"weights must sum to 100; found {total} ({parts})")
        _check_localities(c, "to", list(self.to))


@dataclass(frozen=True, slots=True)
class LocalityFailover:
    """Where traffic of a region goes when its endpoints are unhealthy."""

    from_: str = opt(required=True)
    """Originating region."""
    to: str = opt(required=True)
    """Region traffic fails over to."""

    def _check(self, c: Check) -> None:
        if self.from_ == self.to:
            c.error("to", f"must differ from 'from'; found {describe(self.to)} for both")
        for key, value in (("from", self.from_), ("to", self.to)):
            if "/" in value:
                c.error(key, f"failover takes a region only, not a zone; found {describe(value)}")
            elif "*" in value:
                c.error(key, f"a failover region cannot contain '*'; found {describe(value)}")


@dataclass(frozen=True, slots=True)
class LocalityLoadBalancerSetting:
    """Locality-aware load balancing for this destination (replaces the mesh-wide setting)."""

    distribute: tuple[LocalityDistribute, ...] = ()
    """Explicit traffic weights per originating locality. Without it, locality weights follow
    the number of endpoints in each locality."""
    failover: tuple[LocalityFailover, ...] = ()
    """Region-to-region failover order; needs outlierDetection to detect unhealthy endpoints."""
    failover_priority: tuple[str, ...] = ()
    """Ordered labels (``key`` or ``key=value``) that rank endpoints into priorities;
    needs outlierDetection."""
    enabled: bool | None = None
    """Turns locality load balancing on or off for this destination. Defaults to the mesh
    setting (on when outlier detection is configured)."""

    def _check(self, c: Check) -> None:
        present = [key for key, value in (("distribute", self.distribute), ("failover", self.failover),
                                          ("failoverPriority", self.failover_priority)) if value]
        if len(present) > 1:
            c.error(present[1], f"only one of distribute, failover and failoverPriority may be set; "
                                f"found {' and '.join(present)}")
        if all(d.from_ is not None for d in self.distribute):  # else 'from' was reported missing
            _check_localities(c, "distribute", [d.from_ for d in self.distribute], item_key="from")
        for i, label in enumerate(self.failover_priority):
            if not label or label.startswith("="):
                c.error(f"failoverPriority[{i}]", f"must be a label key or key=value; found {describe(label)}")


def _check_localities(c: Check, rel: str, localities: list[str], item_key: str | None = None) -> None:
    """Istio's validateLocalities: well-formed, one trailing '*' at most, none shadowed by an earlier one."""
    taken: list[tuple[str, ...]] = []
    for i, loc in enumerate(localities):
        where = f"{rel}[{i}].{item_key}" if item_key else f"{rel}.{loc}"
        stars = loc.count("*")
        if stars and (stars > 1 or not loc.endswith("*")):
            c.error(where, f"a locality may only end in a single '*'; found {describe(loc)}")
            return
        parts = tuple(loc.split("/", 2))
        if any(p == "" for p in parts):
            c.error(where, f"a locality must not have an empty region, zone or subzone; found {describe(loc)}")
            return
        key = parts[:-1] if parts[-1] == "*" else parts
        for other in taken:
            if key[:len(other)] == other:  # an earlier, broader (or equal) entry wins
                c.error(where, f"locality {loc!r} is already covered by {'/'.join(other) or '*'!r} listed before it")
                return
        taken.append(key)
