"""RequestBody: the request body kept for replay while it fits, dropped (memory bounded,
no retry) once it outgrows the limit."""

from __future__ import annotations

from typing import Any

import pytest

from gateway._events import Data, EndOfMessage
from gateway._replay import RequestBody


class FakeDownstream:
    """What the codec holds now (``buffered``) and what later reads return (``later``)."""

    def __init__(self, buffered: list[Any], later: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.buffered = buffered
        self.later = list(later)

    def buffered_body(self) -> tuple[list[Data], EndOfMessage | None]:
        chunks = [e for e in self.buffered if type(e) is Data]
        end = next((e for e in self.buffered if type(e) is EndOfMessage), None)
        self.buffered = []
        return chunks, end

    async def next_event(self) -> Any:
        return self.later.pop(0)


async def test_body_within_the_limit_is_replayed_whole_by_every_attempt() -> None:
    down = FakeDownstream([Data(b"abc")], [Data(b"def"), EndOfMessage()])
    body = RequestBody(limit=10)
    assert body.start(down) == ([Data(b"abc")], None)  # type: ignore[arg-type]
    assert await body.next_event(down) == Data(b"def")  # type: ignore[arg-type]
    assert await body.next_event(down) == EndOfMessage()  # type: ignore[arg-type]
    assert body.complete and body.size == 6
    assert body.start(down) == ([Data(b"abc"), Data(b"def")], EndOfMessage())  # type: ignore[arg-type]


async def test_body_beyond_the_limit_is_dropped_and_cannot_be_replayed() -> None:
    down = FakeDownstream([Data(b"x" * 8)], [Data(b"y" * 8), EndOfMessage()])
    body = RequestBody(limit=10)
    body.start(down)  # type: ignore[arg-type]
    await body.next_event(down)  # type: ignore[arg-type]
    assert (body.replayable, body.chunks, body.size) == (False, [], 16)
    await body.next_event(down)  # type: ignore[arg-type]
    assert not body.complete
    with pytest.raises(ValueError, match="no longer replayable"):
        body.start(down)  # type: ignore[arg-type]
    assert repr(body) == "<RequestBody 16B complete, not replayable>"


def test_first_buffered_read_beyond_the_limit_is_sent_once_and_not_kept() -> None:
    down = FakeDownstream([Data(b"z" * 20), EndOfMessage()])
    body = RequestBody(limit=10)
    assert body.start(down) == ([Data(b"z" * 20)], EndOfMessage())  # type: ignore[arg-type]
    assert (body.replayable, body.chunks) == (False, [])
