"""Injected chaos through a sidecar pair: fault injection (DI, FI, gRPC aborts), mirroring
(percentages, ``-shadow`` authority, a slow mirror out of the way) and local rate limits
from meshfed's ``RateLimit`` kind (429 RL with ``x-ratelimit-*``).

Percentages are checked statistically: with the proxy's random source seeded the counts
are fixed, and the bound (4.5 standard deviations of the binomial) would hold for any seed
with probability above 0.99999.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio

from gateway.testing import Pair, start_pair
from test_chaos_apps import ChaosApp, admin, direct_service, fetch, metric_lines, settle, start_apps
from trustdomain.testing import MeshPki

URL = "http://echo.demo.svc.cluster.local:8080"
N = 200


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


def within_binomial(count: int, n: int, percent: float) -> bool:
    p = percent / 100
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def vs(http: str) -> str:
    return ("\n  - apiVersion: networking.istio.io/v1\n    kind: VirtualService\n"
            f"    metadata: {{name: echo, namespace: demo}}\n    spec: {{hosts: [echo], http: {http}}}")


async def flags_of(pair: Pair) -> dict[tuple[str, str], float]:
    text = await admin(pair.addrs.client, "/metrics")
    return {(labels["response_code"], labels["response_flags"]): v
            for labels, v in metric_lines(text, "istio_requests_total", reporter="source")}


async def seeded_pair(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, app: ChaosApp, seed: int = 5,
                      **config: str) -> Pair:
    pair = await start_pair(nursery, pki, tmp_path, app=app, **config)
    pair.client.outbound.rng.seed(seed)  # the one random source of the outbound layers
    return pair


# -- fault injection ------------------------------------------------------------------------

async def test_delay_holds_the_request_with_flag_di_and_disables_the_route_timeout(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_resources=vs(
        "[{timeout: 0.05s, fault: {delay: {fixedDelay: 0.2s, percentage: {value: 100}}}, "
        "route: [{destination: {host: echo}}]}]"))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert reply.status == 200 and reply.elapsed >= 0.2  # Istio: no timeouts on a route with faults
    assert await flags_of(pair) == {("200", "DI"): 1.0}


async def test_abort_percentage_holds_statistically_and_never_reaches_the_app(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_resources=vs(
        "[{fault: {abort: {httpStatus: 418, percentage: {value: 30}}}, route: [{destination: {host: echo}}]}]"))
    statuses = [(await fetch(pair.addrs.client, f"{URL}/")).status for _ in range(N)]
    aborted = statuses.count(418)
    assert within_binomial(aborted, N, 30.0), aborted
    assert statuses.count(200) == N - aborted == app.requests
    assert await flags_of(pair) == {("418", "FI"): float(aborted), ("200", "-"): float(N - aborted)}


async def test_grpc_abort_answers_http_200_with_grpc_status(nursery: trio.Nursery, pki: MeshPki,
                                                            tmp_path: Path) -> None:
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_resources=vs(
        "[{fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}, "
        "route: [{destination: {host: echo}}]}]"))
    reply = await fetch(pair.addrs.client, f"{URL}/echo.Echo/Say", method="POST",
                        headers=[("content-type", "application/grpc"), ("te", "trailers")], body=b"\0\0\0\0\0")
    assert (reply.status, reply.headers["grpc-status"], reply.headers["content-type"]) == (
        200, "14", "application/grpc")
    assert app.requests == 0
    assert await flags_of(pair) == {("200", "FI"): 1.0}


# -- mirroring ------------------------------------------------------------------------------

async def test_mirror_percentage_holds_statistically_with_the_shadow_authority(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    shadow = ChaosApp("shadow")
    endpoints = await start_apps(nursery, [shadow])
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_services=direct_service("shadow", endpoints),
                             client_resources=vs("[{mirror: {host: shadow}, mirrorPercentage: {value: 25}, "
                                                 "route: [{destination: {host: echo}}]}]"))
    for i in range(N):
        assert (await fetch(pair.addrs.client, f"{URL}/{i}")).status == 200
    mirrors = pair.client.mirrors
    assert await settle(lambda: mirrors.in_flight == 0)
    assert within_binomial(shadow.requests, N, 25.0), shadow.requests
    assert (app.requests, mirrors.sent, mirrors.dropped) == (N, shadow.requests, 0)
    assert set(shadow.hosts) == {"echo.demo.svc.cluster.local-shadow:8080"}


async def test_mirror_copies_the_body_of_a_post(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    shadow = ChaosApp("shadow")
    endpoints = await start_apps(nursery, [shadow])
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_services=direct_service("shadow", endpoints),
                             client_resources=vs("[{mirror: {host: shadow}, route: [{destination: {host: echo}}]}]"))
    assert (await fetch(pair.addrs.client, f"{URL}/", method="POST", body=b"p" * 5000)).status == 200
    assert await settle(lambda: shadow.requests == 1)
    assert shadow.bodies == app.bodies


async def test_hanging_mirror_never_delays_the_real_response(nursery: trio.Nursery, pki: MeshPki,
                                                             tmp_path: Path) -> None:
    shadow = ChaosApp("shadow", default="hang")
    endpoints = await start_apps(nursery, [shadow])
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_services=direct_service("shadow", endpoints),
                             client_resources=vs("[{mirror: {host: shadow}, route: [{destination: {host: echo}}]}]"))
    for i in range(10):
        assert (await fetch(pair.addrs.client, f"{URL}/{i}")).status == 200
    # Every real answer arrived while every copy still waits for the mirror.
    assert await settle(lambda: shadow.requests == 10)
    assert pair.client.mirrors.in_flight == 10 and app.requests == 10


# -- rate limits ---------------------------------------------------------------------------

RATE_LIMITS = """
  - apiVersion: meshfed.io/v1alpha1
    kind: RateLimit
    metadata: {name: echo-all, namespace: demo}
    spec: {targetRef: {host: echo}, maxTokens: 5, fillInterval: 60s}
  - apiVersion: meshfed.io/v1alpha1
    kind: RateLimit
    metadata: {name: echo-limited, namespace: demo}
    spec: {targetRef: {host: echo}, route: limited, maxTokens: 2, fillInterval: 60s}"""


async def test_rate_limits_per_route_and_per_destination_answer_429_rl(nursery: trio.Nursery, pki: MeshPki,
                                                                       tmp_path: Path) -> None:
    app = ChaosApp("echo")
    routes = vs("[{name: limited, match: [{uri: {prefix: /limited}}], route: [{destination: {host: echo}}]}, "
                "{name: open, route: [{destination: {host: echo}}]}]")
    pair = await seeded_pair(nursery, pki, tmp_path, app, client_resources=routes + RATE_LIMITS)
    got = []
    for path in ["/limited"] * 3 + ["/open"] * 3:
        reply = await fetch(pair.addrs.client, URL + path)
        got.append((path, reply.status, reply.headers.get("x-ratelimit-limit"),
                    reply.headers.get("x-ratelimit-remaining")))
        if reply.status == 429:
            assert reply.body == b"local_rate_limited"
            assert 0 < int(reply.headers["x-ratelimit-reset"]) <= 60
    assert got == [("/limited", 200, "2", "1"), ("/limited", 200, "2", "0"), ("/limited", 429, "2", "0"),
                   ("/open", 200, "5", "1"), ("/open", 200, "5", "0"), ("/open", 429, "5", "0")]
    assert app.requests == 4
    assert await flags_of(pair) == {("200", "-"): 4.0, ("429", "RL"): 2.0}


async def test_rate_limit_of_a_receiving_workload_answers_429_from_its_sidecar(nursery: trio.Nursery,
                                                                               pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo")
    inbound = ("\n  - apiVersion: meshfed.io/v1alpha1\n    kind: RateLimit\n"
               "    metadata: {name: echo, namespace: demo}\n"
               "    spec: {workloadSelector: {matchLabels: {app: echo}}, maxTokens: 1, fillInterval: 60s}")
    pair = await seeded_pair(nursery, pki, tmp_path, app, server_resources=inbound)
    first, second = [await fetch(pair.addrs.client, f"{URL}/") for _ in range(2)]
    assert (first.status, second.status, app.requests) == (200, 429, 1)
    assert second.headers["x-ratelimit-limit"] == "1"


# -- faults a workload's own sidecar injects (meshfed WorkloadFault) ------------------------------

def workload_fault(name: str, where: str, fault: str) -> str:
    return ("\n  - apiVersion: meshfed.io/v1alpha1\n    kind: WorkloadFault\n"
            f"    metadata: {{name: {name}, namespace: demo}}\n"
            f"    spec: {{workloadSelector: {{matchLabels: {{app: echo}}}}, {where}fault: {fault}}}")


async def server_flags(pair: Pair) -> dict[tuple[str, str], float]:
    text = await admin(pair.addrs.server, "/metrics")
    return {(labels["response_code"], labels["response_flags"]): v
            for labels, v in metric_lines(text, "istio_requests_total", reporter="destination")}


async def test_workload_fault_aborts_in_the_server_sidecar_and_the_caller_still_retries(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    app = ChaosApp("echo")
    pair = await seeded_pair(nursery, pki, tmp_path, app, server_resources=workload_fault(
        "fail-east", "cluster: east, ", "{abort: {httpStatus: 503, percentage: {value: 100}}}"))
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, reply.body, app.requests) == (503, b"fault filter abort", 0)
    # Istio's default retry policy (2 retries on 503) is on: unlike a VirtualService fault,
    # the caller meets a failing endpoint, three times
    assert await server_flags(pair) == {("503", "FI"): 3.0}
    text = await admin(pair.addrs.server, "/metrics")
    assert metric_lines(text, "meshfed_fault_aborts_injected_total", route="demo/fail-east")[0][1] == 3.0


async def test_workload_fault_applies_only_in_its_cluster_and_locality(nursery: trio.Nursery, pki: MeshPki,
                                                                       tmp_path: Path) -> None:
    app = ChaosApp("echo")
    faults = (workload_fault("slow-east", "cluster: east, ", "{delay: {fixedDelay: 0.2s, percentage: {value: 100}}}")
              + workload_fault("fail-west", "cluster: west, ", "{abort: {httpStatus: 500, percentage: {value: 100}}}")
              + workload_fault("fail-us", "locality: us-east, ", "{abort: {httpStatus: 500, percentage: {value: 100}}}"))
    pair = await seeded_pair(nursery, pki, tmp_path, app, server_resources=faults)
    reply = await fetch(pair.addrs.client, f"{URL}/")
    assert (reply.status, app.requests) == (200, 1) and reply.elapsed >= 0.2
    assert await server_flags(pair) == {("200", "DI"): 1.0}
