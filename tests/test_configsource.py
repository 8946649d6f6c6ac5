"""The watched config directory: versions, refusals that keep the previous version, change times."""

import datetime as dt
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from federation._configsource import ConfigRefusal, ConfigSource, ConfigVersion
from topology import Diagnostic

MESH = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters:
  - {name: east, addressBlock: 127.81.0.0/24}
  - {name: west, addressBlock: 127.82.0.0/24}
  workloads:
  - {name: reviews-v1, namespace: bookinfo, service: reviews, app: reviews, version: v1, cluster: east,
     ports: [{name: http, port: 9080}]}
"""
VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"""
BAD_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -5
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  template:
    metadata: {labels: {app: ratings}}
    spec:
      containers: [{name: ratings, image: ratings}]
"""

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "mesh.yaml", MESH)
    write(tmp_path / "vs.yaml", VS.format(subset="v1"))
    return tmp_path


def source(tree: Path, **kw: object) -> ConfigSource:
    return ConfigSource(tree, clock=kw.pop("clock", Clock()), in_thread=False, **kw)  # type: ignore[arg-type]


def test_first_poll_compiles_version_one_with_registry_and_placements(tree: Path) -> None:
    src = source(tree)
    version = src.poll()
    assert isinstance(version, ConfigVersion)
    assert version.number == 1 and src.current is version
    assert [r.kind for r in version.resources] == ["Mesh", "VirtualService"]
    assert [s.hostname.name for s in version.registry.services] == ["reviews.bookinfo.svc.cluster.local"]
    assert [(p.cluster, p.instance, p.address) for p in version.placements] == [("east", "reviews-v1-0", "127.81.0.10")]
    assert sorted(version.files) == [str(tree / "mesh.yaml"), str(tree / "vs.yaml")]


def test_poll_without_change_and_rewrite_with_same_bytes_make_no_version(tree: Path) -> None:
    src = source(tree)
    src.poll()
    assert src.poll() is None
    write(tree / "vs.yaml", VS.format(subset="v1"))
    os.utime(tree / "vs.yaml", ns=(1, 1))
    assert src.poll() is None
    assert src.current is not None and src.current.number == 1


def test_edited_virtual_service_makes_next_version_reusing_the_registry(tree: Path) -> None:
    src = source(tree)
    first = src.poll()
    write(tree / "vs.yaml", VS.format(subset="v2"))
    second = src.poll()
    assert isinstance(first, ConfigVersion) and isinstance(second, ConfigVersion)
    assert second.number == 2
    assert second.registry is first.registry and second.placements is first.placements
    assert second.resources[0] is first.resources[0]  # the unchanged file is not decoded again
    assert second.resources[1].spec.http[0].route[0].destination.subset == "v2"


def test_bad_file_is_refused_with_file_line_message_and_previous_version_stays(tree: Path) -> None:
    clock = Clock()
    src = source(tree, clock=clock)
    src.poll()
    clock.now = T0 + dt.timedelta(seconds=5)
    write(tree / "vs.yaml", BAD_VS)
    refusal = src.poll()
    assert isinstance(refusal, ConfigRefusal)
    assert refusal.messages == (f"{tree / 'vs.yaml'}:9: spec.http[0].route[0].weight: must be between 0 and 100; found integer -5",)
    assert refusal.files == (str(tree / "vs.yaml"),)
    assert src.current is not None and src.current.number == 1
    assert src.status()["lastRefusal"] == {"at": "2030-01-01T00:00:05+00:00", "messages": list(refusal.messages),
                                           "files": [str(tree / "vs.yaml")]}
    assert src.status()["refusedTotal"] == 1
    assert src.poll() is None  # the same bad content is not refused twice
    assert src.refused_total == 1


@pytest.mark.parametrize("fix", ["rewrite", "remove"])
def test_fixing_or_removing_the_bad_file_makes_the_next_version_and_clears_the_refusal(tree: Path, fix: str) -> None:
    src = source(tree)
    src.poll()
    write(tree / "vs.yaml", BAD_VS)
    src.poll()
    if fix == "rewrite":
        write(tree / "vs.yaml", VS.format(subset="v3"))
    else:
        (tree / "vs.yaml").unlink()
    version = src.poll()
    assert isinstance(version, ConfigVersion) and version.number == 2
    assert src.refusal is None and src.status()["lastRefusal"] is None


def test_reverting_to_the_content_in_force_clears_the_refusal_without_a_version(tree: Path) -> None:
    src = source(tree)
    src.poll()
    write(tree / "vs.yaml", BAD_VS)
    src.poll()
    write(tree / "vs.yaml", VS.format(subset="v1"))
    assert src.poll() is None
    assert src.refusal is None and src.current is not None and src.current.number == 1


def test_unplaceable_workloads_are_refused_pointing_at_the_mesh(tree: Path) -> None:
    src = source(tree)
    src.poll()
    write(tree / "deploy.yaml", DEPLOYMENT)
    refusal = src.poll()
    assert isinstance(refusal, ConfigRefusal)
    assert refusal.messages == (
        f"{tree / 'mesh.yaml'}:1: cannot place the workloads: Kubernetes Services or Deployments were loaded beside "
        "a mesh of 2 clusters (east, west); say which cluster they belong to (kube_cluster)",)


def test_kube_cluster_places_kubernetes_workloads(tree: Path) -> None:
    write(tree / "deploy.yaml", DEPLOYMENT)
    version = source(tree, kube_cluster="west").poll()
    assert isinstance(version, ConfigVersion)
    assert [(p.cluster, p.instance) for p in version.placements] == [("east", "reviews-v1-0"), ("west", "ratings-0")]


def test_an_extra_check_can_refuse_a_change(tree: Path) -> None:
    def no_west(result: object, mesh: object) -> list[Diagnostic]:
        return [Diagnostic("mesh.yaml", 3, "spec.clusters", "west is not allowed here")]
    refusal = source(tree, checks=(no_west,)).poll()
    assert isinstance(refusal, ConfigRefusal)
    assert refusal.messages == ("mesh.yaml:3: spec.clusters: west is not allowed here",)


def test_changed_at_is_the_file_mtime_but_never_before_the_last_quiet_poll(tree: Path) -> None:
    clock = Clock()
    src = source(tree, clock=clock)
    src.poll()
    clock.now = T0 + dt.timedelta(seconds=10)
    src.poll()  # quiet
    write(tree / "vs.yaml", VS.format(subset="v2"))
    mtime = T0 + dt.timedelta(seconds=12)
    os.utime(tree / "vs.yaml", (mtime.timestamp(), mtime.timestamp()))
    clock.now = T0 + dt.timedelta(seconds=13)
    version = src.poll()
    assert isinstance(version, ConfigVersion) and version.changed_at == mtime
    write(tree / "vs.yaml", VS.format(subset="v3"))
    os.utime(tree / "vs.yaml", (T0.timestamp(), T0.timestamp()))  # copied with an old mtime
    clock.now = T0 + dt.timedelta(seconds=20)
    version = src.poll()
    assert isinstance(version, ConfigVersion) and version.changed_at == T0 + dt.timedelta(seconds=13)


async def test_run_notifies_listeners_and_analyzes_after_a_quiet_delay(
        tree: Path, autojump_clock: trio.testing.MockClock) -> None:
    write(tree / "vs.yaml", VS.format(subset="v9"))  # analyze warns: no DestinationRule defines v9
    src = source(tree, interval=0.1, analyze_delay=1.0)
    seen: list[object] = []
    src.on_version(seen.append)
    src.on_refusal(seen.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(src.run)
        assert [getattr(v, "number", None) for v in seen] == [1]
        assert src.status()["warnings"] == []
        await trio.sleep(1.15)
        assert src.status()["warnings"] == [
            f"{tree / 'vs.yaml'}:8: spec.http[0].route[0].destination.subset: warning: subset 'v9' of host "
            "'reviews' is not defined by any DestinationRule (defined subsets: none); requests to it fail with 503"]
        write(tree / "vs.yaml", BAD_VS)
        await trio.sleep(0.15)
        assert isinstance(seen[-1], ConfigRefusal)
        nursery.cancel_scope.cancel()


ENTRIES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews-extra, namespace: bookinfo}}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}, {{number: 9443, name: https, protocol: HTTPS}}]
  endpoints: [{{address: {address}, network: west}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: by-label, namespace: bookinfo}}
spec:
  hosts: [by-label.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  workloadSelector: {{labels: {{app: reviews}}}}
"""


@pytest.mark.parametrize("address", ["10.1.0.1", "10.1.0.2"])
def test_service_entry_change_merges_into_the_kept_workload_registry_as_build_registry_does(
        tree: Path, address: str) -> None:
    from topology import build_registry, load_paths
    src = source(tree)
    first = src.poll()
    write(tree / "entries.yaml", ENTRIES.format(address=address))
    version = src.poll()
    assert isinstance(first, ConfigVersion) and isinstance(version, ConfigVersion)
    assert version.placements is first.placements
    assert version.registry.services == build_registry(load_paths([tree])).services
    assert [len(s.endpoints) for s in version.registry.services] == [1, 3]
