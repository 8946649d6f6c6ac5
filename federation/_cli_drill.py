"""``fedctl drill``: failover drills on the running mesh of ``fedctl up``.

``fedctl drill KIND --service HOST --cluster C|--zone Z|--region R --from CLUSTER/WORKLOAD``
runs one drill (KIND: endpoints-down, gateway-down, link-down, control-plane-down,
latency, errors, region-evacuation, trust-rotation); ``drill run FILE`` runs the ``Drill``
resources of a file in order; ``drill list`` and ``drill show ID`` read past reports.
Flags and scenario files are turned into the same ``DrillSpec`` by the same decoder,
so they are checked by the same rules. Exit codes: 0 pass, 1 fail (or an error before
the drill could run), 130 interrupted.

Every drill command first undoes what an interrupted drill left in force (its journal).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from topology import load_file
from topology._decode import Decoder
from topology._drill import DrillSpec, DrillType

from ._errors import FederationError
from ._state import alive, read_state, resolve_dir

FLAGS = {"from": "--from", "service": "--service", "cluster": "--cluster", "zone": "--zone", "region": "--region",
         "duration": "--duration", "rps": "--rps", "port": "--port", "path": "--path",
         "slo.maxErrors": "--max-errors", "slo.maxFailoverSeconds": "--max-failover-seconds",
         "fault.delay": "--delay", "fault.percent": "--percent", "fault.httpStatus": "--http-status",
         "fault.steps": "--steps"}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR", help="the mesh (default: the mesh of the last 'fedctl up')")
    p.add_argument("--report", metavar="DIR", help="also write report.json and report.html into DIR")
    p.add_argument("--failback-wait", type=float, default=60.0, metavar="SECONDS",
                   help="after the load, keep loading up to this long until traffic is back (default 60)")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress line")


def register(sub: Any) -> None:
    drill = sub.add_parser("drill", help="failover drills on the running mesh, with a report",
                           description="Inject a fault at its real point of failure while loading a service "
                                       "from a workload, undo it, and judge failover against an SLO.")
    kinds = drill.add_subparsers(dest="drill_command", metavar="KIND|run|list|show", required=True)
    for kind in DrillType:
        p = kinds.add_parser(kind.value, help=f"run one {kind.value} drill")
        p.add_argument("--service", required=True, metavar="HOST", help="service loaded, e.g. echo.demo")
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--cluster", metavar="C")
        where.add_argument("--zone", metavar="Z")
        where.add_argument("--region", metavar="R")
        p.add_argument("--from", dest="from_", required=True, metavar="CLUSTER/WORKLOAD",
                       help="where the load comes from, through that workload's sidecar")
        p.add_argument("--duration", default="20s", help="load time (default 20s: 1/4 before, 1/2 fault, 1/4 after)")
        p.add_argument("--rps", type=float, default=20.0, help="requests per second (default 20)")
        p.add_argument("--port", type=int, help="service port (default: its first)")
        p.add_argument("--path", default="/", help="request path (default /)")
        p.add_argument("--max-errors", type=int, metavar="N", help="SLO: client errors allowed")
        p.add_argument("--max-failover-seconds", type=float, metavar="S", help="SLO: seconds until traffic moved")
        if kind is DrillType.LATENCY:
            p.add_argument("--delay", default="500ms", help="added delay (default 500ms)")
        if kind in (DrillType.LATENCY, DrillType.ERRORS):
            p.add_argument("--percent", type=float, default=100.0, help="percentage of requests affected")
        if kind is DrillType.ERRORS:
            p.add_argument("--http-status", type=int, default=503, help="status of failed requests (default 503)")
        if kind is DrillType.REGION_EVACUATION:
            p.add_argument("--steps", type=int, default=4, help="weight shifts to empty the region (default 4)")
        _common(p)
        p.set_defaults(func=run_kind, kind=kind.value)
    p = kinds.add_parser("run", help="run the Drill resources (meshfed.io/v1alpha1) of FILE in order")
    p.add_argument("file", metavar="FILE")
    _common(p)
    p.set_defaults(func=run_file)
    p = kinds.add_parser("list", help="past drills of the mesh")
    p.add_argument("--dir", metavar="DIR")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_list)
    p = kinds.add_parser("show", help="the report of a past drill (an ID prefix is enough)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--dir", metavar="DIR")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_show)


def spec_from_args(args: argparse.Namespace) -> DrillSpec:
    raw: dict[str, Any] = {"type": args.kind, "service": args.service, "from": args.from_,
                           "duration": args.duration, "rps": args.rps, "path": args.path}
    for key in ("cluster", "zone", "region", "port"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    raw["slo"] = {k: v for k, v in (("maxErrors", args.max_errors),
                                    ("maxFailoverSeconds", args.max_failover_seconds)) if v is not None}
    fault = {k: getattr(args, a) for k, a in (("delay", "delay"), ("percent", "percent"),
                                               ("httpStatus", "http_status"), ("steps", "steps")) if hasattr(args, a)}
    if fault:
        raw["fault"] = fault
    decoder = Decoder("<command line>", kind="Drill")
    spec = decoder.decode(DrillSpec, raw, "")
    if decoder.has_errors:
        raise FederationError("; ".join(f"{FLAGS.get(d.path, d.path or 'drill')}: {d.message}"
                                        for d in decoder.diagnostics if d.is_error))
    return spec


def new_id(spec: DrillSpec) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{spec.type.value}-{secrets.token_hex(2)}"


class _Progress:
    """The live line: rewritten in place on a terminal, one line every 5 s elsewhere."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.count = 0
        self.width = 0

    def __call__(self, line: str, final: bool) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = " " * max(0, self.width - len(line))
            sys.stderr.write(f"\r{line}{pad}" + ("\n" if final else ""))
            self.width = 0 if final else len(line)
        else:
            self.count += 0 if final else 1
            if final or self.count % 5 == 1:
                sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.width and not self.quiet:
            sys.stderr.write("\n")


