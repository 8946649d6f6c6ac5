"""PKI speed: SVID issuance and full mTLS handshakes per second on this machine.

Measures, each bounded by an iteration count and a time budget:

* ``sign``: the CA's cost per SVID, a CSR signed into a certificate (``sign_csr``);
* ``issue``: the workload's whole renewal, key generation + CSR + signing (``issue_svid``);
* ``verify``: ``verify_peer`` on a two-certificate chain (the SPIFFE check per handshake);
* ``handshake-openssl``: a full TLS 1.3 mTLS handshake, both ends in one thread over
  memory BIOs with the stdlib ``ssl`` and the contexts this package builds (the floor);
* ``handshake-meshfed``: the same through ``MtlsContexts.accept/connect`` on trio
  memory streams, with the SPIFFE verification of both peers (what a proxy pays).

Both handshake figures count CPU for *both* ends, so one core does that many
handshakes per second in total; a server alone does roughly twice as many.

    python3 bench/pki.py [--quick] [--seconds 2.0] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Callable

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trustdomain import (  # noqa: E402
    KeyType, MtlsContexts, PeerRole, SpiffeId, TrustDomain, issue_svid, make_csr, sign_csr, verify_peer,
)
from trustdomain.testing import MeshPki  # noqa: E402


def rate(fn: Callable[[], object], max_iterations: int, seconds: float) -> tuple[float, int]:
    """Operations per second of ``fn`` over at most ``max_iterations`` calls or ``seconds``."""
    fn()  # warm up
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while n < max_iterations and time.perf_counter() < deadline:
        fn()
        n += 1
    return n / (time.perf_counter() - start), n


def openssl_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(si, so, server_side=True)
    client = client_ctx.wrap_bio(ci, co)
    done = [False, False]
    for _ in range(10):  # bounded: TLS 1.3 mTLS needs 3 flights
        for i, end in enumerate((client, server)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        si.write(co.read())
        ci.write(so.read())
        if all(done):
            client.write(b"x")  # the server's view of the client certificate completes on first data
            si.write(co.read())
            server.read(1)
            return
    raise RuntimeError("handshake did not complete")


def meshfed_handshakes(server: MtlsContexts, client: MtlsContexts, count: int, seconds: float) -> tuple[float, int]:
    async def main() -> tuple[float, int]:
        async def one() -> None:
            a, b = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.accept, a)
                nursery.start_soon(client.connect, b)

        await one()
        n, start = 0, time.perf_counter()
        while n < count and time.perf_counter() - start < seconds:
            await one()
            n += 1
        return n / (time.perf_counter() - start), n

    result: tuple[float, int] = trio.run(main)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few hundred operations)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per figure (default 2 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, 0.5) if args.quick else args.seconds
    cap = 300 if args.quick else 100_000

    pki = MeshPki.shared_root("east.example", "west.example")
    east = pki.ca("east.example")
    sid = SpiffeId.workload(TrustDomain("east.example"), "bookinfo", "reviews")
    now = dt.datetime.now(dt.timezone.utc)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), sid)
    server = MtlsContexts(pki.svid("east.example", "bookinfo", "reviews"), pki.bundles())
    client = MtlsContexts(pki.svid("west.example", "bookinfo", "productpage"), pki.bundles())
    chain = client.svid.chain_der()
    bundles = pki.bundles()

    figures: dict[str, tuple[float, int]] = {
        "sign (CA signs a CSR)": rate(lambda: sign_csr(east, csr, now), cap, seconds),
        "issue (P-256 key + CSR + sign)": rate(lambda: issue_svid(east, sid, now), cap, seconds),
        "issue (RSA-2048 key + CSR + sign)": rate(
            lambda: issue_svid(east, sid, now, key_type=KeyType.RSA_2048), max(5, cap // 20), seconds),
        "verify_peer (SPIFFE check)": rate(lambda: verify_peer(chain, bundles, now, PeerRole.CLIENT), cap, seconds),
        "handshake-openssl (mTLS, both ends)": rate(
            lambda: openssl_handshake(server.server_context(), client.client_context()), cap, seconds),
        "handshake-meshfed (mTLS + SPIFFE, both ends)": meshfed_handshakes(server, client, cap, seconds),
    }
    print(f"PKI benchmark ({'quick' if args.quick else 'full'}, <= {seconds:g} s per figure, ECDSA P-256 CAs)")
    width = max(len(k) for k in figures)
    for name, (per_second, n) in figures.items():
        print(f"  {name:<{width}}  {per_second:9.1f} /s  ({1e3 / per_second:7.3f} ms each, n={n})")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"per_second": v[0], "n": v[1]} for k, v in figures.items()},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
