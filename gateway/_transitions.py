"""State machines as tables: ``(state, input) -> next``, and the one error for a move
that is not in the table.

Modelled on h11's ``_state.py``: the table is the whole specification, so a test can
walk every ``(state, input)`` pair and compare with it. A move the table does not list
is a bug in the caller; the machine lands in its terminal error state (so a broken
object is never silently reused) and the error names the machine, the state and the
input.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from . import GatewayError

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741 - the input of a transition


class IllegalTransitionError(GatewayError):
    """An input arrived in a state whose table row has no entry for it."""

    def __init__(self, machine: str, state: enum.Enum, event: enum.Enum) -> None:
        self.machine = machine
        self.state = state
        self.event = event
        super().__init__(f"{machine}: illegal input {event.name} in state {state.name}")


def step(machine: str, table: Mapping[tuple[S, I], S], state: S, event: I) -> S:
    """The state after ``event``; raises ``IllegalTransitionError`` for a missing entry."""
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransitionError(machine, state, event) from None
