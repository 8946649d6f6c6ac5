"""The request body of one downstream request, kept for replay while it fits.

Theory of operation. A retry (or a mirror copy) must send the same body again, but the
body arrives once, from the downstream codec, while the first attempt streams it. So
every body event read from the client passes through a ``RequestBody``: it is handed on
*and* appended to the replay list, until the total exceeds ``limit`` (Envoy's
``per_request_buffer_limit_bytes``, 1 MiB by default). Past the limit the list is dropped
- memory stays bounded whatever the body size - and ``replayable`` turns False: Envoy
"will not retry if the request body exceeds the buffer limit", and neither do we.

An attempt starts with ``start(down)``: everything read so far (the replay list plus
what the codec already holds) and the end of the message if reached; if the body is not
over, the attempt's pump calls ``next_event(down)`` for the rest. A chunk is recorded as
soon as it is read - before the await that sends it - so an attempt cancelled half-way
(per-try timeout, retriable response) leaves nothing lost for the next one.
"""

from __future__ import annotations

from ._downstream import Downstream
from ._events import Data, EndOfMessage
from ._retry import DEFAULT_BUFFER_LIMIT


class RequestBody:
    """Body events of one request: recorded for replay up to ``limit`` bytes."""

    __slots__ = ("limit", "chunks", "size", "end", "replayable")

    def __init__(self, limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.limit = limit
        self.chunks: list[Data] = []
        self.size = 0
        """Body bytes read from the client so far."""
        self.end: EndOfMessage | None = None
        """The end of the message, once read (trailers included)."""
        self.replayable = True
        """Everything read so far is still in ``chunks``."""

    def _record(self, chunk: Data) -> None:
        self.size += len(chunk.data)
        if self.replayable:
            if self.size <= self.limit:
                self.chunks.append(chunk)
            else:
                self.replayable = False
                self.chunks = []

    def start(self, down: Downstream) -> tuple[list[Data], EndOfMessage | None]:
        """What an attempt sends first: the body read so far and, if reached, its end.
        ``ValueError`` when earlier bytes are gone (the caller checks ``replayable``)."""
        if not self.replayable and self.size:
            raise ValueError("request body is no longer replayable")
        if self.end is None:
            chunks, end = down.buffered_body()
            for chunk in chunks:
                self._record(chunk)
            if end is not None:
                self.end = end
            if not self.replayable:  # one buffered read beyond the limit: send it once, keep nothing
                return chunks, end
        return list(self.chunks), self.end

    async def next_event(self, down: Downstream) -> object:
        """The next body event from the client, recorded (Data, EndOfMessage, or what
        else the codec says - the caller treats that as the client going away)."""
        event = await down.next_event()
        kind = type(event)
        if kind is Data:
            self._record(event)  # type: ignore[arg-type]
        elif kind is EndOfMessage:
            self.end = event  # type: ignore[assignment]
        return event

    @property
    def complete(self) -> bool:
        """The whole body is in memory: it can be replayed or copied at once."""
        return self.end is not None and self.replayable

    def __repr__(self) -> str:
        state = "complete" if self.end is not None else "streaming"
        kept = f"{len(self.chunks)} chunks kept" if self.replayable else "not replayable"
        return f"<RequestBody {self.size}B {state}, {kept}>"
