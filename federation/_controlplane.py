"""One cluster's control plane: config source, discovery and CA service on :15012, metrics on :15014.

``ControlPlane`` only wires the parts together and owns their tasks:

    cp = ControlPlane("east-a", "examples/multi-cluster", signer, bundles, host="127.1.1.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(cp.run)        # listening, first config polled
        token = cp.mint_token("bookinfo", "bookinfo-reviews")   # for a proxy's bootstrap
        ...
        print(cp.status())

Every accepted config version goes to the discovery server (which pushes what changed),
every refusal is counted and kept for ``status()``. The control plane's own identity is
``spiffe://<trust domain>/ns/istio-system/sa/istiod``, issued from its own CA at start
and renewed by ``SvidRotator`` before it expires.

Before clusters are linked (issue 7), a control plane tells its proxies only about its
own cluster's endpoints (``scope="cluster"``): the registry view drops every other
cluster's. ``scope="mesh"`` serves every endpoint of the topology, each endpoint on
another network marked with its cluster's east-west gateway; a linking control plane
may instead pass its own ``view``.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any, Callable, Literal

import trio

from gateway._discovery_wire import DISCOVERY_PORT, PATH_CERTIFICATE, control_plane_id
from topology import Diagnostic, LoadResult, ServiceRegistry
from topology._mesh import Mesh
from trustdomain import (
    BootstrapGrant, BundleSet, ClusterSigner, MtlsContexts, SvidRotator, X509Svid, issue_svid,
)

from ._casvc import CertificateService
from ._configsource import DEFAULT_POLL_INTERVAL, ConfigSource, ConfigVersion
from ._cplistener import ControlPlaneListener
from ._cpmetrics import METRICS_PORT, ControlPlaneMetrics
from ._discovery import DiscoveryServer
from ._errors import FederationError
from ._proxygen import TlsPaths, cluster_view

BOOTSTRAP_TOKEN_TTL = dt.timedelta(hours=1)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ControlPlane:
    """The control plane of ``cluster``, watching ``config_dir``; start it with ``nursery.start(cp.run)``."""

    def __init__(self, cluster: str, config_dir: str | Path, signer: ClusterSigner, bundles: BundleSet, *,
                 host: str, discovery_port: int = DISCOVERY_PORT, metrics_port: int = METRICS_PORT,
                 poll_interval: float = DEFAULT_POLL_INTERVAL, tls: TlsPaths | None = None,
                 scope: Literal["cluster", "mesh"] = "cluster",
                 view: Callable[[ConfigVersion], ServiceRegistry] | None = None,
                 kube_cluster: str | None = None, clock: Callable[[], dt.datetime] = _utcnow,
                 rng: random.Random | None = None, metrics: ControlPlaneMetrics | None = None,
                 in_thread: bool = True, first_version: int = 1) -> None:
        if signer.ca.trust_domain is None:
            raise FederationError(f"the signer of cluster {cluster!r} has no trust domain: a root cannot serve "
                                  "workloads")
        self.cluster = cluster
        self.trust_domain = signer.ca.trust_domain
        self.signer = signer
        self.host = host
        self.ports = (discovery_port, metrics_port)
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or ControlPlaneMetrics()
        self.scope = scope
        self._view_cache: tuple[ServiceRegistry, ServiceRegistry] | None = None
        self.source = ConfigSource(config_dir, interval=poll_interval, clock=clock, kube_cluster=kube_cluster,
                                   checks=(self._check_cluster,), in_thread=in_thread,
                                   first_version=first_version)
        self.discovery = DiscoveryServer(cluster, self.trust_domain, tls=tls, view=view or self._view,
                                         clock=clock, rng=self.rng, metrics=self.metrics)
        self.certificates = CertificateService(signer, clock=clock, metrics=self.metrics)
        self.contexts = MtlsContexts(self._own_svid(clock()), bundles, alpn=("h2",), clock=clock)
        self.listener = ControlPlaneListener(
            self.contexts, {**self.discovery.routes, PATH_CERTIFICATE: self.certificates.handle}, clock=clock)
        self.source.on_version(self.discovery.publish)
        self.source.on_refusal(lambda refusal: self.metrics.config_errors.inc())
        self.started = trio.Event()

    def __repr__(self) -> str:
        return (f"<ControlPlane {self.cluster} at {self.discovery_address} "
                f"version={self.source.current.number if self.source.current else None} "
                f"connected={self.discovery.connected}>")

    def _own_svid(self, now: dt.datetime) -> X509Svid:
        return issue_svid(self.signer.ca, control_plane_id(self.trust_domain), now,
                          lifetime=self.signer.max_lifetime)

    def _check_cluster(self, result: LoadResult, mesh: Mesh | None) -> list[Diagnostic]:
        if mesh is None or mesh.cluster_named(self.cluster) is not None:
            return []
        res = result.of_kind("Mesh")[0]
        names = ", ".join(c.name for c in mesh.clusters)
        return [Diagnostic(res.file, res.line_of("spec.clusters"), "spec.clusters",
                           f"the cluster this control plane serves, {self.cluster!r}, is not in the mesh; "
                           f"found clusters: {names}", kind="Mesh", name=res.name)]

    def _view(self, version: ConfigVersion) -> ServiceRegistry:
        if self.scope == "mesh":
            return version.registry
        cached = self._view_cache  # same registry (only Istio resources changed): same view object
        if cached is None or cached[0] is not version.registry:
            cached = self._view_cache = (version.registry, cluster_view(version.registry, self.cluster))
        return cached[1]

    @property
    def discovery_address(self) -> tuple[str, int] | None:
        return self.listener.address

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return self.metrics.address

    def mint_token(self, namespace: str, service_account: str, ttl: dt.timedelta = BOOTSTRAP_TOKEN_TTL) -> str:
        """A bootstrap credential for one workload identity, for whoever starts its proxy."""
        grant = BootstrapGrant(self.trust_domain, ((namespace, service_account),), self.clock() + ttl)
        return self.signer.bootstrap.mint(grant)

    async def run(self, *, task_status: trio.TaskStatus["ControlPlane"] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``started`` once both ports listen and the first config was polled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.listener.serve, self.host, self.ports[0])
            await nursery.start(self.metrics.serve, self.host, self.ports[1])
            await nursery.start(self.source.run)
            rotator = SvidRotator(self.contexts, self._own_svid, rng=self.rng, wall_clock=self.clock)
            nursery.start_soon(rotator.run)
            self.started.set()
            task_status.started(self)

    def status(self) -> dict[str, Any]:
        """A snapshot for ``fedctl status``: config, proxies, certificates, addresses."""
        svid = self.contexts.svid
        return {"cluster": self.cluster, "trustDomain": self.trust_domain.name,
                "discovery": _hostport(self.discovery_address), "metrics": _hostport(self.metrics_address),
                "config": self.source.status(), **self.discovery.status(),
                "certificates": self.certificates.status(),
                "svid": {"spiffeId": str(svid.spiffe_id), "notAfter": svid.not_after.isoformat()}}


def _hostport(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None
