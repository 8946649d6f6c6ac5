"""What ``fedctl check`` prints: one line per hop, ok or FAIL, with its evidence.

A hop is a plain record so that the walk (``_check``) can be tested on documents and the
CLI only renders. ``WARN`` marks a hop that passes but is degraded (an ejected endpoint,
a document newer than the one applied); only ``FAIL`` changes the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a request's path and what was seen of it."""

    name: str
    status: str
    """``ok``, ``warn`` (passes, degraded) or ``fail``."""
    evidence: str
    hint: str = ""
    """What to do about a failure (or a warning)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The facts behind ``evidence``, for ``--output json``."""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def to_json(self) -> dict[str, Any]:
        return {"hop": self.name, "ok": self.ok, "status": self.status, "evidence": self.evidence,
                "hint": self.hint or None, **({"data": self.data} if self.data else {})}


def ok(name: str, evidence: str, **data: Any) -> Hop:
    return Hop(name, "ok", evidence, "", data)


def warn(name: str, evidence: str, hint: str, **data: Any) -> Hop:
    return Hop(name, "warn", evidence, hint, data)


def fail(name: str, evidence: str, hint: str, **data: Any) -> Hop:
    return Hop(name, "fail", evidence, hint, data)


@dataclass(frozen=True, slots=True)
class CheckReport:
    service: str
    port: int | None
    source: str
    """``cluster/namespace/workload (instance)`` of the client."""
    hops: tuple[Hop, ...]

    @property
    def failed(self) -> Hop | None:
        return next((h for h in self.hops if not h.ok), None)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        failed = self.failed
        return {"service": self.service, "port": self.port, "from": self.source, "ok": self.ok,
                "failed": failed.name if failed is not None else None, "hops": [h.to_json() for h in self.hops]}

    def to_text(self) -> str:
        port = f":{self.port}" if self.port else ""
        lines = [f"check {self.service}{port} from {self.source}"]
        width = max((len(h.name) for h in self.hops), default=0)
        for h in self.hops:
            mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[h.status]
            lines.append(f"  {mark}  {h.name:<{width}}  {h.evidence}")
            if h.hint:
                lines.append(f"        {'':<{width}}  -> {h.hint}")
        failed = self.failed
        lines.append("result: every hop ok" if failed is None else f"result: FAIL at {failed.name}")
        return "\n".join(lines)
