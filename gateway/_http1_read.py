"""Reading HTTP/1.1: llhttp (through httptools) fed from a buffer, its callbacks made events.

The reader parses whatever it is fed and queues the events; ``Http1Connection`` decides
when to feed it and hands the events out. Facts about a message that matter only when it
is delivered (keep-alive, upgrade proposal, Expect) travel beside it in ``heads``.

Three things llhttp cannot know are handled around it: a response to HEAD (or a 2xx to
CONNECT) has no body whatever its headers say, so such responses are fed a head at a time
and the parser is dropped after the final one (``discard``); an EOF-delimited response
ends on EOF, which httptools cannot be told, so ``ends_at_eof`` lets the connection make
the EOM; and an Upgrade request that carries a body is no switch (llhttp would skip the
body), so the parser is re-primed with a synthetic head carrying only the framing.

Limits are checked in the callbacks (exact byte counts of names, values and target) and
by a stall guard: bytes fed while the parser makes no progress belong to one unfinished
head or trailer section, which is refused once it outgrows any valid one. An error is
kept in ``error`` and surfaces after the events parsed before it.
"""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

from httptools import (HttpParserCallbackError, HttpParserError, HttpParserInvalidMethodError,
                       HttpParserUpgrade, HttpRequestParser, HttpResponseParser)

from ._events import (END_OF_MESSAGE, Event, RemoteProtocolError, _new_data, _new_end, _new_informational,
                      _new_request, _new_response)
from ._http1_state import Switch
from ._limits import HttpLimits

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
NO_BODY_STATUS = frozenset({204, 304})
_WATCH_REQUEST = frozenset({b"host", b"expect", b"content-length", b"transfer-encoding"})
_WATCH_RESPONSE = frozenset({b"content-length", b"transfer-encoding"})


class _Stop(Exception):
    """Raised inside a callback to abort llhttp; the real error is in ``error``."""


