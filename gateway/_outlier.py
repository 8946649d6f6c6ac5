"""Outlier detection: passive health checking that ejects failing hosts for a while,
split as Envoy splits it - per-host monitor, per-cluster detector, event sink.

Theory of operation (Envoy ``outlier_detection_impl.cc``, consecutive-error flavours;
success-rate and failure-percentage detection are off in Istio and absent here).
- A ``HostMonitor`` counts consecutive 5xx, consecutive gateway errors (502/503/504)
  and, with ``split_external_local_origin_errors``, consecutive local-origin failures
  (connect failures, timeouts). A counter reaching its threshold *exactly* is a trigger;
  any success resets it. Without the split, local failures count as the status Envoy
  maps them to (connect failure 503, timeout 504).
- The ``OutlierDetector`` acts on a trigger at once (not at the next sweep): it ejects
  the host if ``100 * (ejected + 1) / hosts <= max_ejection_percent`` - or, with
  ``always_eject_one_host``, when nothing is ejected yet - and if the enforcement draw
  says so. A detected but unenforced ejection is still reported, with ``enforced=False``.
- The ejection lasts ``min(base_ejection_time * backoff, max_ejection_time)`` (+ jitter);
  ``backoff`` grows by one per ejection (capped) and shrinks by one for every sweep that
  finds the host healthy at least one interval after its return. ``sweep(now)``, run
  every ``interval``, returns the hosts whose time is up.
- With too few healthy hosts (below ``healthy_panic_threshold`` percent, Istio's
  ``minHealthPercent``) the balancer panics and uses every host: ``is_panic``.
Every ejection and return is an ``OutlierEvent``, returned to the caller and handed to
the ``OutlierEventSink`` (the /clusters view, metrics and the access log).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ._outlier_config import AS_HTTP_STATUS, EjectionType, OutlierConfig, OutlierResult
from ._transitions import IllegalTransitionError, step

STATS = ("ejections_active", "ejections_overflow", "ejections_enforced_total",
         "ejections_detected_consecutive_5xx", "ejections_enforced_consecutive_5xx",
         "ejections_detected_consecutive_gateway_failure", "ejections_enforced_consecutive_gateway_failure",
         "ejections_detected_consecutive_local_origin_failure",
         "ejections_enforced_consecutive_local_origin_failure")
"""Envoy's ``outlier_detection.*`` statistics kept by the detector (``ALL_OUTLIER_DETECTION_STATS``)."""


