"""One cluster's control plane as a process: ``python3 -m federation._cpprocess --dir DIR --cluster C``.

``fedctl up`` starts one per cluster. It runs the ``ControlPlane`` (config source on DIR,
discovery and CA service on :15012, metrics on :15014) and the mesh DNS (:15053) on the
cluster's control-plane address, and adds what a process of ``fedctl up`` needs:

* the scale overrides of ``DIR/.meshfed/scale.json`` (see ``_scale``) laid over every
  version it serves - placements, endpoints, DNS - re-published when the file changes;
* with ``--wiring files``, each proxy's ProxyConfig document of the cluster written to
  ``proxies/<cluster>/<namespace>.<instance>/config.json`` whenever it changes (the
  sidecar's ``fedctl proxy --config`` reloads it): the config push without discovery;
* ``DIR/.meshfed/cp/<cluster>.json``, rewritten every second and after every change:
  ``ControlPlane.status()``, the DNS counters, the plan (the instances the cluster
  should run), which the supervisor follows, and ``federation``: the state of each link
  (``fedctl link list`` reads it);
* federation (``_federation``): the services the cluster exports (its ``ServiceExport``
  resources, its own endpoints after scaling) served to linked control planes on the
  same :15012 listener, and the peers of ``DIR/.meshfed/links.json`` watched; what they
  export is merged into the registry every proxy document and the DNS are made from.

SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import trio

from topology import ServiceRegistry
from trustdomain import BootstrapAuthority, Bundle, BundleSet, CaDirectory, ClusterSigner, TrustDomain
from trustdomain._files import read_certificates

from ._configsource import ConfigVersion
from ._controlplane import ControlPlane
from ._dns_server import DnsServer
from ._federation import Federation
from ._federation_gateway import exported_names, gateway_placements
from ._federation_model import ExportSet, build_export
from ._federation_peers import own_document, peers_of
from ._link_store import LinkError, LinkSet, links_path, read_links
from ._launch import DNS_PORT, Layout, bootstrap_secret, plans_of
from ._proxygen import TlsFiles, cluster_view
from ._scale import Overrides, read_overrides, scale_path, scaled_version
from ._state import write_atomic
from ._trust_bundles import ClusterTrust
from ._trust_exchange import PATH_BUNDLE, BundleExchange, local_trust_domains

log = logging.getLogger("meshfed.federation.cpprocess")
STATUS_INTERVAL = 1.0
SCALE_POLL = 0.25
TRUST_RECHECK = 30.0


def trust_bundles(cadir: CaDirectory) -> BundleSet:
    """One bundle per cluster trust domain, each the roots its CA chains to."""
    bundles = []
    for cluster in cadir.clusters():
        td = TrustDomain((cadir.path / cluster / "trust-domain").read_text().strip())
        bundles.append(Bundle(td, tuple(read_certificates(cadir.path / cluster / "root-cert.pem"))))
    return BundleSet.of(*bundles)


def tls_paths(layout: Layout, bundles: BundleSet) -> Any:
    root = str(layout.ca / "root-cert.pem")
    files = {td.name: root for td in bundles.trust_domains}

    def paths(p: Any) -> TlsFiles:
        folder = layout.proxy_dir(p)
        return TlsFiles(str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "chain.pem"), files)
    return paths


class ClusterProcess:
    """The control plane, DNS, scale overrides and status file of one cluster."""

    def __init__(self, layout: Layout, cluster: str, host: str, wiring: str) -> None:
        self.layout = layout
        self.cluster = cluster
        self.host = host
        self.wiring = wiring
        cadir = CaDirectory(layout.ca)
        signer = ClusterSigner(cadir.load_cluster(cluster), BootstrapAuthority(bootstrap_secret(layout, cluster)))
        # trust: own domain, same-root clusters, linked peers (_trust_bundles); files for the proxies
        self.trust = ClusterTrust(cluster, layout.ca, layout.root / "trust")
        try:
            self.trust.refresh(read_links(layout.mesh_dir))
        except LinkError:
            self.trust.refresh(LinkSet())
        self.bundles = self.trust.bundle_set()
        self._local_view: tuple[ServiceRegistry, ServiceRegistry] | None = None
        self.cp = ControlPlane(cluster, layout.mesh_dir, signer, self.bundles, host=host,
                               tls=self.tls_files, view=self.view,
                               first_version=next_version(layout, cluster))
        self.federation = Federation(cluster, self.cp.contexts, bootstrap_secret(layout, cluster),
                                     on_change=self.imports_changed)
        self.cp.listener.routes.update(self.federation.routes)
        self.exchange = BundleExchange(cluster, bootstrap_secret(layout, cluster), layout.mesh_dir,
                                       lambda: local_trust_domains(layout.ca), on_accept=self.apply_links)
        self.cp.listener.routes.update(self.exchange.routes)
        self.cp.listener.anonymous_paths = self.cp.listener.anonymous_paths | {PATH_BUNDLE}  # the credential decides
        self.links_error: str | None = None
        self.dns = DnsServer(ServiceRegistry(), cluster=cluster, host=host, port=DNS_PORT)
        self.overrides: Overrides = read_overrides(layout.mesh_dir)
        self.served: ConfigVersion | None = None
        self._scaled: tuple[int, tuple[Any, ...], ConfigVersion] | None = None
        self._written: dict[str, str] = {}
        # after the ControlPlane's own listener: the scaled version replaces the one it just published
        self.cp.source.on_version(lambda version: self.publish())

    def tls_files(self, p: Any) -> TlsFiles:
        folder = self.layout.proxy_dir(p)
        return TlsFiles(str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "chain.pem"),
                        dict(self.trust.files))

    def refresh_trust(self, links: LinkSet) -> None:
        """A link, an accepted bundle or a rotation changed what this cluster trusts: the :15012
        listener and the federation client take the new set, every proxy a new document."""
        if not self.trust.refresh(links):
            return
        log.info("trusting %s", ", ".join(sorted(self.trust.bundles)))
        self.bundles = self.trust.bundle_set()
        self.cp.contexts.update(bundles=self.bundles)
        if self.served is not None:
            self.publish(force=True)

    def scaled(self, version: ConfigVersion) -> ConfigVersion:
        key = tuple(sorted(self.overrides.items()))
        if self._scaled is None or self._scaled[:2] != (version.number, key):
            self._scaled = (version.number, key, scaled_version(version, self.overrides))
        return self._scaled[2]

    def local_view(self, registry: ServiceRegistry) -> ServiceRegistry:
        cached = self._local_view
        if cached is None or cached[0] is not registry:
            cached = self._local_view = (registry, cluster_view(registry, self.cluster))
        return cached[1]

    def view(self, version: ConfigVersion) -> ServiceRegistry:
        """What this cluster's proxies see: its own endpoints and what linked peers export."""
        return self.federation.view(self.local_view(version.registry))

    def publish(self, force: bool = False) -> None:
        version = self.cp.source.current
        if version is None:
            return
        served = self.scaled(version)
        first = self.served is None
        self.served = served
        self.export(served)
        if first:  # the links (and the imports a previous run kept) before the first document
            self.apply_links(notify=False)
        gen = self.cp.discovery.generator
        if force or gen is None or gen.version is not served:
            self.cp.discovery.publish(served)
        self.dns.set_registry(self.view(served))
        if self.wiring == "files":
            self.write_documents()
        self.write_status()

    def export(self, served: ConfigVersion) -> None:
        mesh = served.mesh
        me = own_document(mesh, self.cluster) if mesh is not None else None
        if me is None:
            return
        self.dns.network = me.network  # endpoints of other networks answer by their gateway (_dns_reach)
        self.federation.set_export(build_export(
            self.local_view(served.registry), self.cluster, exported_names(served.resources), network=me.network,
            locality=me.locality, trust_domain=me.trust_domain, gateway=me.gateway))

    def imports_changed(self) -> None:
        """A peer's export arrived, a link expired or was removed: new documents for every proxy."""
        self.save_imports()
        if self.served is not None:
            self.publish(force=True)

    def imports_path(self) -> Path:
        return self.layout.cp_status(self.cluster).with_suffix(".imports.json")

    def save_imports(self) -> None:
        """Kept for a restart of this control plane (``fedctl up`` clears cp/)."""
        data = [x.to_json() for x in self.federation.imports()]
        write_atomic(self.imports_path(), json.dumps(data).encode(), mode=0o600)

    def load_imports(self) -> None:
        try:
            data = json.loads(self.imports_path().read_text())
            self.federation.seed([ExportSet.from_json(x) for x in data])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the imports a previous run kept: %s", exc)

    def apply_links(self, notify: bool = True) -> None:
        try:
            links = read_links(self.layout.mesh_dir)
        except LinkError as exc:
            self.links_error = str(exc)  # the links in force stay
            log.error("%s", exc)
            return
        self.links_error = None
        self.refresh_trust(links)
        mesh = self.served.mesh if self.served is not None else None
        self.federation.set_peers(peers_of(self.cluster, links, mesh), notify=notify)

    def write_documents(self) -> None:
        gen = self.cp.discovery.generator
        if gen is None or self.served is None:
            return
        for p in (*self.served.placements, *gateway_placements(self.served.mesh)):
            if p.cluster != self.cluster:
                continue
            doc = gen.document(p)
            path = self.layout.proxy_config(p)
            if self._written.get(str(path)) != doc.digest or not path.exists():
                write_atomic(path, b"".join(doc.parts))
                self._written[str(path)] = doc.digest

    def status(self) -> dict[str, Any]:
        served = self.served
        dns = self.dns.counters
        return {
            "cluster": self.cluster, "pid": os.getpid(), "host": self.host,
            "dns": f"{self.host}:{self.dns.port}", "ready": served is not None,
            "controlPlane": self.cp.status(),
            "dnsCounters": {"udp": dns.udp_queries, "tcp": dns.tcp_queries, "byRcode": dict(dns.by_rcode)},
            "inSync": self.in_sync(),
            "trust": {**self.trust.status(), "bundlesAccepted": self.exchange.accepted,
                      "bundlesRefused": self.exchange.refused, "lastRefusal": self.exchange.last_refusal},
            "federation": {"links": self.federation.status(), "linksError": self.links_error,
                           "exportRevision": self.federation.export.revision if self.federation.export else None,
                           "exported": [f"{s.namespace}/{s.name}" for s in self.federation.export.services]
                           if self.federation.export else []},
            "plan": None if served is None else {
                "version": served.number, "overrides": {"/".join(k): n for k, n in sorted(self.overrides.items())},
                "instances": [p.to_json() for p in plans_of(served.placements, served.mesh, self.cluster)]},
        }

    def in_sync(self) -> dict[str, bool]:
        """``namespace/instance`` -> whether that proxy is connected and ACKed the document the
        version served now gives it (exact: digests compared, not "the last push was ACKed")."""
        gen, served = self.cp.discovery.generator, self.served
        if gen is None or served is None:
            return {}
        out = {}
        for p in served.placements:
            if p.cluster == self.cluster:
                state = self.cp.discovery.proxies.get((p.namespace, p.instance))
                out[f"{p.namespace}/{p.instance}"] = bool(
                    state is not None and state.connected and state.acked_digest == gen.document(p).digest)
        return out

    def write_status(self) -> None:
        write_atomic(self.layout.cp_status(self.cluster), json.dumps(self.status(), default=str).encode())

    async def watch_overrides(self) -> None:
        path = scale_path(self.layout.mesh_dir)
        seen = _stamp(path)
        while True:
            await trio.sleep(SCALE_POLL)
            stamp = _stamp(path)
            if stamp != seen:
                seen = stamp
                overrides = read_overrides(self.layout.mesh_dir)
                if overrides != self.overrides:
                    log.info("scale overrides now %s", overrides)
                    self.overrides = overrides
                    self.publish()

    async def watch_links(self) -> None:
        path = links_path(self.layout.mesh_dir)
        seen: object = None
        while True:
            # the clock part: accepted bundles expire and rotated-out roots retire without a file change
            stamp = (_stamp(path), self.served.number if self.served is not None else None,
                     int(time.monotonic() // TRUST_RECHECK))
            if stamp != seen:
                seen = stamp
                self.apply_links()
                self.write_status()
            await trio.sleep(SCALE_POLL)

    async def report(self) -> None:
        while True:
            self.write_status()
            await trio.sleep(STATUS_INTERVAL)

    def _proxy_states(self) -> tuple[tuple[object, ...], ...]:
        return tuple((key, s.connected, s.acked_digest, s.nacks) for key, s in self.cp.discovery.proxies.items())

    async def report_acks(self) -> None:
        """Rewrite the status file soon after a proxy subscribes, ACKs or NACKs (``fedctl scale``
        waits for its cluster's proxies to be in sync)."""
        while True:
            seen = self._proxy_states()
            await self.cp.discovery.wait_until(lambda: self._proxy_states() != seen)
            await trio.sleep(0.05)  # one write for a burst of ACKs
            self.write_status()

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dns.serve)
                await nursery.start(self.federation.run)
                self.load_imports()
                await nursery.start(self.cp.run)
                self.publish()
                nursery.start_soon(self.watch_links)
                nursery.start_soon(self.watch_overrides)
                nursery.start_soon(self.report)
                nursery.start_soon(self.report_acks)
                log.info("control plane of %s ready on %s", self.cluster, self.host)
                async for signum in signals:
                    log.info("stopping on %s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break


def next_version(layout: Layout, cluster: str) -> int:
    """The number to accept the first config as: one past what a previous control plane of this
    run served (its status file survives it), so that a restart never numbers a different
    config like one the proxies already hold."""
    try:
        doc = json.loads(layout.cp_status(cluster).read_text())
        served = int(((doc.get("controlPlane") or {}).get("config") or {}).get("version") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 1
    return max(served, 0) + 1


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m federation._cpprocess")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--wiring", choices=("files", "discovery"), default="files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        process = ClusterProcess(Layout(args.dir), args.cluster, args.host, args.wiring)
        trio.run(process.run)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 - the log says why the control plane could not run
        log.exception("control plane of %s failed: %s", args.cluster, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
