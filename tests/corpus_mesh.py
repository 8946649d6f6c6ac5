"""A one-cluster mesh started with ``fedctl up --detach`` for the corpus tests, and how they drive it.

``running_mesh`` writes ``mesh.yaml`` (one cluster on the given /24, the given workloads)
into a temporary folder, starts the mesh with ``XDG_STATE_HOME`` inside that folder, and
on exit runs ``fedctl down`` and then kills by PID whatever the state recorded that
still runs (the pattern of tests/test_up_multicluster.py), so no test leaves a process.

``CorpusMesh.apply`` copies files into the watched ``DIR/istio`` as ``kubectl apply``
would be run, one at a time, each waiting until every proxy ACKed the version it made
(the control plane's view in ``fedctl status --output json``: config version, ACKed
version and digest ``inSync``, and each sidecar's own ``/config_dump`` version).
Requests go from a workload through its sidecar: the sidecar's outbound listener is an
explicit HTTP proxy (``HTTP_PROXY`` of the app), so a test talks to it as the app would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from federation._launch import Layout
from federation._state import read_state
from federation._status import status_json
from meshproc import fedctl, kill_leftovers, recorded_pids

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio"
BOOKINFO = CORPUS / "bookinfo" / "networking"
SYNC_TIMEOUT = 30.0


def workload(name: str, app: str, *, namespace: str = "default", service: str | None = None,
             service_account: str | None = None, version: str | None = None, port: int | None = 9080,
             replicas: int = 1) -> str:
    """One ``spec.workloads`` entry of mesh.yaml (flow style)."""
    fields_ = [f"name: {name}", f"namespace: {namespace}", f"app: {app}", "cluster: c1", f"replicas: {replicas}"]
    fields_ += [f"service: {service}"] if service else []
    fields_ += [f"serviceAccount: {service_account}"] if service_account else []
    fields_ += [f"version: {version}"] if version else []
    fields_ += [f"ports: [{{name: http, port: {port}}}]"] if port else []
    return "  - {" + ", ".join(fields_) + "}\n"


def bookinfo(namespace: str = "default", reviews: tuple[str, ...] = ("v1", "v2", "v3")) -> str:
    """Bookinfo as Istio's bookinfo.yaml deploys it: service accounts ``bookinfo-<service>``."""
    out = ""
    for service in ("productpage", "details", *[f"reviews-{v}" for v in reviews], "ratings"):
        svc, _, version = service.partition("-")
        out += workload(f"{svc}-{version or 'v1'}", svc, namespace=namespace, service=svc,
                        service_account=f"bookinfo-{svc}", version=version or "v1")
    return out


def mesh_yaml(block: str, workloads: str, trust_domain: str = "cluster.local") -> str:
    return ("apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: corpus\nspec:\n  clusters:\n"
            f"  - {{name: c1, locality: {{region: r1, zone: z1}}, trustDomain: {trust_domain}, "
            f"addressBlock: {block}}}\n  workloads:\n" + workloads)


