"""``fedctl up``, ``down``, ``status``, ``scale`` and ``curl``: a whole mesh on this machine.

``up DIR`` starts it (see ``_up``); the other commands act on the mesh of DIR, or without
DIR on the mesh of the last ``fedctl up`` (remembered in ``$XDG_STATE_HOME/meshfed/last-up``,
``~/.local/state/meshfed/last-up`` by default). This module imports only what it needs
at start: ``fedctl curl`` and ``status`` are run in loops by scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ._errors import FederationError
from ._state import InstanceRecord, MeshState, StateError, alive, clean_stale, read_state, resolve_dir, signal_process

DOWN_TIMEOUT = 90.0
SCALE_TIMEOUT = 60.0


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="run every cluster of a topology on this machine",
                       description="Start every cluster of the topology in DIR: per cluster a control plane "
                                   "(discovery+CA :15012, metrics :15014, DNS :15053 on the block's .1), per "
                                   "workload instance its app and a sidecar on its own loopback address. Stays "
                                   "in the foreground until Ctrl-C, or with --detach returns once all is ready.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--detach", "-d", action="store_true", help="run in the background; return once ready")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="when not ready after this long: with --detach give up and stop what was started, "
                        "in the foreground say what is not ready (default 120)")
    p.add_argument("--wiring", choices=("files", "discovery"), default=None,
                   help="how sidecars get config and certificates: over the control plane's discovery and CA "
                        "service on :15012 (default), or as files (the control plane writes each proxy's config "
                        "document, fedctl up issues the certificates); $MESHFED_WIRING sets the default")
    p.set_defaults(func=run_up)

    p = sub.add_parser("down", help="stop a mesh started with 'fedctl up --detach'")
    p.add_argument("dir", nargs="?", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--timeout", type=float, default=DOWN_TIMEOUT, metavar="SECONDS",
                   help="wait this long for a clean stop before killing what is left (default 90)")
    p.set_defaults(func=run_down)

    p = sub.add_parser("status", help="clusters, workloads, readiness, config versions, certificates")
    p.add_argument("dir", nargs="?", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_status)

    p = sub.add_parser("scale", help="change a workload's instance count in one cluster (0 included)")
    p.add_argument("target", metavar="CLUSTER/WORKLOAD", help="or CLUSTER/NAMESPACE/WORKLOAD")
    p.add_argument("--replicas", type=int, required=True, metavar="N")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--timeout", type=float, default=SCALE_TIMEOUT, metavar="SECONDS",
                   help="wait this long for the new instances to be ready (default 60)")
    p.set_defaults(func=run_scale)

    p = sub.add_parser("curl", help="send an HTTP request from a workload, through its sidecar",
                       description="Like 'kubectl exec CLUSTER/WORKLOAD -- curl URL': the request leaves the "
                                   "workload's sidecar outbound listener, as the app's own requests do.")
    p.add_argument("target", metavar="CLUSTER/WORKLOAD")
    p.add_argument("url", metavar="URL")
    p.add_argument("-f", "--fail", action="store_true", help="exit 22 (no body) for a status >= 400")
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers first")
    p.add_argument("-X", "--request", dest="method", metavar="METHOD")
    p.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("-d", "--data", metavar="DATA", help="request body (@FILE reads a file); POST by default")
    p.add_argument("-m", "--max-time", type=float, metavar="SECONDS", help="give up after this long (exit 28)")
    p.add_argument("-s", "--silent", action="store_true", help="accepted for curl habits; there is no meter")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.set_defaults(func=run_curl)


def run_up(args: argparse.Namespace) -> int:
    from ._up import TopologyInvalid, run_detached, run_foreground
    mesh_dir = Path(args.dir).resolve()
    wiring = args.wiring or default_wiring()
    try:
        if args.detach:
            return run_detached(mesh_dir, wiring, args.timeout)
        return run_foreground(mesh_dir, wiring, args.timeout)
    except TopologyInvalid as exc:
        print(f"fedctl up: {mesh_dir} does not validate; nothing was started:", file=sys.stderr)
        for line in exc.messages:
            print(line, file=sys.stderr)
        return 1


def default_wiring() -> str:
    """Discovery (config pushed over :15012, certificates by CSR); MESHFED_WIRING=files writes
    config documents and certificates to files instead."""
    return os.environ.get("MESHFED_WIRING") or "discovery"


# -- down --------------------------------------------------------------------------------------


def _running_state(mesh_dir: Path) -> MeshState:
    state = read_state(mesh_dir)
    if not alive(state.supervisor.pid, state.supervisor.start_time):
        raise StateError(f"the mesh of {mesh_dir} is not running: its supervisor (pid {state.supervisor.pid}) is "
                         "gone; 'fedctl down' cleans up what it left", str(mesh_dir))
    return state


def run_down(args: argparse.Namespace) -> int:
    mesh_dir = resolve_dir(args.dir)
    try:
        state = read_state(mesh_dir)
    except StateError:
        print(f"fedctl down: nothing runs from {mesh_dir}")
        return 0
    sup = state.supervisor
    if alive(sup.pid, sup.start_time):
        print(f"fedctl down: stopping the mesh of {mesh_dir} (supervisor pid {sup.pid})...", flush=True)
        signal_process(sup, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while alive(sup.pid, sup.start_time) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(sup.pid, sup.start_time):
            print(f"fedctl down: the supervisor did not stop within {args.timeout:g} s; killing every process",
                  file=sys.stderr)
            signal_process(sup, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(sup.pid, sup.start_time) and time.monotonic() < deadline:
                time.sleep(0.05)
    killed = clean_stale(mesh_dir)  # whatever the supervisor left (none after a clean stop)
    deadline = time.monotonic() + 5
    while any(alive(p.pid, p.start_time) for p in state.processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p.pid for p in state.processes() if alive(p.pid, p.start_time)]
    if left:
        raise FederationError(f"processes still running after down: {', '.join(map(str, left))}")
    extra = f"; killed {len(killed)} leftover process(es)" if killed else ""
    print(f"fedctl down: stopped {len(state.pids())} process(es) of {len(state.clusters)} cluster(s){extra}")
    return 0


# -- status ------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    from ._launch import Layout
    from ._status import status_json, status_text
    from ._drill_journal import recover
    mesh_dir = resolve_dir(args.dir)
    for line in recover(mesh_dir):  # a drill interrupted by a crash is undone here too (issue 8)
        print(f"drill undone: {line}", file=sys.stderr)
    state = read_state(mesh_dir)
    doc = status_json(state, Layout(mesh_dir))
    if args.output == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(status_text(doc))
    return 0


# -- scale -------------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, str | None, str]:
    """``CLUSTER/WORKLOAD`` or ``CLUSTER/NAMESPACE/WORKLOAD`` -> (cluster, namespace or None, workload)."""
    parts = text.split("/")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise FederationError(f"expected CLUSTER/WORKLOAD (or CLUSTER/NAMESPACE/WORKLOAD); found {text!r}")


def find_workload(state: MeshState, text: str) -> tuple[str, str, str]:
    cluster, namespace, name = parse_target(text)
    if state.cluster(cluster) is None:
        raise FederationError(f"unknown cluster {cluster!r}; the clusters are: "
                              + ", ".join(c.name for c in state.clusters))
    known = [w for w in state.workloads if w.cluster == cluster]
    found = [w for w in known if w.name == name and namespace in (None, w.namespace)]
    if not found:
        raise FederationError(f"cluster {cluster!r} runs no workload {name!r}; its workloads are: "
                              + ", ".join(sorted(f"{w.namespace}/{w.name}" for w in known)))
    if len(found) > 1:
        raise FederationError(f"workload {name!r} exists in several namespaces of {cluster!r} ("
                              + ", ".join(w.namespace for w in found) + "): say CLUSTER/NAMESPACE/WORKLOAD")
    return (cluster, found[0].namespace, name)


def find_instance(state: MeshState, text: str) -> InstanceRecord:
    """The instance of the workload ``text`` names to act from (curl, check): a ready one if any."""
    cluster, namespace, name = find_workload(state, text)
    insts = [i for i in state.instances if (i.cluster, i.namespace, i.workload) == (cluster, namespace, name)]
    if not insts:
        raise FederationError(f"{cluster}/{namespace}/{name} has no instances (scaled to 0)")
    return next((i for i in insts if i.ready), insts[0])


def proxies_in_sync(mesh_dir: Path, state: MeshState, cluster: str) -> bool:
    """Whether every proxy of ``cluster`` runs the document its control plane serves now: over
    discovery, each ACKed exactly that document (the control plane compares digests); with
    config files the sidecars re-read theirs within a second, which the caller's polling covers."""
    if state.wiring != "discovery":
        return True
    from ._launch import Layout
    try:
        synced = json.loads(Layout(mesh_dir).cp_status(cluster).read_text()).get("inSync") or {}
    except (OSError, ValueError):
        return False
    return all(synced.get(f"{i.namespace}/{i.instance}") for i in state.instances if i.cluster == cluster)


