"""Two control planes' federation over real mTLS on loopback: watch, push on change, refusal, TTL, unlink.

Each side is a ``Federation`` behind a ``ControlPlaneListener`` with its control plane SVID
(``.../ns/istio-system/sa/istiod``) from one shared root. Probe settings are short
(0.1 s, 2 failures, TTL 0.8 s) so that a link expiring takes under a second; every wait
is bounded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pytest
import trio

from federation._cplistener import ControlPlaneListener
from federation._federation import Federation
from federation._federation_model import ExportSet, ExportedService
from federation._federation_peers import Peer
from federation._link_health import ProbePolicy
from federation._link_store import mint_credential
from gateway._discovery_wire import control_plane_id
from topology import Endpoint
from topology._endpoint import ServicePort
from trustdomain import MtlsContexts, issue_svid
from trustdomain.testing import MeshPki

FAST = ProbePolicy(interval=0.1, failure_threshold=2, ttl=0.8, timeout=0.5)
PKI = MeshPki.shared_root("east-a.example", "west.example")
SECRET = {"east-a": b"e" * 32, "west": b"w" * 32}


@dataclass
class Side:
    name: str
    federation: Federation
    address: tuple[str, int]
    scope: trio.CancelScope
    changes: list[int] = field(default_factory=list)

    def peer(self, **changes: Any) -> Peer:
        return replace(Peer(self.name, f"{self.name}.example", self.address, f"{self.address[0]}:15443", probe=FAST),
                       **changes)


async def start(name: str, host: str, nursery: trio.Nursery) -> Side:
    td = f"{name}.example"
    contexts = MtlsContexts(issue_svid(PKI.ca(td), control_plane_id(td), PKI.now), PKI.bundles(), alpn=("h2",))
    changes: list[int] = []
    fed = Federation(name, contexts, SECRET[name], on_change=lambda: changes.append(1))
    listener = ControlPlaneListener(contexts, dict(fed.routes))
    scope = trio.CancelScope()

    async def serve(*, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(fed.run)
                address = await inner.start(listener.serve, host, 0)
                task_status.started(address)
    address = await nursery.start(serve)
    return Side(name, fed, address, scope, changes)


def export(revision_hint: int) -> ExportSet:
    eps = tuple(Endpoint(f"127.33.3.{10 + i}", 8080, cluster="west", network="net-west", service_port=8080)
                for i in range(revision_hint))
    svc = ExportedService("echo.demo.svc.cluster.local", "demo", "echo", (ServicePort("http", 8080, "HTTP"),), eps)
    return ExportSet("west", "net-west", "us-west/a", "west.example", "127.33.3.2:15443", (svc,), f"r{revision_hint}")


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def imported(side: Side) -> list[int]:
    return [len(s.endpoints) for x in side.federation.imports() for s in x.services]


def link_state(side: Side, peer: str) -> str:
    return next(r["state"] for r in side.federation.status() if r["to"] == peer)


@pytest.fixture
async def pair(nursery: trio.Nursery) -> tuple[Side, Side]:
    east = await start("east-a", "127.33.1.1", nursery)
    west = await start("west", "127.33.3.1", nursery)
    west.federation.set_export(export(1))
    return east, west


async def test_linked_control_planes_import_each_others_exports_and_report_the_link_up(pair) -> None:
    east, west = pair
    west.federation.set_peers({"east-a": east.peer()})
    east.federation.set_peers({"west": west.peer()})
    await until(lambda: imported(east) == [1] and link_state(east, "west") == "up")
    row = east.federation.status()[0]
    assert (row["from"], row["to"], row["imported"], row["importedEndpoints"]) == ("east-a", "west", 1, 1)
    assert row["lastSync"] is not None and row["probeLatencyMs"] is not None
    assert east.changes, "the importer republishes on import"


async def test_a_change_of_the_export_reaches_the_importer_without_waiting_for_the_long_poll(pair) -> None:
    east, west = pair
    west.federation.set_peers({"east-a": east.peer()})
    east.federation.set_peers({"west": west.peer()})
    await until(lambda: imported(east) == [1])
    west.federation.set_export(export(0))  # scaled to zero
    await until(lambda: imported(east) == [0], timeout=5)  # well under the 15 s long poll
    west.federation.set_export(export(3))
    await until(lambda: imported(east) == [3], timeout=5)


async def test_a_peer_that_is_not_linked_back_is_refused_with_the_reason(pair) -> None:
    east, west = pair
    east.federation.set_peers({"west": west.peer()})  # west knows nothing of east-a
    await until(lambda: (east.federation.status()[0]["lastError"] or "").find("not linked") >= 0)
    assert imported(east) == [] and link_state(east, "west") == "connecting"
    assert "east-a.example is not linked with cluster 'west'" in east.federation.status()[0]["lastError"]


async def test_a_credential_from_the_exporter_admits_an_importer_it_does_not_know(pair) -> None:
    east, west = pair
    credential = mint_credential(SECRET["west"], "west", dt.datetime.now(dt.timezone.utc))
    east.federation.set_peers({"west": west.peer(credential=credential, kind="applied")})
    await until(lambda: imported(east) == [1])
    forged = mint_credential(b"x" * 32, "west", dt.datetime.now(dt.timezone.utc))
    east.federation.set_peers({"west": west.peer(credential=forged, kind="applied")})  # imports kept meanwhile
    await until(lambda: "not issued by this cluster" in (east.federation.status()[0]["lastError"] or ""))


async def test_a_peer_gone_past_the_ttl_loses_its_endpoints_and_regains_them_when_back(pair, nursery) -> None:
    east, west = pair
    west.federation.set_peers({"east-a": east.peer()})
    east.federation.set_peers({"west": west.peer()})
    await until(lambda: imported(east) == [1])
    west.scope.cancel()  # the peer's control plane is gone
    await until(lambda: link_state(east, "west") == "down", timeout=5)
    assert imported(east) == [1], "down but within the TTL: the endpoints stay"
    await until(lambda: imported(east) == [], timeout=5)
    assert link_state(east, "west") == "expired"


async def test_unlink_removes_the_imports_at_once(pair) -> None:
    east, west = pair
    west.federation.set_peers({"east-a": east.peer()})
    east.federation.set_peers({"west": west.peer()})
    await until(lambda: imported(east) == [1])
    before = len(east.changes)
    east.federation.set_peers({})
    assert imported(east) == [] and east.federation.status() == [] and len(east.changes) == before + 1


async def test_a_restarted_control_plane_serves_the_imports_it_kept_until_they_expire(nursery) -> None:
    east = await start("east-a", "127.33.1.1", nursery)
    east.federation.seed([export(2)])
    gone = Peer("west", "west.example", ("127.33.3.9", 9), "127.33.3.2:15443", probe=FAST)  # nobody listens
    east.federation.set_peers({"west": gone}, notify=False)
    assert imported(east) == [2], "served at once, before any contact"
    await until(lambda: imported(east) == [], timeout=5)  # never confirmed: gone after the TTL