@dataclass
class CorpusMesh:
    dir: Path
    env: dict[str, str]
    seen_pids: set[tuple[int, int | None]] = field(default_factory=set)

    @property
    def istio(self) -> Path:
        return self.dir / "istio"

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``fedctl status --output json`` (the same document, built in-process: polled often)."""
        doc = status_json(read_state(self.dir), Layout(self.dir))
        self.seen_pids |= recorded_pids(self.dir)
        return doc

    def cluster(self) -> dict[str, Any]:
        return self.status()["clusters"][0]

    def instances(self, doc: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """``<namespace>/<instance>`` -> its row of the status."""
        c = (doc or self.status())["clusters"][0]
        return {f"{w['namespace']}/{i['name']}": i for w in c["workloads"] for i in w["instances"]}

    def address(self, instance: str) -> str:
        """The address of ``<namespace>/<instance>`` (``default/client-0``)."""
        return self.instances()[instance]["address"]

    def config_version(self) -> int:
        return self.cluster()["controlPlane"]["configVersion"]

    def dumped_versions(self) -> dict[str, str | None]:
        """Each sidecar's own ``/config_dump`` version."""
        out = {}
        for name, inst in self.instances().items():
            try:
                status, body = get_direct(inst["address"], 15000, "/config_dump")
                out[name] = json.loads(body)["version"] if status == 200 else None
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                out[name] = None
        return out

    def wait_in_sync(self, newer_than: int, timeout: float = SYNC_TIMEOUT) -> int:
        """Wait for a version above ``newer_than`` in force on every proxy; its number.

        In force: the control plane says each proxy ACKed exactly the document that version
        gives it (``inSync`` compares digests), and each sidecar's ``/config_dump`` shows the
        version it ACKed. A proxy whose document the change left alone keeps the version
        that last changed it (the control plane pushes only what changed)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            c = self.cluster()
            version = c["controlPlane"]["configVersion"]
            rows = self.instances({"clusters": [c]})
            last = (version, {n: (i["ackedVersion"], i["inSync"]) for n, i in rows.items()})
            if (c["controlPlane"]["ready"] and version is not None and version > newer_than and rows
                    and all(i["inSync"] and i["ackedVersion"] is not None for i in rows.values())):
                dumped = self.dumped_versions()
                last = (version, {n: (i["ackedVersion"], dumped[n]) for n, i in rows.items()})
                if all(dumped[n] == i["ackedVersion"] for n, i in rows.items()):
                    return version
            time.sleep(0.1)
        raise AssertionError(f"the proxies were not in sync with a version above {newer_than} within "
                             f"{timeout:g} s: {last}")

    # -- config ---------------------------------------------------------------------------

    def apply(self, *files: Path, as_names: tuple[str, ...] = ()) -> int:
        """Copy each file into the watched folder, in order, each one in force on every proxy
        before the next; the version in force at the end."""
        version = self.config_version()
        for n, path in enumerate(files):
            name = as_names[n] if n < len(as_names) else path.name
            shutil.copyfile(path, self.istio / name)
            version = self.wait_in_sync(version)
        return version

    def write(self, name: str, text: str) -> int:
        version = self.config_version()
        (self.istio / name).write_text(text)
        return self.wait_in_sync(version)

    def remove(self, *names: str) -> int:
        version = self.config_version()
        for name in names:
            (self.istio / name).unlink()
        return self.wait_in_sync(version)


def get_direct(host: str, port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Through:
    """Requests from a workload through its sidecar (its outbound listener, as ``HTTP_PROXY``)."""

    def __init__(self, address: str, timeout: float = 20) -> None:
        self.address = address
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body); a connection that failed is replaced, the error raised."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.address, 15001, timeout=self.timeout)
        try:
            self.conn.request("GET", url, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def binomial_bounds(n: int, p: float, tail: float = 1e-6) -> tuple[int, int]:
    """The smallest and largest count of ``n`` draws outside of which each tail has probability below
    ``tail``: a test asserting a measured split is wrong about once in a million runs at most."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    low, acc = 0, 0.0
    while acc + pmf[low] < tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] < tail:
        acc += pmf[high]
        high -= 1
    return low, high


@contextlib.contextmanager
def running_mesh(base: Path, block: str, workloads: str, istio: dict[str, str] | None = None,
                 trust_domain: str = "cluster.local") -> Iterator[CorpusMesh]:
    """A mesh from ``workloads`` on ``block``, up and ready; stopped (no process left) on exit."""
    mesh_dir = base / "mesh"
    (mesh_dir / "istio").mkdir(parents=True)
    (mesh_dir / "mesh.yaml").write_text(mesh_yaml(block, workloads, trust_domain))
    for name, text in (istio or {}).items():
        (mesh_dir / "istio" / name).write_text(text)
    env = {**os.environ, "XDG_STATE_HOME": str(base / "xdg-state")}
    mesh = CorpusMesh(mesh_dir, env)
    try:
        up = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "120")
        mesh.seen_pids |= recorded_pids(mesh_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        mesh.wait_in_sync(0)
        yield mesh
    finally:
        mesh.seen_pids |= recorded_pids(mesh_dir)
        fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(mesh.seen_pids)