class Http1Reader:
    """Parses one side's messages: requests for a server, responses for a client."""

    def __init__(self, server: bool, limits: HttpLimits) -> None:
        self._server = server
        self._kind = "request" if server else "response"
        self._error_status = 400 if server else 502
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_target = limits.max_target_bytes
        self._max_body = limits.max_body_bytes
        # What a valid unfinished head can span on the wire: names, values, target, and each
        # line's ": " and CRLF; more bytes than that without progress is an oversized head.
        self._stall_limit = limits.max_header_bytes + limits.max_target_bytes + 4 * limits.max_headers + 64
        self._watch = _WATCH_REQUEST if server else _WATCH_RESPONSE
        callbacks = SimpleNamespace(
            on_message_begin=self._on_begin, on_header=self._on_header,
            on_headers_complete=self._on_headers_complete, on_body=self._on_body,
            on_message_complete=self._on_complete)
        if server:
            callbacks.on_url = self._on_url
        else:
            callbacks.on_status = self._on_status
        self._callbacks = callbacks
        self._parser: HttpRequestParser | HttpResponseParser = self._new_parser()
        self.buf = b""
        self.closed = False
        self.events: deque[Event] = deque()
        self.heads: deque[tuple[bool, Switch | None, bool]] = deque()
        self.error: RemoteProtocolError | None = None
        self.discard = False      # client: parser abandoned after a bodyless head
        self._progress = False
        self._stall = 0
        self._head_only = False   # client: feed one head at a time (HEAD / CONNECT response)
        self._our_method: bytes | None = None
        self._reprime: bytes | None = None
        self._synthetic = False
        self._last_keep_alive = True
        self._reset_message()

    def expect_response_to(self, method: bytes) -> None:
        """The client sent ``method``: HEAD and CONNECT answers are read a head at a time."""
        self._our_method = method
        self._head_only = method == b"HEAD" or method == b"CONNECT"

    def next_cycle(self) -> None:
        self._head_only = False
        if self.discard:
            self.discard = False
            self._parser = self._new_parser()
            self._reset_message()

    @property
    def mid_message(self) -> bool:
        """Part of a message has been fed (or buffered) and its end has not."""
        return self._in_message or bool(self.buf)

    def ends_at_eof(self) -> bool:
        """The message being read is delimited by EOF: mark it complete (the EOF just came)."""
        if self._in_message and self._until_eof and self._hdone and not self.discard:
            self._in_message = False
            return True
        return False

    def feed(self) -> None:
        """Parse the buffer; events, heads and any error accumulate on the reader."""
        data = self.buf
        self.buf = b""
        if self._head_only:
            data = self._feed_heads(data)
            if self._head_only or self.discard or self.error is not None or not data:
                self.buf = data if self.error is None else b""
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
                    self.error = RemoteProtocolError(
                        f"{section} exceeds {self._max_head} bytes", 431 if self._server else 502)

    def _feed_heads(self, data: bytes) -> bytes:
        """Client side of HEAD and CONNECT: feed whole heads until the final response's."""
        while data and self._head_only:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > self._stall_limit:
                    self.error = RemoteProtocolError(f"response header section exceeds {self._max_head} bytes", 502)
                return data
            head, data = data[:end + 4], data[end + 4:]
            try:
                self._parser.feed_data(head)
            except HttpParserUpgrade:
                self.error = RemoteProtocolError(
                    f"101 Switching Protocols in answer to {self._our_method.decode()}", 502)  # type: ignore[union-attr]
            except HttpParserError as exc:
                self._parser_failed(exc)
            if self.error is not None:
                return b""
        return data

    def _upgraded(self, rest: bytes) -> None:
        if self._reprime is not None:
            # An Upgrade request with a body is served as a plain request (h2c upgrades are
            # ignored, as Envoy does): parse its body behind a head that carries only framing.
            self.buf = self._reprime + rest
            self._reprime = None
            self._synthetic = True
        else:
            self.buf = rest

    def _parser_failed(self, exc: HttpParserError) -> None:
        if self.error is not None:
            return
        cause = exc.__context__
        if isinstance(exc, HttpParserCallbackError) and cause is not None and not isinstance(cause, _Stop):
            raise cause  # a bug in a callback, not bad input: do not dress it up as a 400
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
        self.error = RemoteProtocolError(f"malformed HTTP/1.1 {self._kind}: {reason}", status)

    # --- llhttp callbacks -------------------------------------------------------------------

    def _new_parser(self) -> HttpRequestParser | HttpResponseParser:
        cls = HttpRequestParser if self._server else HttpResponseParser
        return cls(self._callbacks)

    def _reset_message(self) -> None:
        # ``_on_begin`` repeats these stores inline: keep the two in step.
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
            # ``_reset_message`` inlined: this runs for every message (one call less from llhttp).
            self._hdone = False
            self._url = b""
            self._reason = b""
            self._headers = []
            self._head_bytes = 0
            self._trailers = None
            self._body_bytes = 0
            self._hosts = 0
            self._expect = False
            self._clen = None
            self._te = False
            self._informational = False
            self._until_eof = False
            self._in_message = True

    def _on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        url = self._url + url
        self._url = url
        if len(url) > self._max_target:
            self.error = RemoteProtocolError(f"request target exceeds {self._max_target} bytes", 414)
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
            self.error = RemoteProtocolError(f"{section} exceeds {self._max_head} bytes", status)
        else:
            self.error = RemoteProtocolError(f"{section} has more than {self._max_headers} fields", status)
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
            self.error = RemoteProtocolError(f"HTTP version {raw_version} is not supported", 505)
            raise _Stop
        keep_alive = parser.should_keep_alive()
        self._last_keep_alive = keep_alive
        clen = self._clen
        if clen is not None and self._max_body is not None and int(clen) > self._max_body:
            self.error = RemoteProtocolError(
                f"Content-Length {int(clen)} exceeds the body limit of {self._max_body} bytes",
                413 if self._server else 502)
            raise _Stop
        if self._server:
            method = parser.get_method()
            if self._hosts > 1 or (self._hosts == 0 and version == b"1.1"):
                self.error = RemoteProtocolError(
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
            self.events.append(_new_request(method, self._url, self._headers, version))
            self.heads.append((keep_alive, switch, self._expect and version == b"1.1"))
            return
        status = parser.get_status_code()
        if status < 200:
            self._informational = True
            self.events.append(_new_informational(status, self._headers, self._reason, version))
            self.heads.append((keep_alive, None, False))
            return
        self.events.append(_new_response(status, self._headers, self._reason, version))
        self.heads.append((keep_alive, None, False))
        method = self._our_method
        if self._head_only:
            self._head_only = False
            if method == b"HEAD" or 200 <= status < 300:   # HEAD, or CONNECT accepted
                self.discard = True
                if method == b"HEAD":
                    self.events.append(END_OF_MESSAGE)
                return
        self._until_eof = not keep_alive and clen is None and not self._te and status not in NO_BODY_STATUS

    def _on_body(self, body: bytes) -> None:
        if self.discard or self._reprime is not None:
            return
        self._progress = True
        if self._max_body is not None:
            self._body_bytes += len(body)
            if self._body_bytes > self._max_body:
                self.error = RemoteProtocolError(
                    f"{self._kind} body exceeds {self._max_body} bytes", 413 if self._server else 502)
                raise _Stop
        self.events.append(_new_data(body))

    def _on_complete(self) -> None:
        self._progress = True
        if self.discard or self._reprime is not None:
            return
        self._in_message = False
        if self._informational:
            return
        trailers = self._trailers
        self.events.append(END_OF_MESSAGE if trailers is None else _new_end(trailers))

