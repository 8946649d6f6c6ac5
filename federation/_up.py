"""``fedctl up DIR [--detach]``: every cluster of a topology running on this machine.

Steps: refuse a DIR that is already up (a stale state from a dead supervisor is cleaned
first); validate DIR as ``fedctl validate`` does and refuse on any error with its
``file:line: field: message`` lines; create the CA under ``DIR/.meshfed/ca`` (the shared
root and one intermediate per cluster for its trust domain, kept across runs while
they match the Mesh); then run the mesh (``_runner.MeshRunner``):

* in the foreground: progress lines as control planes and workloads become ready, the
  table of where everything listens, then wait for Ctrl-C or SIGTERM and stop
  everything in order (exit 0);
* with ``--detach``: a supervisor process of its own session runs the mesh
  (``python3 -m federation._up --supervise DIR``, logging to
  ``DIR/.meshfed/logs/supervisor.log``); this command follows its state file, prints
  the same progress and table and returns once everything is ready - or exits 1 with
  the reason (the processes not ready, the end of their logs) after ``--timeout``
  seconds, stopping what it started.

``fedctl status``, ``scale``, ``curl`` and ``down`` find the mesh through
``DIR/.meshfed/state.json``, or without DIR through the pointer to the last ``up``
(``_state.pointer_path``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import trio

from topology import Placement, RegistryError, placements
from topology._mesh import Mesh, RootCa
from topology._registry_build import find_mesh
from trustdomain import CaDirectory, KeyType, TrustDomain, TrustDomainError, create_intermediate, create_root

from ._errors import FederationError
from ._launch import (
    ADMIN_PORT, DISCOVERY_PORT, DNS_PORT, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT, InstancePlan, Layout,
    base_environment, bootstrap_secret, plans_of,
)
from ._progress import Progress, listen_table, not_ready_report
from ._runner import GATEWAY_PORT, ClusterInfo, MeshRunner
from ._scale import replica_counts, scale_path
from ._state import MeshState, StateError, alive, clean_stale, read_state, remember, state_path

DEFAULT_TIMEOUT = 120.0
CA_RENEW_BEFORE = dt.timedelta(days=7)


class TopologyInvalid(FederationError):
    """DIR does not validate; ``messages`` are its ``file:line: field: message`` lines."""

    def __init__(self, mesh_dir: Path, messages: list[str]) -> None:
        super().__init__(f"{mesh_dir} has {len(messages)} error(s); nothing was started:\n" + "\n".join(messages))
        self.messages = messages


@dataclass(frozen=True, slots=True)
class Topology:
    mesh: Mesh
    placements: tuple[Placement, ...]
    plans: list[InstancePlan]
    clusters: list[ClusterInfo]

    @property
    def workloads(self) -> dict[tuple[str, str, str], int]:
        return replica_counts(self.placements, self.mesh)


def load_topology(mesh_dir: Path) -> Topology:
    """Validate DIR (errors refuse it) and decide what runs where."""
    from ._cli_validate import validate
    if not mesh_dir.is_dir():
        raise FederationError(f"{mesh_dir}: not a directory (fedctl up takes the folder of a topology)")
    result = validate([str(mesh_dir)])
    errors = [str(d) for d in result.diagnostics if d.is_error]
    if errors:
        raise TopologyInvalid(mesh_dir, errors)
    try:
        mesh = find_mesh(result)
        if mesh is None:
            raise FederationError(f"{mesh_dir}: no Mesh resource (apiVersion meshfed.io/v1alpha1, kind Mesh) says "
                                  "which clusters and workloads to run")
        placed = placements(result, mesh)
    except RegistryError as exc:
        raise FederationError(f"{mesh_dir}: {exc}") from None
    clusters = [ClusterInfo(c.name, c.trust_domain or f"{c.name}.meshfed.local", c.address_block,
                            c.control_plane_address or "", c.gateway_address or "",
                            str(c.locality) if c.locality is not None else "", c.network or c.name)
                for c in mesh.clusters]
    return Topology(mesh, placed, plans_of(placed, mesh), clusters)


def ensure_ca(layout: Layout, mesh: Mesh, now: dt.datetime | None = None) -> list[str]:
    """The shared root and each cluster's intermediate, created or replaced as needed; what was made."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cadir = CaDirectory(layout.ca)
    made = []
    if cadir.root_cert_path.is_file() and cadir.root_key_path.is_file():
        root = cadir.load_root()
    else:
        root = create_root(now, key_type=KeyType.ECDSA_P256)
        cadir.save_root(root)
        made.append("root")
    shared = root
    for cluster in mesh.clusters:
        td = TrustDomain(cluster.trust_domain or f"{cluster.name}.meshfed.local")
        root = shared
        if cluster.root_ca is RootCa.OWN:  # an independent root: trusted by others once linked
            own = cadir.own_root(cluster.name)
            if not (own.root_cert_path.is_file() and own.root_key_path.is_file()):
                own.save_root(create_root(now, key_type=KeyType.ECDSA_P256, common_name=f"{cluster.name} root CA"))
                made.append(f"{cluster.name} root")
            root = own.load_root()
        try:
            ca = cadir.load_cluster(cluster.name)
            keep = (ca.trust_domain == td and ca.root == root.certificate and ca.not_after - now > CA_RENEW_BEFORE)
        except TrustDomainError:
            keep = False
        if not keep:
            cadir.save_cluster(cluster.name, create_intermediate(root, td, cluster.name, now))
            made.append(cluster.name)
        bootstrap_secret(layout, cluster.name)
    return made


