"""bench/federation.py runs end to end in a tiny mode and reports every figure it promises (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "federation.py"


def test_the_federation_bench_reports_hop_latency_and_failover_time(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--rate", "50", "--seconds", "0.4", "--warmup", "0",
                          "--trials", "1", "--json", str(tmp_path / "f.json")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "f.json").read_text())
    assert set(result["latency_ms"]) == {"direct", "sidecar", "gateway"}
    for name, figures in result["latency_ms"].items():
        assert figures["errors"] == 0 and figures["requests"] >= 10, (name, figures)
        assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"], (name, figures)
    assert set(result["gateway_hop_added_ms"]) == {"p50", "p90", "p99"}
    assert len(result["failover_ms"]["trials"]) == 1 and result["failover_ms"]["median"] > 0
    assert "gateway hop adds: p50 " in out.stdout and "endpoint failure -> traffic moved: median " in out.stdout
