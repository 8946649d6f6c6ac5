"""Federation benchmark: the latency the east-west gateway hop adds, and the time from an endpoint's failure to traffic moved.

Three paths to the same echo app, each at a fixed bounded request rate over one keep-alive
HTTP/1.1 connection, p50/p90/p99 in milliseconds:

* ``direct``  - the app itself (no proxy);
* ``sidecar`` - client sidecar -> server sidecar (mTLS), the same network;
* ``gateway`` - client sidecar -> east-west gateway (SNI passthrough) -> server sidecar.

Then ``failover``: the client sidecar has the local endpoint, a second zone behind its
gateway and outlier detection; the local sidecar is stopped and the time until a request is
answered from the other zone is measured (median of ``--trials``), the endpoint restarted
between trials. Everything runs in this one process (``gateway.testing`` sites on random
127.a.b blocks) - the load generator shares the core with the proxies, so read the ratios,
not the absolute figures. ``--quick`` for a short run, ``--json FILE`` for the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.testing import Site, random_block, start_client, start_proxy, start_site  # noqa: E402
from trustdomain.testing import MeshPki  # noqa: E402

FQDN = "echo.demo.svc.cluster.local"
DOMAINS = ("east.example", "west.example")
OD = {"consecutive5xxErrors": 1, "consecutiveGatewayErrors": 1, "interval": "100ms", "baseEjectionTime": "1s",
      "maxEjectionPercent": 100}


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Http:
    """One keep-alive HTTP/1.1 connection; ``get`` returns (status, body)."""

    def __init__(self, host: str, port: int, absolute: bool) -> None:
        self.host, self.port, self.absolute = host, port, absolute
        self.stream: trio.SocketStream | None = None
        self.buf = b""

    async def get(self, path: str = "/") -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.buf = b""
        target = f"http://{FQDN}:8080{path}" if self.absolute else path
        await self.stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {FQDN}:8080\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            await self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (l.partition(b":") for l in lines[1:]) if k.strip().lower()
                       == b"content-length"), 0)
        while len(self.buf) < length:
            await self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    async def _more(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            await self.aclose()
            raise ConnectionError("closed by the peer")
        self.buf += data

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
            self.stream = None


async def latency(http: Http, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Requests every 1/rate s (closed loop when one takes longer: never more than one in flight)."""
    period, samples, errors = 1.0 / rate, [], 0
    start = trio.current_time()
    i = 0
    while True:
        due = start + i * period
        if due - start > warmup + seconds:
            break
        await trio.sleep_until(due)
        t0 = time.perf_counter()
        try:
            status, _ = await http.get()
            ok = status == 200
        except (OSError, ConnectionError, trio.BrokenResourceError):
            await http.aclose()
            ok = False
        if due - start >= warmup:
            if ok:
                samples.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
        i += 1
    return {"requests": len(samples) + errors, "errors": errors,
            **{f"p{p}": round(v, 3) if (v := percentile(samples, p)) is not None else None for p in (50, 90, 99)}}


async def answered_by(http: Http) -> str:
    try:
        status, body = await http.get()
    except (OSError, ConnectionError, trio.BrokenResourceError):
        await http.aclose()
        return "error"
    return json.loads(body).get("app", "?") if status == 200 else f"HTTP {status}"


