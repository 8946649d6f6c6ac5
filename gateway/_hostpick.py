"""Which host of a cluster serves an attempt: the balancer gated by outlier detection.

Theory of operation. A cluster's ``HostPicker`` holds what ``_clusters`` compiled - the
balancer over the hosts the registry calls healthy, a ``LocalityLb`` when the
DestinationRule turns locality load balancing on, and an ``OutlierDetector`` when it
configures ``outlierDetection``. The set of hosts ejected now is the detector's own
(``OutlierDetector.ejected``, replaced at each ejection and return), so a detector shared by
two snapshots' pickers (kept across a config push) is seen alike by both: every upstream
result goes through ``record_status`` / ``record_result``, the proxy's sweep task calls
``sweep(now)``, and a pick compares one frozenset by identity instead of asking the
detector about every host. While nothing is ejected the compiled
balancer picks; otherwise a balancer over the eligible hosts (all of them when the
healthy share is below the panic threshold, Envoy's panic mode) is built once per
ejection set, sharing the active-request counts. The locality balancer is told the
ejected hosts as its health view, and does its own priority spill-over and panic.

Events go to the sink (the proxy's metrics, log and access log) as the detector emits
them; ``/clusters`` reads ``health_flags``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._balancer import NO_CONTEXT, Balancer, Host, PickContext
from ._outlier import OutlierDetector, OutlierEvent
from ._outlier_config import OutlierResult

_NONE: frozenset[str] = frozenset()

if TYPE_CHECKING:
    from ._locality_lb import LocalityLb


class HostPicker:
    """Host choice for one cluster (see the module docstring)."""

    __slots__ = ("name", "balancer", "outlier", "locality", "_eligible", "_health")

    def __init__(self, name: str, balancer: Balancer[Host] | None, outlier: OutlierDetector | None = None,
                 locality: LocalityLb | None = None) -> None:
        self.name = name
        self.balancer = balancer
        self.outlier = outlier
        self.locality = locality
        self._eligible: tuple[frozenset[str], Balancer[Host] | None] | None = None
        self._health: tuple[frozenset[str], dict[str, bool]] = (_NONE, {})

    @property
    def ejected(self) -> frozenset[str]:
        """The hosts ejected now - the detector's own set: a detector carried over from the
        previous snapshot (``StatsStore.outlier``) is shared with it, and a result recorded
        through either picker counts for both."""
        outlier = self.outlier
        return outlier.ejected if outlier is not None else _NONE

    # -- picking -------------------------------------------------------------------------
    def pick(self, context: PickContext = NO_CONTEXT) -> Host | None:
        outlier = self.outlier
        ejected = outlier.ejected if outlier is not None else _NONE
        if self.locality is not None:
            if not ejected:
                return self.locality.pick(context, None)
            health = self._health
            if health[0] is not ejected:
                health = self._health = (ejected, {k: False for k in ejected})
            return self.locality.pick(context, health[1])
        balancer = self.balancer
        if balancer is None:
            return None
        if ejected:
            balancer = self._eligible_balancer(ejected)
            if balancer is None:
                return None
        return balancer.pick(context)

    def _eligible_balancer(self, ejected: frozenset[str]) -> Balancer[Host] | None:
        cached = self._eligible
        if cached is not None and cached[0] is ejected:
            return cached[1]
        base = self.balancer
        assert base is not None and self.outlier is not None
        keys = self.outlier.eligible_hosts([h.key for h in base.hosts])
        if len(keys) == len(base.hosts):
            found: Balancer[Host] | None = base  # panic: every host
        elif keys:
            wanted = set(keys)
            found = base.rebuild([h for h in base.hosts if h.key in wanted])
        else:
            found = None
        self._eligible = (ejected, found)
        return found

    def on_request_start(self, host: Host) -> None:
        if self.locality is not None:
            self.locality.on_request_start(host)
        elif self.balancer is not None:
            self.balancer.on_request_start(host)

    def on_request_end(self, host: Host) -> None:
        if self.locality is not None:
            self.locality.on_request_end(host)
        elif self.balancer is not None:
            self.balancer.on_request_end(host)

    # -- observations ----------------------------------------------------------------------
    def record_status(self, host: str, status: int, now: float) -> tuple[OutlierEvent, ...]:
        """A response status from ``host``; the ejection it caused, if any."""
        outlier = self.outlier
        if outlier is None:
            return ()
        if outlier.config.split_external_local_origin_errors:
            # A response means the connection worked: Envoy's router reports
            # LocalOriginConnectSuccess when the pool hands it a connection, which ends a
            # run of local-origin failures (a no-op without the split).
            outlier.record_result(host, OutlierResult.LOCAL_ORIGIN_CONNECT_SUCCESS, now)
        return outlier.record_http_status(host, status, now)

    def record_result(self, host: str, result: OutlierResult, now: float) -> tuple[OutlierEvent, ...]:
        """A connect failure, reset or timeout of ``host``."""
        if self.outlier is None:
            return ()
        return self.outlier.record_result(host, result, now)

    def sweep(self, now: float) -> tuple[OutlierEvent, ...]:
        """The detector's interval timer: hosts whose ejection time is up come back."""
        if self.outlier is None:
            return ()
        return self.outlier.sweep(now)

    def health_flags(self, host: str) -> str | None:
        """Envoy's ``/failed_outlier_check`` for an ejected host, else None."""
        return "/failed_outlier_check" if host in self.ejected else None

    @property
    def next_sweep(self) -> float | None:
        return self.outlier.next_sweep if self.outlier is not None else None

    def __repr__(self) -> str:
        hosts = len(self.balancer.hosts) if self.balancer is not None else 0
        kind = "locality" if self.locality is not None else "balancer"
        return f"<HostPicker {self.name} {kind} [{hosts - len(self.ejected)} healthy, {len(self.ejected)} ejected]>"


async def sweep_outliers(clusters: Callable[[], Sequence[Any]], *, task_status: Any = trio.TASK_STATUS_IGNORED,
                         recheck: float = 1.0) -> None:
    """The proxy's one outlier timer: sweep each cluster's detector when its interval is
    due (``clusters()`` is read again every time, so a new snapshot's clusters take over
    within ``recheck`` seconds)."""
    task_status.started()
    while True:
        now = trio.current_time()
        wake = now + recheck
        for cluster in clusters():
            picker: HostPicker = cluster.picker
            due = picker.next_sweep
            if due is None:
                continue
            if due <= now:
                picker.sweep(now)
                due = picker.next_sweep or wake
            wake = min(wake, due)
        await trio.sleep_until(wake)
