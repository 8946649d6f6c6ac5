"""Whether a link is up, and whether its imported endpoints may still be used: a pure policy.

Two failure modes users hit elsewhere: traffic sent to a dead cluster forever because
its endpoints were never withdrawn (cilium#19217, istio#36365), and healthy remote
endpoints wiped by a single lost probe (linkerd2#4549). The policy sits between:

* every successful contact (a probe answered, an export received) makes the link
  ``up`` and restarts the TTL;
* failed probes count; below ``failure_threshold`` in a row the link is ``degraded``
  and nothing changes for traffic; at the threshold it is ``down`` - its endpoints are
  still served (the peer's gateway may well be fine while its control plane restarts);
* once ``ttl`` has passed since the last successful contact the link is ``expired``
  and its imports must be removed; they come back with the next successful sync.

A link that never succeeded is ``connecting`` (nothing imported yet). Times are
seconds from an injected monotonic clock; the policy holds no timer of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ._errors import FederationError

DEFAULT_INTERVAL = 1.0
DEFAULT_THRESHOLD = 3
DEFAULT_TTL = 30.0


class ProbePolicyError(FederationError):
    """Probe settings that cannot work (a TTL shorter than detecting a failure, ...)."""


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    interval: float = DEFAULT_INTERVAL
    """Seconds between probes of the peer's federation API. Defaults to 1."""
    failure_threshold: int = DEFAULT_THRESHOLD
    """Failed probes in a row that make the link ``down``. Defaults to 3."""
    ttl: float = DEFAULT_TTL
    """Seconds after the last successful contact at which imported endpoints are removed.
    Defaults to 30; must exceed ``interval * failure_threshold`` so that a blip never
    reaches it."""
    timeout: float = 2.0
    """Seconds a probe may take before it counts as failed."""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ProbePolicyError(f"probe interval must be positive; found {self.interval!r}")
        if self.failure_threshold < 1:
            raise ProbePolicyError(f"failure threshold must be at least 1; found {self.failure_threshold!r}")
        if self.ttl <= self.interval * self.failure_threshold:
            raise ProbePolicyError(f"ttl ({self.ttl:g} s) must be longer than interval x failure threshold "
                                   f"({self.interval:g} s x {self.failure_threshold}): a blip would expire the link")
        if self.timeout <= 0:
            raise ProbePolicyError(f"probe timeout must be positive; found {self.timeout!r}")

    def to_json(self) -> dict[str, Any]:
        return {"interval": self.interval, "failureThreshold": self.failure_threshold, "ttl": self.ttl,
                "timeout": self.timeout}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> "ProbePolicy":
        doc = doc or {}
        return cls(float(doc.get("interval", DEFAULT_INTERVAL)), int(doc.get("failureThreshold", DEFAULT_THRESHOLD)),
                   float(doc.get("ttl", DEFAULT_TTL)), float(doc.get("timeout", 2.0)))


CONNECTING, UP, DEGRADED, DOWN, EXPIRED = "connecting", "up", "degraded", "down", "expired"


class LinkHealth:
    """One link's health as seen by the importer (module docstring)."""

    def __init__(self, policy: ProbePolicy, now: float) -> None:
        self.policy = policy
        self.created = now
        self.last_ok: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.latency: float | None = None
        """Seconds the last successful probe took."""

    def __repr__(self) -> str:
        return f"<LinkHealth failures={self.failures} last_ok={self.last_ok} error={self.last_error!r}>"

    def success(self, now: float, latency: float | None = None) -> None:
        self.last_ok = now
        self.failures = 0
        self.last_error = None
        if latency is not None:
            self.latency = latency

    def failure(self, now: float, reason: str) -> None:
        self.failures += 1
        self.last_error = reason

    def state(self, now: float) -> str:
        if self.last_ok is None:
            return CONNECTING
        if now - self.last_ok >= self.policy.ttl:
            return EXPIRED
        if self.failures >= self.policy.failure_threshold:
            return DOWN
        return DEGRADED if self.failures else UP

    def keeps_imports(self, now: float) -> bool:
        """Whether endpoints imported over this link may still be served."""
        return self.state(now) not in (EXPIRED, CONNECTING)
