"""The data-plane benchmark's table and its verdict on issue 4's targets.

Pure functions of the result dictionary that ``--json`` writes, so a saved run can be
re-rendered and the arithmetic (added latency, ratios to the HAProxy pair, per-sidecar
CPU) is checked by the test suite without any load.
"""

from __future__ import annotations

from typing import Any, Callable

FIELDS = ("rps_saturation", "p50_ms", "p90_ms", "p99_ms", "vcpu_per_1k_rps", "rss_idle_mb", "rss_loaded_mb")
REFERENCE = "haproxy_pair"

Figures = dict[str, dict[str, Any]]


def added(scenarios: Figures, name: str, field: str) -> float | None:
    """Latency ``field`` of ``name`` minus direct's: what the proxies add."""
    a, b = scenarios.get(name, {}).get(field), scenarios.get("direct", {}).get(field)
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _per_sidecar_vcpu(scenarios: Figures, name: str, count: int) -> float | None:
    v = scenarios.get(name, {}).get("vcpu_per_1k_rps")
    return None if v is None else v / count


def _idle_rss(scenarios: Figures) -> float | None:
    values = [scenarios.get(n, {}).get("rss_idle_mb") for n in ("sidecar", "sidecar_pair")]
    present = [v for v in values if v is not None]
    return max(present) if present else None


# (what, how it is computed, "<=" or ">=", limit, the trio + h11 pair's figure from issue 4)
TARGETS: tuple[tuple[str, Callable[[Figures], float | None], str, float, float], ...] = (
    ("vCPU per 1000 rps per sidecar (sidecar)", lambda s: _per_sidecar_vcpu(s, "sidecar", 1), "<=", 0.30, 0.45),
    ("vCPU per 1000 rps per sidecar (sidecar_pair / 2)", lambda s: _per_sidecar_vcpu(s, "sidecar_pair", 2),
     "<=", 0.30, 0.45),
    ("sidecar_pair adds to p90 at ~1000 rps, ms", lambda s: added(s, "sidecar_pair", "p90_ms"), "<=", 1.5, 2.3),
    ("sidecar_pair adds to p99 at ~1000 rps, ms", lambda s: added(s, "sidecar_pair", "p99_ms"), "<=", 2.5, 3.5),
    ("sidecar_pair saturation / haproxy_pair's", lambda s: ratio(s.get("sidecar_pair", {}).get("rps_saturation"),
                                                                 s.get(REFERENCE, {}).get("rps_saturation")),
     ">=", 0.20, 0.12),
    ("idle RSS per sidecar, MB", _idle_rss, "<=", 40.0, 28.0),
)


def targets(scenarios: Figures) -> list[dict[str, Any]]:
    out = []
    for what, compute, op, limit, trio_h11 in TARGETS:
        value = compute(scenarios)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"target": what, "value": value, "op": op, "limit": limit, "met": met, "trio_h11": trio_h11})
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def rows(scenarios: Figures, details: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    names = list(scenarios)
    ref = scenarios.get(REFERENCE, {})

    def per(fn: Callable[[str], float | None], digits: int = 2) -> list[str]:
        return [_fmt(fn(n), digits) for n in names]

    def field(f: str) -> Callable[[str], float | None]:
        return lambda n: scenarios[n].get(f)

    def vs_ref_added(f: str) -> Callable[[str], float | None]:
        return lambda n: None if n == "direct" else ratio(added(scenarios, n, f), added(scenarios, REFERENCE, f))

    def lat(key: str) -> Callable[[str], float | None]:
        return lambda n: details.get(n, {}).get("latency_phase", {}).get(key)

    return [
        ("rps at saturation (wrk)", per(field("rps_saturation"), 0)),
        (f"  x {REFERENCE}", per(lambda n: ratio(scenarios[n].get("rps_saturation"), ref.get("rps_saturation")))),
        ("achieved rps, latency phase", per(lat("rps"), 0)),
        ("p50 ms", per(field("p50_ms"), 3)),
        ("p90 ms", per(field("p90_ms"), 3)),
        ("p99 ms", per(field("p99_ms"), 3)),
        ("p99.9 ms", per(lat("p99_9_ms"), 3)),
        ("added over direct p50 ms", per(lambda n: added(scenarios, n, "p50_ms"), 3)),
        ("added over direct p90 ms", per(lambda n: added(scenarios, n, "p90_ms"), 3)),
        ("added over direct p99 ms", per(lambda n: added(scenarios, n, "p99_ms"), 3)),
        (f"  added p90 x {REFERENCE}", per(vs_ref_added("p90_ms"))),
        (f"  added p99 x {REFERENCE}", per(vs_ref_added("p99_ms"))),
        ("vCPU per 1000 rps (pair: both)", per(field("vcpu_per_1k_rps"), 3)),
        (f"  x {REFERENCE}", per(lambda n: ratio(scenarios[n].get("vcpu_per_1k_rps"), ref.get("vcpu_per_1k_rps")))),
        ("vCPU at saturation (proxies)", per(lambda n: details.get(n, {}).get("saturation_phase", {})
                                             .get("proxies_vcpu"))),
        ("RSS idle MB (per sidecar, max)", per(field("rss_idle_mb"), 1)),
        ("RSS loaded MB (per sidecar, max)", per(field("rss_loaded_mb"), 1)),
        ("p90 / p99 ms from actual send", [f"{_fmt(lat('service_p90_ms')(n), 3)} / {_fmt(lat('service_p99_ms')(n), 3)}"
                                           for n in names]),
        ("other load, cores (latency phase)", per(lat("other_load_cores"))),
        ("proxies waited for a CPU, s/s", per(lat("proxies_runqueue_wait"))),
        ("errors (latency / saturation)", [_errors(details.get(n, {})) for n in names]),
    ]


def _errors(d: dict[str, Any]) -> str:
    if "error" in d:
        return "FAILED"
    lat, sat = d.get("latency_phase", {}), d.get("saturation_phase", {})
    a = lat.get("non_2xx", 0) + lat.get("connection_errors", 0) + lat.get("unfinished", 0)
    b = sat.get("non_2xx", 0) + sat.get("socket_errors", 0)
    return f"{a} / {b}"


def render(result: dict[str, Any]) -> str:
    scenarios, details = result["scenarios"], result["details"]
    table = rows(scenarios, details)
    label_w = max(len(label) for label, _ in table)
    col_w = max(15, *(len(n) for n in scenarios))
    rate = result.get("settings", {}).get("rate", 1000)
    lines = [f"latencies at ~{rate:g} rps, Poisson arrivals, from scheduled send time",
             " " * label_w + "".join(f"  {n:>{col_w}}" for n in scenarios)]
    lines += [f"{label:<{label_w}}" + "".join(f"  {c:>{col_w}}" for c in cells) for label, cells in table]
    lines.append("")
    lines.append("issue 4 targets (2-core machine)                     measured    target   trio+h11  verdict")
    for t in result.get("targets", []):
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"  {t['target']:<50} {_fmt(t['value']):>9}  {t['op']} {t['limit']:<6g} {t['trio_h11']:>8g}  "
                     f"{verdict}")
    for name, d in details.items():
        if "error" in d:
            lines.append(f"{name} FAILED: {d['error'].splitlines()[0]} (its log tail is above and in the JSON)")
    busy = result.get("machine", {}).get("busy_before_run")
    if busy is not None:
        lines.append(f"machine: {result['machine'].get('cores')} cores, {busy:.0%} busy with other work "
                     "before the run (figures are noisy when this is high)")
    return "\n".join(lines)
