"""The drill report as one self-contained HTML page: inline SVG charts, no network, no libraries.

Three stacked panels over the same time axis: the share of each second's requests
answered per locality (one line per locality, labelled with its cluster), the failed
requests per second, and p50/p99 latency. The fault window is shaded on every panel.
A few lines of inline script add hover read-outs and mark the page as rendered
(``data-rendered`` on the chart, with the number of series) for tests in a browser.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

WIDTH, LEFT, RIGHT, PANEL, GAP, TOP = 920, 64, 24, 150, 46, 30
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
ERROR_COLOR, P50_COLOR, P99_COLOR = "#d62728", "#555555", "#111111"

_SCRIPT = """
(function () {
  var chart = document.getElementById('chart');
  var series = chart.querySelectorAll('polyline.share');
  chart.setAttribute('data-rendered', String(series.length));
  var readout = document.getElementById('readout');
  var rows = JSON.parse(document.getElementById('timeline-data').textContent);
  chart.addEventListener('mousemove', function (ev) {
    var box = chart.getBoundingClientRect();
    var x = (ev.clientX - box.left) * (%(width)d / box.width);
    var t = Math.floor((x - %(left)d) / %(step)f);
    var row = rows[t];
    if (!row) { readout.textContent = ''; return; }
    var parts = Object.keys(row.share_locality || {}).map(function (k) {
      return k + ' ' + Math.round(row.share_locality[k] * 100) + '%%';
    });
    readout.textContent = 't=' + row.t + 's  requests ' + row.requests + '  errors ' + row.errors +
      '  p50 ' + row.p50_ms + ' ms  p99 ' + row.p99_ms + ' ms  ' + parts.join('  ');
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:g}{unit}" if isinstance(v, (int, float)) else str(v)


def _panel(y0: float, title: str, step: float, n: int, window: Mapping[str, Any], body: list[str],
           ticks: Sequence[tuple[float, str]]) -> list[str]:
    out = [f'<g class="panel" transform="translate(0,{y0:.1f})">',
           f'<text x="{LEFT}" y="-8" class="title">{_e(title)}</text>']
    injected, removed = window.get("injected_at"), window.get("removed_at")
    if injected is not None:
        end = removed if removed is not None else n
        out.append(f'<rect class="fault" x="{LEFT + injected * step:.1f}" y="0" '
                   f'width="{max(1.0, (end - injected) * step):.1f}" height="{PANEL}"/>')
    out.append(f'<rect class="frame" x="{LEFT}" y="0" width="{n * step:.1f}" height="{PANEL}"/>')
    for frac, label in ticks:
        y = PANEL * (1 - frac)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + n * step:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>')
    out += body
    out.append("</g>")
    return out


def _line(points: list[tuple[float, float]], cls: str, color: str, extra: str = "") -> str:
    text = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="{cls}" fill="none" stroke="{color}" stroke-width="2" points="{text}"{extra}/>'


def chart_svg(report: Mapping[str, Any]) -> tuple[str, float]:
    timeline = report.get("timeline") or []
    n = max(1, len(timeline))
    step = (WIDTH - LEFT - RIGHT) / n
    window = report.get("fault_window") or {}
    localities: dict[str, str] = dict(report.get("localities") or {})
    for row in timeline:
        for loc in row.get("share_locality") or {}:
            localities.setdefault(loc, "")
    height = TOP + 3 * PANEL + 2 * GAP + 40
    out = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
           f'width="100%" role="img" aria-label="drill timeline">']
    # traffic share per locality
    body = []
    for k, (loc, cluster) in enumerate(sorted(localities.items())):
        pts = [(LEFT + (i + 0.5) * step, PANEL * (1 - (row.get("share_locality") or {}).get(loc, 0.0)))
               for i, row in enumerate(timeline) if row.get("requests")]
        label = f"{loc} ({cluster})" if cluster else loc
        body.append(_line(pts, "series share", PALETTE[k % len(PALETTE)],
                          f' data-locality="{_e(loc)}" data-cluster="{_e(cluster)}"')
                    + f'<title>{_e(label)}</title>')
    out += _panel(TOP, "share of requests answered, per locality", step, n, window, body,
                  [(0, "0%"), (0.5, "50%"), (1, "100%")])
    # errors
    worst = max([row.get("errors", 0) for row in timeline] + [1])
    bars = [f'<rect class="errors" x="{LEFT + i * step + 1:.1f}" y="{PANEL * (1 - row["errors"] / worst):.1f}" '
            f'width="{max(1.0, step - 2):.1f}" height="{PANEL * row["errors"] / worst:.1f}" fill="{ERROR_COLOR}">'
            f'<title>{row["t"]} s: {row["errors"]} failed</title></rect>'
            for i, row in enumerate(timeline) if row.get("errors")]
    out += _panel(TOP + PANEL + GAP, "failed requests per second (client view)", step, n, window, bars,
                  [(0, "0"), (1, str(worst))])
    # latency
    top_ms = max([row.get("p99_ms") or 0 for row in timeline] + [1.0])
    lat = []
    for key, color in (("p50_ms", P50_COLOR), ("p99_ms", P99_COLOR)):
        pts = [(LEFT + (i + 0.5) * step, PANEL * (1 - row[key] / top_ms)) for i, row in enumerate(timeline)
               if row.get(key) is not None]
        lat.append(_line(pts, f"latency {key[:3]}", color, ' stroke-dasharray="4 3"' if key == "p50_ms" else ""))
    out += _panel(TOP + 2 * (PANEL + GAP), "latency p50 (dashed) and p99, ms", step, n, window, lat,
                  [(0, "0"), (0.5, f"{top_ms / 2:.0f}"), (1, f"{top_ms:.0f}")])
    axis_y = TOP + 3 * PANEL + 2 * GAP + 16
    for i in range(0, n, max(1, n // 10)):
        out.append(f'<text class="tick" x="{LEFT + i * step:.1f}" y="{axis_y}" text-anchor="middle">{i}s</text>')
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[k % len(PALETTE)]}"></i>{_e(loc)}'
        f'{" (" + _e(cluster) + ")" if cluster else ""}</span>'
        for k, (loc, cluster) in enumerate(sorted(localities.items())))
    legend += '<span class="key"><i class="fault-key"></i>fault in force</span>'
    return f'<div class="legend">{legend}</div>' + "".join(out), step


def render_html(report: Mapping[str, Any]) -> str:
    svg, step = chart_svg(report)
    drill = report.get("drill") or {}
    scope = ", ".join(f"{k} {v}" for k, v in (drill.get("scope") or {}).items())
    verdict = report.get("verdict", "fail")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in report.get("reasons") or [])
    notes = "".join(f"<li>{_e(r)}</li>" for r in report.get("notes") or [])
    lat = report.get("latency_ms") or {}
    lat_rows = "".join(f"<tr><td>{_e(phase)}</td><td>{_fmt((lat.get(phase) or {}).get('p50_ms'), ' ms')}</td>"
                       f"<td>{_fmt((lat.get(phase) or {}).get('p99_ms'), ' ms')}</td></tr>"
                       for phase in ("before", "during", "after"))
    facts = [("requests", report.get("requests")), ("client errors", report.get("client_errors")),
             ("time to detect", _fmt(report.get("detect_seconds"), " s")),
             ("failover", _fmt(report.get("failover_seconds"), " s")),
             ("failback", _fmt(report.get("failback_seconds"), " s"))]
    fact_html = "".join(f"<div class='fact'><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in facts)
    data = json.dumps(report.get("timeline") or []).replace("</", "<\\/")
    script = _SCRIPT % {"width": WIDTH, "left": LEFT, "step": step}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>drill {_e(report.get('id', ''))}: {_e(verdict)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }}
.verdict {{ display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: bold; }}
.pass {{ background: #2ca02c; }} .fail {{ background: #d62728; }}
.facts {{ display: flex; gap: 24px; margin: 16px 0; }} .fact b {{ display: block; font-size: 22px; }}
.fact span {{ color: #666; }} .legend {{ margin: 8px 0; }} .key {{ margin-right: 16px; }}
.key i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }}
.fault-key, rect.fault {{ background: rgba(214,39,40,.12); fill: rgba(214,39,40,.12); }}
rect.frame {{ fill: none; stroke: #bbb; }} line.grid {{ stroke: #eee; }}
text.title {{ font-weight: bold; fill: #333; }} text.tick {{ font-size: 11px; fill: #666; }}
#readout {{ min-height: 1.4em; color: #444; font-family: monospace; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 12px 2px 0; text-align: left; }}
</style></head><body>
<h1>drill {_e(drill.get('type', ''))} <span class="verdict {_e(verdict)}">{_e(verdict.upper())}</span></h1>
<p>{_e(drill.get('service', ''))} loaded from {_e(drill.get('from', ''))} at {_e(drill.get('rps', ''))} requests/s
for {_e(drill.get('duration_seconds', ''))} s; fault on {_e(scope)}. Drill {_e(report.get('id', ''))},
started {_e(report.get('started_at', ''))}.</p>
{f'<h2>Why it failed</h2><ul class="reasons">{reasons}</ul>' if reasons else ''}
<div class="facts">{fact_html}</div>
{svg}
<div id="readout"></div>
<h2>Latency</h2><table><tr><th>phase</th><th>p50</th><th>p99</th></tr>{lat_rows}</table>
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<script type="application/json" id="timeline-data">{data}</script>
<script>{script}</script>
</body></html>
"""
