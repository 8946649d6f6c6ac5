"""bench/dataplane.py's pure pieces: arguments, percentiles, /proc parsing, arrival schedules, wrk
output, configs and the verdict table. No load is generated here; the benchmark itself is run by hand."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import _load  # noqa: E402
import _procstat  # noqa: E402
import _report  # noqa: E402
import _servers  # noqa: E402
import _wrk  # noqa: E402
import dataplane  # noqa: E402

from gateway._config import load_proxy_config_text  # noqa: E402

# ---------------------------------------------------------------- /proc


STAT = ("4242 (fedctl proxy) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 567 0 0 20 0 1 0 "
        "912564 3133440 380 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_stat_ticks_are_utime_plus_stime_counted_after_the_last_parenthesis() -> None:
    assert _procstat.parse_stat_ticks(STAT) == 1234 + 567


def test_stat_ticks_of_a_plain_command_name() -> None:
    line = "27719 (cat) R 27717 27717 28049 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 912564 3133440 380"
    assert _procstat.parse_stat_ticks(line) == 10


def test_status_rss_is_read_in_kb() -> None:
    text = "Name:\thaproxy\nVmPeak:\t  90000 kB\nVmHWM:\t   30000 kB\nVmRSS:\t   20736 kB\nRssAnon:\t 1 kB\n"
    assert _procstat.parse_status_rss_kb(text) == 20736


@pytest.mark.parametrize("text, message", [
    ("Name:\tkworker\nState:\tI (idle)\n", "no VmRSS line (a kernel thread or a zombie?)"),
    ("VmRSS:\t 12 MB\n", "unexpected VmRSS unit 'MB' in 'VmRSS:\\t 12 MB'"),
])
def test_status_without_a_usable_rss_is_an_error_that_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        _procstat.parse_status_rss_kb(text)
    assert str(e.value) == message


def test_machine_busy_counts_everything_but_idle_and_iowait() -> None:
    text = "cpu  300 10 40 1000 50 0 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert _procstat.parse_proc_stat_busy(text) == (300 + 10 + 40 + 5, 300 + 10 + 40 + 1000 + 50 + 5)


def test_schedstat_gives_time_on_cpu_and_time_waiting_for_one() -> None:
    assert _procstat.parse_schedstat("1849391838 3114912 41\n") == (1849391838, 3114912)


def test_autogroup_nice_is_the_last_field() -> None:
    assert _procstat.parse_autogroup_nice("/autogroup-18 nice -10\n") == -10


def test_the_readers_work_on_this_process() -> None:
    assert _procstat.cpu_seconds(os.getpid()) > 0
    assert 1 < _procstat.rss_mb(os.getpid()) < 4096
    assert _procstat.runqueue_wait_seconds(os.getpid()) >= 0


def test_processes_are_stopped_by_pid_even_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="scenario broke"):
        with _procstat.Processes(tmp_path) as procs:
            one = procs.start("first", ["sleep", "30"])
            two = procs.start("second", ["sleep", "30"])
            raise RuntimeError("scenario broke")
    assert (one.popen.returncode, two.popen.returncode, procs.started) == (-15, -15, [])


def test_stop_pid_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    popen = subprocess.Popen(["sh", "-c", "trap '' TERM; echo up; exec sleep 30"], stdout=subprocess.PIPE)
    assert popen.stdout is not None and popen.stdout.readline() == b"up\n"  # the trap is set; exec keeps it
    _procstat.stop_pid(popen, grace=0.2)
    popen.stdout.close()
    assert popen.returncode == -9


# ---------------------------------------------------------------- percentiles and schedules


@pytest.mark.parametrize("p, expected", [(50, 50), (90, 90), (99, 99), (99.9, 100), (100, 100), (0.5, 1)])
def test_percentile_is_nearest_rank(p: float, expected: float) -> None:
    assert _load.percentile([float(v) for v in range(1, 101)], p) == expected


def test_percentile_of_one_value_is_that_value() -> None:
    assert [_load.percentile([0.25], p) for p in (1, 50, 100)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("values, p, message", [
    ([], 50, "percentile of no values"),
    ([1.0], 0, "percentile must be in (0, 100]; found 0"),
    ([1.0], 101, "percentile must be in (0, 100]; found 101"),
])
def test_percentile_refuses_what_has_no_answer(values: list[float], p: float, message: str) -> None:
    with pytest.raises(ValueError) as e:
        _load.percentile(values, p)
    assert str(e.value) == message


def test_poisson_schedule_is_reproducible_sorted_and_inside_the_window() -> None:
    a = _load.poisson_offsets(1000, 10, seed=7)
    assert a == _load.poisson_offsets(1000, 10, seed=7)
    assert a != _load.poisson_offsets(1000, 10, seed=8)
    assert all(0 < x < y < 10 for x, y in zip(a, a[1:]))


def test_poisson_schedule_has_the_rate_and_exponential_gaps() -> None:
    a = _load.poisson_offsets(1000, 20, seed=1)
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert 19_400 < len(a) < 20_600                       # 20 000 expected, sd ~141
    assert statistics.mean(gaps) == pytest.approx(1e-3, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)  # CV of an exponential
    assert sum(g < 1e-3 * 0.1053605 for g in gaps) / len(gaps) == pytest.approx(0.10, abs=0.01)  # P(gap < -ln .9/λ)


@pytest.mark.parametrize("rate, seconds", [(0, 1), (-5, 1), (1000, 0)])
def test_poisson_schedule_refuses_a_non_positive_rate_or_window(rate: float, seconds: float) -> None:
    with pytest.raises(ValueError) as e:
        _load.poisson_offsets(rate, seconds, seed=1)
    assert str(e.value) == f"rate and seconds must be positive; found rate={rate!r} seconds={seconds!r}"


def test_requests_are_absolute_form_for_the_explicit_proxy_and_origin_form_otherwise() -> None:
    assert _load.absolute_form_request("echo.bench.svc.cluster.local:80") == (
        b"GET http://echo.bench.svc.cluster.local:80/ HTTP/1.1\r\nHost: echo.bench.svc.cluster.local\r\n\r\n")
    assert _load.origin_form_request("echo.bench.svc.cluster.local") == (
        b"GET / HTTP/1.1\r\nHost: echo.bench.svc.cluster.local\r\n\r\n")


# ---------------------------------------------------------------- wrk

WRK_OK = """Running 3s test @ http://127.77.0.2:18080/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   557.81us    1.24ms  13.56ms   90.32%
    Req/Sec    35.81k    10.24k   54.76k    63.33%
  106824 requests in 3.01s, 17.12MB read