def reset_runtime(layout: Layout) -> None:
    """Forget what a previous run left: plans, proxy documents and credentials, scale overrides."""
    for sub in ("cp", "proxies"):
        shutil.rmtree(layout.root / sub, ignore_errors=True)
    try:
        scale_path(layout.mesh_dir).unlink()
    except FileNotFoundError:
        pass


def refuse_if_running(mesh_dir: Path) -> None:
    cleaned = clean_stale(mesh_dir)
    if cleaned:
        print(f"fedctl up: cleaned a stale state in {mesh_dir}: stopped {len(cleaned)} leftover process(es)",
              file=sys.stderr)
    try:
        state = read_state(mesh_dir)
    except StateError:
        return
    if alive(state.supervisor.pid, state.supervisor.start_time):
        raise FederationError(f"a mesh is already running from {mesh_dir} (supervisor pid {state.supervisor.pid}); "
                              f"stop it with 'fedctl down {mesh_dir}'")
    state_path(mesh_dir).unlink(missing_ok=True)


def addresses_taken(topology: Topology) -> list[str]:
    """``host:port`` of every address the mesh will listen on that something else holds now."""
    wanted = [(c.address, port) for c in topology.clusters for port in (DISCOVERY_PORT, METRICS_PORT, DNS_PORT)]
    wanted += [(c.gateway_address, port) for c in topology.clusters if c.gateway_address
               for port in (GATEWAY_PORT, ADMIN_PORT)]
    for plan in topology.plans:
        wanted += [(plan.address, port) for port in (OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT)]
        wanted += [(plan.address, p.target) for p in plan.ports]
    taken = []
    for host, port in dict.fromkeys(wanted):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do: TIME_WAIT is no owner
            try:
                s.bind((host, port))
            except OSError:
                taken.append(f"{host}:{port}")
    return taken


def prepare(mesh_dir: Path) -> tuple[Layout, Topology]:
    refuse_if_running(mesh_dir)
    topology = load_topology(mesh_dir)
    taken = addresses_taken(topology)
    if taken:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise FederationError(f"{len(taken)} address(es) of the mesh are in use: {shown}; another mesh on the "
                              "same address blocks? ('fedctl status' and 'fedctl down' act on the last one)")
    layout = Layout(mesh_dir)
    reset_runtime(layout)
    made = ensure_ca(layout, topology.mesh)
    if made:
        print(f"CA: created {', '.join(made)} under {layout.ca}")
    return layout, topology


def runner_for(layout: Layout, topology: Topology, wiring: str, on_state=None) -> MeshRunner:
    return MeshRunner(layout, topology.clusters, topology.plans, topology.workloads, wiring=wiring,
                      environ=base_environment(), on_state=on_state)


# -- foreground ----------------------------------------------------------------------------


