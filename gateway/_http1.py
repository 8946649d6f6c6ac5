"""HTTP/1.1 as a sans-I/O connection: httptools' llhttp callbacks behind h11's API.

Theory of operation. ``receive_data`` only buffers; ``next_event`` feeds the buffer to
llhttp, whose callbacks append events to a queue, and hands the queue out one event at a
time. llhttp parses everything it is given, so a pipelined next request may already be
queued when the current one ends: ``next_event`` returns PAUSED at the cycle boundary,
as h11 does, until both sides are done and ``start_next_cycle`` is called. Facts about a
message that matter only when it is delivered (keep-alive, upgrade proposal, Expect)
travel beside it in ``_heads``. A caller that stops reading while PAUSED bounds memory to
one read.

Three things llhttp cannot know are handled around it: a response to HEAD (or a 2xx to
CONNECT) has no body whatever its headers say, so the client feeds such responses a head
at a time and drops the parser after the final one; an EOF-delimited response ends on
``receive_data(b"")``, which httptools cannot signal, so the EOM is made here; and an
Upgrade request that carries a body is not a switch (llhttp would skip the body), so the
parser is re-primed with a synthetic head carrying only the framing and keeps reading it.

Limits are checked in the callbacks (exact byte counts of names, values and target) and
by a stall guard: bytes fed while the parser makes no progress belong to one unfinished
head or trailer section, which is refused once it outgrows any valid one.
"""

from __future__ import annotations

import enum
from collections import deque
from http import HTTPStatus
from types import SimpleNamespace

from httptools import (HttpParserError, HttpParserInvalidMethodError, HttpParserUpgrade,
                       HttpRequestParser, HttpResponseParser)

from ._events import (CONNECTION_CLOSED, END_OF_MESSAGE, ConnectionClosed, Data, EndOfMessage,
                      Event, InformationalResponse, LocalProtocolError, RemoteProtocolError,
                      Request, Response, Role, _new_data, _new_end, _new_informational,
                      _new_request, _new_response)
from ._http1_state import CLIENT, SERVER, ConnectionState, Http1State, IllegalMove, Switch
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
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
_WATCH_REQUEST = frozenset({b"host", b"expect", b"content-length", b"transfer-encoding"})
_WATCH_RESPONSE = frozenset({b"content-length", b"transfer-encoding"})
_SEND_WATCH = frozenset({b"host", b"expect", b"content-length", b"transfer-encoding",
                         b"connection", b"upgrade"})
_CLOSE_HEADER = b"connection: close\r\n"
_CHUNKED_HEADER = b"transfer-encoding: chunked\r\n"

# Outgoing body framing.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _Stop(Exception):
    """Raised inside a callback to abort llhttp; the real error is in ``_error``."""


