"""Outlier detection configuration and vocabulary: Envoy's ``OutlierDetection`` fields with
their defaults, Istio's translation of a DestinationRule's ``outlierDetection``, the
ejection types and the observations a host monitor is fed.

Istio (pilot ``applyOutlierDetection``) sets only what the user wrote, so Envoy's
defaults fill the rest - notably ``consecutive_gateway_failure`` 5 with enforcement 0,
so gateway errors are detected but never eject unless ``consecutiveGatewayErrors`` is
set - and it always writes ``minHealthPercent`` (default 0, panic mode off) as the
cluster's healthy panic threshold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from topology._traffic_policy import OutlierDetection

ENVOY_DEFAULT_MAX_EJECTION_TIME = 300.0  # Envoy: max_ejection_time default 300s (or base if larger)


class EjectionType(enum.Enum):
    """Why a host was ejected (Envoy ``OutlierEjectionType``); value is the stat suffix."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"


class OutlierResult(enum.Enum):
    """A non-HTTP observation of a host (Envoy ``Outlier::Result``)."""

    LOCAL_ORIGIN_CONNECT_SUCCESS = "connect success"  # connected; an HTTP status follows
    LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL = "connect success final"  # connected; nothing follows (TCP)
    LOCAL_ORIGIN_CONNECT_FAILED = "connect failed"
    LOCAL_ORIGIN_TIMEOUT = "timeout"
    EXT_ORIGIN_REQUEST_FAILED = "request failed"  # non-HTTP transaction failed upstream
    EXT_ORIGIN_REQUEST_SUCCESS = "request success"


# Envoy resultToHttpCode: what each result counts as when local and external errors are not split.
AS_HTTP_STATUS: dict[OutlierResult, int | None] = {
    OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS: None, OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL: 200,
    OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED: 503, OutlierResult.LOCAL_ORIGIN_TIMEOUT: 504,
    OutlierResult.EXT_ORIGIN_REQUEST_FAILED: 500, OutlierResult.EXT_ORIGIN_REQUEST_SUCCESS: 200}


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Envoy ``cluster.v3.OutlierDetection`` fields meshfed implements. Defaults are Envoy's;
    ``from_istio`` applies Istio's translation and defaults."""

    consecutive_5xx: int = 5
    """Consecutive 5xx (or mapped local failures) that trigger; 0 disables. Defaults to 5."""
    enforcing_consecutive_5xx: int = 100
    """Chance in percent that such a trigger ejects. Defaults to 100."""
    consecutive_gateway_failure: int = 5
    """Consecutive 502/503/504 that trigger; 0 disables. Defaults to 5."""
    enforcing_consecutive_gateway_failure: int = 0
    """Chance in percent that such a trigger ejects. Defaults to 0 (detected, not enforced)."""
    split_external_local_origin_errors: bool = False
    """Count local-origin failures apart from upstream errors. Defaults to false."""
    consecutive_local_origin_failure: int = 5
    """Consecutive local-origin failures that trigger (split mode only). Defaults to 5."""
    enforcing_consecutive_local_origin_failure: int = 100
    """Chance in percent that such a trigger ejects. Defaults to 100."""
    interval: float = 10.0
    """Seconds between sweeps. Defaults to 10."""
    base_ejection_time: float = 30.0
    """Seconds of the first ejection; later ones are multiples. Defaults to 30."""
    max_ejection_time: float | None = None
    """Longest ejection in seconds. Defaults to 300, or ``base_ejection_time`` if larger."""
    max_ejection_time_jitter: float = 0.0
    """Random extra ejection time, seconds, drawn per ejection. Defaults to 0."""
    max_ejection_percent: int = 10
    """Most of the cluster that may be ejected at once, percent. Defaults to 10."""
    always_eject_one_host: bool = False
    """Eject one host even when that exceeds ``max_ejection_percent``. Defaults to false
    (Envoy >= 1.31; before, Envoy always allowed one)."""
    healthy_panic_threshold: float = 50.0
    """Below this percentage of healthy hosts the balancer uses all hosts; 0 disables.
    Envoy's default is 50; Istio sets ``minHealthPercent`` (default 0)."""

    @property
    def effective_max_ejection_time(self) -> float:
        if self.max_ejection_time is not None:
            return self.max_ejection_time
        return max(ENVOY_DEFAULT_MAX_EJECTION_TIME, self.base_ejection_time)

    @classmethod
    def from_istio(cls, od: "OutlierDetection | None") -> "OutlierConfig | None":
        """Istio pilot ``applyOutlierDetection``; None when the policy has no outlierDetection."""
        if od is None:
            return None
        kw: dict[str, object] = {"healthy_panic_threshold": float(od.min_health_percent or 0)}
        if od.consecutive_5xx_errors is not None:
            kw["consecutive_5xx"] = od.consecutive_5xx_errors
            kw["enforcing_consecutive_5xx"] = 100 if od.consecutive_5xx_errors > 0 else 0
        if od.consecutive_gateway_errors is not None:
            kw["consecutive_gateway_failure"] = od.consecutive_gateway_errors
            kw["enforcing_consecutive_gateway_failure"] = 100 if od.consecutive_gateway_errors > 0 else 0
        elif od.consecutive_errors and od.consecutive_5xx_errors is None:
            # Deprecated consecutiveErrors: "a 502, 503, or 504 return code qualifies as an error".
            kw.update(consecutive_gateway_failure=od.consecutive_errors,
                      enforcing_consecutive_gateway_failure=100, enforcing_consecutive_5xx=0)
        if od.interval is not None:
            kw["interval"] = od.interval.seconds
        if od.base_ejection_time is not None:
            kw["base_ejection_time"] = od.base_ejection_time.seconds
        if od.max_ejection_percent:
            kw["max_ejection_percent"] = od.max_ejection_percent
        if od.split_external_local_origin_errors:
            kw["split_external_local_origin_errors"] = True
            if od.consecutive_local_origin_failures:
                kw["consecutive_local_origin_failure"] = od.consecutive_local_origin_failures
        return cls(**kw)  # type: ignore[arg-type]