def run_spec(spec: DrillSpec, args: argparse.Namespace) -> int:
    import trio

    from ._cli_up import find_workload
    from ._drill_config_faults import make_fault
    from ._drill_faults import resolve
    from ._drill_report import store, summary, write_report
    from ._drill_run import DrillRun
    mesh_dir = resolve_dir(args.dir)
    _recover(mesh_dir)
    state = read_state(mesh_dir)
    if not alive(state.supervisor.pid, state.supervisor.start_time):
        raise FederationError(f"the mesh of {mesh_dir} is not running (start it with 'fedctl up {mesh_dir} --detach')")
    key = find_workload(state, spec.from_)
    insts = [i for i in state.instances if (i.cluster, i.namespace, i.workload) == key]
    source = next((i for i in insts if i.ready), None)
    if source is None:
        raise FederationError(f"{spec.from_}: no ready instance to send the load from")
    target = resolve(spec, mesh_dir, state, source)
    drill_id = new_id(spec)
    progress = _Progress(args.quiet)
    run = DrillRun(spec, target, make_fault(spec, target, drill_id), drill_id, progress, args.failback_wait)
    try:
        report = trio.run(run.run)
    except BaseExceptionGroup as group:  # trio 0.35: errors raised in nurseries come grouped
        errors = [e for e in _leaves(group) if isinstance(e, FederationError)]
        if errors:
            raise errors[0] from None
        raise
    finally:
        progress.done()
    files = [store(mesh_dir, report) / "report.json"]
    if args.report:
        files = list(write_report(report, Path(args.report)))
    print(summary(report, files))
    if run.interrupted:
        return 130
    return 0 if report["verdict"] == "pass" else 1


def _recover(mesh_dir: Path) -> None:
    from ._drill_journal import recover
    for line in recover(mesh_dir):
        print(f"fedctl drill: undid what an interrupted drill left: {line}", file=sys.stderr)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def run_kind(args: argparse.Namespace) -> int:
    return run_spec(spec_from_args(args), args)


def run_file(args: argparse.Namespace) -> int:
    result = load_file(args.file)
    if result.errors:
        raise FederationError("\n".join(str(d) for d in result.errors))
    drills = result.of_kind("Drill")
    if not drills:
        raise FederationError(f"{args.file}: no Drill resource (apiVersion meshfed.io/v1alpha1, kind Drill)")
    worst = 0
    for res in drills:
        print(f"fedctl drill run: {res.name} ({res.spec.type.value}, {args.file}:{res.line})", file=sys.stderr)
        worst = max(worst, run_spec(res.spec, args))
        if worst == 130:
            break
    return worst


def run_list(args: argparse.Namespace) -> int:
    from ._drill_report import list_table, past_reports
    mesh_dir = resolve_dir(args.dir)
    _recover(mesh_dir)
    reports = past_reports(mesh_dir)
    if args.output == "json":
        print(json.dumps([{k: r.get(k) for k in ("id", "drill", "verdict", "requests", "client_errors",
                                                 "failover_seconds", "failback_seconds", "started_at")}
                          for r in reports], indent=1))
    elif reports:
        print(list_table(reports))
    else:
        print("no drills yet: run 'fedctl drill KIND ...'")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ._drill_journal import drills_dir
    from ._drill_report import find_report, summary
    mesh_dir = resolve_dir(args.dir)
    _recover(mesh_dir)
    report = find_report(mesh_dir, args.id)
    if args.output == "json":
        print(json.dumps(report, indent=1))
    else:
        folder = drills_dir(mesh_dir) / str(report["id"])
        print(summary(report, [folder / "report.json", folder / "report.html"]))
    return 0