async def failover_trials(nursery: trio.Nursery, pki: MeshPki, folder: Path, trials: int) -> list[float]:
    async def site(cluster: str, locality: str, td: str, gateway: bool) -> Site:
        return await start_site(nursery, pki, folder / cluster, cluster=cluster, block=random_block(),
                                network=f"net-{cluster}", locality=locality, trust_domain=td, domains=DOMAINS,
                                instances=((f"{cluster}-app", {"app": "echo"}),), gateway=gateway)
    home, zone = await site("home", "r1/z1", "east.example", False), await site("zone", "r1/z2", "west.example", True)
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "echo", "namespace": "demo"}, "spec": {"host": FQDN, "trafficPolicy": {"outlierDetection": OD}}}
    await start_client(nursery, pki, folder / "client", site=home, domains=DOMAINS, resources=json.dumps([dr]),
                       endpoints=[home.local_entry(home.instances[0]), zone.gateway_entry()], name="failover-client")
    http = Http(f"{home.block}.1", 15001, absolute=True)
    out = []
    inst = home.instances[0]
    for _ in range(trials):
        with trio.fail_after(30):
            while await answered_by(http) != "home-app":  # back home (its ejection over)
                await trio.sleep(0.05)
        inst.sidecar.stop()
        t0 = time.perf_counter()
        with trio.fail_after(30):
            while await answered_by(http) != "zone-app":
                await trio.sleep(0.005)
        out.append(round((time.perf_counter() - t0) * 1000, 1))
        inst.sidecar = await start_proxy(nursery, inst.config)
    await http.aclose()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pki = MeshPki.shared_root(*DOMAINS)
    seconds, warmup = (args.seconds, args.warmup) if not args.quick else (min(args.seconds, 3.0), 0.5)
    trials = args.trials if not args.quick else min(args.trials, 3)
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        folder = Path(tmp)
        async with trio.open_nursery() as nursery:
            west = await start_site(nursery, pki, folder / "west", cluster="west", block=random_block(),
                                    network="net-west", locality="r2/z1", trust_domain="west.example", domains=DOMAINS)
            east = Site("east", random_block(), "net-east", "r1/z1", "east.example")
            same = Site("east2", random_block(), "net-west", "r2/z1", "west.example")  # the server's own network
            await start_client(nursery, pki, folder / "via-gateway", site=east, domains=DOMAINS,
                               endpoints=[west.gateway_entry()])
            await start_client(nursery, pki, folder / "direct-sidecar", site=same, domains=DOMAINS,
                               endpoints=[west.local_entry(west.instances[0])])
            inst = west.instances[0]
            paths = {"direct": Http(inst.address, inst.app_port, absolute=False),
                     "sidecar": Http(f"{same.block}.1", 15001, absolute=True),
                     "gateway": Http(f"{east.block}.1", 15001, absolute=True)}
            figures: dict[str, Any] = {}
            for name, http in paths.items():
                figures[name] = await latency(http, args.rate, seconds, warmup)
                await http.aclose()
            moved = await failover_trials(nursery, pki, folder / "failover", trials)
            nursery.cancel_scope.cancel()
    base = figures["direct"]
    for name in ("sidecar", "gateway"):
        f = figures[name]
        f["ratio_p50_vs_direct"] = round(f["p50"] / base["p50"], 2) if f["p50"] and base["p50"] else None
    g, s = figures["gateway"], figures["sidecar"]
    return {"rate": args.rate, "seconds": seconds, "latency_ms": figures,
            "gateway_hop_added_ms": {p: round(g[p] - s[p], 3) if g[p] is not None and s[p] is not None else None
                                     for p in ("p50", "p90", "p99")},
            "failover_ms": {"trials": moved, "median": statistics.median(moved) if moved else None}}


def render(result: dict[str, Any]) -> str:
    lines = [f"latency at {result['rate']:g} req/s for {result['seconds']:g} s (ms)",
             f"{'path':<10}{'p50':>9}{'p90':>9}{'p99':>9}{'x direct p50':>14}{'errors':>8}"]
    for name, f in result["latency_ms"].items():
        ratio = f.get("ratio_p50_vs_direct")
        lines.append(f"{name:<10}" + "".join(f"{f[p]:>9.3f}" if f[p] is not None else f"{'-':>9}"
                                             for p in ("p50", "p90", "p99"))
                     + f"{(f'{ratio:.2f}' if ratio else '1.00'):>14}{f['errors']:>8}")
    added = result["gateway_hop_added_ms"]
    lines.append("gateway hop adds: " + ", ".join(f"{p} {v:+.3f} ms" if v is not None else f"{p} -"
                                                for p, v in added.items()))
    fo = result["failover_ms"]
    lines.append(f"endpoint failure -> traffic moved: median {fo['median']} ms over {len(fo['trials'])} trials "
                 f"{fo['trials']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s per path, 3 failover trials")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s per path (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per path (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per path (default 1)")
    p.add_argument("--trials", type=int, default=5, help="failover trials (default 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = trio.run(run, args)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
