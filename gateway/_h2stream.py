"""A stream of an ``H2Session``, as the task that serves or uses it sees it, and how it fails.

``H2Stream`` is the per-request handle: the reader task pushes its events (head, Data,
EndOfMessage) and the user ``receive``s them, acknowledging body bytes (``ack``) once it
passed them on; ``send_head``/``send_data``/``send_end`` go through the session's codec,
``send_data`` returning only once the peer's window took the bytes. A stream that ends
abnormally raises its session's ``gone(reason, code, refused)`` error from every later
call: ``UpstreamStreamReset`` (``UpstreamRefusedError`` when the peer never processed
it: safe to retry) on pooled upstream sessions, ``DownstreamReset`` on listener sessions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from h2.errors import ErrorCodes

from ._downstream import DownstreamGone
from ._events import (Data, EndOfMessage, InformationalResponse, LocalProtocolError, Request, Response, Role,
                      _new_request, _new_response)
from ._rescue import UpstreamResetError

if TYPE_CHECKING:
    from ._h2session import H2Session

NO_ERROR, CANCEL, REFUSED_STREAM = ErrorCodes.NO_ERROR, ErrorCodes.CANCEL, ErrorCodes.REFUSED_STREAM

Gone = Callable[[str, int, bool], Exception]
"""(reason, HTTP/2 error code, refused) -> the error a dead stream raises."""
Handler = Callable[["H2Stream"], Awaitable[None]]


class DownstreamReset(DownstreamGone):
    """The client reset its stream (or its connection ended)."""

    def __init__(self, reason: str, code: int = CANCEL) -> None:
        super().__init__(reason)
        self.code = code


class UpstreamStreamReset(UpstreamResetError):
    """The upstream reset the stream, or its connection ended, before the exchange completed."""

    def __init__(self, address: str, reason: str, code: int = CANCEL) -> None:
        super().__init__(address, reason)
        self.code = code


class UpstreamRefusedError(UpstreamStreamReset):
    """The upstream never processed the stream (REFUSED_STREAM, GOAWAY): safe to retry."""


def downstream_gone(reason: str, code: int, refused: bool) -> Exception:
    return DownstreamReset(reason, code)


def upstream_gone(address: str) -> Gone:
    def gone(reason: str, code: int, refused: bool) -> Exception:
        return (UpstreamRefusedError if refused else UpstreamStreamReset)(address, reason, code)
    return gone


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class H2Stream:
    """One stream of an H2Session, for the task that serves or uses it."""

    __slots__ = ("session", "stream_id", "_events", "_waiter", "pending", "error", "ended_in", "ended_out",
                 "sent_head", "scope", "released")

    def __init__(self, session: H2Session, stream_id: int | None) -> None:
        self.session = session
        self.stream_id = stream_id
        self._events: deque[Any] = deque()
        self._waiter: trio.Event | None = None
        self.pending = 0
        """Body bytes received and not yet acknowledged."""
        self.error: Exception | None = None
        self.ended_in = False
        self.ended_out = False
        self.sent_head = False
        """A final head (request, or response with status >= 200) went out."""
        self.scope: trio.CancelScope | None = None
        self.released = False

    def __repr__(self) -> str:
        state = "reset" if self.error is not None else "open"
        return f"<H2Stream {self.stream_id} {state} in={'end' if self.ended_in else 'open'} pending={self.pending}>"

    # -- fed by the reader -----------------------------------------------------------------

    def _push(self, event: Any) -> None:
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def _fail(self, error: Exception) -> None:
        self.ended_in = self.ended_out = True
        if self.error is None:
            self.error = error
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    # -- receiving -------------------------------------------------------------------------

    async def receive(self) -> Any:
        """The next event: the head (Request or Response), Data, or EndOfMessage (trailers)."""
        events = self._events
        while not events:
            if self.error is not None:
                raise self.error
            self._waiter = waiter = trio.Event()
            await waiter.wait()
        return events.popleft()

    def receive_nowait(self) -> Any:
        """The next event if one is already here, else None."""
        return self._events.popleft() if self._events else None

    def buffered_body(self) -> tuple[list[Data], EndOfMessage | None]:
        """The body events already received: the chunks, and the end if it came."""
        events = self._events
        chunks = []
        while events and type(events[0]) is Data:
            chunks.append(events.popleft())
        if events and type(events[0]) is EndOfMessage:
            return chunks, events.popleft()
        return chunks, None

    async def receive_body(self) -> Data | EndOfMessage:
        return await self.receive()  # type: ignore[no-any-return]

    def ack(self, size: int) -> None:
        """``size`` received body bytes were passed on: let the peer send that much more."""
        if size and self.stream_id is not None:
            self.pending -= size
            self.session._ack(self.stream_id, size)

    # -- sending ---------------------------------------------------------------------------

    async def send_head(self, head: Request | Response | InformationalResponse, end: bool = False) -> None:
        session = self.session
        if self.error is not None:
            raise self.error
        if session.role is Role.CLIENT:
            event: Any = _new_request(head.method, head.target, head.headers, b"2")  # type: ignore[union-attr]
        elif type(head) is Response:
            event = _new_response(head.status, head.headers, b"", b"2", self.stream_id)
        else:
            event = InformationalResponse(head.status, head.headers, stream_id=self.stream_id)  # type: ignore[union-attr]
        try:
            stream_id = session.codec.send_headers(event, end_stream=end)
        except LocalProtocolError as exc:
            raise self.error or session.gone(exc.message, CANCEL, self.stream_id is None) from None
        if self.stream_id is None:
            self.stream_id = stream_id
            session.streams[stream_id] = self
        if type(head) is not InformationalResponse:
            self.sent_head = True
        if end:
            self.ended_out = True
        session.wake()

    async def send_data(self, data: bytes, end: bool = False) -> None:
        """Send body bytes; returns once the peer's window took them (backpressure)."""
        if self.error is not None:
            raise self.error
        session = self.session
        codec = session.codec
        stream_id = self.stream_id
        codec.send_data(stream_id, data, end_stream=end)  # type: ignore[arg-type]
        if end:
            self.ended_out = True
        session.wake()
        while codec.buffered(stream_id):  # type: ignore[arg-type]
            if self.error is not None:
                raise self.error
            await session.window_opened()
        if self.error is not None:
            raise self.error

    async def send_end(self, trailers: Any = ()) -> None:
        """End the stream, with trailers if any (gRPC status)."""
        if self.error is not None:
            raise self.error
        codec = self.session.codec
        if trailers:
            codec.send_trailers(self.stream_id, trailers)  # type: ignore[arg-type]
        else:
            codec.end_stream(self.stream_id)  # type: ignore[arg-type]
        self.ended_out = True
        self.session.wake()

    def reset(self, code: int = CANCEL) -> None:
        """RST_STREAM (if the stream is still open on the wire); later calls raise."""
        session = self.session
        if self.stream_id is not None and not (self.ended_in and self.ended_out) and session.dead is None:
            try:
                session.codec.reset(self.stream_id, code)
            except LocalProtocolError:
                pass
            session.wake()
        self._fail(session.gone(f"stream reset by us ({_code_name(code)})", code, False))

    def release(self) -> None:
        """Done with the stream: reset it if still open, hand back unread credit, forget it."""
        if self.released:
            return
        self.released = True
        session = self.session
        if not (self.ended_in and self.ended_out):
            # A server that answered in full may stop the rest of the request (RFC 9113 8.1).
            self.reset(NO_ERROR if session.role is Role.SERVER and self.ended_out else CANCEL)
        if self.pending and self.stream_id is not None:
            session._ack(self.stream_id, self.pending)
            self.pending = 0
        session._forget(self)

    @property
    def peer(self) -> str:
        return self.session.peer
