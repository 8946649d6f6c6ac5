"""Chaos through a sidecar pair: upstreams that fail, hang and reset, and the client
sidecar's retries and timeouts doing what Envoy's router does about them.

Real time, short: timeouts of a few hundred milliseconds. The deterministic versions of
these behaviours, on trio's MockClock, are in ``test_attempts.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from gateway.testing import Pair, start_pair
from test_chaos_apps import ChaosApp, admin, count_tasks, direct_service, fetch, metric_lines, settle, start_apps
from trustdomain.testing import MeshPki

CLUSTER = "outbound|8080||echo.demo.svc.cluster.local"
FLAKY = "outbound|8080||flaky.demo.svc.cluster.local"
URL = "http://echo.demo.svc.cluster.local:8080"
FLAKY_URL = "http://flaky.demo.svc.cluster.local:8080"


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def vs(host: str, http: str) -> str:
    """A VirtualService for ``host`` in the client's config; ``http`` is its YAML flow list."""
    return (f"\n  - apiVersion: networking.istio.io/v1\n    kind: VirtualService\n"
            f"    metadata: {{name: {host}, namespace: demo}}\n    spec: {{hosts: [{host}], http: {http}}}")


async def chaos_pair(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, app: ChaosApp, **config: str) -> Pair:
    return await start_pair(nursery, pki, tmp_path, app=app, **config)


async def flags_of(pair: Pair, cluster: str = CLUSTER) -> dict[tuple[str, str], float]:
    text = await admin(pair.addrs.client, "/metrics")
    return {(labels["response_code"], labels["response_flags"]): value
            for labels, value in metric_lines(text, "istio_requests_total", reporter="source")
            if labels.get("destination_service", "").startswith(cluster.rpartition("|")[2])}


async def counter(pair: Pair, name: str, cluster: str = CLUSTER) -> float:
    text = await admin(pair.addrs.client, "/metrics")
    return sum(v for _, v in metric_lines(text, name, cluster=cluster))


# -- fails N times, then succeeds ------------------------------------------------------------

async def test_two_503s_are_hidden_by_istios_default_retries(nursery: trio.Nursery, pki: MeshPki,
                                                              tmp_path: Path) -> None:
    app = ChaosApp("echo", ["503", "503"])
    pair = await chaos_pair(nursery, pki, tmp_path, app)
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, reply.json()) == (200, {"app": "echo", "n": 3})
    assert await flags_of(pair) == {("200", "-"): 1.0}
    assert await counter(pair, "meshfed_upstream_rq_retry_total") == 2
    clusters = (await admin(pair.addrs.client, "/clusters")).splitlines()
    host = f"{pair.addrs.server}:{pair.addrs.app_port}"
    assert {f"{CLUSTER}::{host}::rq_total::3", f"{CLUSTER}::{host}::rq_error::2",
            f"{CLUSTER}::{host}::rq_success::1"} <= set(clusters)


async def test_a_third_503_goes_downstream_flagged_urx(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo", default="503")
    pair = await chaos_pair(nursery, pki, tmp_path, app)
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert reply.status == 503 and app.requests == 3  # the first try and Istio's two retries
    assert await flags_of(pair) == {("503", "URX"): 1.0}


@pytest.mark.parametrize("retries, script, requests, status", [
    ("", ["500", "500"], 1, 500),                                   # Istio's default retries 503 only
    ("retries: {attempts: 0},", ["503"], 1, 503),                   # attempts 0: off, even for 503
    ("retries: {attempts: 3, retryOn: 5xx},", ["500", "502"], 3, 200),
    ("retries: {attempts: 3, retryOn: '500'},", ["500", "500"], 3, 200),  # a status: retriable-status-codes
    ("retries: {attempts: 3, retryOn: gateway-error},", ["502", "500"], 2, 500),
])
async def test_retry_on_decides_which_failures_are_retried(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path,
                                                           retries: str, script: list[str], requests: int,
                                                           status: int) -> None:
    app = ChaosApp("echo", list(script))
    pair = await chaos_pair(nursery, pki, tmp_path, app,
                            client_resources=vs("echo", f"[{{{retries} route: [{{destination: {{host: echo}}}}]}}]"))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, app.requests) == (status, requests)


