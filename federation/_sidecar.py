"""A sidecar that gets its certificate and its config from its control plane.

    python3 -m federation._sidecar --discovery HOST:15012 --token-file F --bundle ROOT.pem \\
        --cluster C --namespace NS --workload W --instance I --service-account SA --trust-domain TD \\
        --state-dir DIR

What ``fedctl up`` runs beside each app when config comes over discovery. Steps:

1. its SVID: the one kept in ``DIR`` (cert.pem, key.pem, chain.pem) when it is still
   valid and names this identity (a restarted sidecar), else a new one from the CA
   service with the bootstrap token of ``--token-file`` (retried with backoff while the
   control plane is not there yet);
2. it subscribes (``gateway.DiscoveryClient``) and applies each pushed ProxyConfig to
   the ``Proxy`` (the first one creates it and opens the listeners); a document the proxy
   refuses is NACKed with its ``file:line`` reasons, and the last good one is kept in
   ``DIR/config.json``;
3. it renews the SVID before it expires (``CertificateClient.run``), writes it to
   ``DIR`` and re-applies the config so that the listeners take the new certificate.

The control plane must present ``spiffe://TD/ns/istio-system/sa/istiod``. Once the
listeners are bound one line is printed, ``ready admin=... inbound=... outbound=...``.
SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import random
import signal
import sys
from pathlib import Path
from typing import Sequence

import trio

from gateway._cert_client import CertificateClient, CertificateFetchError
from gateway._config import load_proxy_config_text, parse_hostport
from gateway._discovery_client import Backoff, DiscoveryClient
from gateway._discovery_wire import NodeIdentity, control_plane_id
from gateway._proxy import Proxy, ProxyConfigError
from trustdomain import Bundle, BundleSet, MtlsContexts, SpiffeId, TrustDomain, TrustDomainError, X509Svid, write_svid
from trustdomain._files import read_certificates, read_key
from trustdomain._svid import uri_sans

from ._state import write_atomic

log = logging.getLogger("meshfed.federation.sidecar")
RENEW_MARGIN = dt.timedelta(minutes=5)
"""A kept SVID expiring sooner than this is replaced at start."""


def kept_svid(folder: Path, identity: SpiffeId, now: dt.datetime) -> X509Svid | None:
    """The SVID a previous run left in ``folder``, if it is this identity's and still valid."""
    try:
        cert = read_certificates(folder / "cert.pem")[0]
        chain = tuple(read_certificates(folder / "chain.pem")) if (folder / "chain.pem").stat().st_size else ()
        svid = X509Svid(identity, cert, chain, read_key(folder / "key.pem"))
    except (OSError, TrustDomainError, IndexError):
        return None
    if uri_sans(cert) != [str(identity)] or not svid.not_before <= now <= svid.not_after - RENEW_MARGIN:
        return None
    return svid


class DiscoveredProxy:
    """The proxy, created from the first document pushed, re-applied with each later one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proxy: Proxy | None = None
        self.text: str | None = None
        self.created = trio.Event()

    def apply(self, text: str) -> list[str]:
        path = str(self.folder / "config.json")
        config, diagnostics = load_proxy_config_text(text, path)
        errors = [str(d) for d in diagnostics if d.is_error]
        if config is None:
            return errors or ["the document does not decode"]
        if self.proxy is None:
            try:
                self.proxy = Proxy(config)
            except ProxyConfigError as exc:
                return [str(d) for d in exc.diagnostics if d.is_error]
            self.created.set()
        else:
            applied = self.proxy.apply(config)
            if self.proxy.snapshot.config is not config:
                return [str(d) for d in applied if d.is_error] or ["the proxy refused the document"]
        self.text = text
        write_atomic(self.folder / "config.json", text.encode())
        return []

    def renewed(self, svid: X509Svid) -> None:
        write_svid(self.folder, svid)
        if self.text is not None:
            self.apply(self.text)  # same document, new certificate files: new TLS contexts


async def first_svid(certs: CertificateClient, rng: random.Random, backoff: Backoff = Backoff()) -> X509Svid:
    attempt = 0
    while True:
        try:
            return await certs.fetch()
        except CertificateFetchError as exc:
            log.info("no certificate yet: %s", exc)
        await trio.sleep(backoff.delay(attempt, rng))
        attempt += 1


async def run(args: argparse.Namespace) -> None:
    address = parse_hostport(args.discovery)
    folder = Path(args.state_dir)
    td = TrustDomain(args.trust_domain)
    identity = SpiffeId.workload(td, args.namespace, args.service_account)
    bundles = BundleSet.of(Bundle(td, tuple(read_certificates(Path(args.bundle)))))
    cp = control_plane_id(td)
    rng = random.Random()
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    certs = CertificateClient(address, identity, bundles, token, control_plane=cp)
    svid = kept_svid(folder, identity, dt.datetime.now(dt.timezone.utc))
    if svid is None:
        svid = await first_svid(certs, rng)
        write_svid(folder, svid)
    contexts = MtlsContexts(svid, bundles, alpn=("h2",))
    holder = DiscoveredProxy(folder)
    node = NodeIdentity(args.cluster, args.namespace, args.workload, args.instance, args.service_account)
    client = DiscoveryClient(address, node, contexts, holder.apply, control_plane=cp, rng=rng)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            nursery.start_soon(functools.partial(certs.run, contexts, rng=rng, on_svid=holder.renewed))
            nursery.start_soon(_serve, holder, nursery)
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


async def _serve(holder: DiscoveredProxy, nursery: trio.Nursery) -> None:
    await holder.created.wait()
    assert holder.proxy is not None
    addresses = await nursery.start(holder.proxy.run)
    print("ready " + " ".join(f"{k}={h}:{p}" for k, (h, p) in sorted(addresses.items())), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m federation._sidecar")
    p.add_argument("--discovery", required=True, metavar="HOST:PORT")
    p.add_argument("--token-file", metavar="FILE", help="bootstrap token for the first certificate")
    p.add_argument("--bundle", required=True, metavar="PEM", help="roots the control plane chains to")
    for name in ("cluster", "namespace", "workload", "instance", "service-account", "trust-domain", "state-dir"):
        p.add_argument(f"--{name}", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    try:
        trio.run(run, args)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