class Http1Connection:
    """One HTTP/1.1 connection seen from ``our_role``; see the module docstring."""

    def __init__(self, our_role: Role, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.our_role = our_role
        self.their_role = SERVER if our_role is CLIENT else CLIENT
        self._server = our_role is SERVER
        self._kind = "request" if self._server else "response"
        self._error_status = 400 if self._server else 502
        self._states = ConnectionState()
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_target = limits.max_target_bytes
        self._max_body = limits.max_body_bytes
        # What a valid unfinished head can span on the wire: names, values, target, and each
        # line's ": " and CRLF; more bytes than that without progress is an oversized head.
        self._stall_limit = limits.max_header_bytes + limits.max_target_bytes + 4 * limits.max_headers + 64
        self._watch = _WATCH_REQUEST if self._server else _WATCH_RESPONSE
        callbacks = SimpleNamespace(
            on_message_begin=self._on_begin, on_header=self._on_header,
            on_headers_complete=self._on_headers_complete, on_body=self._on_body,
            on_message_complete=self._on_complete)
        if self._server:
            callbacks.on_url = self._on_url
        else:
            callbacks.on_status = self._on_status
        self._callbacks = callbacks
        self._parser: HttpRequestParser | HttpResponseParser = self._new_parser()
        # Receiving.
        self._buf = b""
        self._closed = False
        self._events: deque[Event] = deque()
        self._heads: deque[tuple[bool, Switch | None, bool]] = deque()
        self._error: RemoteProtocolError | None = None
        self._progress = False
        self._stall = 0
        self._head_only = False   # client: feed one head at a time (HEAD / CONNECT response)
        self._discard = False     # client: parser abandoned after a bodyless head
        self._reprime: bytes | None = None
        self._synthetic = False
        self._last_keep_alive = True
        self._their_method: bytes | None = None
        self._their_version: bytes | None = None
        self._waiting_100 = False
        self._reset_message()
        # Sending.
        self._out = _NONE
        self._out_left = 0
        self._our_method: bytes | None = None
        self._o_clen: bytes | None = None
        self._o_te: bytes | None = None
        self._o_close = False
        self._o_upgrade = False
        self._o_host = 0
        self._o_expect = False

    def __repr__(self) -> str:
        return (f"<Http1Connection {self.our_role.name} our={self.our_state.name} "
                f"their={self.their_state.name} buffered={len(self._buf)}>")

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
        return self._buf, self._closed

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its sending side."""
        if not data:
            self._closed = True
        elif self._closed:
            raise LocalProtocolError("received data after the peer closed the connection")
        elif self._buf:
            self._buf += data
        else:
            self._buf = bytes(data)

    def next_event(self) -> Event | Pending:
        """The next event from the peer, NEED_DATA, or PAUSED at a cycle boundary or switch."""
        events = self._events
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
                if their is DONE and (events or self._buf or self._error is not None):
                    return PAUSED
                if self._closed:
                    self._process_theirs(CONNECTION_CLOSED)
                    return CONNECTION_CLOSED
                return NEED_DATA
            if events:
                event = events.popleft()
                self._process_theirs(event)
                return event
            if self._error is not None:
                self._fail_theirs()
            if self._buf and not self._discard:
                self._feed()
                if events or self._error is not None:
                    continue
            if self._closed:
                return self._eof()
            return NEED_DATA

    def _feed(self) -> None:
        data = self._buf
        self._buf = b""
        if self._head_only:
            data = self._feed_heads(data)
            if self._head_only or self._discard or self._error is not None or not data:
                self._buf = data if self._error is None else b""
                return
        self._progress = False
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0]:])
        except HttpParserError as exc:
            self._parser_failed(exc)
        else:
            if self._progress:
                self._stall = 0
            else:
                self._stall += len(data)
                if self._stall > self._stall_limit:
                    section = "trailer section" if self._hdone else f"{self._kind} header section"
                    self._error = RemoteProtocolError(
                        f"{section} exceeds {self._max_head} bytes", 431 if self._server else 502)

    def _feed_heads(self, data: bytes) -> bytes:
        """Client side of HEAD and CONNECT: feed whole heads until the final response's."""
        while data and self._head_only:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > self._stall_limit:
                    self._error = RemoteProtocolError(f"response header section exceeds {self._max_head} bytes", 502)
                return data
            head, data = data[:end + 4], data[end + 4:]
            try:
                self._parser.feed_data(head)
            except HttpParserUpgrade:
                self._error = RemoteProtocolError(
                    f"101 Switching Protocols in answer to {self._our_method.decode()}", 502)  # type: ignore[union-attr]
            except HttpParserError as exc:
                self._parser_failed(exc)
            if self._error is not None:
                return b""
        return data

    def _upgraded(self, rest: bytes) -> None:
        if self._reprime is not None:
            # An Upgrade request with a body is served as a plain request (h2c upgrades are
            # ignored, as Envoy does): parse its body behind a head that carries only framing.
            self._buf = self._reprime + rest
            self._reprime = None
            self._synthetic = True
        else:
            self._buf = rest

    def _parser_failed(self, exc: HttpParserError) -> None:
        if self._error is not None:
            return
        reason = str(exc)
        if reason == "Data after `Connection: close`" and not self._in_message and not self._last_keep_alive:
            return  # bytes after a message that closes the connection are ignored
        status = self._error_status
        if self._server:
            if isinstance(exc, HttpParserInvalidMethodError):
                status = 501
            elif "`Transfer-Encoding`" in reason:
                status = 501  # Envoy answers 501 to transfer codings other than chunked
            elif reason == "Pause on PRI/Upgrade":
                status, reason = 505, "HTTP/2 connection preface on an HTTP/1.1 connection"
        self._error = RemoteProtocolError(f"malformed HTTP/1.1 {self._kind}: {reason}", status)

    def _fail_theirs(self) -> None:
        self._states.fail(self.their_role)
        assert self._error is not None
        raise self._error

    def _eof(self) -> Event:
        if self._in_message or self._buf:
            if self._until_eof and not self._discard and self._hdone:
                self._in_message = False
                self._events.append(END_OF_MESSAGE)
                return self.next_event()  # type: ignore[return-value]
            self._error = RemoteProtocolError(
                f"peer closed the connection in the middle of a {self._kind}", self._error_status)
            self._fail_theirs()
        if self.their_state is Http1State.SEND_RESPONSE:
            self._error = RemoteProtocolError("peer closed the connection without sending a response", 502)
            self._fail_theirs()
        self._process_theirs(CONNECTION_CLOSED)
        return CONNECTION_CLOSED

    def _process_theirs(self, event: Event) -> None:
        kind = event.__class__
        if kind is Data:
            self._waiting_100 = False
            return  # llhttp only yields body data between a head and its end
        switch = None
        if kind is Request:
            keep_alive, proposal, expect = self._heads.popleft()
            self._states.proposal = proposal
            self._their_method = event.method  # type: ignore[union-attr]
            self._their_version = event.http_version  # type: ignore[union-attr]
            self._waiting_100 = expect
            if not keep_alive:
                self._states.keep_alive = False
        elif kind is Response or kind is InformationalResponse:
            keep_alive, _, _ = self._heads.popleft()
            self._their_version = event.http_version  # type: ignore[union-attr]
            self._waiting_100 = False
            status = event.status  # type: ignore[union-attr]
            switch = self._switch_for(status, kind is InformationalResponse)
            if switch is None and status == 101:
                self._error = RemoteProtocolError("101 Switching Protocols without an Upgrade request", 502)
                self._fail_theirs()
            if not keep_alive and kind is Response:
                self._states.keep_alive = False
        elif kind is EndOfMessage:
            self._waiting_100 = False
        try:
            self._states.process(self.their_role, kind, switch)
        except IllegalMove as exc:
            self._error = RemoteProtocolError(f"peer {exc}", self._error_status)
            raise self._error from None

    def _switch_for(self, status: int, informational: bool) -> Switch | None:
        proposal = self._states.proposal
        if informational:
            return Switch.UPGRADE if status == 101 and proposal is Switch.UPGRADE else None
        return Switch.CONNECT if proposal is Switch.CONNECT and 200 <= status < 300 else None

    # --- llhttp callbacks -------------------------------------------------------------------

    def _new_parser(self) -> HttpRequestParser | HttpResponseParser:
        cls = HttpRequestParser if self._server else HttpResponseParser
        return cls(self._callbacks)

    def _reset_message(self) -> None:
        self._in_message = False
        self._hdone = False
        self._url = b""
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._body_bytes = 0
        self._hosts = 0
        self._expect = False
        self._clen: bytes | None = None
        self._te = False
        self._informational = False
        self._until_eof = False

    def _on_begin(self) -> None:
        if not self._synthetic:
            self._reset_message()
            self._in_message = True

    def _on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        url = self._url + url
        self._url = url
        if len(url) > self._max_target:
            self._error = RemoteProtocolError(f"request target exceeds {self._max_target} bytes", 414)
            raise _Stop

    def _on_status(self, reason: bytes) -> None:
        self._reason += reason

    def _on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic:
            return
        size = self._head_bytes + len(name) + len(value)
        self._head_bytes = size
        if self._hdone:
            self._progress = True
            trailers = self._trailers
            if trailers is None:
                self._trailers = trailers = []
            if size > self._max_head or len(trailers) >= self._max_headers:
                self._too_large("trailer section")
            trailers.append((name.lower(), value))
            return
        headers = self._headers
        if size > self._max_head or len(headers) >= self._max_headers:
            self._too_large(f"{self._kind} header section")
        lname = name.lower()
        headers.append((lname, value))
        if lname in self._watch:
            if lname == b"content-length":
                self._clen = value
            elif lname == b"transfer-encoding":
                self._te = True
            elif lname == b"host":
                self._hosts += 1
            elif lname == b"expect":
                self._expect = value.lower() == b"100-continue"

    def _too_large(self, section: str) -> None:
        status = 431 if self._server else 502
        if self._head_bytes > self._max_head:
            self._error = RemoteProtocolError(f"{section} exceeds {self._max_head} bytes", status)
        else:
            self._error = RemoteProtocolError(f"{section} has more than {self._max_headers} fields", status)
        raise _Stop

    def _on_headers_complete(self) -> None:
        if self._synthetic:
            self._synthetic = False
            return
        parser = self._parser
        self._hdone = True
        self._progress = True
        self._head_bytes = 0
        raw_version = parser.get_http_version()
        version = _VERSIONS.get(raw_version)
        if version is None:
            self._error = RemoteProtocolError(f"HTTP version {raw_version} is not supported", 505)
            raise _Stop
        keep_alive = parser.should_keep_alive()
        self._last_keep_alive = keep_alive
        clen = self._clen
        if clen is not None and self._max_body is not None and int(clen) > self._max_body:
            self._error = RemoteProtocolError(
                f"Content-Length {int(clen)} exceeds the body limit of {self._max_body} bytes",
                413 if self._server else 502)
            raise _Stop
        if self._server:
            method = parser.get_method()
            if self._hosts > 1 or (self._hosts == 0 and version == b"1.1"):
                self._error = RemoteProtocolError(
                    f"HTTP/1.1 request needs exactly one Host header; found {self._hosts}")
                raise _Stop
            switch = None
            if parser.should_upgrade():
                if method == b"CONNECT":
                    switch = Switch.CONNECT
                elif self._te:
                    self._reprime = b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
                elif clen is not None and int(clen) > 0:
                    self._reprime = b"PUT / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % int(clen)
                else:
                    switch = Switch.UPGRADE
            self._events.append(_new_request(method, self._url, self._headers, version))
            self._heads.append((keep_alive, switch, self._expect and version == b"1.1"))
            return
        status = parser.get_status_code()
        if status < 200:
            self._informational = True
            self._events.append(_new_informational(status, self._headers, self._reason, version))
            self._heads.append((keep_alive, None, False))
            return
        self._events.append(_new_response(status, self._headers, self._reason, version))
        self._heads.append((keep_alive, None, False))
        method = self._our_method
        if self._head_only:
            self._head_only = False
            if method == b"HEAD" or 200 <= status < 300:   # HEAD, or CONNECT accepted
                self._discard = True
                if method == b"HEAD":
                    self._events.append(END_OF_MESSAGE)
                return
        self._until_eof = not keep_alive and clen is None and not self._te and status not in _NO_BODY_STATUS

    def _on_body(self, body: bytes) -> None:
        if self._discard or self._reprime is not None:
            return
        self._progress = True
        if self._max_body is not None:
            self._body_bytes += len(body)
            if self._body_bytes > self._max_body:
                self._error = RemoteProtocolError(
                    f"{self._kind} body exceeds {self._max_body} bytes", 413 if self._server else 502)
                raise _Stop
        self._events.append(_new_data(body))

    def _on_complete(self) -> None:
        self._progress = True
        if self._discard or self._reprime is not None:
            return
        self._in_message = False
        if self._informational:
            return
        trailers = self._trailers
        self._events.append(END_OF_MESSAGE if trailers is None else _new_end(trailers))

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

    def _head(self, line: bytes, headers: object) -> list[bytes]:
        """Serialize a head up to its last header, noting the headers that decide framing and reuse."""
        parts = [line]
        clen = te = None
        close = upgrade_token = upgrade = expect = False
        hosts = 0
        watch = _SEND_WATCH
        for name, value in headers:  # type: ignore[attr-defined]
            # Parsed names are lowercase already and their hash is cached: test them as they are.
            lname = name if name in watch or name.islower() else name.lower()
            if lname in watch:
                if lname == b"content-length":
                    if clen is not None and clen != value:
                        raise LocalProtocolError(f"conflicting Content-Length headers {clen!r} and {value!r}")
                    clen = value
                elif lname == b"transfer-encoding":
                    te = value
                elif lname == b"connection":
                    tokens = [t.strip() for t in value.lower().split(b",")]
                    close = close or b"close" in tokens
                    upgrade_token = upgrade_token or b"upgrade" in tokens
                elif lname == b"host":
                    hosts += 1
                elif lname == b"expect":
                    expect = value.lower() == b"100-continue"
                else:
                    upgrade = True
            parts += (name, b": ", value, b"\r\n")
        self._o_clen, self._o_te, self._o_close = clen, te, close
        self._o_upgrade = upgrade and upgrade_token
        self._o_host, self._o_expect = hosts, expect
        return parts

    @staticmethod
    def _finish(parts: list[bytes], extra: bytes = b"") -> bytes:
        parts.append(extra)
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Each line must end in the one CRLF written here: a CR or LF inside a target, name
        # or value would start a header (or a whole message) of the sender's choosing.
        lines = (len(parts) - 3) // 4 + 2 + extra.count(b"\n")
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise LocalProtocolError("CR or LF in the request target, reason, a header name or a header value")
        return head

    def _framing(self, clen: bytes | None, te: bytes | None) -> None:
        if te is not None:
            if clen is not None:
                raise LocalProtocolError("both Content-Length and Transfer-Encoding in one message")
            if not te.lower().rstrip().endswith(b"chunked"):
                raise LocalProtocolError(f"Transfer-Encoding {te!r} does not end with chunked")
            self._out = _CHUNKED
        elif clen is not None:
            if not clen.isdigit():
                raise LocalProtocolError(f"Content-Length {clen!r} is not a non-negative integer")
            self._out, self._out_left = _LENGTH, int(clen)
        else:
            self._out = _NONE

    def _send_request(self, event: Request) -> bytes:
        if self._states.client is not IDLE:
            self._move(Request)  # raises, naming the state
        method = event.method
        parts = self._head(b"%s %s HTTP/1.1\r\n" % (method, event.target), event.headers)
        if self._o_host != 1:
            raise LocalProtocolError(f"HTTP/1.1 request needs exactly one Host header; found {self._o_host}")
        head = self._finish(parts)
        self._framing(self._o_clen, self._o_te)
        if method == b"CONNECT":
            self._out = _NONE
            self._states.proposal = Switch.CONNECT
        elif self._o_upgrade and (self._out is _NONE or (self._out is _LENGTH and not self._out_left)):
            self._states.proposal = Switch.UPGRADE  # with a body it is no switch (see _upgraded)
        if self._o_close:
            self._states.keep_alive = False
        self._move(Request)
        self._our_method = method
        self._head_only = method == b"HEAD" or method == b"CONNECT"
        self._waiting_100 = self._o_expect
        return head

    def _send_response(self, event: Response | InformationalResponse, informational: bool) -> bytes:
        status = event.status
        if informational != (status < 200):
            raise LocalProtocolError(
                f"status {status} needs {'a Response' if informational else 'an InformationalResponse'}")
        line = _STATUS_LINES.get(status) if not event.reason else None
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, event.reason)
        state = self._states.server
        if informational:
            switch = None
            if status == 101:
                if self._states.proposal is not Switch.UPGRADE:
                    raise LocalProtocolError("101 Switching Protocols without an Upgrade request")
                switch = Switch.UPGRADE
            head = self._finish(self._head(line, event.headers))
            self._move(InformationalResponse, switch)
            self._waiting_100 = False
            return head
        if state is not IDLE and state is not Http1State.SEND_RESPONSE:
            self._move(Response)  # raises, naming the state
        method = self._their_method if state is not IDLE else None
        switch = Switch.CONNECT if (method == b"CONNECT" and 200 <= status < 300
                                    and self._states.proposal is Switch.CONNECT) else None
        bodyless = method == b"HEAD" or status in _NO_BODY_STATUS or switch is not None
        old = self._their_version == b"1.0"
        headers = event.headers
        if old and not bodyless and any(n.lower() == b"transfer-encoding" for n, _ in headers):
            # HTTP/1.0 has no chunked coding: send the (already decoded) body until close.
            headers = [(n, v) for n, v in headers if n.lower() != b"transfer-encoding"]
        parts = self._head(line, headers)
        extra = b""
        if bodyless:
            self._out = _NONE
        elif self._o_te is None and self._o_clen is None:
            self._out = _UNTIL_CLOSE if old else _CHUNKED
            if not old:
                extra = _CHUNKED_HEADER
        else:
            self._framing(self._o_clen, self._o_te)
        if self._o_close or self._out is _UNTIL_CLOSE:
            self._states.keep_alive = False
        if not self._states.keep_alive and not self._o_close and switch is None:
            extra += _CLOSE_HEADER
        head = self._finish(parts, extra)
        self._move(Response, switch)
        self._waiting_100 = False
        return head

    def _send_data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:  # the only state that accepts Data, for both roles
            self._move(Data)
        out = self._out
        if out is _LENGTH:
            if len(data) > self._out_left:
                raise LocalProtocolError(
                    f"{len(data)} bytes of body exceed the {self._out_left} left of Content-Length")
            self._out_left -= len(data)
            return data
        if out is _CHUNKED:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if out is _UNTIL_CLOSE:
            return data
        if data:
            raise LocalProtocolError("this message has no body (no Content-Length or Transfer-Encoding, "
                                     "HEAD, 1xx, 204, 304 or CONNECT)")
        return b""

    def _send_end(self, trailers: object) -> bytes:
        out = self._out
        if out is _LENGTH and self._out_left and self.our_state is SEND_BODY:
            raise LocalProtocolError(f"message ended {self._out_left} bytes short of its Content-Length")
        if trailers and out is not _CHUNKED:
            raise LocalProtocolError("trailers need a chunked body")
        self._move(EndOfMessage)
        if not self._server:
            self._waiting_100 = False
        if out is _CHUNKED:
            if not trailers:
                return b"0\r\n\r\n"
            return self._finish(self._head(b"0\r\n", trailers))
        return b""

    # --- connection reuse -------------------------------------------------------------------

    def start_next_cycle(self) -> None:
        """Both messages are done and the connection stays open: reset for the next exchange."""
        try:
            self._states.start_next_cycle()
        except IllegalMove as exc:
            raise LocalProtocolError(str(exc)) from None
        self._out = _NONE
        self._our_method = None
        self._head_only = False
        self._waiting_100 = False
        if self._discard:
            self._discard = False
            self._parser = self._new_parser()
            self._reset_message()
