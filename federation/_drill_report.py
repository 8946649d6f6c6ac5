"""The drill report: its JSON document (the stable schema of the README), the files, past drills.

Every drill's report is kept in ``DIR/.meshfed/drills/<id>/`` (``report.json`` and
``report.html``) for ``fedctl drill list`` and ``show``; ``--report DIR`` writes a copy
where the user wants it. Keys are snake_case; times are seconds since the drill started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ._drill_html import render_html
from ._drill_journal import ACTIVE_DIR, drills_dir
from ._drill_load import Sample
from ._drill_timeline import Second, latency_by_cluster, locality_clusters, phase_latency
from ._drill_verdict import Verdict, Window
from ._errors import FederationError
from ._progress import table
from ._state import write_atomic

SCHEMA = "meshfed.io/drill-report/v1"


def errors_by_reason(samples: Iterable[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            out[s.error] = out.get(s.error, 0) + 1
    return dict(sorted(out.items()))


def build_report(*, drill_id: str, drill: Mapping[str, Any], verdict: Verdict, window: Window,
                 timeline: Sequence[Second], samples: Sequence[Sample], started_at: str, finished_at: str,
                 actions: Sequence[str] = (), undone: Sequence[str] = ()) -> dict[str, Any]:
    end = max([s.t + 1 for s in timeline] + [0])
    removed = window.removed if window.removed is not None else float(end)
    return {
        "schema": SCHEMA, "id": drill_id, "drill": dict(drill), "started_at": started_at, "finished_at": finished_at,
        "verdict": verdict.verdict, "reasons": list(verdict.reasons), "notes": list(verdict.notes),
        "requests": verdict.requests, "client_errors": verdict.client_errors,
        "errors_by_reason": errors_by_reason(samples),
        "detect_seconds": verdict.detect_seconds, "failover_seconds": verdict.failover_seconds,
        "failback_seconds": verdict.failback_seconds, "baseline_share": verdict.baseline_share,
        "fault_window": {"injected_at": round(window.injected, 3),
                         "removed_at": None if window.removed is None else round(window.removed, 3)},
        "actions": list(actions), "undone": list(undone),
        "latency_ms": {"before": phase_latency(samples, 0.0, window.injected),
                       "during": phase_latency(samples, window.injected, removed),
                       "after": phase_latency(samples, removed, float("inf")),
                       "during_by_cluster": latency_by_cluster(samples, window.injected, removed)},
        "localities": locality_clusters(samples),
        "timeline": [s.to_json() for s in timeline],
    }


def write_report(report: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "report.json", folder / "report.html"
    write_atomic(json_path, json.dumps(report, indent=1).encode() + b"\n")
    write_atomic(html_path, render_html(report).encode())
    return json_path, html_path


def store(mesh_dir: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    folder = drills_dir(mesh_dir) / str(report["id"])
    write_report(report, folder)
    return folder


def past_reports(mesh_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every stored report, oldest first (ids start with their UTC time)."""
    folder = drills_dir(mesh_dir)
    out = []
    for path in sorted(folder.glob("*/report.json")) if folder.is_dir() else ():
        if path.parent.name == ACTIVE_DIR:
            continue
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def find_report(mesh_dir: str | os.PathLike[str], drill_id: str) -> dict[str, Any]:
    reports = past_reports(mesh_dir)
    exact = [r for r in reports if r.get("id") == drill_id]
    found = exact or [r for r in reports if str(r.get("id", "")).startswith(drill_id)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = ", ".join(str(r.get("id")) for r in reports[-5:]) or "none yet"
        raise FederationError(f"no drill {drill_id!r} in {drills_dir(mesh_dir)} (latest: {known})")
    raise FederationError(f"{drill_id!r} names {len(found)} drills: " + ", ".join(str(r.get("id")) for r in found))


def _s(v: Any) -> str:
    return "-" if v is None else f"{v:g} s" if isinstance(v, (int, float)) else str(v)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _scope(drill: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (drill.get("scope") or {}).items())


def list_table(reports: Sequence[Mapping[str, Any]]) -> str:
    rows = [("ID", "TYPE", "SERVICE", "FAULT ON", "VERDICT", "REQUESTS", "ERRORS", "FAILOVER", "FAILBACK")]
    for r in reports:
        d = r.get("drill") or {}
        rows.append((str(r.get("id")), str(d.get("type")), str(d.get("service")), _scope(d), str(r.get("verdict")),
                     str(r.get("requests")), str(r.get("client_errors")), _s(r.get("failover_seconds")),
                     _s(r.get("failback_seconds"))))
    return table(rows)


def summary(report: Mapping[str, Any], files: Sequence[Path] = ()) -> str:
    d = report.get("drill") or {}
    slo = d.get("slo") or {}
    lat = report.get("latency_ms") or {}
    lines = [f"drill {report.get('id')}: {str(report.get('verdict')).upper()}",
             f"  {d.get('type')} on {_scope(d)}; {d.get('service')} loaded from {d.get('from')} at {d.get('rps')} "
             f"requests/s",
             f"  requests {report.get('requests')}, client errors {report.get('client_errors')}"
             + (f" (SLO --max-errors {slo['max_errors']})" if slo.get("max_errors") is not None else "")
             + (f" {report.get('errors_by_reason')}" if report.get("client_errors") else ""),
             f"  detected after {_s(report.get('detect_seconds'))}; traffic moved after "
             f"{_s(report.get('failover_seconds'))}"
             + (f" (SLO --max-failover-seconds {slo['max_failover_seconds']:g})"
                if slo.get("max_failover_seconds") is not None else "")
             + f"; back after {_s(report.get('failback_seconds'))}",
             "  latency p50/p99 ms: " + ", ".join(
                 f"{phase} {_num((lat.get(phase) or {}).get('p50_ms'))}/{_num((lat.get(phase) or {}).get('p99_ms'))}"
                 for phase in ("before", "during", "after"))]
    by_cluster = lat.get("during_by_cluster") or {}
    if by_cluster:
        lines.append("  during, answered by: " + ", ".join(
            f"{c} {_num(v.get('p50_ms'))}/{_num(v.get('p99_ms'))}" for c, v in by_cluster.items()))
    for reason in report.get("reasons") or []:
        lines.append(f"  FAILED: {reason}")
    for note in report.get("notes") or []:
        lines.append(f"  note: {note}")
    if files:
        lines.append("  report: " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
