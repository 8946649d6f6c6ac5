"""``fedctl link``, ``unlink``: join clusters so that each imports what the other exports.

    fedctl link A B [--probe-interval S] [--failure-threshold N] [--ttl S]   # clusters of the running mesh
    fedctl unlink A B
    fedctl link list [--output json]
    fedctl link export --cluster C > c.link                                 # for another host
    fedctl link apply c.link --cluster D [--force]

``link`` and ``apply`` write ``DIR/.meshfed/links.json`` (the links survive ``fedctl
down``/``up``), then wait until the control planes report the link ``up`` (exit 1
with their last error after ``--timeout``). ``unlink`` removes the entry and waits until
both control planes dropped each other's endpoints. ``link list`` reads what every
control plane reports: per direction ``from`` (the importer), ``to``, ``state``
(connecting, up, degraded, down, expired), ``lastSync``, ``exported`` and ``imported``
service counts, ``probeLatencyMs``. ``apply`` checks the document first and prints
every check: trust (same root, or an independent root to federate), trust domains,
network names, gateway reachable, name conflicts; a failed check refuses the document
unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ._errors import FederationError
from ._link_health import ProbePolicy, ProbePolicyError
from ._link_store import (
    AppliedLink, LinkDocument, LinkError, credential_expiry, mint_credential, read_links, write_links,
)
from ._state import alive, read_state, resolve_dir

LINK_TIMEOUT = 60.0
UNLINK_TIMEOUT = 20.0
UP_STATES = ("up",)


def register(sub: Any) -> None:
    p = sub.add_parser("link", help="link clusters (list, export, apply)",
                       description="fedctl link A B | link list | link export --cluster C | "
                                   "link apply FILE --cluster D")
    p.add_argument("words", nargs="+", metavar="A B | list | export | apply FILE")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--cluster", metavar="NAME", help="export: the cluster to describe; apply: the local importer")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.add_argument("--probe-interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between probes of the peer (default 1)")
    p.add_argument("--failure-threshold", type=int, default=None, metavar="N",
                   help="failed probes in a row that make the link down (default 3)")
    p.add_argument("--ttl", type=float, default=None, metavar="SECONDS",
                   help="a link down this long since its last contact loses its endpoints (default 30)")
    p.add_argument("--timeout", type=float, default=LINK_TIMEOUT, metavar="SECONDS",
                   help="wait this long for the link to come up (default 60; 0: do not wait)")
    p.add_argument("--force", action="store_true", help="apply: write the link even if a check fails")
    p.set_defaults(func=run_link)

    p = sub.add_parser("unlink", help="remove the link between two clusters; their imported endpoints go at once")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--dir", metavar="DIR", help="default: the mesh of the last 'fedctl up'")
    p.add_argument("--timeout", type=float, default=UNLINK_TIMEOUT, metavar="SECONDS")
    p.set_defaults(func=run_unlink)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _policy(args: argparse.Namespace) -> ProbePolicy:
    base = ProbePolicy()
    try:
        return ProbePolicy(args.probe_interval or base.interval, args.failure_threshold or base.failure_threshold,
                           args.ttl or base.ttl)
    except ProbePolicyError as exc:
        raise FederationError(str(exc)) from None


def _running(mesh_dir: Path) -> Any:
    state = read_state(mesh_dir)
    if not alive(state.supervisor.pid, state.supervisor.start_time):
        raise FederationError(f"the mesh of {mesh_dir} is not running; start it with 'fedctl up {mesh_dir} --detach'")
    return state


def _reports(mesh_dir: Path, state: Any) -> dict[str, dict[str, Any]]:
    """Cluster -> its control plane's status file, if it is the running control plane's."""
    from ._launch import Layout
    layout = Layout(mesh_dir)
    out = {}
    for c in state.clusters:
        try:
            doc = json.loads(layout.cp_status(c.name).read_text())
        except (OSError, ValueError):
            continue
        if doc.get("pid") == c.control_plane.pid:
            out[c.name] = doc
    return out


def link_rows(mesh_dir: Path, state: Any) -> list[dict[str, Any]]:
    rows = []
    for cluster, doc in _reports(mesh_dir, state).items():
        rows.extend((doc.get("federation") or {}).get("links") or [])
    return rows


def _find(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("from") == a and r.get("to") == b), None)


def _wait(mesh_dir: Path, pairs: list[tuple[str, str]], timeout: float, gone: bool = False) -> list[str]:
    """Wait until every (from, to) is up (or, ``gone``, absent); what is still not, with why."""
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(mesh_dir)
        rows = link_rows(mesh_dir, state)
        missing = []
        for a, b in pairs:
            row = _find(rows, a, b)
            if gone and row is not None:
                missing.append(f"{a} still links to {b}")
            elif not gone and (row is None or row.get("state") not in UP_STATES):
                why = "its control plane has not picked the link up" if row is None else \
                    f"{row.get('state')}{': ' + row['lastError'] if row.get('lastError') else ''}"
                missing.append(f"{a} -> {b}: {why}")
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.2)


def run_link(args: argparse.Namespace) -> int:
    words = args.words
    if words[0] == "list":
        return _list(args)
    if words[0] == "export":
        return _export(args)
    if words[0] == "apply":
        if len(words) != 2:
            raise FederationError("usage: fedctl link apply FILE --cluster NAME")
        from ._link_apply import apply_link
        return apply_link(args, Path(words[1]))
    if len(words) != 2:
        raise FederationError(f"usage: fedctl link A B (two clusters of the running mesh); found {' '.join(words)!r}")
    a, b = words
    mesh_dir = resolve_dir(args.dir)
    state = _running(mesh_dir)
    names = [c.name for c in state.clusters]
    for name in (a, b):
        if name not in names:
            raise FederationError(f"no cluster {name!r} in the mesh of {mesh_dir}; its clusters: {', '.join(names)}")
    if a == b:
        raise FederationError(f"a cluster cannot be linked with itself; found {a!r} twice")
    policy = _policy(args)
    try:
        links = read_links(mesh_dir)
    except LinkError as exc:
        raise FederationError(str(exc)) from None
    write_links(mesh_dir, links.with_link(a, b, policy, _now()))
    if args.timeout <= 0:
        print(f"link {a} <-> {b} written; the control planes pick it up within a second")
        return 0
    missing = _wait(mesh_dir, [(a, b), (b, a)], args.timeout)
    if missing:
        print(f"fedctl link: {a} <-> {b} not up after {args.timeout:g} s (it stays configured and keeps "
              f"retrying; 'fedctl unlink {a} {b}' removes it):", file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    rows = link_rows(mesh_dir, read_state(mesh_dir))
    ab, ba = _find(rows, a, b) or {}, _find(rows, b, a) or {}
    print(f"linked {a} <-> {b}: {a} imports {ab.get('imported', 0)} service(s) from {b}, "
          f"{b} imports {ba.get('imported', 0)} from {a}")
    return 0


def run_unlink(args: argparse.Namespace) -> int:
    mesh_dir = resolve_dir(args.dir)
    try:
        links = read_links(mesh_dir)
    except LinkError as exc:
        raise FederationError(str(exc)) from None
    after = links.without_link(args.a, args.b)
    if after == links:
        raise FederationError(f"no link between {args.a!r} and {args.b!r} (see 'fedctl link list')")
    write_links(mesh_dir, after)
    try:
        state = read_state(mesh_dir)
    except FederationError:
        state = None
    if state is not None and alive(state.supervisor.pid, state.supervisor.start_time) and args.timeout > 0:
        missing = _wait(mesh_dir, [(args.a, args.b), (args.b, args.a)], args.timeout, gone=True)
        if missing:
            print("fedctl unlink: " + "; ".join(missing), file=sys.stderr)
            return 1
    print(f"unlinked {args.a} and {args.b}: their imported endpoints are removed")
    return 0


def _list(args: argparse.Namespace) -> int:
    mesh_dir = resolve_dir(args.dir)
    state = _running(mesh_dir)
    rows = sorted(link_rows(mesh_dir, state), key=lambda r: (r.get("from", ""), r.get("to", "")))
    if args.output == "json":
        print(json.dumps({"links": rows}, indent=1))
        return 0
    if not rows:
        print("no links (fedctl link A B)")
        return 0
    from ._progress import table
    out = [("FROM", "TO", "STATE", "LAST SYNC", "EXPORTED", "IMPORTED", "ENDPOINTS", "PROBE", "LAST ERROR")]
    for r in rows:
        latency = r.get("probeLatencyMs")
        out.append((r["from"], r["to"], r["state"], (r.get("lastSync") or "-")[:19], str(r.get("exported", 0)),
                    str(r.get("imported", 0)), str(r.get("importedEndpoints", 0)),
                    f"{latency:.1f} ms" if latency is not None else "-", r.get("lastError") or "-"))
    print(table(out))
    return 0


def _export(args: argparse.Namespace) -> int:
    if not args.cluster:
        raise FederationError("usage: fedctl link export --cluster NAME > NAME.link")
    from ._federation_peers import own_document
    from ._launch import Layout
    from ._up import load_topology
    mesh_dir = resolve_dir(args.dir)
    topology = load_topology(mesh_dir)
    doc = own_document(topology.mesh, args.cluster)
    if doc is None:
        names = ", ".join(c.name for c in topology.mesh.clusters)
        raise FederationError(f"no cluster {args.cluster!r} in {mesh_dir}; its clusters: {names}")
    layout = Layout(mesh_dir)
    try:
        bundle = (layout.ca / args.cluster / "root-cert.pem").read_text()
        secret = layout.bootstrap_secret(args.cluster).read_bytes()
    except OSError as exc:
        raise FederationError(f"{args.cluster}: no CA yet under {layout.ca} ({exc.strerror}); run "
                              f"'fedctl up {mesh_dir}' once first") from None
    now = dt.datetime.now(dt.timezone.utc)
    from dataclasses import replace
    doc = replace(doc, trust_bundle=bundle, credential=mint_credential(secret, args.cluster, now))
    print(json.dumps(doc.to_json(), indent=1))
    expiry = credential_expiry(doc.credential)
    print(f"fedctl link export: {args.cluster}'s link document; its credential expires "
          f"{expiry.isoformat() if expiry else '?'}", file=sys.stderr)
    return 0


def applied_link(cluster: str, doc: LinkDocument, args: argparse.Namespace) -> AppliedLink:
    return AppliedLink(cluster, doc, _policy(args), _now())


def tcp_reachable(hostport: str, timeout: float = 2.0) -> str | None:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
