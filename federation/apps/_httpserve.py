"""A small trio HTTP server for the demo apps: HTTP/1.1 (h11) and h2c (h2) on one port.

Theory of operation. Each accepted connection is sniffed: bytes that start with the
HTTP/2 connection preface (RFC 9113 3.4, "prior knowledge") go to the h2 side, anything
else to h11; an HTTP/1.1 request carrying ``Upgrade: h2c`` is answered 101 and carried on
as stream 1 of an h2 connection (RFC 7540 3.2). Requests are read whole (bounded by
``max_body``) and handed to one ``Handler``; its ``Response`` may stream its body and,
on HTTP/2, end with trailers (gRPC needs both).

Graceful shutdown (``drain``): listeners close at once; an HTTP/1.1 connection idle
between requests is closed, one busy with a request finishes it with ``Connection:
close``; an h2 connection refuses new streams, finishes the open ones and sends GOAWAY.
After ``grace`` seconds whatever is left is cancelled.

These are demo apps standing in for users' own: h11's ~40 µs per request is fine here
(the mesh's own data plane parses with httptools).
"""

from __future__ import annotations

import errno
import http
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, contextmanager, nullcontext
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BODY = 1 << 20
"""Largest request body read, in bytes; a larger one is answered 413."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest request head (HTTP/1.1) or header list (HTTP/2), as Envoy's 60 KiB order."""
RECEIVE_SIZE = 65536
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}  # as trio.serve_listeners

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """One request, read whole. Header names are lowercase; HTTP/2's ``:authority`` is ``host``."""

    method: str
    target: str
    """As sent: origin-form ``/p?q``, or absolute-form ``http://host/p`` (proxy requests)."""
    headers: Headers
    body: bytes = b""
    protocol: str = "HTTP/1.1"
    """``HTTP/1.0``, ``HTTP/1.1`` or ``HTTP/2``."""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    def header(self, name: str) -> str | None:
        """The field's value; repeated fields joined with ``, `` (RFC 9110 5.3), cookies with ``; ``
        (HTTP/2 may split them into one field per cookie, RFC 9113 8.2.3)."""
        values = [v for k, v in self.headers if k == name]
        return ("; " if name == "cookie" else ", ").join(values) if values else None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers = ()
    body: bytes | AsyncIterable[bytes] = b""
    """Bytes (sent with Content-Length) or chunks (chunked on HTTP/1.1)."""
    trailers: Callable[[], Sequence[tuple[str, str]]] | None = None
    """Called once the body is sent; HTTP/2 only (gRPC's grpc-status), dropped on HTTP/1.1."""


Handler = Callable[[Request], Awaitable[Response]]


def plain(status: int, text: str = "") -> Response:
    body = (text or http.HTTPStatus(status).phrase + "\n").encode()
    return Response(status, (("content-type", "text/plain; charset=utf-8"),), body)