async def serve_until_signal(runner: MeshRunner, say: Callable[[str], None]) -> None:
    """Run the mesh until SIGINT, SIGTERM or SIGHUP, then stop it in order."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: stopping (apps, then sidecars, then control planes)...")
                break
            nursery.cancel_scope.cancel()


def run_foreground(mesh_dir: Path, wiring: str, timeout: float) -> int:
    layout, topology = prepare(mesh_dir)
    remember(mesh_dir)
    progress = Progress(mesh_dir, time.monotonic(), timeout=timeout)
    print(progress.intro(topology.clusters, topology.plans, layout), flush=True)
    runner = runner_for(layout, topology, wiring, on_state=progress.foreground)
    try:
        trio.run(serve_until_signal, runner, lambda text: print(f"\nfedctl up: {text}", flush=True))
    except KeyboardInterrupt:
        pass
    state_path(mesh_dir).unlink(missing_ok=True)
    print("fedctl up: stopped; no process left running", flush=True)
    return 0


# -- detached ------------------------------------------------------------------------------


def spawn_supervisor(layout: Layout, wiring: str) -> subprocess.Popen[bytes]:
    logfile = layout.root / "logs" / "supervisor.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "federation._up", "--supervise", str(layout.mesh_dir),
                                 "--wiring", wiring], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=base_environment(), cwd=str(layout.mesh_dir), start_new_session=True,
                                close_fds=True)


def run_detached(mesh_dir: Path, wiring: str, timeout: float) -> int:
    layout, topology = prepare(mesh_dir)
    remember(mesh_dir)
    progress = Progress(mesh_dir, time.monotonic(), timeout=timeout)
    print(progress.intro(topology.clusters, topology.plans, layout), flush=True)
    daemon = spawn_supervisor(layout, wiring)
    try:
        return _follow(mesh_dir, layout, daemon, progress, timeout)
    except KeyboardInterrupt:
        print("\nfedctl up: interrupted; stopping what was started", file=sys.stderr)
        stop_detached(mesh_dir, daemon)
        return 130


def _follow(mesh_dir: Path, layout: Layout, daemon: subprocess.Popen[bytes], progress: Progress,
            timeout: float) -> int:
    """Print the detached supervisor's progress until the mesh is ready (0) or cannot be (1)."""
    deadline = time.monotonic() + timeout
    state: MeshState | None = None
    while True:
        time.sleep(0.2)
        try:
            state = read_state(mesh_dir)
        except StateError:
            state = None
        if state is not None and state.supervisor.pid == daemon.pid:
            progress.detached(state)
            if state.ready:
                print(listen_table(state), flush=True)
                print(f"mesh running in the background (supervisor pid {daemon.pid}); stop it with "
                      f"'fedctl down {mesh_dir}'", flush=True)
                return 0
            failed = [p.name for p in state.processes() if p.state == "failed"]
            if failed:
                reason = f"gave up restarting {', '.join(failed)}"
                break
        if daemon.poll() is not None:
            reason = f"the supervisor exited with code {daemon.returncode} (see {layout.root / 'logs' / 'supervisor.log'})"
            break
        if time.monotonic() > deadline:
            reason = f"not ready after {timeout:g} s"
            break
    print(f"fedctl up: {reason}", file=sys.stderr)
    if state is not None:
        print(not_ready_report(state), file=sys.stderr)
    stop_detached(mesh_dir, daemon)
    return 1


def stop_detached(mesh_dir: Path, daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    clean_stale(mesh_dir)


# -- the detached supervisor process -------------------------------------------------------


def supervise(mesh_dir: Path, wiring: str) -> int:
    topology = load_topology(mesh_dir)
    runner = runner_for(Layout(mesh_dir), topology, wiring)

    trio.run(serve_until_signal, runner, lambda text: print(f"supervisor: {text}", flush=True))
    state_path(mesh_dir).unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m federation._up")
    parser.add_argument("--supervise", required=True, metavar="DIR")
    parser.add_argument("--wiring", choices=("files", "discovery"), default="files")
    args = parser.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return supervise(Path(args.supervise).resolve(), args.wiring)


if __name__ == "__main__":
    sys.exit(main())
