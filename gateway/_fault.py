"""Fault injection: the per-request draw of Envoy's fault filter, as Istio configures it.

Theory of operation. A route's ``fault`` holds an optional delay and an optional
abort, each with its own percentage. Istio turns a percentage into Envoy's
``FractionalPercent`` out of a million; Envoy draws one random number per fault and
applies the fault when ``random % 1_000_000 < numerator``. The two draws are
independent: a request can be delayed, aborted, both (delay first) or neither.
``decide(rng)`` performs those draws with the injected ``random.Random`` and returns a
``FaultDecision``; the trio layer sleeps the delay (flag ``DI``) and answers the abort
(flag ``FI``) without contacting the upstream. A gRPC abort is an HTTP 200 with a
``grpc-status`` (trailers-only reply), as Envoy sends it.

Istio documents that "timeouts or retries will not be enabled when faults are enabled
on the client side": ``disables_timeouts_and_retries`` says so for the route, and the
retry/timeout ``from_istio`` converters apply it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._flags import ResponseFlag

if TYPE_CHECKING:
    from topology._http_policy import HTTPFaultInjection

MILLION = 1_000_000  # Envoy FractionalPercent.MILLION, the denominator Istio uses
FAULT_BODY = b"fault filter abort"  # Envoy fault filter's local reply body
GRPC_STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
"""gRPC status names (as ``abort.grpcStatus`` spells them) and their codes."""


def per_million(percent: float) -> int:
    """Numerator out of a million for a percentage (Istio ``translatePercentToFractionalPercent``)."""
    return max(0, min(MILLION, round(percent * (MILLION / 100))))


@dataclass(frozen=True, slots=True)
class Abort:
    """Answer instead of forwarding: ``http_status``, or HTTP 200 carrying ``grpc_status``."""

    http_status: int
    grpc_status: int | None = None
    flag: ResponseFlag = ResponseFlag.FI
    wire_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)
    """``headers`` as the reply sends them, encoded once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire_headers", tuple((n.encode(), v.encode()) for n, v in self.headers.items()))

    @property
    def headers(self) -> dict[str, str]:
        """Response headers that carry a gRPC abort (``grpc-status``); empty for HTTP."""
        return {} if self.grpc_status is None else {"content-type": "application/grpc",
                                                     "grpc-status": str(self.grpc_status)}


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request."""

    delay: float | None = None
    """Seconds to hold the request before going on."""
    abort: Abort | None = None

    @property
    def flags(self) -> tuple[ResponseFlag, ...]:
        return tuple(f for f, on in ((ResponseFlag.DI, self.delay is not None),
                                     (ResponseFlag.FI, self.abort is not None)) if on)


NO_FAULT = FaultDecision()


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Client-side faults of one route. Defaults inject nothing."""

    delay: float | None = None
    """Seconds of injected latency (``delay.fixedDelay``). Defaults to none."""
    delay_percent: float = 0.0
    """Share of requests delayed, 0..100 (``delay.percentage``). Defaults to 0, as Istio:
    "If left unspecified, no request will be delayed"."""
    abort_http_status: int | None = None
    """HTTP status answered (``abort.httpStatus``). Defaults to none."""
    abort_grpc_status: int | None = None
    """gRPC status code answered (``abort.grpcStatus``). Defaults to none."""
    abort_percent: float = 0.0
    """Share of requests aborted, 0..100 (``abort.percentage``). Defaults to 0."""
    _drawn: tuple[int, int, Abort | None] = field(init=False, repr=False, compare=False)
    """What ``decide`` draws against, computed once: the delay's and the abort's numerators
    out of a million, and the abort answered."""

    def __post_init__(self) -> None:
        has_abort = self.abort_http_status is not None or self.abort_grpc_status is not None
        abort = None
        if self.abort_http_status is not None:
            abort = Abort(self.abort_http_status)
        elif self.abort_grpc_status is not None:
            abort = Abort(200, self.abort_grpc_status)
        object.__setattr__(self, "_drawn", (per_million(self.delay_percent) if self.delay is not None else 0,
                                            per_million(self.abort_percent) if has_abort else 0, abort))

    @classmethod
    def from_istio(cls, fault: "HTTPFaultInjection | None") -> "FaultPolicy | None":
        """None when the route has no ``fault``."""
        if fault is None:
            return None
        kwargs: dict[str, object] = {}
        if fault.delay is not None and fault.delay.fixed_delay is not None:
            kwargs["delay"] = fault.delay.fixed_delay.seconds
            kwargs["delay_percent"] = _percent(fault.delay.percentage, fault.delay.percent)
        if fault.abort is not None:
            if fault.abort.http_status is not None:
                kwargs["abort_http_status"] = fault.abort.http_status
            elif fault.abort.grpc_status is not None:
                kwargs["abort_grpc_status"] = GRPC_STATUS_CODES[fault.abort.grpc_status]
            kwargs["abort_percent"] = _percent(fault.abort.percentage, None)
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def disables_timeouts_and_retries(self) -> bool:
        """Istio: "timeouts or retries will not be enabled when faults are enabled on the
        client side" - true once a delay or an abort is configured, whatever its percentage."""
        return self.delay is not None or self.abort_http_status is not None or self.abort_grpc_status is not None

    @property
    def delay_per_million(self) -> int:
        return self._drawn[0]

    @property
    def abort_per_million(self) -> int:
        return self._drawn[1]

    def decide(self, rng: random.Random) -> FaultDecision:
        """Draw the faults for one request: one draw per configured fault, delay first."""
        delay_pm, abort_pm, abort_as = self._drawn
        delay = abort = None
        if self.delay is not None and rng.randrange(MILLION) < delay_pm:
            delay = self.delay
        if abort_pm and rng.randrange(MILLION) < abort_pm:
            abort = abort_as
        if delay is None and abort is None:
            return NO_FAULT
        return FaultDecision(delay, abort)


def _percent(percentage: object | None, legacy: int | None) -> float:
    if percentage is not None:
        return float(getattr(percentage, "value"))
    return float(legacy or 0)