class HttpServer:
    """Serves one handler on any number of addresses; ``drain()`` shuts it down gracefully."""

    def __init__(self, handler: Handler, *, grace: float = 5.0, max_body: int = MAX_BODY,
                 access_log: bool = False) -> None:
        self.handler = handler
        self.grace = grace
        self.max_body = max_body
        self.access_log = access_log
        self.draining = trio.Event()
        self._idle: set[trio.CancelScope] = set()
        self.connections = 0

    def __repr__(self) -> str:
        state = "draining" if self.draining.is_set() else "serving"
        return f"<HttpServer {state} [{self.connections} connections, {len(self._idle)} idle]>"

    def drain(self) -> None:
        """Stop accepting, close idle connections, let requests in flight finish."""
        self.draining.set()
        for scope in list(self._idle):
            scope.cancel()

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (0 picks a port) and serve until drained or cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(self, listeners: list[trio.SocketListener], *,
                              task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on listeners already bound (so a bind error surfaces before anything starts)."""
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, connections)
                    task_status.started(listeners[0].socket.getsockname()[:2])
                    await self.draining.wait()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                connections.cancel_scope.deadline = trio.current_time() + self.grace
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise
                await trio.sleep(0.1)
                continue
            connections.start_soon(self._connection, stream)

    @contextmanager
    def idle_scope(self) -> Iterator[trio.CancelScope]:
        """A scope ``drain()`` cancels: wrap waits for a connection's next request in it."""
        with trio.CancelScope() as scope:
            if self.draining.is_set():
                scope.cancel()
            self._idle.add(scope)
            try:
                yield scope
            finally:
                self._idle.discard(scope)

    async def call(self, request: Request) -> Response:
        """The handler's response; a failing handler is a 500, never a dead connection."""
        try:
            response = await self.handler(request)
        except Exception as exc:  # noqa: BLE001 - an app bug must not take the server down
            print(f"{request.method} {request.target}: handler failed: {exc!r}", file=sys.stderr, flush=True)
            response = plain(500)
        if self.access_log:
            print(f'"{request.method} {request.target} {request.protocol}" {response.status}', flush=True)
        return response

    async def _connection(self, stream: trio.SocketStream) -> None:
        from ._h2serve import serve_h2  # the two halves refer to each other

        self.connections += 1
        try:
            async with stream:
                first = b""
                with self.idle_scope():
                    while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                        chunk = await stream.receive_some(RECEIVE_SIZE)
                        if not chunk:
                            break
                        first += chunk
                if not first:
                    return
                if first.startswith(H2_PREFACE):
                    await serve_h2(self, stream, first)
                else:
                    await self._serve_h1(stream, first)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except Exception as exc:  # noqa: BLE001 - one bad connection must not end the server
            print(f"connection failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            self.connections -= 1

    async def _serve_h1(self, stream: trio.SocketStream, first: bytes) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        conn.receive_data(first)
        while True:
            try:
                event = await self._next_h1(stream, conn, between_requests=True)
                if not isinstance(event, h11.Request):
                    return
                body = bytearray()
                while not isinstance(part := await self._next_h1(stream, conn), h11.EndOfMessage):
                    if part is None:
                        return  # closed mid-body
                    if isinstance(part, h11.Data):
                        body += part.data
                        if len(body) > self.max_body:
                            await self._send_h1(stream, conn, plain(413), "GET", close=True)
                            return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send_h1(stream, conn, plain(exc.error_status_hint), "GET", close=True)
                return
            headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)
            request = Request(event.method.decode("ascii"), event.target.decode("latin-1"), headers,
                              bytes(body), "HTTP/" + event.http_version.decode("ascii"))
            if _is_h2c_upgrade(request):
                from ._h2serve import serve_h2_upgrade

                await self._send_raw_101(stream, conn)
                await serve_h2_upgrade(self, stream, conn.trailing_data[0], request)
                return
            response = await self.call(request)
            await self._send_h1(stream, conn, response, request.method, close=self.draining.is_set())
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # e.g. an Upgrade request we did not switch for: close rather than guess

    async def _next_h1(self, stream: trio.SocketStream, conn: h11.Connection,
                       between_requests: bool = False) -> h11.Event | None:
        while True:
            event = conn.next_event()
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return None  # PAUSED: an unanswered Upgrade or a protocol switch; nothing more to read
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if between_requests and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                with self.idle_scope() as scope:
                    chunk = await stream.receive_some(RECEIVE_SIZE)
                if scope.cancelled_caught:
                    return None
            else:
                chunk = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(chunk)

    async def _send_raw_101(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        data = conn.send(h11.InformationalResponse(
            status_code=101, headers=[(b"connection", b"Upgrade"), (b"upgrade", b"h2c")],
            reason=b"Switching Protocols"))
        await stream.send_all(data)

    async def _send_h1(self, stream: trio.SocketStream, conn: h11.Connection, response: Response,
                       method: str, *, close: bool) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
                   if k.lower() not in ("connection", "transfer-encoding", "keep-alive")]
        no_body = method == "HEAD" or response.status in (204, 304)
        if isinstance(response.body, bytes) and response.status not in (204, 304):
            if not any(k.lower() == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(response.body)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        reason = http.HTTPStatus(response.status).phrase.encode() if response.status in _PHRASES else b""
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers,
                                                     reason=reason)))
        if isinstance(response.body, bytes):
            if response.body and not no_body:
                await stream.send_all(conn.send(h11.Data(data=response.body)))
        else:
            async with closing_body(response.body) as chunks:
                async for chunk in chunks:
                    if chunk and not no_body:
                        await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


_PHRASES = {s.value for s in http.HTTPStatus}


def closing_body(body: AsyncIterable[bytes]) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
    """Closes a generator body even when sending is cancelled halfway (a reset stream)."""
    return aclosing(body) if hasattr(body, "aclose") else nullcontext(body)  # type: ignore[type-var]


def _is_h2c_upgrade(request: Request) -> bool:
    upgrade = (request.header("upgrade") or "").lower()
    tokens = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    return (request.protocol == "HTTP/1.1" and "h2c" in {t.strip() for t in upgrade.split(",")}
            and "upgrade" in tokens and request.header("http2-settings") is not None)
