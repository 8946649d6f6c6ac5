"""The discovery service: config documents pushed to subscribed proxies, ACKed or NACKed.

Protocol (wire details and limits in ``gateway/_discovery_wire.py``). Port 15012, TLS
1.2+ with ALPN ``h2``, HTTP/2; the proxy presents its SVID (see ``_cplistener`` for the
one path that does without).

1. The proxy opens one connection and sends ``POST /v1/subscribe`` with its node
   identity as JSON: ``{"cluster", "namespace", "workload", "instance",
   "serviceAccount", "version", "digest"}`` - the last two name the config it already
   holds (null on first start). The server refuses with 403 unless the peer's SPIFFE
   ID is exactly ``spiffe://<this cluster's trust domain>/ns/<namespace>/sa/
   <serviceAccount>``, with 404 when the config in force has no such instance in this
   cluster, and 400 for a malformed body; the body of a refusal is ``{"error": ...}``.
2. Otherwise it answers 200 (content type ``application/x-meshfed-frames``) and keeps
   the response stream open. It sends a frame whenever the proxy's document differs
   from what the proxy holds: at once when the digest the proxy reported differs (so a
   proxy that reconnects with the latest config gets nothing), then after each config
   version that changes this proxy's document. A frame is ``u32`` header length,
   header JSON ``{"version", "nonce", "digest", "size", "parts"}``, then ``size`` bytes:
   the parts of the ProxyConfig document the proxy does not hold from the previous frame
   on this connection (``parts`` lists every part as ``[id, length, fresh]``; the
   document is their concatenation). So an edited VirtualService reaches a proxy as a
   few kilobytes, not its whole 2 MB document. Versions that leave a proxy's document as
   it was send nothing to that proxy.
3. The proxy applies the document and sends ``POST /v1/ack`` on the same connection:
   ``{"version", "nonce", "ok", "errors"}``; ``ok: false`` is a NACK and ``errors``
   its reasons. The server records per proxy: connected, last pushed, last ACKed, last
   NACK (version, reasons, time) - a NACKed document is not resent; the next version
   that changes it is. An ACK whose nonce is not outstanding is stale and only counted.
4. When the connection breaks the proxy keeps its last good config, reconnects with
   jittered exponential backoff and subscribes again with the version and digest it
   holds (step 1).

Push latency is measured per push triggered by a config change: from the change of the
file (``ConfigVersion.changed_at``) to the ACK, into ``pilot_proxy_convergence_time``.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from gateway._discovery_wire import (
    CONTENT_FRAMES, PATH_ACK, PATH_SUBSCRIBE, Ack, NodeIdentity, WireError, encode_frame,
)
from topology import ServiceRegistry
from trustdomain import TrustDomain

from ._configsource import ConfigVersion
from ._cplistener import Request
from ._cpmetrics import ControlPlaneMetrics
from ._proxygen import ProxyDocument, ProxyGenerator, TlsPaths

log = logging.getLogger("meshfed.federation.discovery")

MAX_IN_FLIGHT = 8
LATENCIES_KEPT = 10_000


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class Push:
    version: int
    nonce: str
    digest: str
    size: int
    changed_at: dt.datetime
    pushed_at: dt.datetime
    on_change: bool
    """Pushed because the config changed (not because the proxy subscribed): latency counts."""


@dataclass
class ProxyState:
    """What the control plane knows of one proxy, for ``fedctl status``."""

    cluster: str
    namespace: str
    instance: str
    workload: str
    spiffe_id: str
    connected: bool = False
    subscriptions: int = 0
    last_pushed: Push | None = None
    acked_version: str | None = None
    acked_digest: str | None = None
    acked_at: dt.datetime | None = None
    last_latency: float | None = None
    nack: tuple[int, str, dt.datetime] | None = None
    nacks: int = 0
    stale_acks: int = 0
    placed: bool = True
    expected_digest: str | None = None
    """Digest of the document the proxy should hold under the version served."""
    token: object = None

    def to_json(self) -> dict[str, Any]:
        p = self.last_pushed
        return {"cluster": self.cluster, "namespace": self.namespace, "instance": self.instance,
                "workload": self.workload, "spiffeId": self.spiffe_id, "connected": self.connected,
                "placed": self.placed, "lastPushedVersion": p.version if p else None,
                "lastPushedAt": p.pushed_at.isoformat() if p else None, "ackedVersion": self.acked_version,
                "ackedAt": self.acked_at.isoformat() if self.acked_at else None,
                "inSync": self.expected_digest is not None and self.acked_digest == self.expected_digest,
                "lastPushLatencySeconds": self.last_latency,
                "nacks": self.nacks, "lastNack": None if self.nack is None else
                {"version": self.nack[0], "reason": self.nack[1], "at": self.nack[2].isoformat()}}


@dataclass
class _Subscription:
    state: ProxyState
    sent_digest: str | None
    in_flight: dict[str, Push] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    """Ids of the parts the proxy holds: those of the last frame on this connection."""


class DiscoveryServer:
    """Subscriptions, pushes and ACKs for one cluster; ``publish`` each accepted version."""

    def __init__(self, cluster: str, trust_domain: TrustDomain | str, *, tls: TlsPaths | None = None,
                 view: Callable[[ConfigVersion], ServiceRegistry] | None = None,
                 clock: Callable[[], dt.datetime] = _utcnow, rng: random.Random | None = None,
                 metrics: ControlPlaneMetrics | None = None) -> None:
        self.cluster = cluster
        self.trust_domain = TrustDomain(str(trust_domain))
        self.tls = tls
        self.view = view
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or ControlPlaneMetrics()
        self.generator: ProxyGenerator | None = None
        self.proxies: dict[tuple[str, str], ProxyState] = {}
        self.latencies: collections.deque[tuple[int, str, float]] = collections.deque(maxlen=LATENCIES_KEPT)
        """(version, instance, seconds from file change to ACK) of recent change-triggered pushes."""
        self._subs: dict[object, _Subscription] = {}
        self._wake = trio.Event()
        self._progress = trio.Event()

    @property
    def routes(self) -> dict[str, Callable[[Request], Any]]:
        return {PATH_SUBSCRIBE: self.subscribe, PATH_ACK: self.ack}

    def __repr__(self) -> str:
        v = self.generator.version.number if self.generator else None
        return f"<DiscoveryServer {self.cluster} version={v} proxies={len(self.proxies)} connected={self.connected}>"

    @property
    def connected(self) -> int:
        return sum(1 for s in self.proxies.values() if s.connected)

    def publish(self, version: ConfigVersion) -> None:
        """Make ``version`` the one served; every subscriber re-checks its document."""
        registry = self.view(version) if self.view is not None else None
        self.generator = ProxyGenerator(version, registry=registry, tls=self.tls, previous=self.generator)
        self.metrics.config_version.set(version.number)
        self._wake.set()
        self._wake = trio.Event()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Block until ``predicate()`` holds, re-checked after every subscribe, push, ACK and NACK."""
        while not predicate():
            await self._progress.wait()

    # -- handlers ----------------------------------------------------------------------

    async def subscribe(self, req: Request) -> None:
        try:
            node = NodeIdentity.from_json(req.body)
        except WireError as exc:
            return await req.error(400, str(exc))
        expected = node.spiffe_id(self.trust_domain)
        if req.peer is None or req.peer.spiffe_id != expected:
            found = req.peer.spiffe_id if req.peer else "no certificate"
            return await req.error(403, f"node {node.namespace}/{node.instance} must present {expected}; "
                                        f"found {found}")
        if node.cluster != self.cluster:
            return await req.error(404, f"this control plane serves cluster {self.cluster!r}; found {node.cluster!r}")
        gen = self.generator
        placement = gen.placement(node.cluster, node.namespace, node.instance) if gen else None
        if gen is not None and (placement is None or placement.workload != node.workload
                                or placement.service_account != node.service_account):
            return await req.error(404, f"config version {gen.version.number} has no instance {node.instance!r} "
                                        f"of workload {node.namespace}/{node.workload} with service account "
                                        f"{node.service_account!r} in cluster {self.cluster!r}")
        await req.respond(200, content_type=CONTENT_FRAMES, end=False)
        state = self.proxies.get((node.namespace, node.instance))
        if state is None:
            state = self.proxies[(node.namespace, node.instance)] = ProxyState(
                node.cluster, node.namespace, node.instance, node.workload, str(expected))
        sub = _Subscription(state, node.digest)
        token = state.token = object()
        state.connected, state.subscriptions = True, state.subscriptions + 1
        if node.digest is not None:
            state.acked_version, state.acked_digest = node.version, node.digest
        self._subs[req.connection] = sub
        self.metrics.connected.set(self.connected)
        self._progressed()
        try:
            await self._serve(req, sub, node, token)
        finally:
            if state.token is token:
                state.connected = False
            if self._subs.get(req.connection) is sub:
                del self._subs[req.connection]
            self.metrics.connected.set(self.connected)
            self._progressed()

    async def _serve(self, req: Request, sub: _Subscription, node: NodeIdentity, token: object) -> None:
        on_change = False
        while sub.state.token is token and not req.reset.is_set():  # a newer subscription replaces this one
            wake, gen = self._wake, self.generator
            if gen is not None:
                placement = gen.placement(node.cluster, node.namespace, node.instance)
                sub.state.placed = placement is not None
                if placement is not None:
                    doc = gen.document(placement)
                    sub.state.expected_digest = doc.digest
                    if doc.digest != sub.sent_digest:
                        await self._push(req, sub, doc, gen.version, on_change)
            on_change = True
            async with trio.open_nursery() as nursery:  # until a new version or the stream's end
                for event in (wake, req.reset):
                    nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)

    async def _push(self, req: Request, sub: _Subscription, doc: ProxyDocument, version: ConfigVersion,
                    on_change: bool) -> None:
        nonce = f"{self.rng.getrandbits(64):016x}"
        push = Push(doc.version, nonce, doc.digest, doc.size, version.changed_at, self.clock(), on_change)
        sub.in_flight[nonce] = push
        while len(sub.in_flight) > MAX_IN_FLIGHT:
            del sub.in_flight[next(iter(sub.in_flight))]
        sub.state.last_pushed = push
        sub.sent_digest = doc.digest
        await req.send(encode_frame(doc.version, nonce, doc.digest, doc.parts, doc.ids, sub.known))
        self.metrics.pushes.inc()
        self._progressed()

    async def ack(self, req: Request) -> None:
        try:
            ack = Ack.from_json(req.body)
        except WireError as exc:
            return await req.error(400, str(exc))
        sub = self._subs.get(req.connection)
        if sub is None:
            return await req.error(409, "no subscription on this connection: POST /v1/subscribe first")
        state, push = sub.state, sub.in_flight.pop(ack.nonce, None)
        if push is None or push.version != ack.version:
            state.stale_acks += 1
            return await req.respond(200, b'{"stale":true}')
        now = self.clock()
        if ack.ok:
            for nonce in [n for n, p in sub.in_flight.items() if p.version < push.version]:
                del sub.in_flight[nonce]
            state.acked_version, state.acked_digest, state.acked_at = str(push.version), push.digest, now
            if push.on_change:
                latency = max(0.0, (now - push.changed_at).total_seconds())
                state.last_latency = latency
                self.latencies.append((push.version, state.instance, latency))
                self.metrics.push_latency.observe(latency)
        else:
            reason = "; ".join(ack.errors) or "the proxy gave no reason"
            state.nack, state.nacks = (push.version, reason, now), state.nacks + 1
            self.metrics.nacks.inc()
            log.warning("proxy %s/%s rejected version %d: %s", state.namespace, state.instance, push.version, reason)
        await req.respond(200, b'{"ok":true}')
        self._progressed()

    def status(self) -> dict[str, Any]:
        return {"servedVersion": self.generator.version.number if self.generator else None,
                "connectedProxies": self.connected,
                "proxies": [s.to_json() for _, s in sorted(self.proxies.items())]}


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
