"""Push latency: config file change -> every subscribed proxy ACKed, and control-plane RSS.

A generated topology of 1,000 services / 10,000 endpoints (one cluster, 1,000 workloads
of 10 instances in 10 namespaces) is served by a ControlPlane in a child process (so
its RSS is its own). 100 real proxy clients in this process each get an SVID from the
CA service with a bootstrap token, then subscribe over mTLS + HTTP/2. Each round edits
one file - a VirtualService's route (Istio resources only) or a ServiceEntry's endpoints
(the registry is rebuilt) - and times, per proxy, the change to its ACK. A proxy's
``apply`` only checks the document arrived whole (the proxy engine's own decode is not
the control plane's cost; ``--decode`` adds ``json.loads``).

Targets (issue 6): p99 push latency under 1 s, control-plane RSS under 300 MB.

    python3 bench/controlplane.py [--quick] [--rounds N] [--proxies N] [--services N] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway._cert_client import CertificateClient  # noqa: E402
from gateway._discovery_client import DiscoveryClient  # noqa: E402
from gateway._discovery_wire import NodeIdentity, control_plane_id  # noqa: E402
from trustdomain import (  # noqa: E402
    BootstrapAuthority, BootstrapGrant, Bundle, BundleSet, ClusterSigner, MtlsContexts, SpiffeId, TrustDomain,
)
from trustdomain._files import cert_pem, read_certificates  # noqa: E402

TD = "east.meshfed.local"
HOST = "127.60.0.1"
REPLICAS = 10
NAMESPACES = 10


def generate(root: Path, services: int) -> None:
    lines = ["apiVersion: meshfed.io/v1alpha1", "kind: Mesh", "metadata: {name: bench}", "spec:", "  clusters:",
             f"  - {{name: east, addressBlock: 127.60.0.0/16, trustDomain: {TD},",
             "     locality: {region: us-east, zone: us-east-1a}}", "  workloads:"]
    for i in range(services):
        lines.append(f"  - {{name: svc{i}, namespace: ns{i % NAMESPACES}, app: echo, cluster: east, "
                     f"replicas: {REPLICAS}, ports: [{{name: http, port: 8080}}]}}")
    (root / "mesh.yaml").write_text("\n".join(lines) + "\n")
    write_vs(root, 0)
    write_se(root, 0)


def write_vs(root: Path, n: int) -> None:
    (root / "vs.yaml").write_text(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc0, namespace: ns0}}
spec:
  hosts: [svc0.ns0.svc.cluster.local]
  http:
  - route:
    - {{destination: {{host: svc0.ns0.svc.cluster.local}}, weight: {100 - n % 50}}}
    - {{destination: {{host: svc1.ns1.svc.cluster.local}}, weight: {n % 50}}}
""")


