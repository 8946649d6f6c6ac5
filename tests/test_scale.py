"""Scale overrides laid over the example's placements: addresses stay put, endpoints follow."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation._scale import (
    ScaleError, find_workload, read_overrides, scale_path, scale_placements, scale_registry, write_overrides,
)
from topology import build_registry, load_paths, placements
from topology._registry_build import find_mesh

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "multi-cluster"
ECHO = "echo.demo.svc.cluster.local"


@pytest.fixture(scope="module")
def example():
    result = load_paths([EXAMPLE])
    mesh = find_mesh(result)
    return mesh, placements(result, mesh), build_registry(result, mesh)


def where(placed, cluster: str) -> list[tuple[str, str]]:
    return [(p.instance, p.address) for p in placed if p.cluster == cluster]


@pytest.mark.parametrize("overrides, east_a", [
    ({}, [("productpage-v1-0", "127.1.1.10"), ("details-v1-0", "127.1.1.11"), ("reviews-v1-0", "127.1.1.12"),
          ("echo-0", "127.1.1.13"), ("client-0", "127.1.1.14")]),
    ({("east-a", "demo", "echo"): 0}, [("productpage-v1-0", "127.1.1.10"), ("details-v1-0", "127.1.1.11"),
                                        ("reviews-v1-0", "127.1.1.12"), ("client-0", "127.1.1.14")]),
    ({("east-a", "demo", "echo"): 3}, [("productpage-v1-0", "127.1.1.10"), ("details-v1-0", "127.1.1.11"),
                                        ("reviews-v1-0", "127.1.1.12"), ("echo-0", "127.1.1.13"),
                                        ("client-0", "127.1.1.14"), ("echo-1", "127.1.1.15"), ("echo-2", "127.1.1.16")]),
    ({("east-a", "demo", "echo"): 2, ("east-a", "demo", "client"): 2},
     [("productpage-v1-0", "127.1.1.10"), ("details-v1-0", "127.1.1.11"), ("reviews-v1-0", "127.1.1.12"),
      ("echo-0", "127.1.1.13"), ("client-0", "127.1.1.14"), ("client-1", "127.1.1.15"), ("echo-1", "127.1.1.16")]),
])
def test_scaling_keeps_every_other_instance_where_it_was(example, overrides, east_a) -> None:
    mesh, placed, _ = example
    after = scale_placements(placed, overrides, mesh)
    assert where(after, "east-a") == east_a
    assert where(after, "east-b") == where(placed, "east-b")


def test_a_new_instance_carries_its_workloads_identity_and_locality(example) -> None:
    mesh, placed, _ = example
    new = [p for p in scale_placements(placed, {("west", "demo", "echo"): 2}, mesh) if p.instance == "echo-1"]
    assert len(new) == 1
    p = new[0]
    assert (p.cluster, p.network, str(p.locality), p.service_account, p.index) == (
        "west", "network-west", "us-west/us-west-1a", "echo", 1)
    assert dict(p.labels) == {"app": "echo", "version": "v1"}


def test_endpoints_follow_the_scaled_instances_in_that_cluster_only(example) -> None:
    mesh, placed, registry = example
    overrides = {("east-a", "demo", "echo"): 2}
    after = scale_placements(placed, overrides, mesh)
    scaled = scale_registry(registry, mesh, placed, after, overrides)
    eps = sorted((e.cluster, e.address, e.port, e.instance) for e in scaled.get(ECHO).endpoints)
    assert eps == [("east-a", "127.1.1.13", 8080, "echo-0"), ("east-a", "127.1.1.15", 8080, "echo-1"),
                   ("east-b", "127.1.2.12", 8080, "echo-0"), ("west", "127.1.3.12", 8080, "echo-0")]
    zero = {("east-a", "demo", "echo"): 0}
    gone = scale_registry(registry, mesh, placed, scale_placements(placed, zero, mesh), zero)
    assert sorted(e.cluster for e in gone.get(ECHO).endpoints) == ["east-b", "west"]


def test_overrides_round_trip_and_ignore_malformed_entries(tmp_path: Path) -> None:
    assert read_overrides(tmp_path) == {}
    write_overrides(tmp_path, {("east-a", "demo", "echo"): 0, ("west", "bookinfo", "ratings-v1"): 3})
    assert scale_path(tmp_path).read_text() == '{\n "east-a/demo/echo": 0,\n "west/bookinfo/ratings-v1": 3\n}\n'
    scale_path(tmp_path).write_text('{"east-a/demo/echo": 2, "bad": 1, "a/b/c": -1, "x/y/z": true}')
    assert read_overrides(tmp_path) == {("east-a", "demo", "echo"): 2}


@pytest.mark.parametrize("cluster, name, message", [
    ("north", "echo", "unknown cluster 'north'; the clusters are: east-a, east-b, west"),
    ("west", "details-v1", "cluster 'west' runs no workload 'details-v1'; its workloads are: bookinfo/ratings-v1, "
                           "bookinfo/reviews-v3, demo/client, demo/echo"),
])
def test_unknown_workloads_are_refused_with_what_exists(example, cluster: str, name: str, message: str) -> None:
    mesh, _, _ = example
    with pytest.raises(ScaleError) as info:
        find_workload(mesh, cluster, name)
    assert str(info.value) == message


def test_a_full_block_refuses_more_instances(example) -> None:
    mesh, placed, _ = example
    with pytest.raises(ScaleError, match=r"^cluster 'east-a': address block 127.1.1.0/24 has no address left for "
                                         r"instance echo-241$"):
        scale_placements(placed, {("east-a", "demo", "echo"): 300}, mesh)
