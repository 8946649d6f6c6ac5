"""Chaos through a sidecar pair: an instance that fails (outlier detection ejects it and
takes it back) and a flood beyond the connection pool (circuit breaking answers 503 UO
at once and holds a bounded number of anything).

Real time with short intervals (interval 0.2s, baseEjectionTime 1.5s: long enough that a loaded
machine still sends its requests while the host is out); the same
behaviours on trio's MockClock are in ``test_attempts.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from gateway._breaker import Resource
from gateway._outlier import OutlierAction
from gateway.testing import start_pair
from test_chaos_apps import ChaosApp, admin, direct_service, fetch, metric_lines, settle, start_apps
from trustdomain.testing import MeshPki

FLAKY = "outbound|8080||flaky.demo.svc.cluster.local"
CLUSTER = "outbound|8080||echo.demo.svc.cluster.local"
FLAKY_URL = "http://flaky.demo.svc.cluster.local:8080"
OUTLIER_DR = """
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: flaky, namespace: demo}
    spec:
      host: flaky
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        outlierDetection: {consecutive5xxErrors: 2, interval: 0.2s, baseEjectionTime: 1.5s, maxEjectionPercent: 100}
  telemetry: {accessLog: %s}
"""
POOL_DR = """
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: echo, namespace: demo}
    spec:
      host: echo
      trafficPolicy:
        connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
"""


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def health(clusters: str, host: str) -> str:
    return next(line.rpartition("::")[2] for line in clusters.splitlines()
                if line.startswith(f"{FLAKY}::{host}::health_flags::"))


def log_details(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line).get("response_code_details") or "" for line in path.read_text().splitlines() if line]


async def test_instance_answering_500s_is_ejected_at_once_and_returns_after_base_ejection_time(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    apps = [ChaosApp("good-1"), ChaosApp("good-2"), ChaosApp("bad", default="500")]
    endpoints = await start_apps(nursery, apps)
    bad = apps[2]
    bad_host = "%s:%d" % endpoints[2]
    log = tmp_path / "access.log"
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", endpoints),
                            client_resources=OUTLIER_DR % log)
    client = pair.addrs.client

    # Round robin reaches the bad instance every third request: two 500s eject it at once.
    statuses = []
    for _ in range(12):
        statuses.append((await fetch(client, f"{FLAKY_URL}/")).status)
        if bad.requests == 2:
            break
    assert statuses.count(500) == 2
    ejected_at = trio.current_time()
    assert health(await admin(client, "/clusters"), bad_host) == "/failed_outlier_check"
    metrics = await admin(client, "/metrics")
    assert [v for _, v in metric_lines(metrics, "meshfed_outlier_ejections_enforced_total", cluster=FLAKY)] == [1.0]
    assert [v for _, v in metric_lines(metrics, "meshfed_outlier_ejections_active", cluster=FLAKY)] == [1.0]

    # Traffic moves: while ejected, every request goes to the good instances.
    for _ in range(6):
        reply = await fetch(client, f"{FLAKY_URL}/")
        assert reply.status == 200 and reply.json()["app"].startswith("good")
    assert bad.requests == 2

    # It comes back after baseEjectionTime, at the first interval sweep past it.
    async def returned() -> bool:
        return health(await admin(client, "/clusters"), bad_host) == "healthy"

    with trio.fail_after(5):
        while not await returned():
            await trio.sleep(0.05)
    assert trio.current_time() - ejected_at >= 1.5
    for _ in range(3):
        await fetch(client, f"{FLAKY_URL}/")
    assert bad.requests == 3  # back in the rotation

    events = [(e.action, e.host, e.duration) for e in pair.client.telemetry.outlier_events]
    assert events[:2] == [(OutlierAction.EJECT, bad_host, 1.5), (OutlierAction.UNEJECT, bad_host, None)]
    assert await settle(lambda: {"outlier_ejected:consecutive_5xx", "outlier_returned"} <= set(log_details(log)))

    # (The next ejection lasting baseEjectionTime x 2 is shown on MockClock in test_attempts.py: in real
    # time the host is back for more than one 0.2 s interval first, and Envoy then shrinks the backoff.)


async def test_flood_beyond_the_pool_gets_503_uo_at_once_and_holds_a_bounded_count(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo", default="slow:2")
    pair = await start_pair(nursery, pki, tmp_path, app=app, client_resources=POOL_DR)
    cluster = pair.client.snapshot.clusters[("echo.demo.svc.cluster.local", "", 8080)]
    peak = {"connections": 0, "pending": 0, "waiting": 0}
    replies = []

    async def watch() -> None:
        while True:
            peak["connections"] = max(peak["connections"], cluster.breaker.active(Resource.CONNECTIONS))
            peak["pending"] = max(peak["pending"], cluster.breaker.active(Resource.PENDING_REQUESTS))
            peak["waiting"] = max(peak["waiting"], cluster.gate.waiting)
            await trio.sleep(0.005)

    async def one(i: int) -> None:
        replies.append(await fetch(pair.addrs.client, f"http://echo.demo.svc.cluster.local:8080/{i}"))

    async with trio.open_nursery() as flood:
        flood.start_soon(watch)
        async with trio.open_nursery() as senders:
            for i in range(40):
                senders.start_soon(one, i)
        flood.cancel_scope.cancel()
    overflowed = [r for r in replies if r.status == 503]
    assert sorted(r.status for r in replies) == [200] * 2 + [503] * 38
    assert {r.body for r in overflowed} == {b"upstream connect error or disconnect/reset before headers. "
                                           b"reset reason: overflow"}
    # Refused at once: every 503 came back before the first request the slow app answered.
    assert [r.status for r in replies] == [503] * 38 + [200] * 2
    assert peak == {"connections": 1, "pending": 1, "waiting": 1}
    assert app.requests == 2
    text = await admin(pair.addrs.client, "/metrics")
    flags = {(labels["response_code"], labels["response_flags"]): v
             for labels, v in metric_lines(text, "istio_requests_total", reporter="source")}
    assert flags == {("200", "-"): 2.0, ("503", "UO"): 38.0}
    assert [v for _, v in metric_lines(text, "meshfed_upstream_overflow_total", cluster=CLUSTER)] == [38.0]
    # Everything is given back.
    assert (cluster.breaker.active(Resource.PENDING_REQUESTS), cluster.gate.waiting) == (0, 0)
