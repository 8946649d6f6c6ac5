"""A drill's verdict from its timeline: errors seen by the client, failover, failback, SLO. Pure.

Times are seconds since the drill started; the fault was in force from ``injected``
to ``removed``. Second ``t`` of the timeline holds the requests sent in ``[t, t+1)``.

- **failover**: the first second from which, until the fault is removed, at least
  ``MOVED`` (95 %) of each second's requests were answered successfully from outside the
  fault's scope; ``failover_seconds`` is how long after the injection that second
  starts (0 when traffic never was on the scope). Only for faults that must move
  traffic (``moves_traffic``); None when it never happened.
- **failback**: after the fault is removed, the first second whose share answered from
  the scope is back to ``MOVED`` of its share before the fault.
- **detect**: the first second after the injection in which the client's sidecar had
  more hosts ejected than before it, or the scope's share fell below half of what it was.

Verdict: ``fail`` with one human reason per broken rule, ``pass`` when none is broken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ._drill_timeline import Second

MOVED = 0.95
"""Fraction of traffic that must be on healthy localities for traffic to have moved."""


@dataclass(frozen=True, slots=True)
class Slo:
    max_errors: int | None = None
    max_failover_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Window:
    injected: float
    removed: float | None
    """None when the fault was never removed within the load (or the drill was cut short)."""
    moves_traffic: bool = True
    """Whether the fault should move traffic off its scope (endpoints, gateway, link down...)."""
    scope: str = "the fault's scope"
    """How messages name the scope: ``cluster east-a``."""
    prompt_ms: float | None = None
    """The timeline's threshold for a prompt answer (named in messages)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]
    requests: int
    client_errors: int
    detect_seconds: float | None
    failover_seconds: float | None
    failback_seconds: float | None
    baseline_share: float | None
    """Share of the requests answered from the fault's scope before the fault."""
    notes: tuple[str, ...] = field(default=())
    """Observations that are not failures (shown in the report)."""

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


def _share(s: Second) -> float:
    return s.covered / s.counted if s.counted else 0.0


def _healthy(s: Second) -> float:
    return s.healthy / s.counted if s.counted else 0.0


def baseline_share(timeline: Sequence[Second], injected: float) -> float | None:
    before = [s for s in timeline if s.t + 1 <= injected and s.counted]
    total = sum(s.counted for s in before)
    return sum(s.covered for s in before) / total if total else None


def failover_at(timeline: Sequence[Second], window: Window) -> float | None:
    """Seconds from the injection until traffic had moved, or None."""
    start = int(math.floor(window.injected))
    end = math.inf if window.removed is None else window.removed
    during = [s for s in timeline if s.t >= start and s.t + 1 <= end and s.counted]
    moved_from = None
    for s in during:
        if _healthy(s) >= MOVED:
            if moved_from is None:
                moved_from = s.t
        else:
            moved_from = None
    if moved_from is None:
        return None
    return round(max(0.0, moved_from - window.injected), 3)


def failback_at(timeline: Sequence[Second], window: Window, baseline: float | None) -> float | None:
    if window.removed is None:
        return None
    if baseline is None or baseline < 1 - MOVED:
        return 0.0  # traffic was never on the scope: nothing to come back
    start = int(math.floor(window.removed))
    for s in timeline:
        if s.t >= start and s.counted and _share(s) >= MOVED * baseline:
            return round(max(0.0, s.t - window.removed), 3)
    return None


def detect_at(timeline: Sequence[Second], window: Window, baseline: float | None) -> float | None:
    before = [s.ejections for s in timeline if s.t + 1 <= window.injected]
    ejected_before = max(before + [0])
    start = int(math.floor(window.injected))
    end = math.inf if window.removed is None else window.removed + 1
    for s in timeline:
        if s.t < start or s.t >= end:
            continue
        dropped = baseline is not None and baseline >= 1 - MOVED and s.counted and _share(s) < baseline / 2
        if s.ejections > ejected_before or dropped:
            return round(max(0.0, s.t - window.injected), 3)
    return None


def judge(timeline: Sequence[Second], window: Window, slo: Slo, *, interrupted: str | None = None,
          extra_reasons: Sequence[str] = ()) -> Verdict:
    requests = sum(s.requests for s in timeline)
    errors = sum(s.errors for s in timeline)
    baseline = baseline_share(timeline, window.injected)
    failover = failover_at(timeline, window) if window.moves_traffic else None
    failback = failback_at(timeline, window, baseline) if window.moves_traffic else None
    detect = detect_at(timeline, window, baseline)
    reasons: list[str] = []
    notes: list[str] = []
    if interrupted:
        reasons.append(f"the drill was interrupted ({interrupted}); the fault was undone")
    if requests == 0:
        reasons.append("no request was sent: the load never started")
    elif errors == requests:
        reasons.append(f"all {requests} requests failed: is the service name right, does it answer at all?")
    if slo.max_errors is not None and errors > slo.max_errors:
        first = next(s for s in timeline if s.errors)
        reasons.append(f"{errors} of {requests} requests failed as seen by the client, more than --max-errors "
                       f"{slo.max_errors} (first failures in second {first.t}, "
                       f"{_when(first.t, window)})")
    if window.moves_traffic and slo.max_failover_seconds is not None and requests:
        if failover is None:
            best = max((_healthy(s) for s in timeline if s.t >= window.injected and s.counted
                        and (window.removed is None or s.t + 1 <= window.removed)), default=0.0)
            no_ejection = detect is None or not any(s.ejections > 0 for s in timeline)
            why = (" and the client's sidecar ejected no endpoint (is outlierDetection set for the service?)"
                   if no_ejection else "")
            prompt = f" within {window.prompt_ms:g} ms" if window.prompt_ms is not None else ""
            if best >= MOVED:  # it moved, then came back while the fault was still in force
                last = max(s.t for s in timeline if s.t >= window.injected and s.counted and _healthy(s) < MOVED
                           and (window.removed is None or s.t + 1 <= window.removed))
                worst = min(_healthy(s) for s in timeline if s.t == last)
                reasons.append(f"traffic did not stay moved: in second {last} only {worst:.0%} of the requests "
                               f"were answered{prompt} from outside {window.scope} while the fault was in force, "
                               f"below {MOVED:.0%}")
            else:
                reasons.append(f"traffic never moved: at best {best:.0%} of a second's requests were answered"
                               f"{prompt} from outside {window.scope} while the fault was in force, "
                               f"below {MOVED:.0%}{why}")
        elif failover > slo.max_failover_seconds:
            reasons.append(f"traffic took {failover:g} s to move, more than --max-failover-seconds "
                           f"{slo.max_failover_seconds:g}")
    if window.moves_traffic and baseline is not None and baseline < 1 - MOVED:
        notes.append(f"only {baseline:.0%} of the traffic was on the fault's scope before the fault: "
                     "failover had nothing to move")
    if window.moves_traffic and window.removed is not None and failback is None and requests:
        notes.append("traffic had not come back to the scope when the load ended (ejected hosts return after "
                     "their baseEjectionTime)")
    reasons.extend(extra_reasons)
    return Verdict(not reasons, tuple(reasons), requests, errors, detect, failover, failback,
                   None if baseline is None else round(baseline, 4), tuple(notes))


def _when(t: int, window: Window) -> str:
    if t + 1 <= window.injected:
        return "before the fault"
    if window.removed is None or t < window.removed:
        return f"{max(0.0, t - window.injected):g} s after the injection"
    return f"{t - window.removed:g} s after the fault was removed"

