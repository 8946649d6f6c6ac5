"""fedctl drill's report (JSON schema, HTML in headless Chromium), journal and the list/show/validate CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from federation._drill_journal import Action, Journal, recover, undo
from federation._drill_load import Sample
from federation._drill_report import build_report, store, summary, write_report
from federation._drill_timeline import Ejections, Scope, build_timeline
from federation._drill_verdict import Slo, Window, judge
from federation.cli import main

LOCALITIES = {"east-a": "us-east/us-east-1a", "east-b": "us-east/us-east-1b", "west": "us-west/us-west-1a"}
DRILL = {"type": "endpoints-down", "service": "echo.demo", "scope": {"cluster": "east-a"}, "from": "east-a/client",
         "duration_seconds": 8.0, "rps": 10.0, "slo": {"max_errors": 0, "max_failover_seconds": None}}


def make_report(drill_id: str = "20250101-000000-endpoints-down-abcd", fail_second: int | None = None) -> dict:
    samples = []
    for t in range(8):
        for k in range(10):
            cluster = "east-a" if t < 2 or t >= 6 else ("east-b" if k < 7 else "west")
            error = "503" if t == fail_second and k == 0 else None
            samples.append(Sample(t + k / 10, 5.0 + t, 503 if error else 200, None if error else cluster,
                                  None if error else LOCALITIES[cluster], error))
    window = Window(2.0, 6.0, scope="cluster east-a")
    timeline = build_timeline(samples, [Ejections(2.5, 1), Ejections(6.5, 0)], Scope("cluster", "east-a"))
    verdict = judge(timeline, window, Slo(0, None))
    return build_report(drill_id=drill_id, drill=DRILL, verdict=verdict, window=window, timeline=timeline,
                        samples=samples, started_at="2025-01-01T00:00:00+00:00",
                        finished_at="2025-01-01T00:00:08+00:00", actions=["east-a/echo-0 app: stopped (pid 1)"],
                        undone=["east-a/echo-0 app: sent SIGCONT to 1"])


def test_report_has_the_documented_stable_schema() -> None:
    r = make_report()
    assert list(r) == ["schema", "id", "drill", "started_at", "finished_at", "verdict", "reasons", "notes",
                       "requests", "client_errors", "errors_by_reason", "detect_seconds", "failover_seconds",
                       "failback_seconds", "baseline_share", "fault_window", "actions", "undone", "latency_ms",
                       "localities", "timeline"]
    assert (r["schema"], r["verdict"], r["requests"], r["client_errors"]) == (
        "meshfed.io/drill-report/v1", "pass", 80, 0)
    assert (r["failover_seconds"], r["failback_seconds"], r["fault_window"]) == (
        0.0, 0.0, {"injected_at": 2.0, "removed_at": 6.0})
    assert r["localities"] == {loc: cluster for cluster, loc in LOCALITIES.items()}
    assert r["latency_ms"]["during"] == {"requests": 40, "p50_ms": 8.0, "p99_ms": 10.0}
    assert r["latency_ms"]["during_by_cluster"] == {"east-b": {"requests": 28, "p50_ms": 8.0, "p99_ms": 10.0},
                                                    "west": {"requests": 12, "p50_ms": 8.0, "p99_ms": 10.0}}
    assert r["timeline"][3] == {"t": 3, "requests": 10, "errors": 0, "p50_ms": 8.0, "p99_ms": 8.0,
                                "share": {"east-b": 0.7, "west": 0.3},
                                "share_locality": {"us-east/us-east-1b": 0.7, "us-west/us-west-1a": 0.3},
                                "ejections": 1}
    json.dumps(r)  # plain JSON all the way down


def test_failed_report_summary_says_why() -> None:
    r = make_report(fail_second=4)
    assert (r["verdict"], r["client_errors"], r["errors_by_reason"]) == ("fail", 1, {"503": 1})
    text = summary(r, [Path("/r/report.json")])
    assert text.splitlines()[0] == "drill 20250101-000000-endpoints-down-abcd: FAIL"
    assert ("  FAILED: 1 of 80 requests failed as seen by the client, more than --max-errors 0 (first failures in "
            "second 4, 2 s after the injection)") in text.splitlines()
    assert text.splitlines()[-1] == "  report: /r/report.json"


def test_html_is_self_contained_with_one_share_series_per_locality_and_the_fault_shaded(tmp_path: Path) -> None:
    _, html_path = write_report(make_report(), tmp_path)
    page = html_path.read_text()
    assert page.count('class="series share"') == 3 and page.count('class="fault"') == 3
    assert all(f'data-locality="{loc}"' in page for loc in LOCALITIES.values())
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script src" not in page and "<link" not in page


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is needed (scripts/test.sh installs it)"
    return found


def test_html_renders_in_headless_chromium_without_console_errors(tmp_path: Path) -> None:
    _, html_path = write_report(make_report(fail_second=3), tmp_path)
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html_path.as_uri()],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    dom = done.stdout
    assert 'data-rendered="3"' in dom  # the inline script ran and counted one series per locality
    assert dom.count('class="series share"') == 3 and 'class="errors"' in dom


# -- journal --------------------------------------------------------------------------------


def test_journal_undo_removes_files_and_resumes_stopped_processes(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        fault_file = tmp_path / "fault.yaml"
        journal = Journal.open(tmp_path, "d1")
        journal.record(Action("file", "fault", path=str(fault_file)))
        fault_file.write_text("x")
        journal.record(Action("signal", "sleeper", sleeper.pid, None))
        os.killpg(sleeper.pid, signal.SIGSTOP)
        assert json.loads(journal.path.read_text())["actions"][1]["pid"] == sleeper.pid
        assert recover(tmp_path) == []  # its drill (this process) still runs: left alone
        lines = journal.undo_all()
        assert lines == [f"sleeper: sent SIGCONT to {sleeper.pid}", f"fault: removed {fault_file}"]
        assert not fault_file.exists() and not journal.path.exists()
        assert _state(sleeper.pid) != "T"
    finally:
        sleeper.kill()
        sleeper.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_recover_replays_the_journal_of_a_dead_drill(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        script = ("import sys; from federation._drill_journal import Journal, Action; "
                  "j = Journal.open(sys.argv[1], 'dead'); "
                  "j.record(Action('signal', 'sleeper', int(sys.argv[2]), None)); "
                  "j.record(Action('command', 'relink', argv=('link', 'a', 'b')))")
        subprocess.run([sys.executable, "-c", script, str(tmp_path), str(sleeper.pid)], check=True, timeout=30)
        os.killpg(sleeper.pid, signal.SIGSTOP)
        ran: list[tuple[str, ...]] = []
        lines = recover(tmp_path, run=lambda argv: (ran.append(argv), (0, "linked a-b"))[1])
        assert lines == ["drill dead: relink: fedctl link a b exited 0: linked a-b",
                         f"drill dead: sleeper: sent SIGCONT to {sleeper.pid}"]
        assert ran == [("link", "a", "b")] and _state(sleeper.pid) != "T"
        assert recover(tmp_path) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_undo_never_touches_a_recycled_pid() -> None:
    me = os.getpid()
    assert undo(Action("signal", "old app", me, start_time=1)) == f"old app: process {me} is gone; nothing to resume"


# -- CLI: list, show, validate, flags ---------------------------------------------------------


def test_list_and_show_read_stored_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store(tmp_path, make_report("20250101-000000-endpoints-down-aaaa"))
    store(tmp_path, make_report("20250102-000000-endpoints-down-bbbb", fail_second=3))
    capsys.readouterr()
    assert main(["drill", "list", "--dir", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["ID", "TYPE", "SERVICE", "FAULT", "ON", "VERDICT", "REQUESTS", "ERRORS", "FAILOVER",
                               "FAILBACK"]
    assert rows[2].split()[:7] == ["20250102-000000-endpoints-down-bbbb", "endpoints-down", "echo.demo", "cluster",
                                   "east-a", "fail", "80"]
    assert main(["drill", "show", "20250102", "--dir", str(tmp_path), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "fail"
    assert main(["drill", "show", "2025", "--dir", str(tmp_path)]) == 1
    assert "'2025' names 2 drills" in capsys.readouterr().err


def test_validate_accepts_drill_files_and_reports_their_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "d.yaml"
    bad.write_text("apiVersion: meshfed.io/v1alpha1\nkind: Drill\nmetadata: {name: d}\nspec:\n  type: latency\n"
                   "  service: echo.demo\n  from: a/b\n  cluster: c\n  duration: 1s\n")
    assert main(["validate", str(EXAMPLES)]) == 0
    assert "0 errors, 0 warnings, 0 skipped" in capsys.readouterr().err
    assert main(["validate", str(bad)]) == 1
    assert f"{bad}:9: spec.duration: must be 3s..3600s; found 1s" in capsys.readouterr().out


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster" / "drills"


@pytest.mark.parametrize("argv, message", [
    (["errors", "--service", "echo.demo", "--cluster", "c", "--from", "c", "--percent", "0"],
     "fedctl: error: --percent: must be more than 0 and at most 100; found number 0; "
     "--from: expected CLUSTER/WORKLOAD or CLUSTER/NAMESPACE/WORKLOAD; found string 'c'"),
    (["latency", "--service", "echo.demo", "--zone", "z", "--from", "c/w", "--delay", "soon"],
     "fedctl: error: --delay: invalid duration 'soon'"),
    (["gateway-down", "--service", "echo.demo", "--zone", "z", "--from", "c/w"],
     "fedctl: error: --zone: a gateway-down drill acts on a whole cluster: give cluster, not zone")])
def test_drill_flags_are_checked_like_drill_files(argv, message, tmp_path: Path, capsys) -> None:
    assert main(["drill", *argv, "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(message)


def test_drill_on_a_mesh_that_is_not_running_says_so(tmp_path: Path, capsys) -> None:
    assert main(["drill", "control-plane-down", "--service", "echo.demo", "--cluster", "c", "--from", "c/w",
                 "--dir", str(tmp_path)]) == 1
    assert "no mesh runs from" in capsys.readouterr().err
