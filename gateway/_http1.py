"""HTTP/1.1 as a sans-I/O connection with h11's API over httptools (llhttp).

``receive_data`` only buffers; ``next_event`` feeds the buffer to the reader
(``_http1_read``), whose callbacks queue events, and hands the queue out one event at a
time through the cycle's state table (``_http1_state``). llhttp parses everything it is
given, so a pipelined next request may already be queued when the current one ends:
``next_event`` returns PAUSED at the cycle boundary, as h11 does, until both sides are
done and ``start_next_cycle`` is called; a caller that stops reading while PAUSED bounds
memory to one read. ``send`` serializes through ``_http1_write`` and decides what the
head commits to: body framing, keep-alive, a protocol switch.
"""

from __future__ import annotations

import enum
from typing import NoReturn

from . import _http1_write as w
from ._events import (CONNECTION_CLOSED, END_OF_MESSAGE, ConnectionClosed, Data, EndOfMessage, Event, Headers,
                      InformationalResponse, LocalProtocolError, RemoteProtocolError, Request, Response, Role)
from ._http1_read import NO_BODY_STATUS, Http1Reader
from ._http1_state import CLIENT, SERVER, ConnectionState, Http1State, IllegalMove, Switch
from ._http1_write import finish_head, status_line, write_head
from ._limits import DEFAULT_LIMITS, HttpLimits


class Pending(enum.Enum):
    """What ``next_event`` returns when it has no event to give."""

    NEED_DATA = "NEED_DATA"
    """Feed more bytes (or b"" for EOF)."""
    PAUSED = "PAUSED"
    """The peer's message is done; call ``start_next_cycle`` (or read ``trailing_data`` after a switch)."""


NEED_DATA = Pending.NEED_DATA
PAUSED = Pending.PAUSED

IDLE, SEND_BODY, DONE = Http1State.IDLE, Http1State.SEND_BODY, Http1State.DONE
MUST_CLOSE, CLOSED, ERROR = Http1State.MUST_CLOSE, Http1State.CLOSED, Http1State.ERROR
MIGHT_SWITCH, SWITCHED = Http1State.MIGHT_SWITCH_PROTOCOL, Http1State.SWITCHED_PROTOCOL

_RECEIVING = frozenset({IDLE, Http1State.SEND_RESPONSE, SEND_BODY})  # their states in which events flow


