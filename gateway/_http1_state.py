"""The HTTP/1.1 request/response cycle as a table of moves, one state per side.

Each side's state moves on the events it sends; a few moves are triggered by the pair of
states (a client that proposed a protocol switch waits in MIGHT_SWITCH_PROTOCOL until the
server answers; a side that must not reuse the connection goes from DONE to MUST_CLOSE).
A (role, state, event) with no entry is an illegal move: that side lands in ERROR and
``IllegalMove`` names the role, the event and the state. The states and the shape of the
table are h11's (h11/_state.py), so its documentation of the cycle applies here.
"""

from __future__ import annotations

import enum

from ._events import ConnectionClosed, Data, EndOfMessage, InformationalResponse, Request, Response, Role

CLIENT, SERVER = Role.CLIENT, Role.SERVER


class Http1State(enum.Enum):
    """One side's place in the request/response cycle."""

    __hash__ = object.__hash__  # members are singletons; Enum hashes the name in Python

    IDLE = "IDLE"
    SEND_RESPONSE = "SEND_RESPONSE"
    SEND_BODY = "SEND_BODY"
    DONE = "DONE"
    MUST_CLOSE = "MUST_CLOSE"
    CLOSED = "CLOSED"
    MIGHT_SWITCH_PROTOCOL = "MIGHT_SWITCH_PROTOCOL"
    SWITCHED_PROTOCOL = "SWITCHED_PROTOCOL"
    ERROR = "ERROR"


class Switch(enum.Enum):
    """A protocol switch the client proposed; the server's answer accepts or declines it."""

    __hash__ = object.__hash__  # members are singletons; Enum hashes the name in Python

    UPGRADE = "UPGRADE"   # Upgrade + Connection: upgrade, accepted by 101
    CONNECT = "CONNECT"   # CONNECT, accepted by any 2xx


IDLE, SEND_RESPONSE, SEND_BODY, DONE = Http1State.IDLE, Http1State.SEND_RESPONSE, Http1State.SEND_BODY, Http1State.DONE
MUST_CLOSE, CLOSED, ERROR = Http1State.MUST_CLOSE, Http1State.CLOSED, Http1State.ERROR
MIGHT_SWITCH, SWITCHED = Http1State.MIGHT_SWITCH_PROTOCOL, Http1State.SWITCHED_PROTOCOL

MOVES: dict[tuple[Role, Http1State, object], Http1State] = {
    (CLIENT, IDLE, Request): SEND_BODY,
    (CLIENT, IDLE, ConnectionClosed): CLOSED,
    (CLIENT, SEND_BODY, Data): SEND_BODY,
    (CLIENT, SEND_BODY, EndOfMessage): DONE,
    (CLIENT, DONE, ConnectionClosed): CLOSED,
    (CLIENT, MUST_CLOSE, ConnectionClosed): CLOSED,
    (CLIENT, CLOSED, ConnectionClosed): CLOSED,
    (SERVER, IDLE, ConnectionClosed): CLOSED,
    (SERVER, IDLE, Response): SEND_BODY,  # an error answer to a request that never parsed
    (SERVER, SEND_RESPONSE, InformationalResponse): SEND_RESPONSE,
    (SERVER, SEND_RESPONSE, Response): SEND_BODY,
    (SERVER, SEND_RESPONSE, (InformationalResponse, Switch.UPGRADE)): SWITCHED,
    (SERVER, SEND_RESPONSE, (Response, Switch.CONNECT)): SWITCHED,
    (SERVER, SEND_BODY, Data): SEND_BODY,
    (SERVER, SEND_BODY, EndOfMessage): DONE,
    (SERVER, DONE, ConnectionClosed): CLOSED,
    (SERVER, MUST_CLOSE, ConnectionClosed): CLOSED,
    (SERVER, CLOSED, ConnectionClosed): CLOSED,
}
"""(role, its state, event type or (event type, accepted switch)) -> its next state."""


