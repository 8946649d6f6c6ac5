"""Per-second aggregation of a drill's samples and ejection observations. Pure.

A request belongs to the second it was sent in (``t = floor(sent)``), so a second's
``errors`` and ``share`` describe what happened to the traffic that left then, however
long it took. ``share`` is per cluster (the answering echo app's ``cluster``) and
``share_locality`` per locality (``region/zone[/subzone]``); both are fractions of the
second's requests, so a second with failures has shares that sum below 1. Percentiles
are nearest-rank over every request that ended, failures included (a timeout is slow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ._drill_load import Sample


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a fault goes, and which answers it covers."""

    kind: str
    """``cluster``, ``zone`` or ``region``."""
    name: str

    def covers(self, cluster: str | None, locality: str | None) -> bool:
        if self.kind == "cluster":
            return cluster == self.name
        parts = (locality or "").split("/")
        if self.kind == "region":
            return parts[0] == self.name
        return len(parts) > 1 and parts[1] == self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Ejections:
    """What the client's sidecar reported ejected (``/clusters``) at one moment."""

    at: float
    hosts: int
    localities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Second:
    t: int
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    share: Mapping[str, float] = field(default_factory=dict)
    share_locality: Mapping[str, float] = field(default_factory=dict)
    ejections: int = 0
    """Hosts ejected by outlier detection at the last observation in this second (-1: none made)."""
    covered: int = 0
    """Requests answered by the fault's scope (its cluster, zone or region)."""
    healthy: int = 0
    """Requests answered successfully from outside the fault's scope, promptly (see ``prompt_ms``)."""
    counted: int = 0
    """Requests the two counts above are fractions of: all but those in flight when the fault came (which
    side of the fault they belong to is ambiguous)."""

    def to_json(self) -> dict[str, object]:
        return {"t": self.t, "requests": self.requests, "errors": self.errors, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "share": dict(self.share), "share_locality": dict(self.share_locality),
                "ejections": self.ejections}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1], 3)


def _straddles(s: Sample, edges: Sequence[float]) -> bool:
    end = s.sent + s.latency_ms / 1000.0
    return any(s.sent < edge <= end for edge in edges)


def build_timeline(samples: Iterable[Sample], ejections: Iterable[Ejections], scope: Scope,
                   until: float | None = None, edges: Sequence[float] = (), prompt_ms: float | None = None
                   ) -> list[Second]:
    """One ``Second`` per second from 0 to the last sample (or ``until``), empty seconds included;
    requests in flight at one of ``edges`` (the injection) are left out of the counts. An answer from outside the scope slower than
    ``prompt_ms`` is not counted healthy: it waited on the failed endpoints first (a retry)."""
    by_second: dict[int, list[Sample]] = {}
    for s in samples:
        by_second.setdefault(int(math.floor(s.sent)), []).append(s)
    seen: dict[int, int] = {}
    for e in sorted(ejections, key=lambda e: e.at):
        seen[int(math.floor(e.at))] = e.hosts
    last = max([*by_second, -1])
    if until is not None:
        last = max(last, math.ceil(until) - 1)
    out: list[Second] = []
    ejected = -1
    for t in range(0, last + 1):
        group = by_second.get(t, [])
        ejected = seen.get(t, ejected)
        n = len(group)
        clusters: dict[str, int] = {}
        localities: dict[str, int] = {}
        covered = healthy = counted = 0
        for s in group:
            if edges and _straddles(s, edges):
                continue
            counted += 1
            if not s.ok:
                continue
            if s.cluster is not None:
                clusters[s.cluster] = clusters.get(s.cluster, 0) + 1
            if s.locality is not None:
                localities[s.locality] = localities.get(s.locality, 0) + 1
            if scope.covers(s.cluster, s.locality):
                covered += 1
            elif prompt_ms is None or s.latency_ms <= prompt_ms:
                healthy += 1
        latencies = [s.latency_ms for s in group if s.status or s.error in ("timeout", "reset")]
        out.append(Second(
            t, n, sum(1 for s in group if not s.ok), percentile(latencies, 50), percentile(latencies, 99),
            {k: round(v / n, 4) for k, v in sorted(clusters.items())},
            {k: round(v / n, 4) for k, v in sorted(localities.items())}, ejected, covered, healthy, counted))
    return out


def prompt_threshold(samples: Iterable[Sample], injected: float) -> float:
    """Slowest answer still counted as served without waiting on a failure: 3x the p99 before the
    fault, and at least that p99 + 300 ms (1 s without a baseline). A call that waited on a hung
    endpoint waits for a timeout (seconds: a perTryTimeout, a connect timeout); the margin keeps
    a busy machine's slower seconds, or a farther locality, from counting as not moved."""
    before = [s.latency_ms for s in samples if s.sent + s.latency_ms / 1000.0 < injected and s.ok]
    p99 = percentile(before, 99)
    return 1000.0 if p99 is None else round(max(3 * p99, p99 + 300.0), 3)


def phase_latency(samples: Iterable[Sample], start: float, end: float) -> dict[str, float | None]:
    """p50/p99 (ms) of the requests sent in ``[start, end)``."""
    values = [s.latency_ms for s in samples if start <= s.sent < end and (s.status or s.error == "timeout")]
    return {"requests": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}


def latency_by_cluster(samples: Iterable[Sample], start: float, end: float) -> dict[str, dict[str, float | None]]:
    """``phase_latency`` of the answers sent in ``[start, end)``, per cluster that answered: a
    latency drill's scope should be slow, the rest as before."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        if s.cluster is not None and start <= s.sent < end:
            by.setdefault(s.cluster, []).append(s)
    return {c: phase_latency(group, start, end) for c, group in sorted(by.items())}


def locality_clusters(samples: Iterable[Sample]) -> dict[str, str]:
    """Locality -> the cluster seen answering from it (for labels: a locality is one cluster's here)."""
    out: dict[str, str] = {}
    for s in samples:
        if s.locality is not None and s.cluster is not None:
            out.setdefault(s.locality, s.cluster)
    return dict(sorted(out.items()))
