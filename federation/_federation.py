"""Federation between control planes: each serves what its cluster exports and watches its peers'.

Wire (on the :15012 listener, HTTP/2 over mTLS, JSON bodies; both paths POST):

* ``/v1/federation/exports`` - body ``{"cluster", "revision", "wait", "credential"?}``.
  Answers at once with ``{"changed": true, "export": ExportSet}`` when the caller's
  ``revision`` is not the current one, else holds the request until the export changes
  (then the same answer) or ``wait`` seconds pass (``{"changed": false, "revision"}``):
  a long poll, so a change - ``fedctl scale`` to zero - reaches every importer at once.
* ``/v1/federation/probe`` - body ``{"cluster", "credential"?}``; answers
  ``{"cluster", "revision"}``. The importer's probe, timed for ``fedctl link list``.

Who may call: a client presenting ``spiffe://<td>/ns/istio-system/sa/istiod`` where
``<td>`` is the trust domain of a cluster this one is linked with, or any control
plane identity presenting a credential this cluster minted (``fedctl link export``).
Everyone else gets 403 with the reason.

The importer side runs one task per peer: connect (mTLS; the server must present its
control plane identity), then watch and probe over that one connection; every
contact feeds ``LinkHealth``, a broken connection is retried every probe interval and
each failed attempt counts as a failed probe. ``imports()`` holds only exports of links
whose health still keeps them: a link past its TTL loses its endpoints; an unlinked
peer loses them at once; a replaced link (new document, new probe settings) keeps its
imports until the new one syncs (make-before-break).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from gateway._discovery_wire import control_plane_id
from gateway._h2channel import ChannelClosed, H2Channel
from topology import ServiceRegistry
from trustdomain import Bundle, MtlsContexts, PeerRefused, TrustDomain, TrustDomainError

from ._cplistener import Request
from ._federation_model import ExportSet, FederatedRegistry, federated_view, import_counts
from ._federation_peers import Peer
from ._link_health import EXPIRED, LinkHealth
from ._link_store import check_credential

log = logging.getLogger("meshfed.federation.links")

PATH_EXPORTS = "/v1/federation/exports"
PATH_PROBE = "/v1/federation/probe"
WATCH_WAIT = 15.0
EXPIRY_TICK = 0.25
MAX_EXPORT_BYTES = 64 << 20
LINK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ChannelClosed,
               PeerRefused, TrustDomainError)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Refused(Exception):
    """The peer answered, but not with what a linked control plane answers."""


@dataclass
class PeerLink:
    peer: Peer
    health: LinkHealth
    export: ExportSet | None = None
    last_sync: dt.datetime | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    session: trio.CancelScope | None = None
    """The current connection's scope: cancelled when the link expires, so that the next
    connection re-reads the whole export instead of long-polling on the revision it dropped."""


class Federation:
    """One control plane's side of every link (module docstring)."""

    def __init__(self, cluster: str, contexts: MtlsContexts, secret: bytes, *,
                 on_change: Callable[[], None] = lambda: None, now: Callable[[], float] = trio.current_time,
                 wall_clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.cluster = cluster
        self.contexts = contexts
        self.secret = secret
        self.on_change = on_change
        self.now = now
        self.wall_clock = wall_clock
        self.export: ExportSet | None = None
        self.links: dict[str, PeerLink] = {}
        self.watchers: dict[str, dt.datetime] = {}
        """Peer cluster -> when it last fetched our exports."""
        self._export_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._served_key: tuple[Any, ...] = ()
        self._view_cache: tuple[int, tuple[Any, ...], FederatedRegistry] | None = None
        self._local: ServiceRegistry | None = None
        self._seed: dict[str, ExportSet] = {}

    def __repr__(self) -> str:
        return f"<Federation {self.cluster}: {len(self.links)} links, export {self.export.revision if self.export else None}>"

    # -- what we export ------------------------------------------------------------------

    def set_export(self, export: ExportSet) -> None:
        if self.export is None or export.revision != self.export.revision:
            self.export = export
            self._export_changed.set()
            self._export_changed = trio.Event()

    def _authorize(self, req: Request, body: dict[str, Any]) -> str | None:
        peer = req.peer
        if peer is None:
            return "a client certificate is required"
        td = peer.spiffe_id.trust_domain
        if peer.spiffe_id != control_plane_id(td):
            return f"only control planes may federate; found {peer.spiffe_id}"
        if any(link.peer.trust_domain == td.name for link in self.links.values()):
            return None
        credential = body.get("credential")
        if isinstance(credential, str) and credential:
            why = check_credential(self.secret, self.cluster, credential, self.wall_clock())
            return None if why is None else f"{why}"
        return f"{td.name} is not linked with cluster {self.cluster!r} (run 'fedctl link' first)"

    async def _request_body(self, req: Request) -> dict[str, Any] | None:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await req.error(400, "the body must be a JSON object")
            return None
        why = self._authorize(req, body)
        if why is not None:
            await req.error(403, why)
            return None
        return body

    async def handle_exports(self, req: Request) -> None:
        body = await self._request_body(req)
        if body is None:
            return
        known = body.get("revision")
        wait = min(max(float(body.get("wait") or 0), 0.0), 60.0) if isinstance(body.get("wait"), (int, float)) else 0.0
        with trio.move_on_after(wait):
            while self.export is None or self.export.revision == known:
                changed = self._export_changed
                async with trio.open_nursery() as nursery:  # a change, or the caller gone
                    for event in (changed, req.reset):
                        nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)
                if req.reset.is_set():
                    return
        self.watchers[str(body.get("cluster") or "?")] = self.wall_clock()
        if self.export is None or self.export.revision == known:
            answer = {"changed": False, "revision": known}
        else:
            answer = {"changed": True, "export": self.export.to_json()}
        await req.respond(200, json.dumps(answer, separators=(",", ":")).encode())

    async def handle_probe(self, req: Request) -> None:
        if await self._request_body(req) is None:
            return
        await req.respond(200, json.dumps({"cluster": self.cluster,
                                           "revision": self.export.revision if self.export else None}).encode())

    @property
    def routes(self) -> dict[str, Callable[[Request], Any]]:
        return {PATH_EXPORTS: self.handle_exports, PATH_PROBE: self.handle_probe}

    # -- what we import ------------------------------------------------------------------

    def imports(self) -> list[ExportSet]:
        now = self.now()
        return [link.export for _, link in sorted(self.links.items())
                if link.export is not None and link.health.keeps_imports(now)]

    def view(self, local: ServiceRegistry) -> ServiceRegistry:
        """``local`` with every kept import merged in (cached per registry and import set)."""
        imports = self.imports()
        key = tuple((x.cluster, x.revision, x.gateway) for x in imports)
        cached = self._view_cache
        if cached is None or cached[0] != id(local) or cached[1] != key:
            cached = self._view_cache = (id(local), key, federated_view(local, self.cluster, imports))
        self._local = local  # keeps id(local) meaningful while cached
        return cached[2]

    def _maybe_changed(self) -> None:
        key = tuple((x.cluster, x.revision) for x in self.imports())
        if key != self._served_key:
            self._served_key = key
            self.on_change()

    def seed(self, exports: list[ExportSet]) -> None:
        """Imports a previous run of this control plane held (it restarted): served from the
        start for the peers still linked, their TTL counted from now, replaced on first sync -
        so that a control plane restart is a blip for its proxies too, not a withdrawal."""
        self._seed = {x.cluster: x for x in exports}

    def set_peers(self, peers: dict[str, Peer], notify: bool = True) -> None:
        """Start watching new peers, stop (and forget at once) removed ones; a peer whose
        settings changed is reconnected with its imports kept until the new link syncs."""
        assert self._nursery is not None, "set_peers before run"
        for name in [n for n in self.links if n not in peers]:
            link = self.links.pop(name)
            link.scope.cancel()
            log.info("unlinked from %s: its imports are removed", name)
        for name, peer in peers.items():
            link = self.links.get(name)
            if link is not None and link.peer == peer:
                continue
            fresh = PeerLink(peer, LinkHealth(peer.probe, self.now()))
            if link is not None:
                link.scope.cancel()
                fresh.export, fresh.last_sync = link.export, link.last_sync  # make-before-break
                fresh.health.last_ok = link.health.last_ok
            elif name in self._seed:
                fresh.export = self._seed.pop(name)
                fresh.health.last_ok = self.now()
            self.links[name] = fresh
            self._nursery.start_soon(self._run_peer, fresh)
        self._seed.clear()
        if notify:
            self._maybe_changed()
        else:
            self._served_key = tuple((x.cluster, x.revision) for x in self.imports())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(EXPIRY_TICK)
                for link in self.links.values():
                    if link.export is not None and link.health.state(self.now()) == EXPIRED:
                        log.warning("link to %s down past its TTL (%g s): its endpoints are removed",
                                    link.peer.name, link.peer.probe.ttl)
                        link.export = None
                        if link.session is not None:
                            link.session.cancel()
                self._maybe_changed()

    # -- one peer --------------------------------------------------------------------------

    def _client_contexts(self, peer: Peer) -> MtlsContexts:
        bundles = self.contexts.bundles
        if peer.bundle_pem and bundles.for_peer(TrustDomain(peer.trust_domain)) is None:
            bundles = bundles.with_bundle(Bundle.from_pem(TrustDomain(peer.trust_domain), peer.bundle_pem.encode()))
        return MtlsContexts(self.contexts.svid, bundles, alpn=("h2",))

    async def _run_peer(self, link: PeerLink) -> None:
        with link.scope:
            while True:
                started = self.now()
                try:
                    with trio.CancelScope() as link.session:
                        await self._session(link)
                except* (*LINK_ERRORS, _Refused) as group:
                    self._failed(link, "; ".join(_reason(e) for e in _leaves(group)))
                except* Exception as group:  # a bug here must cost this link, not the control plane
                    log.error("link to %s failed", link.peer.name, exc_info=group)
                    self._failed(link, "; ".join(_reason(e) for e in _leaves(group)))
                await trio.sleep(max(0.0, link.peer.probe.interval - (self.now() - started)))

    def _failed(self, link: PeerLink, reason: str) -> None:
        was = link.health.state(self.now())
        link.health.failure(self.now(), reason)
        if link.health.state(self.now()) != was:
            log.info("link to %s: %s (%s)", link.peer.name, link.health.state(self.now()), reason)
        self._maybe_changed()

    async def _session(self, link: PeerLink) -> None:
        peer = link.peer
        with trio.fail_after(peer.probe.timeout + 3):
            tcp = await trio.open_tcp_stream(*peer.federation)
            try:
                stream, identity = await self._client_contexts(peer).connect(tcp)
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
        expected = control_plane_id(peer.trust_domain)
        if identity.spiffe_id != expected:
            await trio.aclose_forcefully(stream)
            raise _Refused(f"{peer.federation[0]}:{peer.federation[1]} presented {identity.spiffe_id}; "
                           f"expected {expected}")
        channel = H2Channel(stream, ping_interval=None)
        answered = link.health.last_ok
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                nursery.start_soon(self._watch, link, channel)
                await self._probe(link, channel)  # returns when the connection is unusable
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ChannelClosed) as group:
            if link.health.last_ok != answered:
                raise
            # TLS 1.3: the server checks our certificate after our handshake is done (_trust_bundles)
            raise _Refused(f"{peer.name} closed the connection before answering; most likely it does not trust "
                           f"{self.contexts.svid.spiffe_id.trust_domain.name} (no bundle for it there: unlinked "
                           f"on its side, or the link credential expired) - {_reason(_leaves(group)[0])}") from None
        finally:
            await channel.aclose()

    def _body(self, link: PeerLink, **extra: Any) -> bytes:
        body: dict[str, Any] = {"cluster": self.cluster, **extra}
        if link.peer.credential:
            body["credential"] = link.peer.credential
        return json.dumps(body).encode()

    async def _call(self, link: PeerLink, channel: H2Channel, path: str, body: bytes,
                    timeout: float) -> dict[str, Any]:
        with trio.fail_after(timeout):
            status, data = await channel.request("POST", path, body, limit=MAX_EXPORT_BYTES)
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict):
            reason = doc.get("error") if isinstance(doc, dict) else data[:200].decode(errors="replace")
            raise _Refused(f"{link.peer.name} answered {status} on {path}: {reason}")
        return doc

    async def _probe(self, link: PeerLink, channel: H2Channel) -> None:
        """Probe every interval until the connection breaks (then the session ends)."""
        policy = link.peer.probe
        while not channel.closed.is_set():
            started = self.now()
            try:
                await self._call(link, channel, PATH_PROBE, self._body(link), policy.timeout)
            except trio.TooSlowError:
                self._failed(link, f"probe unanswered after {policy.timeout:g} s")
            else:
                link.health.success(self.now(), self.now() - started)
                self._maybe_changed()
            await trio.sleep(max(0.0, policy.interval - (self.now() - started)))
        raise ChannelClosed(f"connection to {link.peer.name} closed: {channel.error or 'by the peer'}")

    async def _watch(self, link: PeerLink, channel: H2Channel) -> None:
        revision = None  # a new connection re-reads the whole export (the peer may have restarted)
        while True:
            body = self._body(link, revision=revision, wait=WATCH_WAIT)
            try:
                doc = await self._call(link, channel, PATH_EXPORTS, body, WATCH_WAIT + link.peer.probe.timeout + 5)
            except (*LINK_ERRORS, _Refused) as exc:
                self._failed(link, str(exc) or type(exc).__name__)
                await trio.aclose_forcefully(channel.stream)  # the probe task sees the end and reconnects
                return
            if doc.get("changed"):
                try:
                    export = ExportSet.from_json(doc["export"])
                except (ValueError, KeyError, TypeError) as exc:
                    self._failed(link, f"unusable export from {link.peer.name}: {exc}")
                    await trio.sleep(link.peer.probe.interval)
                    continue
                if export.cluster != link.peer.name:
                    self._failed(link, f"{link.peer.name} sent the exports of cluster {export.cluster!r}")
                    await trio.sleep(link.peer.probe.interval)
                    continue
                link.export, revision = export, export.revision
                link.last_sync = self.wall_clock()
                link.health.success(self.now())
                log.info("imported %d service(s) from %s (revision %s)", len(export.services), link.peer.name,
                         export.revision)
                self._maybe_changed()

    # -- status ----------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = self.now()
        exported = len(self.export.services) if self.export is not None else 0
        out = []
        for name, link in sorted(self.links.items()):
            kept = link.export is not None and link.health.keeps_imports(now)
            services, endpoints = import_counts(link.export) if kept and link.export is not None else (0, 0)
            h = link.health
            out.append({
                "from": self.cluster, "to": name, "kind": link.peer.kind, "state": h.state(now),
                "lastSync": link.last_sync.isoformat() if link.last_sync else None,
                "exported": exported, "imported": services, "importedEndpoints": endpoints,
                "probeLatencyMs": round(h.latency * 1000, 2) if h.latency is not None else None,
                "failures": h.failures, "lastError": h.last_error,
                "secondsSinceContact": round(now - h.last_ok, 1) if h.last_ok is not None else None,
                "revision": link.export.revision if link.export else None,
                "peerFetchedAt": self.watchers[name].isoformat() if name in self.watchers else None,
                "probe": link.peer.probe.to_json(), "federation": f"{link.peer.federation[0]}:{link.peer.federation[1]}",
                "gateway": link.peer.gateway})
        return out


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