JOINT_MOVES: dict[tuple[Http1State, Http1State], tuple[Role, Http1State]] = {
    (CLOSED, IDLE): (SERVER, MUST_CLOSE),
    (CLOSED, DONE): (SERVER, MUST_CLOSE),
    (ERROR, DONE): (SERVER, MUST_CLOSE),
    (IDLE, CLOSED): (CLIENT, MUST_CLOSE),
    (DONE, CLOSED): (CLIENT, MUST_CLOSE),
    (DONE, ERROR): (CLIENT, MUST_CLOSE),
}
"""(client state, server state) -> the side that can no longer start a cycle. A server whose
client broke mid-request stays IDLE so that it can still answer with an error."""


class IllegalMove(Exception):
    """A move the table does not have; the codec re-raises it as Local/RemoteProtocolError."""

    def __init__(self, message: str, role: Role, state: Http1State) -> None:
        super().__init__(message)
        self.role = role
        self.state = state


def _illegal(role: Role, state: Http1State, kind: object) -> IllegalMove:
    name = f"{kind[0].__name__} accepting {kind[1].name}" if isinstance(kind, tuple) else kind.__name__  # type: ignore[attr-defined]
    return IllegalMove(f"cannot send {name} while the {role.name.lower()} is in state {state.name}", role, state)


class ConnectionState:
    """Both sides' states, the pending switch proposal and whether the connection is reusable."""

    __slots__ = ("client", "server", "proposal", "keep_alive")

    def __init__(self) -> None:
        self.client = IDLE
        self.server = IDLE
        self.proposal: Switch | None = None
        self.keep_alive = True

    def __repr__(self) -> str:
        return f"<ConnectionState client={self.client.name} server={self.server.name}>"

    def process(self, role: Role, kind: type, switch: Switch | None = None) -> None:
        client = role is CLIENT
        state = self.client if client else self.server
        key = kind if switch is None else (kind, switch)
        new = MOVES.get((role, state, key))
        if new is None or (new is SWITCHED and self.client is not MIGHT_SWITCH):
            self.fail(role)
            raise _illegal(role, state, key)
        if client:
            self.client = new
            if kind is Request and self.server is IDLE:
                self.server = SEND_RESPONSE
        else:
            self.server = new
            if kind is Response and switch is None:
                self.proposal = None  # a final answer that does not switch declines the proposal
        if self.proposal is None and self.keep_alive:
            # The hot path: entering SEND_BODY triggers nothing else, nor does entering DONE
            # while the other side is mid-exchange or done too - skip the checks.
            if new is SEND_BODY:
                return
            if new is DONE:
                other = self.server if client else self.client
                if other is DONE or other is SEND_RESPONSE or other is SEND_BODY:
                    return
        self._settle()

    def fail(self, role: Role) -> None:
        self.keep_alive = False
        if role is CLIENT:
            self.client = ERROR
        else:
            self.server = ERROR
        self._settle()

    def _settle(self) -> None:
        if self.proposal is not None and self.client is DONE:
            self.client = MIGHT_SWITCH
        elif self.proposal is None and self.client is MIGHT_SWITCH:
            self.client = DONE
        if self.server is SWITCHED and self.client is MIGHT_SWITCH:
            self.client = SWITCHED
        if not self.keep_alive:
            if self.client is DONE:
                self.client = MUST_CLOSE
            if self.server is DONE:
                self.server = MUST_CLOSE
        joint = JOINT_MOVES.get((self.client, self.server))
        if joint is not None:
            if joint[0] is CLIENT:
                self.client = joint[1]
            else:
                self.server = joint[1]

    def start_next_cycle(self) -> None:
        if self.client is not DONE or self.server is not DONE:
            raise IllegalMove(f"connection not reusable: the client is {self.client.name} and the "
                              f"server is {self.server.name}", CLIENT, self.client)
        self.client = self.server = IDLE
        self.proposal = None
