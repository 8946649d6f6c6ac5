"""Lean trio streams for the hot path: a raw socket stream, a TLS stream, an accept loop.

Why not ``trio.SocketStream`` and ``trio.SSLStream``: both are correct and general, and
both pay for it on every call - a checkpoint sandwich around each ``send`` and ``recv``
(two trips through the scheduler), conflict detectors, KI-protection wrappers, and for
TLS a lock and a retry loop per record. Measured here a trio socket round trip costs
~60 µs against ~35 µs for the same calls made directly; on a proxy's hot path, where a
request is four socket operations and two TLS records per sidecar, that is most of the
budget.

Theory of operation. ``FastSocketStream`` tries the non-blocking syscall first and only
waits (``wait_readable`` / ``wait_writable``) when the kernel says EAGAIN, so a call that
can complete at once does not yield. Fairness is kept by a budget: after
``YIELD_EVERY`` operations that completed without waiting, the next one checkpoints, so
a connection whose data is always ready (a 1 GiB body on loopback) still lets the others
run and can still be cancelled.

``FastTlsStream`` takes over a TLS connection after trio's ``SSLStream`` has done the
handshake (``MtlsContexts`` does it and verifies the SPIFFE peer): the same
``ssl.SSLObject`` and memory BIOs, driven directly. TLS 1.3 has no renegotiation, so
after the handshake a write always completes into the outgoing BIO and a read either
yields plaintext or wants more ciphertext. Bytes a read produces for the peer
(KeyUpdate, alerts) leave through the same single sender: whoever finds the outgoing
BIO non-empty while no send is in progress drains it, so two tasks - one receiving, one
sending, as a proxy uses a connection - never interleave records on the socket.

``serve_socket`` is ``trio.serve_listeners`` for one stdlib listening socket: accept
until EAGAIN, one task per connection in the caller's nursery, a pause on EMFILE.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("meshfed.gateway.io")

RECV_SIZE = 64 * 1024
YIELD_EVERY = 16
"""Operations completed without waiting before one checkpoint is forced."""
_ACCEPT_CAPACITY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint = trio.lowlevel.checkpoint


class FastSocketStream(trio.abc.HalfCloseableStream):
    """A connected non-blocking stdlib socket as a trio stream (see the module docstring)."""

    __slots__ = ("socket", "_budget", "_closed", "_eof_sent")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._budget = YIELD_EVERY
        self._closed = False
        self._eof_sent = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.socket
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await _checkpoint()
        while True:
            try:
                return sock.recv(max_bytes or RECV_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._error(exc) from exc
            self._budget = YIELD_EVERY
            await _wait_readable(sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        if self._eof_sent:
            raise trio.ClosedResourceError("cannot send after send_eof")
        self._budget -= 1
        if self._budget <= 0:
            self._budget = YIELD_EVERY
            await _checkpoint()
        view = None
        total = len(data)
        sent = 0
        while True:
            try:
                sent += sock.send(data if view is None else view[sent:])
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._error(exc) from exc
            if sent >= total:
                return
            if view is None:
                view = memoryview(data)
            self._budget = YIELD_EVERY
            await _wait_writable(sock)

    async def wait_send_all_might_not_block(self) -> None:
        await _wait_writable(self.socket)

    async def send_eof(self) -> None:
        if self._eof_sent or self._closed:
            await _checkpoint()
            return
        self._eof_sent = True
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._error(exc) from exc
        await _checkpoint()

    def _error(self, exc: OSError) -> Exception:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("the socket was closed")
        return trio.BrokenResourceError(exc)

    def close(self) -> None:
        """Close at once; tasks waiting on the socket are woken with ClosedResourceError."""
        if not self._closed:
            self._closed = True
            try:
                trio.lowlevel.notify_closing(self.socket)
            except RuntimeError:  # pragma: no cover - outside trio
                pass
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await _checkpoint()

    def fileno(self) -> int:
        return self.socket.fileno()


class FastTlsStream(trio.abc.Stream):
    """The application-data phase of a TLS connection handshaken by ``trio.SSLStream``."""


    def __init__(self, handshaken: trio.SSLStream, transport: FastSocketStream) -> None:
        self.transport = transport
        self._ssl: ssl.SSLObject = handshaken._ssl_object  # type: ignore[attr-defined]
        self._in: ssl.MemoryBIO = handshaken._incoming  # type: ignore[attr-defined]
        self._out: ssl.MemoryBIO = handshaken._outgoing  # type: ignore[attr-defined]
        self._sending = False
        self._closed = False
        self._eof = False
        """close_notify or the socket's EOF came: reads ask the SSL object first, as before."""
        self._sent = trio.lowlevel.ParkingLot()
        # trio holds back a TLS 1.3 server's session tickets until the first write
        # (OpenSSL issue 7948); they go first, ahead of anything we write.
        delayed = getattr(handshaken, "_delayed_outgoing", None)
        if delayed:
            self._out.write(delayed)

    @classmethod
    def take_over(cls, handshaken: trio.SSLStream) -> trio.abc.Stream:
        """The lean stream for ``handshaken`` when it runs over a FastSocketStream (possibly
        behind a ``PrefixedStream`` whose prefix is used up); ``handshaken`` itself otherwise."""
        transport = handshaken.transport_stream
        inner = getattr(transport, "transport_stream", None)
        if inner is not None and not getattr(transport, "_prefix", b""):
            transport = inner
        if not isinstance(transport, FastSocketStream) or not hasattr(handshaken, "_ssl_object"):
            return handshaken
        return cls(handshaken, transport)

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    async def _flush(self) -> None:
        """Send what the SSL object queued, unless another task is already sending (it will)."""
        if self._sending:
            return
        self._sending = True
        try:
            out = self._out
            while out.pending:
                await self.transport.send_all(out.read())
        finally:
            self._sending = False
            if self._sent:
                self._sent.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        obj = self._ssl
        incoming = self._in
        size = max_bytes or RECV_SIZE
        while True:
            # Nothing received and not decrypted, no plaintext kept: a read could only want
            # more (SSLWantReadError, ~3 us with its exception), so go to the socket at once.
            if incoming.pending or obj.pending() or self._eof:
                try:
                    data = obj.read(size)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    self._eof = True
                    return b""  # close_notify
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(exc) from exc
                else:
                    if self._out.pending:
                        await self._flush()
                    if data:
                        return data
                    await _checkpoint()
                    return b""
            if self._out.pending:
                await self._flush()
            raw = await self.transport.receive_some(RECV_SIZE)
            if not raw:
                self._in.write_eof()
                self._eof = True
                try:
                    obj.read(size)
                except ssl.SSLZeroReturnError:
                    self._eof = True
                    return b""
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(exc) from exc  # EOF without close_notify
                return b""
            self._in.write(raw)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(exc) from exc
        while self._sending:
            # The other task is sending and drains the BIO, our bytes included; they must
            # be on their way before we return, so wait for it to finish.
            await self._sent.park()
        if self._out.pending:
            await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """close_notify (best effort, never blocking), then the socket."""
        if self._closed:
            await _checkpoint()
            return
        self._closed = True
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass
        try:
            if self._out.pending and not self._sending:
                self.transport.socket.send(self._out.read())
        except OSError:
            pass
        await self.transport.aclose()


def accepted(stream: trio.SocketStream) -> FastSocketStream:
    """A FastSocketStream owning the socket of a trio SocketStream (which is left closed)."""
    fd = stream.socket.detach()
    return FastSocketStream(socket.socket(fileno=fd))


async def connect(address: str, port: int) -> FastSocketStream:
    """A TCP connection to ``address:port`` (an IP literal), as a FastSocketStream."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect((address, port))
        except BlockingIOError:
            await _wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        else:
            await _checkpoint()
    except BaseException:
        sock.close()
        raise
    return FastSocketStream(sock)


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_socket(listener: socket.socket, handler: Callable[[FastSocketStream], Awaitable[None]]) -> None:
    """Accept on ``listener`` until cancelled; each connection handled in its own task."""
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    await _wait_readable(listener)
                    continue
                except OSError as exc:
                    if exc.errno in _ACCEPT_CAPACITY:
                        log.error("accept on %s: %s; pausing", listener.getsockname(), os.strerror(exc.errno))
                        await trio.sleep(0.1)
                        continue
                    raise
                nursery.start_soon(handler, FastSocketStream(conn))
    finally:
        try:
            trio.lowlevel.notify_closing(listener)
        except RuntimeError:  # pragma: no cover
            pass
        listener.close()

