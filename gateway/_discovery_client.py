"""The proxy's side of the discovery protocol: subscribe, apply, ACK or NACK, reconnect.

The protocol is described in ``federation/_discovery.py`` and encoded in
``_discovery_wire``. This client owns no config itself: each document goes to the
``apply`` callback (``apply(document_text) -> list of error strings``, sync or async;
empty means applied), which is the proxy engine's "decode, compile, swap whole or keep
the old one". An exception from ``apply`` is a NACK with its text, never a crash.

While the control plane is away the proxy keeps serving its last good config: the
client only reconnects, after a delay from ``Backoff`` (exponential, jittered with an
injected RNG so proxies started together do not reconnect in lockstep, and bounded),
and subscribes again with the version and digest it holds, so an unchanged config is
not sent twice.
"""

from __future__ import annotations

import inspect
import logging
import random
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Union

import trio

from trustdomain import MtlsContexts, PeerRefused, SpiffeId

from . import GatewayError
from ._discovery_wire import (
    CONTENT_FRAMES, PATH_ACK, PATH_SUBSCRIBE, Ack, DocumentAssembler, FrameDecoder, FrameHeader, NodeIdentity,
    WireError, error_of,
)
from ._h2channel import ChannelClosed, H2Channel

log = logging.getLogger("meshfed.gateway.discovery")

Apply = Callable[[str], Union[list[str], Awaitable[list[str]]]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * multiplier**attempt`` capped at ``maximum``, minus up to ``jitter`` of it."""

    initial: float = 0.1
    """Seconds before the first retry. Defaults to 0.1."""
    maximum: float = 10.0
    """Longest delay in seconds. Defaults to 10."""
    multiplier: float = 2.0
    jitter: float = 0.5
    """Fraction of the delay drawn away at random (0 = none). Defaults to 0.5."""

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter < 1):
            raise ValueError(f"backoff out of range: {self!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1 - self.jitter * rng.random())


class SubscribeRefused(GatewayError):
    """The control plane answered the subscription with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"subscription refused ({status}): {reason}")


SESSION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ChannelClosed,
                  PeerRefused, WireError, SubscribeRefused)
"""What ends one session with the control plane; the client reconnects after any of them."""


class DiscoveryClient:
    """Keeps one proxy subscribed to its control plane; run ``run`` in the proxy's nursery."""

    def __init__(self, address: tuple[str, int], node: NodeIdentity, contexts: MtlsContexts, apply: Apply, *,
                 backoff: Backoff = Backoff(), rng: random.Random | None = None,
                 control_plane: SpiffeId | None = None, connect_timeout: float = 5.0,
                 ping_interval: float | None = 15.0) -> None:
        self.address = address
        self.node = node
        self.contexts = contexts
        self.apply = apply
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.control_plane = control_plane
        """The SPIFFE ID the server must present; None accepts any SVID the bundles verify."""
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.version: str | None = node.version
        self.digest: str | None = node.digest
        self.document: str | None = None
        """The last document applied without errors: what the proxy serves."""
        self.connected = False
        self.sessions = 0
        self.acks = 0
        self.nacks = 0
        self.last_nack: tuple[int, tuple[str, ...]] | None = None
        self.last_error: str | None = None
        self.has_config = trio.Event()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return (f"<DiscoveryClient {self.node.namespace}/{self.node.instance} {state} version={self.version} "
                f"acks={self.acks} nacks={self.nacks}>")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Block until ``predicate()`` holds, re-checked whenever the client's state changes."""
        while not predicate():
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, and re-subscribe after every failure, until cancelled. Started at once."""
        task_status.started()
        attempt = 0
        while True:
            try:
                await self._session()
            except SESSION_ERRORS as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.info("%s/%s: control plane at %s:%d unavailable: %s", self.node.namespace, self.node.instance,
                         *self.address, self.last_error)
            if self.connected:
                attempt = 0
            self.connected = False
            self._note()
            await trio.sleep(self.backoff.delay(attempt, self.rng))
            attempt += 1

    async def _session(self) -> None:
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(*self.address)
            try:
                stream, peer = await self.contexts.connect(tcp)
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
        channel = H2Channel(stream, authority=f"{self.address[0]}:{self.address[1]}", ping_interval=self.ping_interval)
        try:
            if self.control_plane is not None and peer.spiffe_id != self.control_plane:
                raise WireError("control plane", f"expected {self.control_plane}; found {peer.spiffe_id}")
            failure: BaseException | None = None
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                try:
                    await self._subscribe(channel)
                except SESSION_ERRORS as exc:  # raised below, not wrapped in the nursery's ExceptionGroup
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            await channel.aclose()

    async def _subscribe(self, channel: H2Channel) -> None:
        node = replace(self.node, version=self.version, digest=self.digest)
        rs = await channel.open("POST", PATH_SUBSCRIBE, node.to_json())
        if rs.status != 200 or rs.headers.get("content-type") != CONTENT_FRAMES:
            raise SubscribeRefused(rs.status, error_of(await rs.read_all(1 << 16)))
        self.connected, self.last_error = True, None
        self.sessions += 1
        self._note()
        decoder, assembler = FrameDecoder(), DocumentAssembler()
        while (piece := await rs.receive()) is not None:
            for header, body in decoder.feed(piece):
                await self._apply(channel, header, assembler.assemble(header, body))
        raise ChannelClosed("the control plane ended the subscription")

    async def _apply(self, channel: H2Channel, header: FrameHeader, document: bytes) -> None:
        try:
            text = document.decode("utf-8")
            result = self.apply(text)
            errors = list(await result if inspect.isawaitable(result) else result)
        except trio.Cancelled:
            raise
        except Exception as exc:  # a failing apply is the proxy's NACK, never the client's crash
            text, errors = "", [f"applying the document failed: {type(exc).__name__}: {exc}"]
        ok = not errors
        if ok:
            self.version, self.digest, self.document = str(header.version), header.digest, text
            self.acks += 1
            self.has_config.set()
        else:
            self.nacks += 1
            self.last_nack = (header.version, tuple(errors))
            log.warning("%s/%s: rejected config version %d: %s", self.node.namespace, self.node.instance,
                        header.version, "; ".join(errors[:3]))
        self._note()
        status, body = await channel.request("POST", PATH_ACK,
                                             Ack(header.version, header.nonce, ok, tuple(errors)).to_json())
        if status != 200:
            raise ChannelClosed(f"ACK refused ({status}): {error_of(body)}")
