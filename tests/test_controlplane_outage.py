"""The control plane of a mesh started with ``fedctl up`` can die without traffic noticing, comes
back on its own, and its proxies resync; its DNS answers the real ``dig``.

One cluster (127.20.4.0/24) runs reviews v1 (two instances) and v2, ratings and an idle
client in namespace ``bookinfo``, with subsets for reviews. While a bounded loop of
requests goes from the client through the sidecars to reviews, the control plane is
killed with SIGKILL (its pid from ``fedctl status``): the sidecars keep serving their
last config, so no request fails; ``fedctl up``'s supervisor restarts it (backoff from
0.5 s); a config change written while it was down or starting reaches every proxy, and
so does one made after; the restarted control plane numbers versions on from the last
one served, so a version number never names two different configs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time
from typing import Iterator

import pytest

from corpus_mesh import CorpusMesh, Through, running_mesh, workload

REVIEWS = "http://reviews.bookinfo.svc.cluster.local:9080/reviews/0"
SUBSETS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
ALL_V2 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusMesh]:
    workloads = "".join(workload(f"reviews-{v}", "reviews", namespace="bookinfo", service="reviews",
                                 service_account="bookinfo-reviews", version=v, replicas=n)
                        for v, n in (("v1", 2), ("v2", 1)))
    workloads += workload("ratings-v1", "ratings", namespace="bookinfo", service="ratings",
                          service_account="bookinfo-ratings", version="v1")
    workloads += workload("client", "sleep", namespace="bookinfo", port=None)
    with running_mesh(tmp_path_factory.mktemp("outage"), "127.20.4.0/24", workloads,
                      {"destination-rule-reviews.yaml": SUBSETS}) as m:
        yield m


def dig(server: str, *args: str) -> list[str]:
    host, port = server.rsplit(":", 1)
    done = subprocess.run(["dig", f"@{host}", "-p", port, "+short", "+time=2", "+tries=2", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(done.stdout.split())


def reviews_addresses(mesh: CorpusMesh) -> list[str]:
    return sorted(i["address"] for name, i in mesh.instances().items() if name.startswith("bookinfo/reviews-"))


def test_dig_gets_the_reviews_endpoints_from_the_cluster_dns(mesh: CorpusMesh) -> None:
    server = mesh.cluster()["dns"]
    assert server == "127.20.4.1:15053"
    addresses = reviews_addresses(mesh)
    assert len(addresses) == 3
    assert dig(server, "reviews.bookinfo.svc.cluster.local") == addresses
    assert dig(server, "+tcp", "reviews.bookinfo.svc.cluster.local", "A") == addresses
    srv = dig(server, "reviews.bookinfo.svc.cluster.local", "SRV")
    assert srv.count("9080") == 3 and sorted(t for t in srv if t.endswith(".")) == sorted(
        f"{i}.reviews.bookinfo.svc.cluster.local." for i in ("reviews-v1-0", "reviews-v1-1", "reviews-v2-0"))
    host, port = server.rsplit(":", 1)
    nx = subprocess.run(["dig", f"@{host}", "-p", port, "+time=2", "nothing.bookinfo.svc.cluster.local"],
                        capture_output=True, text=True, timeout=30)
    assert "status: NXDOMAIN" in nx.stdout


class RequestLoop(threading.Thread):
    """Requests to reviews from the client through its sidecar until stopped (or ``most`` requests,
    or ``seconds``): every outcome counted, a failure being anything but a 200 from reviews."""

    def __init__(self, address: str, most: int = 20000, seconds: float = 90) -> None:
        super().__init__(daemon=True)
        self.through = Through(address, timeout=10)
        self.most, self.seconds = most, seconds
        self.stop = threading.Event()
        self.versions: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and self.sent < self.most and time.monotonic() < deadline:
            self.sent += 1
            try:
                status, body = self.through.get(REVIEWS)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
                self.failures.append(repr(exc))
                continue
            if status == 200:
                self.versions[json.loads(body)["version"]] += 1
            else:
                self.failures.append(f"{status} {body[:200]!r}")
            time.sleep(0.002)
        self.through.close()


def wait_for(what: str, check, seconds: float = 30.0):  # noqa: ANN001, ANN201 - a small local helper
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds:g} s")


def answers(mesh: CorpusMesh, n: int) -> collections.Counter[str]:
    through = Through(mesh.address("bookinfo/client-0"))
    try:
        return collections.Counter(json.loads(through.get(REVIEWS)[1])["version"] for _ in range(n))
    finally:
        through.close()


def test_killing_the_control_plane_fails_no_request_and_it_restarts_and_every_proxy_resyncs(
        mesh: CorpusMesh) -> None:
    cluster = mesh.cluster()
    old_pid, restarts, version = cluster["pid"], cluster["controlPlane"]["restarts"], cluster["controlPlane"][
        "configVersion"]
    loop = RequestLoop(mesh.address("bookinfo/client-0"))
    loop.start()
    try:
        wait_for("the loop's first answers", lambda: loop.versions.total() >= 20)
        os.kill(old_pid, signal.SIGKILL)
        (mesh.istio / "virtual-service-reviews.yaml").write_text(ALL_V2)  # while it is down (or starting)
        restarted = wait_for("a new control plane", lambda: (c := mesh.cluster())["pid"] not in (None, old_pid)
                             and c["controlPlane"]["ready"] and c)
        assert restarted["controlPlane"]["restarts"] == restarts + 1
        assert restarted["controlPlane"]["state"] == "running"
        after_restart = mesh.wait_in_sync(version)
        assert after_restart == version + 1  # numbering goes on: no second "version 1"
        assert answers(mesh, 20) == {"v2": 20}
        v2_before = loop.versions["v2"]
        wait_for("the loop reaching v2", lambda: loop.versions["v2"] >= v2_before + 50)
        c = mesh.cluster()  # every sidecar subscribed again (and the east-west gateway, when there is one)
        assert c["controlPlane"]["connectedProxies"] == len(mesh.instances()) + (c.get("gateway") is not None) == \
            5 + (c.get("gateway") is not None)
        # a change after the restart reaches every proxy too
        (mesh.istio / "virtual-service-reviews.yaml").unlink()
        assert mesh.wait_in_sync(after_restart) == after_restart + 1
        assert set(answers(mesh, 30)) == {"v1", "v2"}
        v1_before = loop.versions["v1"]
        wait_for("the loop reaching v1 again", lambda: loop.versions["v1"] >= v1_before + 20)
    finally:
        loop.stop.set()
        loop.join(timeout=30)
    assert loop.failures == [], loop.failures[:5]
    assert loop.sent == loop.versions.total() and loop.versions["v1"] > 0 and loop.versions["v2"] > 50
    assert dig(mesh.cluster()["dns"], "reviews.bookinfo.svc.cluster.local") == reviews_addresses(mesh)