async def test_small_body_is_replayed_and_body_beyond_the_buffer_is_not_retried(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo", ["503"])
    pair = await chaos_pair(nursery, pki, tmp_path, app)
    small = b"s" * 10_000
    reply = await fetch(pair.addrs.client, f"{URL}/small", method="POST", body=small)
    assert (reply.status, app.requests) == (200, 2)
    app.script = ["503"]
    big = b"b" * (1024 * 1024 + 1)  # one byte over Envoy's 1 MiB per-request buffer
    reply = await fetch(pair.addrs.client, f"{URL}/big", method="POST", body=big)
    assert (reply.status, app.requests) == (503, 3)  # answered as is: no retry, no URX
    assert await flags_of(pair) == {("200", "-"): 1.0, ("503", "-"): 1.0}
    assert app.bodies == [hashlib.sha256(small).hexdigest()] * 2 + [hashlib.sha256(big).hexdigest()]


# -- hangs -------------------------------------------------------------------------------------

async def test_hanging_upstream_gets_504_ut_at_the_route_timeout_and_nothing_leaks(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    # The app is met directly (no server sidecar), so its connection count is the client
    # sidecar's: every connection a timeout abandoned must be closed.
    app = ChaosApp("flaky", ["ok"], default="hang")
    endpoints = await start_apps(nursery, [app])
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", endpoints),
                            client_resources=vs("flaky", "[{timeout: 0.3s, route: [{destination: {host: flaky}}]}]"))
    assert (await fetch(pair.addrs.client, f"{FLAKY_URL}/warm")).status == 200
    assert await settle(lambda: pair.client.pool.idle_count() == 1)
    tasks = count_tasks()
    replies = []

    async def one(i: int) -> None:
        replies.append(await fetch(pair.addrs.client, f"{FLAKY_URL}/hang/{i}"))

    async with trio.open_nursery() as flood:
        for i in range(8):
            flood.start_soon(one, i)
    assert [(r.status, r.body) for r in replies] == [(504, b"upstream request timeout")] * 8
    assert all(0.25 <= r.elapsed < 3 for r in replies)
    assert await flags_of(pair, FLAKY) == {("200", "-"): 1.0, ("504", "UT"): 8.0}
    assert await settle(lambda: sum(s.cx_active for s in pair.client.pool.stats.values()) <= 1)
    assert await settle(lambda: app.open_connections <= 1)  # the pooled warm-up connection at most
    assert await settle(lambda: count_tasks() <= tasks)
    assert await counter(pair, "meshfed_upstream_rq_timeout_total", FLAKY) == 8


async def test_hanging_app_behind_a_server_sidecar_gets_504_ut(nursery: trio.Nursery, pki: MeshPki,
                                                               tmp_path: Path) -> None:
    app = ChaosApp("echo", default="hang")
    pair = await chaos_pair(nursery, pki, tmp_path, app, client_resources=vs(
        "echo", "[{timeout: 0.3s, route: [{destination: {host: echo}}]}]"))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, reply.body) == (504, b"upstream request timeout")
    assert await flags_of(pair) == {("504", "UT"): 1.0}
    assert await settle(lambda: sum(s.cx_active for s in pair.client.pool.stats.values()) == 0)


async def test_per_try_timeout_gives_up_on_a_hanging_try_and_retries(nursery: trio.Nursery, pki: MeshPki,
                                                                     tmp_path: Path) -> None:
    app = ChaosApp("echo", ["hang"])
    pair = await chaos_pair(nursery, pki, tmp_path, app, client_resources=vs(
        "echo", "[{retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}, route: [{destination: {host: echo}}]}]"))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, reply.json()["n"]) == (200, 2)
    assert reply.elapsed >= 0.2
    assert await flags_of(pair) == {("200", "-"): 1.0}
    assert await counter(pair, "meshfed_upstream_rq_timeout_total") == 1