class Http1Connection:
    """One HTTP/1.1 connection seen from ``our_role``; see the module docstring."""

    def __init__(self, our_role: Role, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.our_role = our_role
        self.their_role = SERVER if our_role is CLIENT else CLIENT
        self._server = our_role is SERVER
        self._error_status = 400 if self._server else 502
        self._states = ConnectionState()
        self._reader = Http1Reader(self._server, limits)
        self._their_method: bytes | None = None
        self._their_version: bytes | None = None
        self._waiting_100 = False
        self._facts = w.HeadFacts()
        self._body = w.BodyWriter()

    def __repr__(self) -> str:
        return (f"<Http1Connection {self.our_role.name} our={self.our_state.name} "
                f"their={self.their_state.name} buffered={len(self._reader.buf)}>")

    # --- public state -----------------------------------------------------------------------

    @property
    def our_state(self) -> Http1State:
        return self._states.server if self._server else self._states.client

    @property
    def their_state(self) -> Http1State:
        return self._states.client if self._server else self._states.server

    @property
    def their_http_version(self) -> bytes | None:
        return self._their_version

    @property
    def client_is_waiting_for_100_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and neither a response nor body has followed."""
        return self._waiting_100

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._server and self._waiting_100

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received after a protocol switch (or not yet parsed), and whether EOF followed."""
        return self._reader.buf, self._reader.closed

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its sending side."""
        reader = self._reader
        if not data:
            reader.closed = True
        elif reader.closed:
            raise LocalProtocolError("received data after the peer closed the connection")
        elif reader.buf:
            reader.buf += data
        else:
            reader.buf = bytes(data)

    def next_event(self) -> Event | Pending:
        """The next event from the peer, NEED_DATA, or PAUSED at a cycle boundary or switch."""
        reader = self._reader
        events = reader.events
        states = self._states
        if events and (states.client if self._server else states.server) in _RECEIVING:
            event = events.popleft()
            self._process_theirs(event)
            return event
        while True:
            their = states.client if self._server else states.server
            if their is ERROR:
                raise RemoteProtocolError("cannot receive: the peer's state is ERROR", self._error_status)
            if their is MIGHT_SWITCH or their is SWITCHED:
                return PAUSED
            if their is DONE or their is MUST_CLOSE or their is CLOSED:
                if their is DONE and (events or reader.buf or reader.error is not None):
                    return PAUSED  # the next cycle's bytes: wait for start_next_cycle
                if reader.closed:
                    self._process_theirs(CONNECTION_CLOSED)
                    return CONNECTION_CLOSED
                return NEED_DATA
            if events:
                event = events.popleft()
                self._process_theirs(event)
                return event
            if reader.error is not None:
                self._fail_theirs(reader.error)
            if reader.buf and not reader.discard:
                reader.feed()
                if events or reader.error is not None:
                    continue
            if reader.closed:
                return self._eof()
            return NEED_DATA

    def _fail_theirs(self, error: RemoteProtocolError) -> NoReturn:
        self._states.fail(self.their_role)
        raise error

    def _eof(self) -> Event:
        reader = self._reader
        if reader.ends_at_eof():
            reader.events.append(END_OF_MESSAGE)
            return self.next_event()  # type: ignore[return-value]
        kind = "request" if self._server else "response"
        if reader.mid_message:
            self._fail_theirs(RemoteProtocolError(
                f"peer closed the connection in the middle of a {kind}", self._error_status))
        if self.their_state is Http1State.SEND_RESPONSE:
            self._fail_theirs(RemoteProtocolError("peer closed the connection without sending a response", 502))
        self._process_theirs(CONNECTION_CLOSED)
        return CONNECTION_CLOSED

    def _process_theirs(self, event: Event) -> None:
        kind = event.__class__
        if kind is Data:
            self._waiting_100 = False
            return  # llhttp only yields body data between a head and its end
        switch = None
        if kind is Request:
            keep_alive, proposal, expect = self._reader.heads.popleft()
            self._states.proposal = proposal
            self._their_method = event.method  # type: ignore[union-attr]
            self._their_version = event.http_version  # type: ignore[union-attr]
            self._waiting_100 = expect
            if not keep_alive:
                self._states.keep_alive = False
        elif kind is Response or kind is InformationalResponse:
            keep_alive, _, _ = self._reader.heads.popleft()
            self._their_version = event.http_version  # type: ignore[union-attr]
            self._waiting_100 = False
            status = event.status  # type: ignore[union-attr]
            switch = self._switch_for(status, kind is InformationalResponse)
            if switch is None and status == 101:
                self._fail_theirs(RemoteProtocolError("101 Switching Protocols without an Upgrade request", 502))
            if not keep_alive and kind is Response:
                self._states.keep_alive = False
        elif kind is EndOfMessage:
            self._waiting_100 = False
        try:
            self._states.process(self.their_role, kind, switch)
        except IllegalMove as exc:
            raise RemoteProtocolError(f"peer {exc}", self._error_status) from None

    def _switch_for(self, status: int, informational: bool) -> Switch | None:
        proposal = self._states.proposal
        if informational:
            return Switch.UPGRADE if status == 101 and proposal is Switch.UPGRADE else None
        return Switch.CONNECT if proposal is Switch.CONNECT and 200 <= status < 300 else None

    # --- sending ----------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes to put on the wire for ``event``; raises LocalProtocolError if it is illegal now."""
        kind = event.__class__
        if kind is Data:
            return self._send_data(event.data)  # type: ignore[union-attr]
        if kind is EndOfMessage:
            return self._send_end(event.trailers)  # type: ignore[union-attr]
        if kind is Request:
            if self._server:
                raise LocalProtocolError("a server cannot send a Request")
            return self._send_request(event)  # type: ignore[arg-type]
        if kind is Response or kind is InformationalResponse:
            if not self._server:
                raise LocalProtocolError(f"a client cannot send a {kind.__name__}")
            return self._send_response(event, kind is InformationalResponse)  # type: ignore[arg-type]
        if kind is ConnectionClosed:
            self._move(ConnectionClosed)
            return b""
        raise LocalProtocolError(f"HTTP/1.1 has no {kind.__name__} event")

    def send_failed(self) -> None:
        """The bytes of the last ``send`` never reached the peer: the connection is unusable."""
        self._states.fail(self.our_role)

    def _move(self, kind: type, switch: Switch | None = None) -> None:
        try:
            self._states.process(self.our_role, kind, switch)
        except IllegalMove as exc:
            raise LocalProtocolError(f"we {exc}") from None

    def _send_request(self, event: Request) -> bytes:
        if self._states.client is not IDLE:
            self._move(Request)  # raises, naming the state
        method, facts = event.method, self._facts
        parts = write_head(b"%s %s HTTP/1.1\r\n" % (method, event.target), event.headers, facts)
        if facts.hosts != 1:
            raise LocalProtocolError(f"HTTP/1.1 request needs exactly one Host header; found {facts.hosts}")
        head = finish_head(parts)
        body = self._body
        body.commit(facts)
        if method == b"CONNECT":
            body.framing = w.NONE
            self._states.proposal = Switch.CONNECT
        elif facts.upgrade and (body.framing is w.NONE or (body.framing is w.LENGTH and not body.left)):
            self._states.proposal = Switch.UPGRADE  # with a body it is no switch (see _upgraded)
        if facts.close:
            self._states.keep_alive = False
        self._move(Request)
        self._reader.expect_response_to(method)
        self._waiting_100 = facts.expect
        return head

    def _send_response(self, event: Response | InformationalResponse, informational: bool) -> bytes:
        status = event.status
        if informational != (status < 200):
            raise LocalProtocolError(
                f"status {status} needs {'a Response' if informational else 'an InformationalResponse'}")
        line = status_line(status, event.reason)
        facts = self._facts
        if informational:
            switch = None
            if status == 101:
                if self._states.proposal is not Switch.UPGRADE:
                    raise LocalProtocolError("101 Switching Protocols without an Upgrade request")
                switch = Switch.UPGRADE
            head = finish_head(write_head(line, event.headers, facts))
            self._move(InformationalResponse, switch)
            self._waiting_100 = False
            return head
        state = self._states.server
        if state is not IDLE and state is not Http1State.SEND_RESPONSE:
            self._move(Response)  # raises, naming the state
        method = self._their_method if state is not IDLE else None
        switch = Switch.CONNECT if (method == b"CONNECT" and 200 <= status < 300
                                    and self._states.proposal is Switch.CONNECT) else None
        bodyless = method == b"HEAD" or status in NO_BODY_STATUS or switch is not None
        old = self._their_version == b"1.0"
        headers = event.headers
        if old and not bodyless and any(n.lower() == b"transfer-encoding" for n, _ in headers):
            # HTTP/1.0 has no chunked coding: send the (already decoded) body until close.
            headers = [(n, v) for n, v in headers if n.lower() != b"transfer-encoding"]
        parts = write_head(line, headers, facts)
        body = self._body
        extra = b""
        if bodyless:
            body.framing = w.NONE
        elif facts.transfer_encoding is None and facts.content_length is None:
            # No framing given: chunked for HTTP/1.1, until close for HTTP/1.0 (RFC 9112 6.3).
            body.framing = w.UNTIL_CLOSE if old else w.CHUNKED
            extra = b"" if old else w.CHUNKED_HEADER
        else:
            body.commit(facts)
        if facts.close or body.framing is w.UNTIL_CLOSE:
            self._states.keep_alive = False
        if not self._states.keep_alive and not facts.close and switch is None:
            extra += w.CLOSE_HEADER
        head = finish_head(parts, extra)
        self._move(Response, switch)
        self._waiting_100 = False
        return head

    def _send_data(self, data: bytes) -> bytes:
        if (self._states.server if self._server else self._states.client) is not SEND_BODY:
            self._move(Data)  # raises: SEND_BODY is the only state that accepts Data, for both roles
        return self._body.data(data)

    def _send_end(self, trailers: Headers) -> bytes:
        if (self._states.server if self._server else self._states.client) is SEND_BODY:
            self._body.check_end(trailers)
        self._move(EndOfMessage)
        if not self._server:
            self._waiting_100 = False
        return self._body.end(trailers)

    # --- connection reuse -------------------------------------------------------------------

    def start_next_cycle(self) -> None:
        """Both messages are done and the connection stays open: reset for the next exchange."""
        try:
            self._states.start_next_cycle()
        except IllegalMove as exc:
            raise LocalProtocolError(str(exc)) from None
        self._body.framing = w.NONE
        self._waiting_100 = False
        self._reader.next_cycle()