class HostState(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    ERROR = "error"


class HostInput(enum.Enum):
    EJECT = "eject"
    UNEJECT = "uneject"


HOST_TRANSITIONS: dict[tuple[HostState, HostInput], HostState] = {
    (HostState.HEALTHY, HostInput.EJECT): HostState.EJECTED,
    (HostState.EJECTED, HostInput.UNEJECT): HostState.HEALTHY,
}


class OutlierAction(enum.Enum):
    EJECT = "eject"
    UNEJECT = "uneject"


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """An ejection (enforced or only detected) or a return (Envoy ``OutlierDetectionEvent``)."""

    action: OutlierAction
    cluster: str
    host: str
    at: float
    ejection_type: EjectionType | None
    """Why, for ``EJECT``."""
    enforced: bool
    """For ``EJECT``: whether the host was really taken out of the pool."""
    num_ejections: int
    """Ejections of this host so far, this one included."""
    duration: float | None = None
    """For an enforced ``EJECT``: seconds until the host may return."""

    @property
    def reason(self) -> str:
        if self.action is OutlierAction.UNEJECT:
            return "ejection time elapsed"
        assert self.ejection_type is not None
        return self.ejection_type.value

    def __str__(self) -> str:
        what = self.action.value if self.enforced else f"{self.action.value} (not enforced)"
        tail = f" for {self.duration:g}s" if self.duration is not None else ""
        return f"outlier {what} {self.cluster}/{self.host}: {self.reason}, ejections={self.num_ejections}{tail}"


class OutlierEventSink(Protocol):
    """Receives every outlier event (admin /clusters, metrics, access log)."""

    def record_outlier_event(self, event: OutlierEvent) -> None: ...


class RecordingSink:
    """A sink that keeps the events, newest last."""

    def __init__(self) -> None:
        self.events: list[OutlierEvent] = []

    def record_outlier_event(self, event: OutlierEvent) -> None:
        self.events.append(event)


class HostMonitor:
    """Counters and ejection state of one host (Envoy ``DetectorHostMonitorImpl``)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.state = HostState.HEALTHY
        self.num_ejections = 0
        self.backoff = 0
        self.jitter = 0.0
        self.last_ejection: float | None = None
        self.last_unejection: float | None = None
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0

    @property
    def is_ejected(self) -> bool:
        return self.state is HostState.EJECTED

    def move(self, event: HostInput) -> None:
        try:
            self.state = step(f"host {self.host}", HOST_TRANSITIONS, self.state, event)
        except IllegalTransitionError:
            self.state = HostState.ERROR
            raise

    def record_http_status(self, status: int, config: OutlierConfig) -> list[EjectionType]:
        """Count a response status; returns the thresholds it reached (gateway first, as Envoy)."""
        triggers: list[EjectionType] = []
        if 500 <= status <= 599:
            if status in (502, 503, 504):
                self.consecutive_gateway_failure += 1
                if self.consecutive_gateway_failure == config.consecutive_gateway_failure:
                    triggers.append(EjectionType.CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.consecutive_gateway_failure = 0
            self.consecutive_5xx += 1
            if self.consecutive_5xx == config.consecutive_5xx:
                triggers.append(EjectionType.CONSECUTIVE_5XX)
        else:
            self.consecutive_5xx = self.consecutive_gateway_failure = 0
        return triggers

    def record_result(self, result: OutlierResult, config: OutlierConfig) -> list[EjectionType]:
        """Count a local-origin or non-HTTP observation, split or mapped to a status."""
        if not config.split_external_local_origin_errors:
            status = AS_HTTP_STATUS[result]
            return [] if status is None else self.record_http_status(status, config)
        if result in (OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, OutlierResult.LOCAL_ORIGIN_TIMEOUT):
            self.consecutive_local_origin_failure += 1
            if self.consecutive_local_origin_failure == config.consecutive_local_origin_failure:
                return [EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE]
            return []
        if result is OutlierResult.EXT_ORIGIN_REQUEST_FAILED:
            return self.record_http_status(503, config)
        triggers = self.record_http_status(200, config) if result is OutlierResult.EXT_ORIGIN_REQUEST_SUCCESS else []
        self.consecutive_local_origin_failure = 0
        return triggers

    def reset_counter(self, kind: EjectionType) -> None:
        setattr(self, kind.value, 0)

    def __repr__(self) -> str:
        return (f"<HostMonitor {self.host} {self.state.value} ejections={self.num_ejections} "
                f"5xx={self.consecutive_5xx} gw={self.consecutive_gateway_failure} "
                f"local={self.consecutive_local_origin_failure}>")


class OutlierDetector:
    """The hosts of one cluster and their ejections (Envoy ``DetectorImpl``)."""

    def __init__(self, config: OutlierConfig, *, cluster: str = "", hosts: Iterable[str] = (),
                 now: float = 0.0, sink: OutlierEventSink | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.sink = sink
        self._rng = rng if rng is not None else random.Random()
        self._monitors: dict[str, HostMonitor] = {}
        self._stats = dict.fromkeys(STATS, 0)
        self.ejected: frozenset[str] = frozenset()
        """The hosts ejected now: replaced (never mutated) at each change, so a reader can
        cache what it derives from it by identity (``HostPicker``)."""
        self.last_sweep = now
        for host in hosts:
            self.add_host(host)

    # -- membership ----------------------------------------------------------------
    def add_host(self, host: str) -> None:
        self._monitors.setdefault(host, HostMonitor(host))

    def remove_host(self, host: str) -> None:
        """Forget a host (endpoint update); its ejection, if any, no longer counts."""
        monitor = self._monitors.pop(host, None)
        if monitor is not None and monitor.is_ejected:
            self._stats["ejections_active"] -= 1
            self.ejected = self.ejected - {host}

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self._monitors)

    def monitor(self, host: str) -> HostMonitor:
        return self._monitors[host]

    def is_ejected(self, host: str) -> bool:
        m = self._monitors.get(host)
        return m is not None and m.is_ejected

    def health_flags(self, host: str) -> str:
        """The ``health_flags`` column of Envoy's ``/clusters`` for ``host``."""
        return "/failed_outlier_check" if self.is_ejected(host) else "healthy"

    # -- observations ----------------------------------------------------------------
    def record_http_status(self, host: str, status: int, now: float) -> tuple[OutlierEvent, ...]:
        """A response from ``host``. Unknown hosts (removed while a request was in flight) are ignored."""
        monitor = self._monitors.get(host)
        if monitor is None:
            return ()
        return self._on_triggers(monitor, monitor.record_http_status(status, self.config), now)

    def record_result(self, host: str, result: OutlierResult, now: float) -> tuple[OutlierEvent, ...]:
        """A connect success/failure, timeout or non-HTTP outcome for ``host``."""
        monitor = self._monitors.get(host)
        if monitor is None:
            return ()
        return self._on_triggers(monitor, monitor.record_result(result, self.config), now)

    def _on_triggers(self, monitor: HostMonitor, triggers: list[EjectionType], now: float) -> tuple[OutlierEvent, ...]:
        events = []
        for kind in triggers:
            if monitor.is_ejected:
                continue  # Envoy: a trigger for an already ejected host is dropped
            self._stats[f"ejections_detected_{kind.value}"] += 1
            event = self._eject(monitor, kind, now)
            monitor.reset_counter(kind)
            if event is not None:
                events.append(event)
        return self._emit(events)

    def _eject(self, monitor: HostMonitor, kind: EjectionType, now: float) -> OutlierEvent | None:
        cfg = self.config
        active = self._stats["ejections_active"]
        allowed = 100.0 * (active + 1) / len(self._monitors) <= min(cfg.max_ejection_percent, 100)
        if cfg.always_eject_one_host and active == 0:
            allowed = True
        if not allowed:
            self._stats["ejections_overflow"] += 1
            return None
        if not self._enforce(getattr(cfg, f"enforcing_{kind.value}")):
            return OutlierEvent(OutlierAction.EJECT, self.cluster, monitor.host, now, kind, False,
                                monitor.num_ejections)
        monitor.move(HostInput.EJECT)
        monitor.num_ejections += 1
        monitor.last_ejection = now
        jitter_ms = round(cfg.max_ejection_time_jitter * 1000)
        monitor.jitter = self._rng.randrange(jitter_ms + 1) / 1000.0 if jitter_ms else 0.0
        base, cap = cfg.base_ejection_time, cfg.effective_max_ejection_time
        if monitor.backoff * base < cap + base:  # Envoy caps the multiplier just past the maximum
            monitor.backoff += 1
        self._stats["ejections_active"] += 1
        self.ejected = self.ejected | {monitor.host}
        self._stats["ejections_enforced_total"] += 1
        self._stats[f"ejections_enforced_{kind.value}"] += 1
        return OutlierEvent(OutlierAction.EJECT, self.cluster, monitor.host, now, kind, True,
                            monitor.num_ejections, self.ejection_time(monitor))

    def _enforce(self, percent: int) -> bool:
        return percent >= 100 or (percent > 0 and self._rng.randrange(100) < percent)

    def ejection_time(self, monitor: HostMonitor) -> float:
        """How long ``monitor``'s current ejection lasts: min(base x backoff, max) + jitter."""
        cfg = self.config
        return min(cfg.base_ejection_time * monitor.backoff, cfg.effective_max_ejection_time) + monitor.jitter

    # -- the interval timer ------------------------------------------------------------
    @property
    def next_sweep(self) -> float:
        """When ``sweep`` is next due."""
        return self.last_sweep + self.config.interval

    def sweep(self, now: float) -> tuple[OutlierEvent, ...]:
        """Return hosts whose ejection time is up; shrink the backoff of hosts healthy for
        at least an interval since their return (Envoy ``onIntervalTimer``)."""
        self.last_sweep = now
        events = []
        for m in self._monitors.values():
            if m.is_ejected and m.last_ejection is not None and self.ejection_time(m) <= now - m.last_ejection:
                m.move(HostInput.UNEJECT)
                m.last_unejection = now
                m.consecutive_5xx = m.consecutive_gateway_failure = m.consecutive_local_origin_failure = 0
                self._stats["ejections_active"] -= 1
                self.ejected = self.ejected - {m.host}
                events.append(OutlierEvent(OutlierAction.UNEJECT, self.cluster, m.host, now, None, True,
                                           m.num_ejections))
        for m in self._monitors.values():
            if (not m.is_ejected and m.last_unejection is not None and m.backoff > 0
                    and now - m.last_unejection >= self.config.interval):
                m.backoff -= 1
        return self._emit(events)

    def _emit(self, events: list[OutlierEvent]) -> tuple[OutlierEvent, ...]:
        if self.sink is not None:
            for e in events:
                self.sink.record_outlier_event(e)
        return tuple(events)

    # -- what the balancer asks ----------------------------------------------------------
    def is_panic(self, hosts: Iterable[str] | None = None) -> bool:
        """Whether too few of ``hosts`` (default: all) are healthy, so the balancer must use
        them all: healthy percent below ``healthy_panic_threshold`` (Envoy ``isHostSetInPanic``)."""
        pool = list(self._monitors if hosts is None else hosts)
        healthy = sum(1 for h in pool if not self.is_ejected(h))
        percent = 100.0 * healthy / len(pool) if pool else 0.0
        return percent < self.config.healthy_panic_threshold

    def eligible_hosts(self, hosts: Iterable[str] | None = None) -> tuple[str, ...]:
        """The hosts a balancer may pick from: the healthy ones, or all of them in panic."""
        pool = tuple(self._monitors if hosts is None else hosts)
        return pool if self.is_panic(pool) else tuple(h for h in pool if not self.is_ejected(h))

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def __repr__(self) -> str:
        ejected = self._stats["ejections_active"]
        return f"<OutlierDetector {self.cluster or '-'} [{len(self._monitors) - ejected} healthy, {ejected} ejected]>"