def write_se(root: Path, n: int) -> None:
    eps = "\n".join(f"  - {{address: 10.0.{n % 200}.{i + 1}}}" for i in range(4))
    (root / "se.yaml").write_text(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: ns0}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints:
{eps}
""")


# -- the control plane, in its own process ----------------------------------------------

def serve(args: argparse.Namespace) -> int:
    from federation._controlplane import ControlPlane
    from trustdomain.testing import MeshPki
    pki = MeshPki.shared_root(TD)
    signer = ClusterSigner(pki.ca(TD), BootstrapAuthority(bytes.fromhex(args.secret)))
    cp = ControlPlane("east", args.serve, signer, pki.bundles(), host=HOST, discovery_port=0, metrics_port=0,
                      poll_interval=args.poll)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(cp.run)
            ready = {"discovery": cp.discovery_address[1], "metrics": cp.metrics_address[1], "pid": os.getpid(),
                     "root": cert_pem(pki.ca(TD).root).decode()}
            Path(args.ready).write_text(json.dumps(ready))
            with trio.open_signal_receiver(signal.SIGTERM) as signals, trio.move_on_after(args.lifetime):
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    trio.run(main)
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: what a round cost it, whatever else shares the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# -- the proxies -------------------------------------------------------------------------

async def run_proxies(args: argparse.Namespace, root: Path, ready: dict, secret: bytes) -> dict:
    bundles = BundleSet.of(Bundle(TrustDomain(TD), tuple(read_certificates_from(ready["root"])), 1))
    authority = BootstrapAuthority(secret)
    address = (HOST, ready["discovery"])
    applied: dict[int, float] = {}
    clients: list[DiscoveryClient] = []
    t_start = time.perf_counter()
    svids = []
    for i in range(args.proxies):
        ns, sa = f"ns{i % NAMESPACES}", f"svc{i}"
        token = authority.mint(BootstrapGrant(TrustDomain(TD), ((ns, sa),),
                                              dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
        cc = CertificateClient(address, SpiffeId.workload(TD, ns, sa), bundles, token, control_plane=control_plane_id(TD))
        svids.append(await cc.fetch())
    t_certs = time.perf_counter() - t_start

    def make_apply(i: int):
        def apply(text: str) -> list[str]:
            if args.decode:
                json.loads(text)
            elif not (text.startswith("{") and text.endswith("}}")):
                return ["document truncated"]
            applied[i] = time.time()
            return []
        return apply

    async with trio.open_nursery() as nursery:
        for i, svid in enumerate(svids):
            ns, sa = f"ns{i % NAMESPACES}", f"svc{i}"
            node = NodeIdentity("east", ns, sa, f"{sa}-0", sa)
            c = DiscoveryClient(address, node, MtlsContexts(svid, bundles), make_apply(i),
                                control_plane=control_plane_id(TD))
            clients.append(c)
            nursery.start_soon(c.run)
        t0 = time.perf_counter()
        with trio.fail_after(120):
            for c in clients:
                await c.has_config.wait()
        t_sync = time.perf_counter() - t0
        size = len(clients[0].document or "")
        latencies: list[float] = []
        all_acked: list[float] = []
        cpu: dict[str, list[float]] = {"vs": [], "se": []}
        proxies_cpu: list[float] = []
        for r in range(1, args.rounds + 1):
            await trio.sleep(args.pause)
            before = [c.version for c in clients]
            cpu0, own0 = cpu_seconds(ready["pid"]), time.process_time()
            changed = time.time()
            (write_vs if r % 2 else write_se)(root, r)
            with trio.fail_after(60):
                for c, v in zip(clients, before):
                    await c.wait_until(lambda c=c, v=v: c.version != v)
            kind = "vs" if r % 2 else "se"
            cpu[kind].append(cpu_seconds(ready["pid"]) - cpu0)
            proxies_cpu.append(time.process_time() - own0)
            round_lat = [applied[i] - changed for i in range(len(clients))]
            latencies += round_lat
            all_acked.append(max(round_lat))
            print(f"  round {r} ({'VirtualService' if r % 2 else 'ServiceEntry endpoints'}): "
                  f"first ACK after {min(round_lat) * 1000:.0f} ms, all {len(clients)} after "
                  f"{max(round_lat) * 1000:.0f} ms", flush=True)
        nursery.cancel_scope.cancel()
    latencies.sort()
    return {"proxies": len(clients), "document_bytes": size, "certificates_s": round(t_certs, 2),
            "initial_sync_s": round(t_sync, 2), "rounds": args.rounds,
            "push_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "push_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
            "all_acked_max_ms": round(max(all_acked) * 1000, 1),
            "cp_cpu_ms_per_round": {k: round(statistics.median(v) * 1000) for k, v in cpu.items() if v},
            "proxies_cpu_ms_per_round": round(statistics.median(proxies_cpu) * 1000),
            "load_average": os.getloadavg()[0]}


def read_certificates_from(pem: str) -> list:
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        return read_certificates(Path(f.name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--proxies", type=int, default=100)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=0.1, help="config poll interval, seconds (default 0.1)")
    ap.add_argument("--pause", type=float, default=1.5,
                    help="seconds between rounds, so the deferred analysis runs between them (default 1.5)")
    ap.add_argument("--decode", action="store_true", help="proxies json.loads each document")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--secret", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--lifetime", type=float, default=600, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)
    args.rounds = args.rounds or (3 if args.quick else 10)
    if args.proxies > args.services:
        ap.error("--proxies cannot exceed --services (one proxy per service's first instance)")
    secret = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "config"
        root.mkdir()
        generate(root, args.services)
        ready_file = Path(tmp) / "ready.json"
        prof = ["-m", "cProfile", "-o", os.environ["CP_PROFILE"]] if os.environ.get("CP_PROFILE") else []
        child = subprocess.Popen([sys.executable, *prof, __file__, "--serve", str(root), "--secret", secret.hex(),
                                  "--ready", str(ready_file), "--poll", str(args.poll),
                                  "--lifetime", str(120 + 30 * args.rounds)])
        try:
            deadline = time.monotonic() + 120
            while not ready_file.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not ready_file.exists():
                print("control plane did not start", file=sys.stderr)
                return 1
            ready = json.loads(ready_file.read_text())
            print(f"control plane pid {ready['pid']}: {args.services} services x {REPLICAS} endpoints, "
                  f"{args.proxies} proxies, poll {args.poll}s", flush=True)
            result = trio.run(run_proxies, args, root, ready, secret)
            result["cp_rss_mb"], result["cp_peak_rss_mb"] = (round(x, 1) for x in rss_mb(ready["pid"]))
        finally:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    result.update(services=args.services, endpoints=args.services * REPLICAS)
    print(json.dumps(result, indent=2))
    ok = result["push_p99_ms"] < 1000 and result["cp_peak_rss_mb"] < 300
    print(f"targets: p99 < 1000 ms, RSS < 300 MB: {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
