"""Data-plane speed: direct, one meshfed sidecar, a meshfed sidecar pair (mTLS) and HAProxy as the same pair.

Scenarios, all on one loopback block, nginx (20-byte body) as the app:

* ``direct``: client -> nginx.
* ``sidecar``: client -> meshfed outbound sidecar -> nginx. One sidecar in the path: the
  app is a plain endpoint (``proxyPort: 0``), so this is HTTP/1.1 parsing, routing and
  the upstream pool without TLS - what a sidecar costs before mTLS.
* ``sidecar_pair``: client -> outbound sidecar ==mTLS (pooled)==> inbound sidecar -> nginx.
* ``haproxy_pair``: the same pair made of two HAProxy processes (one thread each; TLS 1.3
  mTLS, h2 between them), the native reference.

Each scenario: one request to check the path, idle RSS, a warm-up, then ~1000 rps with
Poisson arrivals for the latency percentiles (open loop, latency from the scheduled send
time, bench/_load.py) with the proxies' CPU from /proc over that window, then wrk for
the saturation throughput while RSS is sampled. The meshfed sidecars are sent
absolute-form requests (they are explicit ``HTTP_PROXY`` proxies); HAProxy's outbound
listener is a reverse proxy and gets origin-form ones. The load generators run on the
same 2 cores as the servers: at saturation wrk and nginx take CPU from the proxies, so
the saturation figures are for this whole machine, not for a proxy alone.

Figures: ``vcpu_per_1k_rps`` is the proxies' utime+stime over the latency phase divided
by its achieved rps/1000, both proxies of a pair together; ``rss_idle_mb`` is VmRSS once
started and after the one check request, ``rss_loaded_mb`` the largest VmRSS seen under
load; RSS is per sidecar (the larger of a pair; both in ``details``); ``direct`` has no
proxy, so those are null. ``--json`` writes ``scenarios`` (exactly these seven figures),
``details`` (every phase's counts, errors and noise indicators), ``targets`` and ``settings``.

A shared machine makes tails noisy: the table shows, for each latency phase, the cores
that other work used and how long the proxies waited for a CPU (``/proc/<pid>/task/*/
schedstat``); when those are high the tail is the scheduler's, not the proxy's.
``--nice -10`` gives the run and everything it starts priority over such work (its
autogroup too: with autogroups, plain niceness does not reach across sessions).

    python3 bench/dataplane.py [--quick] [--json FILE] [--scenarios direct,haproxy_pair,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import OpenLoopClient, fetch_once, percentile, poisson_offsets  # noqa: E402
from _procstat import (  # noqa: E402
    CpuWindow, MachineWindow, Processes, machine_busy_fraction, restore_autogroup, rss_mb, set_priority,
)
from _report import FIELDS, render, targets  # noqa: E402
from _servers import (  # noqa: E402
    BODY, SERVICE, Layout, Target, direct_target, start_app, start_haproxy_pair, start_sidecar,
    start_sidecar_pair, write_certs,
)
from _wrk import run_wrk, wrk_script  # noqa: E402

SCENARIOS = ("direct", "haproxy_pair", "sidecar", "sidecar_pair")
"""In the order they run: the baselines first."""


@dataclass(frozen=True)
class Plan:
    scenarios: tuple[str, ...]
    rate: float
    warmup_seconds: float
    latency_seconds: float
    saturation_seconds: float
    connections: int
    threads: int
    max_connections: int
    seed: int
    block: str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="--quick: 2 s warm-up, 12 s at the latency rate, 8 s of saturation "
                                       "per scenario (about two minutes for all four).")
    p.add_argument("--quick", action="store_true", help="shorter phases: about two minutes in all")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), type=_scenarios,
                   help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s of the latency phase (default 1000)")
    p.add_argument("--warmup-seconds", type=float, help="warm-up at the latency rate (default 3, quick 2)")
    p.add_argument("--latency-seconds", type=float, help="latency phase length (default 30, quick 12)")
    p.add_argument("--saturation-seconds", type=float, help="wrk run length (default 20, quick 8)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open-loop client's connection bound (default 64)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival schedule (default 1)")
    p.add_argument("--block", type=_block, help="loopback block 127.a.b to use (default: random 127.60-99.x)")
    p.add_argument("--workdir", metavar="DIR", help="keep configs, certificates and server logs here")
    p.add_argument("--nice", type=int, default=0,
                   help="niceness for this run, every process it starts and its scheduler autogroup, e.g. -10 "
                        "on a machine shared with other work (default 0: unchanged; negative needs root)")
    return p


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scenario {', '.join(map(repr, unknown)) or repr(text)}; "
                                         f"choose from {', '.join(SCENARIOS)}")
    return tuple(n for n in SCENARIOS if n in names)


def _block(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a loopback block such as 127.61.5; found {text!r}")
    return text


def plan_from_args(args: argparse.Namespace) -> Plan:
    quick = args.quick

    def pick(value: float | None, full: float, short: float) -> float:
        return value if value is not None else (short if quick else full)

    for name in ("rate", "connections", "threads", "max_connections"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"dataplane.py: --{name.replace('_', '-')} must be positive; "
                             f"found {getattr(args, name)!r}")
    return Plan(args.scenarios, args.rate, pick(args.warmup_seconds, 3, 2), pick(args.latency_seconds, 30, 12),
                pick(args.saturation_seconds, 20, 8), args.connections, args.threads, args.max_connections,
                args.seed, args.block or f"127.{random.randint(60, 99)}.{random.randint(1, 250)}")


def measure(target: Target, plan: Plan, app_pid: int, log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, details) of one running scenario."""
    status, body = fetch_once(target.host, target.port, target.request)
    if status != 200 or body != BODY:
        raise RuntimeError(f"check request answered {status} {body[:200]!r}; expected 200 {BODY!r}")
    pids = target.pids
    idle = [rss_mb(p) for p in pids]
    with OpenLoopClient(target.host, target.port, target.request, max_connections=plan.max_connections) as client:
        client.run(poisson_offsets(plan.rate, plan.warmup_seconds, plan.seed + 1))
        _alive(target)
        log(f"  latency: {plan.latency_seconds:g} s at ~{plan.rate:g} rps (Poisson arrivals)")
        ours = [*pids, app_pid, os.getpid()]
        cpu, others = CpuWindow(pids).start(), CpuWindow(ours).start()
        machine = MachineWindow().start()
        lat = client.run(poisson_offsets(plan.rate, plan.latency_seconds, plan.seed))
        machine.stop(), cpu.stop(), others.stop()
    _alive(target)
    loaded = [rss_mb(p) for p in pids]
    if lat.ok == 0:
        raise RuntimeError(f"no successful request at {plan.rate:g} rps: {asdict(lat) | {'latencies_ms': []}}")

    def sample() -> None:
        for i, p in enumerate(pids):
            loaded[i] = max(loaded[i], rss_mb(p))

    log(f"  saturation: wrk -t{plan.threads} -c{plan.connections} for {plan.saturation_seconds:g} s")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(wrk_script(target.wrk_path, SERVICE))
        script.flush()
        sat_cpu = CpuWindow(pids).start()
        sat = run_wrk(target.url(), script.name, seconds=plan.saturation_seconds, connections=plan.connections,
                      threads=plan.threads, sample=sample if pids else None)
        sat_cpu.stop()
    _alive(target)
    figures = {
        "rps_saturation": sat.rps,
        "p50_ms": lat.pct(50), "p90_ms": lat.pct(90), "p99_ms": lat.pct(99),
        "vcpu_per_1k_rps": cpu.vcpu / (lat.rps / 1000) if pids else None,
        "rss_idle_mb": max(idle) if pids else None,
        "rss_loaded_mb": max(loaded) if pids else None,
    }
    details = {
        "latency_phase": {
            "scheduled": lat.scheduled, "ok": lat.ok, "rps": lat.rps, "non_2xx": lat.non_2xx,
            "connection_errors": lat.connection_errors, "unfinished": lat.unfinished,
            "p99_9_ms": lat.pct(99.9), "max_ms": lat.latencies_ms[-1],
            "service_p50_ms": percentile(lat.service_ms, 50), "service_p90_ms": percentile(lat.service_ms, 90),
            "service_p99_ms": percentile(lat.service_ms, 99),
            "max_send_lag_ms": lat.max_send_lag_ms, "new_connections": lat.connections_opened,
            "proxies_vcpu": cpu.vcpu if pids else None,
            "proxies_runqueue_wait": cpu.wait_fraction if pids else None,
            "other_load_cores": max(0.0, machine.cores - others.vcpu),
        },
        "saturation_phase": {"rps": sat.rps, "requests": sat.requests, "seconds": sat.seconds,
                             "socket_errors": sat.socket_errors, "non_2xx": sat.non_2xx,
                             "proxies_vcpu": sat_cpu.vcpu if pids else None,
                             "vcpu_per_1k_rps": sat_cpu.vcpu / (sat.rps / 1000) if pids and sat.rps else None},
        "rss_idle_mb_each": idle, "rss_loaded_mb_each": loaded,
        "processes": [f"{p.name} pid {p.pid}" for p in target.proxies],
    }
    return figures, details


