"""Header operations of a route and its destinations, compiled into one op list.

Theory of operation. Operations follow Envoy's ``HeaderParser``: removals first, then every overwrite
(``set``), then every append (``add``); values that are empty are skipped
(``keep_empty_value`` is false); ``%%`` is a literal ``%``. Istio drops operations on
pseudo-headers and ``host`` and turns a ``:authority``/``host`` value into a host
rewrite. The two levels combine as Istio and Envoy combine them: a rule with a single
destination is one Envoy route, and Istio appends the destination's operations to the
route's lists (one parser, so a destination ``set`` beats a rule ``set``); with several
weighted destinations Envoy evaluates the cluster's operations first and the route's
after them (``WeightedClusterEntry::finalizeRequestHeaders``), so the rule's ``set``
wins. The rule's authority rewrite always wins over a destination's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from topology._http_actions import HeaderOperations

REMOVE, SET, ADD = 0, 1, 2
_VERBS = {REMOVE: "remove", SET: "set", ADD: "add"}


def _is_internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


@dataclass(frozen=True, slots=True)
class HeaderStage:
    """One Envoy ``HeaderParser``: removes, then sets, then adds."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, ops: HeaderOperations | None) -> tuple[HeaderStage, str | None]:
        """Istio's ``TranslateHeadersOperations`` for one side: the stage and the authority
        it writes (``set`` beats ``add``)."""
        if ops is None:
            return NO_STAGE, None
        sets, set_auth = _pairs(ops.set)
        adds, add_auth = _pairs(ops.add)
        remove = tuple(n.lower() for n in ops.remove if not _is_internal(n))
        return cls(remove, sets, adds), set_auth or add_auth

    def __add__(self, other: HeaderStage) -> HeaderStage:
        """Both stages' operations in one parser (Istio appending to the route's lists)."""
        return HeaderStage(self.remove + other.remove, self.set + other.set, self.add + other.add)

    def ops(self) -> tuple[tuple[int, str, str], ...]:
        return (tuple((REMOVE, n, "") for n in self.remove) + tuple((SET, n, v) for n, v in self.set)
                + tuple((ADD, n, v) for n, v in self.add))


def _pairs(mapping: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], str | None]:
    authority = None
    out = []
    for name in sorted(mapping):  # Istio sorts by name
        value = mapping[name]
        if name.lower() in (":authority", "host"):
            authority = value
        if _is_internal(name) or value == "":
            continue
        out.append((name.lower(), value.replace("%%", "%")))
    return tuple(out), authority


NO_STAGE = HeaderStage()


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """A flat, ordered list of header operations; ``apply`` runs them on (name, value) pairs."""

    ops: tuple[tuple[int, str, str], ...] = ()

    @classmethod
    def of(cls, *stages: HeaderStage) -> HeaderOps:
        return cls(tuple(op for s in stages for op in s.ops()))

    def __bool__(self) -> bool:
        return bool(self.ops)

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A new list with the operations applied; ``headers`` itself when there are none."""
        if not self.ops:
            return headers
        out = list(headers)
        for code, name, value in self.ops:
            if code == ADD:
                out.append((name, value))
                continue
            out = [(n, v) for n, v in out if n.lower() != name]
            if code == SET:
                out.append((name, value))
        return out

    def __repr__(self) -> str:
        return "<HeaderOps " + ", ".join(f"{_VERBS[c]} {n}" + (f"={v!r}" if c else "")
                                         for c, n, v in self.ops) + ">"


NO_OPS = HeaderOps()