Requests/sec:  35465.17
Transfer/sec:      5.68MB
"""
WRK_ERRORS = """Running 1m test @ http://127.77.0.1:15001/
  2 threads and 8 connections
  9742 requests in 1.00m, 1.34MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 17
Requests/sec:    162.30
Transfer/sec:    341.74KB
"""


@pytest.mark.parametrize("text, expected", [
    (WRK_OK, _wrk.WrkResult(35465.17, 106824, 3.01, 0, 0)),
    (WRK_ERRORS, _wrk.WrkResult(162.30, 9742, 60.0, 6, 17)),
])
def test_wrk_summary_is_parsed(text: str, expected: _wrk.WrkResult) -> None:
    assert _wrk.parse_wrk(text) == expected


def test_wrk_output_without_a_summary_is_an_error_quoting_it() -> None:
    with pytest.raises(ValueError) as e:
        _wrk.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    assert str(e.value) == ("no 'N requests in' / 'Requests/sec:' lines in wrk output: "
                            "'unable to connect to 127.0.0.1:1 Connection refused\\n'")


def test_wrk_script_sets_the_absolute_form_target_and_host() -> None:
    assert _wrk.wrk_script("http://echo.bench.svc.cluster.local:80/", "echo.bench.svc.cluster.local") == (
        'wrk.path = "http://echo.bench.svc.cluster.local:80/"\n'
        'wrk.headers["Host"] = "echo.bench.svc.cluster.local"\n')
    assert _wrk.wrk_script(None, "h") == 'wrk.headers["Host"] = "h"\n'


# ---------------------------------------------------------------- arguments


def test_defaults_run_every_scenario_with_full_phases() -> None:
    plan = dataplane.plan_from_args(dataplane.build_parser().parse_args(["--block", "127.61.5"]))
    assert plan == dataplane.Plan(("direct", "haproxy_pair", "sidecar", "sidecar_pair"), 1000.0, 3, 30, 20, 8, 1,
                                  64, 1, "127.61.5")


def test_quick_shortens_the_phases_and_explicit_values_win() -> None:
    args = dataplane.build_parser().parse_args(["--quick", "--saturation-seconds", "5", "--json", "out.json"])
    plan = dataplane.plan_from_args(args)
    assert (plan.warmup_seconds, plan.latency_seconds, plan.saturation_seconds) == (2, 12, 5)
    assert args.json == "out.json"
    assert plan.block.startswith("127.") and 60 <= int(plan.block.split(".")[1]) <= 99


def test_scenarios_run_in_the_fixed_order_whatever_order_is_given() -> None:
    args = dataplane.build_parser().parse_args(["--scenarios", "sidecar_pair, direct"])
    assert args.scenarios == ("direct", "sidecar_pair")


@pytest.mark.parametrize("argv, message", [
    (["--scenarios", "direct,envoy"], "argument --scenarios: unknown scenario 'envoy'; "
                                      "choose from direct, haproxy_pair, sidecar, sidecar_pair"),
    (["--scenarios", ","], "argument --scenarios: unknown scenario ','; "
                           "choose from direct, haproxy_pair, sidecar, sidecar_pair"),
    (["--block", "10.0.0"], "argument --block: expected a loopback block such as 127.61.5; found '10.0.0'"),
    (["--block", "127.1.300"], "argument --block: expected a loopback block such as 127.61.5; found '127.1.300'"),
])
def test_bad_arguments_are_refused_naming_the_value(argv: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        dataplane.build_parser().parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_a_non_positive_rate_is_refused() -> None:
    with pytest.raises(SystemExit) as e:
        dataplane.plan_from_args(dataplane.build_parser().parse_args(["--rate", "0"]))
    assert str(e.value) == "dataplane.py: --rate must be positive; found 0.0"


# ---------------------------------------------------------------- configs


def test_haproxy_pair_is_the_reference_with_this_runs_addresses() -> None:
    outbound, inbound = _servers.haproxy_configs(Path("/c"), _servers.Layout("127.61.5"))
    assert "  ssl-default-server-options ssl-min-ver TLSv1.3\n" in outbound
    assert "  bind 127.61.5.1:18380\n" in outbound
    assert ("  server peer 127.61.5.2:18343 ssl verify required ca-file /c/ca.pem crt /c/client-sidecar.bundle.pem "
            "sni str(server.mesh.local) verifyhost server.mesh.local alpn h2\n") in outbound
    assert "  ssl-default-bind-options ssl-min-ver TLSv1.3\n" in inbound
    assert ("  bind 127.61.5.2:18343 ssl crt /c/server-sidecar.bundle.pem ca-file /c/ca.pem verify required "
            "alpn h2,http/1.1\n") in inbound
    assert inbound.endswith("  server app 127.61.5.2:18080\n")


def test_sidecar_documents_load_as_proxy_configs() -> None:
    tls = {k: Path(f"/certs/{k}.pem") for k in ("cert", "key", "chain", "root")}
    single = _servers.proxy_config("single", workload="client", sa="client", tls=None, endpoint_host="127.61.5.2",
                                   proxy_port=0, listeners="outbound: '127.61.5.3:15001'")
    inbound = _servers.proxy_config("inbound", workload="echo", sa="echo", tls=tls, endpoint_host="127.61.5.2",
                                    proxy_port=15006, listeners="inbound: '127.61.5.2:15006'",
                                    app="  app: {address: 127.61.5.2, ports: [{port: 18080, protocol: http}]}\n")
    for text in (single, inbound):
        config, diagnostics = load_proxy_config_text(text, "bench.yaml")
        assert config is not None and [str(d) for d in diagnostics] == []
    config, _ = load_proxy_config_text(single, "bench.yaml")
    assert config is not None
    endpoint = config.spec.services[0].endpoints[0]
    assert (endpoint.address, endpoint.port, endpoint.proxy_port) == ("127.61.5.2", 18080, 0)
    assert config.spec.listeners.outbound == "127.61.5.3:15001"


# ---------------------------------------------------------------- verdict


def _figures(rps: float, p50: float, p90: float, p99: float, vcpu: float | None = None,
             idle: float | None = None) -> dict[str, float | None]:
    return {"rps_saturation": rps, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "vcpu_per_1k_rps": vcpu,
            "rss_idle_mb": idle, "rss_loaded_mb": None if idle is None else idle + 5}


SCENARIOS = {
    "direct": _figures(100_000, 0.10, 0.20, 0.40),
    "haproxy_pair": _figures(16_000, 0.40, 0.60, 1.00, 0.18, 20),
    "sidecar": _figures(6_000, 0.50, 0.70, 1.40, 0.25, 30),
    "sidecar_pair": _figures(3_000, 0.90, 1.90, 2.80, 0.50, 42),
}


def test_targets_use_added_latency_ratio_to_haproxy_and_cpu_per_sidecar() -> None:
    verdict = {t["target"]: (round(t["value"], 6), t["met"]) for t in _report.targets(SCENARIOS)}
    assert verdict == {
        "vCPU per 1000 rps per sidecar (sidecar)": (0.25, True),
        "vCPU per 1000 rps per sidecar (sidecar_pair / 2)": (0.25, True),
        "sidecar_pair adds to p90 at ~1000 rps, ms": (1.7, False),
        "sidecar_pair adds to p99 at ~1000 rps, ms": (2.4, True),
        "sidecar_pair saturation / haproxy_pair's": (0.1875, False),
        "idle RSS per sidecar, MB": (42, False),
    }


def test_targets_of_scenarios_not_run_are_not_measured() -> None:
    verdict = _report.targets({"direct": SCENARIOS["direct"], "sidecar_pair": dict.fromkeys(_report.FIELDS)})
    assert [t["met"] for t in verdict] == [None] * 6


def test_table_shows_ratios_and_verdicts() -> None:
    details = {n: {"latency_phase": {"rps": 999.0, "non_2xx": 0, "connection_errors": 1, "unfinished": 0},
                   "saturation_phase": {"non_2xx": 0, "socket_errors": 2}} for n in SCENARIOS}
    details["sidecar"] = {"error": "RuntimeError: fedctl exited\n  sidecar stderr: Traceback"}
    text = _report.render({"scenarios": SCENARIOS, "details": details, "targets": _report.targets(SCENARIOS),
                           "settings": {"rate": 1000}, "machine": {"cores": 2, "busy_before_run": 0.05}})
    lines = text.splitlines()
    assert lines[1].split() == ["direct", "haproxy_pair", "sidecar", "sidecar_pair"]
    assert lines[2].split() == ["rps", "at", "saturation", "(wrk)", "100,000", "16,000", "6,000", "3,000"]
    assert lines[3].split() == ["x", "haproxy_pair", "6.25", "1.00", "0.38", "0.19"]
    row = next(line for line in lines if line.startswith("added over direct p90 ms"))
    assert row.split()[-4:] == ["0.000", "0.400", "0.500", "1.700"]
    row = next(line for line in lines if line.startswith("  added p90 x haproxy_pair"))
    assert row.split()[-4:] == ["-", "1.00", "1.25", "4.25"]
    row = next(line for line in lines if line.startswith("errors"))
    assert row.split()[-10:] == ["1", "/", "2", "1", "/", "2", "FAILED", "1", "/", "2"]
    assert "  sidecar_pair saturation / haproxy_pair's" in text and "NOT MET" in text
    assert "sidecar FAILED: RuntimeError: fedctl exited (its log tail is above and in the JSON)" in lines
    assert "Traceback" not in text