def run_scale(args: argparse.Namespace) -> int:
    from ._scale import read_overrides, write_overrides
    if args.replicas < 0:
        raise FederationError(f"--replicas must be 0 or more; found {args.replicas}")
    mesh_dir = resolve_dir(args.dir)
    state = _running_state(mesh_dir)
    key = find_workload(state, args.target)
    before = len([i for i in state.instances if (i.cluster, i.namespace, i.workload) == key])
    overrides = read_overrides(mesh_dir)
    overrides[key] = args.replicas
    write_overrides(mesh_dir, overrides)
    deadline = time.monotonic() + args.timeout
    while True:
        state = _running_state(mesh_dir)
        insts = [i for i in state.instances if (i.cluster, i.namespace, i.workload) == key]
        wanted = next((w.replicas for w in state.workloads if (w.cluster, w.namespace, w.name) == key), None)
        if (wanted == args.replicas and len(insts) == args.replicas and all(i.ready for i in insts)
                and proxies_in_sync(mesh_dir, state, key[0])):
            break
        if time.monotonic() > deadline:
            waiting = [i.instance for i in insts if not i.ready]
            raise FederationError(f"{'/'.join(key)}: {len(insts)} of {args.replicas} instance(s) after "
                                  f"{args.timeout:g} s" + (f"; not ready: {', '.join(waiting)}" if waiting else ""))
        time.sleep(0.2)
    where = ", ".join(i.address for i in insts) or "none"
    print(f"{'/'.join(key)} scaled from {before} to {args.replicas} instance(s) ({where})")
    return 0


# -- curl --------------------------------------------------------------------------------------


def run_curl(args: argparse.Namespace) -> int:
    from ._curl import CurlError, build_request, send
    mesh_dir = resolve_dir(args.dir)
    state = _running_state(mesh_dir)
    inst = find_instance(state, args.target)
    try:
        request = build_request(args.url, args.method, args.headers, args.data)
        response = send((inst.address, 15001), request, args.max_time)
    except ValueError as exc:
        print(f"curl: (2) {exc}", file=sys.stderr)
        return 2
    except CurlError as exc:
        print(f"curl: ({exc.code}) {exc}", file=sys.stderr)
        return exc.code
    if args.fail and response.status >= 400:
        print(f"curl: (22) The requested URL returned error: {response.status}", file=sys.stderr)
        return 22
    out = getattr(sys.stdout, "buffer", None)
    data = (response.head() if args.include else b"") + response.body
    if out is not None:
        sys.stdout.flush()
        out.write(data)
        out.flush()
    else:
        sys.stdout.write(data.decode("utf-8", "replace"))
    return 0
