"""The request fast path: layers a route has nothing for are stepped over."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway._fault import FaultPolicy
from gateway._route_policy import DEFAULT_ROUTE_CONFIG, MirrorConfig, RouteConfig
from gateway._timeouts import TimeoutPolicy

_MIRROR = MirrorConfig("shadow.demo.svc.cluster.local", "", None, 1_000_000)
_CORS: Any = SimpleNamespace(decide=lambda method, headers: None)  # stands for a compiled CorsConfig


@pytest.mark.parametrize(("config", "front", "back"), [
    (DEFAULT_ROUTE_CONFIG, True, True),
    (RouteConfig("r"), True, True),
    (RouteConfig("r", cors=_CORS), False, True),
    (RouteConfig("r", mirrors=(_MIRROR,)), True, False),
    (RouteConfig("r", timeouts=TimeoutPolicy(route_timeout=1.0)), True, False),
    (RouteConfig("r", timeouts=TimeoutPolicy(per_try_timeout=0.5)), True, False),
    (RouteConfig("r", timeouts=TimeoutPolicy()), True, True),
])
def test_route_config_says_which_layers_have_nothing_to_do(config: RouteConfig, front: bool, back: bool) -> None:
    assert (config.plain_front, config.plain_back) == (front, back)


def test_a_route_with_a_fault_is_not_plain_in_front() -> None:
    fault = FaultPolicy(delay=0.1, delay_percent=50.0)
    assert (RouteConfig("r", fault=fault).plain_front, RouteConfig("r", fault=fault).plain_back) == (False, True)