async def test_per_try_timeouts_spent_answer_504_ut_urx_before_the_route_timeout(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo", default="hang")
    pair = await chaos_pair(nursery, pki, tmp_path, app, client_resources=vs("echo", (
        "[{timeout: 5s, retries: {attempts: 2, perTryTimeout: 0.15s, retryOn: 5xx}, "
        "route: [{destination: {host: echo}}]}]")))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, reply.body, app.requests) == (504, b"upstream request timeout", 3)
    assert 0.45 <= reply.elapsed < 4
    assert await flags_of(pair) == {("504", "UT,URX"): 1.0}


# -- resets and refused connections ------------------------------------------------------------

@pytest.mark.parametrize("retry_on", ["reset", "5xx", "gateway-error"])
async def test_reset_before_the_response_is_retried(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path,
                                                    retry_on: str) -> None:
    flaky = ChaosApp("flaky", ["reset", "reset"])
    endpoints = await start_apps(nursery, [flaky])
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", endpoints),
                            client_resources=vs("flaky", f"[{{retries: {{attempts: 2, retryOn: {retry_on}}}, "
                                                         "route: [{destination: {host: flaky}}]}]"))
    reply = await fetch(pair.addrs.client, f"{FLAKY_URL}/")
    assert (reply.status, reply.json()) == (200, {"app": "flaky", "n": 3})
    assert await flags_of(pair, FLAKY) == {("200", "-"): 1.0}


async def test_resets_beyond_the_attempts_answer_503_uc_urx(nursery: trio.Nursery, pki: MeshPki,
                                                            tmp_path: Path) -> None:
    flaky = ChaosApp("flaky", default="reset")
    endpoints = await start_apps(nursery, [flaky])
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", endpoints),
                            client_resources=vs("flaky", "[{retries: {attempts: 2, retryOn: reset}, "
                                                         "route: [{destination: {host: flaky}}]}]"))
    reply = await fetch(pair.addrs.client, f"{FLAKY_URL}/")
    assert reply.status == 503 and flaky.requests == 3
    assert reply.body == (b"upstream connect error or disconnect/reset before headers. "
                          b"reset reason: connection termination")
    assert await flags_of(pair, FLAKY) == {("503", "UC,URX"): 1.0}


async def test_reset_is_not_retried_by_istios_default_policy(nursery: trio.Nursery, pki: MeshPki,
                                                             tmp_path: Path) -> None:
    flaky = ChaosApp("flaky", ["reset"])
    endpoints = await start_apps(nursery, [flaky])
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", endpoints))
    reply = await fetch(pair.addrs.client, f"{FLAKY_URL}/")
    assert (reply.status, flaky.requests) == (503, 1)
    assert await flags_of(pair, FLAKY) == {("503", "UC"): 1.0}


async def test_connect_failures_move_to_the_instance_that_answers(nursery: trio.Nursery, pki: MeshPki,
                                                                  tmp_path: Path) -> None:
    good = ChaosApp("good")
    [(host, port)] = await start_apps(nursery, [good])
    refused = [(host.rpartition(".")[0] + f".{200 + i}", port) for i in range(2)]  # nothing listens there
    pair = await start_pair(nursery, pki, tmp_path, client_services=direct_service("flaky", [*refused, (host, port)]))
    for _ in range(6):
        reply = await fetch(pair.addrs.client, f"{FLAKY_URL}/")
        assert reply.status == 200 and reply.json()["app"] == "good"
    clusters = (await admin(pair.addrs.client, "/clusters")).splitlines()
    assert f"{FLAKY}::{host}:{port}::rq_success::6" in clusters
    fails = sum(int(line.rpartition("::")[2]) for line in clusters
                if line.startswith(FLAKY) and "::cx_connect_fail::" in line)
    assert fails >= 1
