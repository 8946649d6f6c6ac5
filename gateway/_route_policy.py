"""The resilience policies of each route, compiled once per snapshot (STYLE 6).

A ``RouteDecision`` says where a request goes; its ``RouteConfig`` says how: the fault
to inject, the retry policy, the route and per-try timeouts, the mirrors, the CORS
policy. ``compile_route_configs`` builds one per route of the table, so a request pays
one dict lookup (``Snapshot.route_config``) and never converts an Istio field. The
config also says which layers have nothing to do for the route (``plain_front``,
``plain_back``): the stack skips those, most routes having no policy at all.

Istio's rules applied here, once:
- No ``retries`` block: the mesh default policy (``RetryPolicy()``); ``attempts: 0``: off.
- "timeouts or retries will not be enabled when faults are enabled on the client side":
  a route with ``fault`` gets neither (``FaultPolicy.disables_timeouts_and_retries``).
- ``mirrorPercentage`` (or the deprecated ``mirrorPercent``) defaults to 100 %, as does
  each ``mirrors[].percentage``; a mirror with 0 % is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._actions import resolve_destination
from ._cors import CorsConfig
from ._fault import FaultPolicy, per_million
from ._retry import RetryPolicy
from ._timeouts import TimeoutPolicy

if TYPE_CHECKING:
    from topology._istio_types import Destination, Percent
    from topology._registry import ServiceRegistry

    from ._routing import RouteDecision, RouteTable


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """One mirror of a route: the cluster copies go to, and how many."""

    host: str
    """Service FQDN of the mirror."""
    subset: str
    port: int | None
    """Service port; None: the port the request arrived on."""
    per_million: int
    """Share of requests copied, out of a million (Envoy's FractionalPercent)."""

    def cluster_key(self, requested_port: int) -> tuple[str, str, int]:
        return (self.host, self.subset, self.port if self.port is not None else requested_port)


@dataclass(frozen=True, slots=True, eq=False)
class RouteConfig:
    """What the outbound layers apply to requests matched by one route."""

    name: str = ""
    fault: FaultPolicy | None = None
    retry: RetryPolicy = RetryPolicy()
    timeouts: TimeoutPolicy = TimeoutPolicy()
    """Only ``route_timeout`` and ``per_try_timeout`` are read; connect and idle timeouts
    belong to the cluster."""
    mirrors: tuple[MirrorConfig, ...] = ()
    cors: CorsConfig | None = None
    plain_front: bool = field(init=False, repr=False)
    """No CORS policy and no fault: the CORS and fault layers would only pass the request on."""
    plain_back: bool = field(init=False, repr=False)
    """No mirrors and no timeouts: the mirror and route-timeout layers would only pass it on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain_front", self.cors is None and self.fault is None)
        object.__setattr__(self, "plain_back", not self.mirrors and not self.has_timeouts)

    @property
    def has_timeouts(self) -> bool:
        return self.timeouts.route_timeout is not None or self.timeouts.per_try_timeout is not None


DEFAULT_ROUTE_CONFIG = RouteConfig("default")
"""A route without a VirtualService rule (Istio's default route): the default retry policy, nothing else."""


def compile_route_config(route: RouteDecision, registry: ServiceRegistry | None = None) -> RouteConfig:
    spec = route.spec
    if spec is None:
        return RouteConfig(route.name, cors=route.cors) if route.cors is not None else DEFAULT_ROUTE_CONFIG
    fault = FaultPolicy.from_istio(spec.fault)
    retry = RetryPolicy.from_istio(spec.retries, fault=spec.fault)
    timeouts = TimeoutPolicy.from_istio(spec)
    if retry.attempts > 0 and retry.per_try_timeout is not None and timeouts.per_try_timeout is None:
        timeouts = TimeoutPolicy(timeouts.route_timeout, retry.per_try_timeout)
    mirrors: list[MirrorConfig] = []
    if spec.mirror is not None:
        percent = _percent(spec.mirror_percentage, spec.mirror_percent)
        mirrors.append(_mirror(spec.mirror, percent, route.namespace, registry))
    for m in spec.mirrors:
        if m.destination is not None:
            mirrors.append(_mirror(m.destination, _percent(m.percentage, None), route.namespace, registry))
    return RouteConfig(route.name, fault, retry, timeouts, tuple(m for m in mirrors if m.per_million > 0),
                       route.cors)


def _percent(percentage: Percent | None, legacy: int | None) -> float:
    if percentage is not None:
        return float(percentage.value)
    return float(legacy) if legacy is not None else 100.0


def _mirror(dest: Destination, percent: float, namespace: str, registry: ServiceRegistry | None) -> MirrorConfig:
    host, port = resolve_destination(dest, namespace, None, registry)
    return MirrorConfig(host, dest.subset or "", port, per_million(percent))


def compile_route_configs(table: RouteTable, registry: ServiceRegistry | None = None
                          ) -> dict[RouteDecision, RouteConfig]:
    """A RouteConfig for every route of ``table`` (routes are keyed by identity)."""
    out: dict[RouteDecision, RouteConfig] = {}
    for port in table.ports:
        for vh in table.virtual_hosts(port):
            for route in vh.routes:
                if route not in out:
                    out[route] = compile_route_config(route, registry)
    return out