def _alive(target: Target) -> None:
    for p in target.proxies:
        if p.popen.poll() is not None:
            raise RuntimeError(f"{p.name} (pid {p.pid}) exited with {p.popen.returncode}\n{p.tail()}")


def run(plan: Plan, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    layout = Layout(plan.block)
    certs = write_certs(workdir / "certs")
    scenarios: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    with Processes(workdir) as base:
        app = start_app(base, workdir / "nginx", layout)
        starters: dict[str, Callable[[Processes, Path], Target]] = {
            "direct": lambda procs, d: direct_target(layout, app),
            "haproxy_pair": lambda procs, d: start_haproxy_pair(procs, d, workdir / "certs", layout),
            "sidecar": lambda procs, d: start_sidecar(procs, d, layout),
            "sidecar_pair": lambda procs, d: start_sidecar_pair(procs, d, certs, layout),
        }
        for name in plan.scenarios:
            log(f"{name}:")
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            try:
                with Processes(folder) as procs:
                    scenarios[name], details[name] = measure(starters[name](procs, folder), plan, app.pid, log)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                scenarios[name] = dict.fromkeys(FIELDS)
                details[name] = {"error": f"{type(exc).__name__}: {exc}"}
            details[name]["seconds"] = round(time.monotonic() - started, 1)
    return {"scenarios": scenarios, "details": details}


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every ``with Processes``: each server stopped by PID


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args)
    signal.signal(signal.SIGTERM, _terminate)
    autogroup = set_priority(args.nice) if args.nice else None  # nginx, HAProxy, fedctl and wrk inherit it
    try:
        return _main(args, plan)
    finally:
        restore_autogroup(autogroup)


def _main(args: argparse.Namespace, plan: Plan) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    busy = machine_busy_fraction(1.0)
    log(f"dataplane bench on {plan.block}.0/24, {os.cpu_count()} cores, {busy:.0%} busy before the run; "
        f"{', '.join(plan.scenarios)}")
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(plan, workdir, log)
    else:
        with tempfile.TemporaryDirectory(prefix="meshfed-dataplane-") as tmp:
            result = run(plan, Path(tmp), log)
    result["targets"] = targets(result["scenarios"])
    result["settings"] = asdict(plan) | {"quick": args.quick, "nice": args.nice}
    result["machine"] = {"cores": os.cpu_count(), "busy_before_run": busy}
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any("error" in d for d in result["details"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
