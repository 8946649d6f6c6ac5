"""Istio's security tasks on a mesh started with ``fedctl up``: mutual TLS migration and HTTP
authorization, with the samples of shared/corpora/istio copied into the watched folder.

One cluster (127.20.3.0/24, trust domain cluster.local as the samples' principals say)
runs the mtls-migration task's workloads - ``httpbin`` (the echo app on port 8000) and a
``sleep`` client with a sidecar in each of namespaces foo and bar - and bookinfo in
``default`` for the authz-http task. The task's ``legacy`` client, which has no sidecar,
is plain curl to the workload's inbound address (``<httpbin address>:15006``, where
Istio's iptables would have sent it); the sidecar clients are curl through their
sidecar's outbound listener (``curl -x``), as their app would call.

``kubectl apply -n foo -f peer-authentication-default-strict.yaml`` (the file names no
namespace) is the same file with ``namespace: foo`` added; the mesh-wide variant puts
it in ``istio-system``.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Iterator

import pytest

from corpus_mesh import CORPUS, CorpusMesh, Through, bookinfo, running_mesh, workload

STRICT = CORPUS / "docs" / "security" / "mtls-migration" / "peer-authentication-default-strict.yaml"
AUTHZ = CORPUS / "docs" / "security" / "authz-http"
PRODUCTPAGE = "http://productpage.default.svc.cluster.local:9080/productpage"
SERVERS = ("foo", "bar")
CLIENTS = ("foo", "bar", "legacy")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusMesh]:
    workloads = bookinfo()
    for ns in SERVERS:
        workloads += workload("httpbin", "echo", namespace=ns, port=8000)
        workloads += workload("sleep", "sleep", namespace=ns, port=None)
    with running_mesh(tmp_path_factory.mktemp("security"), "127.20.3.0/24", workloads) as m:
        yield m


def call(mesh: CorpusMesh, client: str, server: str) -> tuple[int, str, dict]:
    """curl from ``client`` (a namespace's sleep, or ``legacy``) to ``httpbin.<server>:8000/ip``:
    (curl's exit code, the HTTP code it printed, the echoed request headers)."""
    if client == "legacy":
        argv = ["curl", "-sS", "-m", "10", f"http://{mesh.address(f'{server}/httpbin-0')}:15006/ip"]
    else:
        argv = ["curl", "-sS", "-m", "10", "-x", f"http://{mesh.address(f'{client}/sleep-0')}:15001",
                f"http://httpbin.{server}:8000/ip"]
    done = subprocess.run(argv + ["-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
    body, _, code = done.stdout.rpartition("\n")
    headers = json.loads(body)["headers"] if code == "200" else {}
    return done.returncode, code, headers


def matrix(mesh: CorpusMesh) -> dict[tuple[str, str], str]:
    """``(client, server)`` -> "200", or ``curl exit N`` when the connection failed (the docs'
    "000" with exit 56)."""
    out = {}
    for client in CLIENTS:
        for server in SERVERS:
            rc, code, _ = call(mesh, client, server)
            out[(client, server)] = code if rc == 0 else f"curl exit {rc} ({code})"
    return out


def refused(rc_text: str) -> bool:
    return rc_text in ("curl exit 52 (000)", "curl exit 56 (000)")  # closed / reset during the request


def test_permissive_by_default_all_six_pairs_answer_and_sidecar_callers_use_mtls(mesh: CorpusMesh) -> None:
    assert matrix(mesh) == {(client, server): "200" for client in CLIENTS for server in SERVERS}
    for client in ("foo", "bar"):
        _, _, headers = call(mesh, client, "foo")
        assert f"URI=spiffe://cluster.local/ns/{client}/sa/sleep" in headers["x-forwarded-client-cert"]
    _, _, headers = call(mesh, "legacy", "foo")
    assert "x-forwarded-client-cert" not in headers  # plaintext: no peer certificate to name


def test_strict_in_foo_refuses_the_plaintext_caller_of_foo_only(mesh: CorpusMesh) -> None:
    text = STRICT.read_text().replace("  name: default\n", "  name: default\n  namespace: foo\n")
    mesh.write("peer-authentication-default-strict-foo.yaml", text)
    result = matrix(mesh)
    assert refused(result.pop(("legacy", "foo"))), result
    assert result == {pair: "200" for pair in result}
    mesh.remove("peer-authentication-default-strict-foo.yaml")
    assert matrix(mesh)[("legacy", "foo")] == "200"


def test_strict_mesh_wide_in_istio_system_refuses_every_plaintext_caller(mesh: CorpusMesh) -> None:
    text = STRICT.read_text().replace("  name: default\n", "  name: default\n  namespace: istio-system\n")
    mesh.write("peer-authentication-default-strict-mesh.yaml", text)
    try:
        result = matrix(mesh)
        assert refused(result.pop(("legacy", "foo"))) and refused(result.pop(("legacy", "bar"))), result
        assert result == {pair: "200" for pair in result}
        # bookinfo keeps working: every caller of it has a sidecar
        assert Through(mesh.address("foo/sleep-0")).get(PRODUCTPAGE)[0] == 200
    finally:
        mesh.remove("peer-authentication-default-strict-mesh.yaml")


def productpage(mesh: CorpusMesh) -> tuple[int, str]:
    through = Through(mesh.address("foo/sleep-0"))
    try:
        status, body = through.get(PRODUCTPAGE)
    finally:
        through.close()
    return status, body.decode()


def served_version(page: str) -> str | None:
    m = re.search(r'\(<span class="version">(v\d)</span>\)', page)
    return m.group(1) if m else None


def test_authz_01_allow_nothing_denies_every_request(mesh: CorpusMesh) -> None:
    mesh.apply(AUTHZ / "01-allow-nothing.yaml")
    assert productpage(mesh) == (403, "RBAC: access denied")


def test_authz_02_productpage_viewer_loads_the_page_without_details_and_reviews(mesh: CorpusMesh) -> None:
    mesh.apply(AUTHZ / "02-productpage-viewer.yaml")
    status, page = productpage(mesh)
    assert status == 200 and "<title>Simple Bookstore App</title>" in page
    assert "Error fetching product details!" in page and "Error fetching product reviews!" in page


def test_authz_03_04_details_and_reviews_viewers_show_them_with_ratings_unavailable(mesh: CorpusMesh) -> None:
    mesh.apply(AUTHZ / "03-details-viewer.yaml")
    status, page = productpage(mesh)
    assert status == 200 and "ISBN-10" in page and "Error fetching product details!" not in page
    assert "Error fetching product reviews!" in page
    mesh.apply(AUTHZ / "04-reviews-viewer.yaml")
    seen = {}
    for _ in range(30):  # reviews rotate across v1 (no ratings call) and v2/v3 (which call ratings)
        status, page = productpage(mesh)
        assert status == 200 and "ISBN-10" in page and "Error fetching" not in page, page
        seen[served_version(page)] = page
        if {"v2", "v3"} <= set(seen):
            break
    for version in ("v2", "v3"):
        assert seen[version].count("Ratings service is currently unavailable") == 2, seen[version]
        assert "glyphicon-star" not in seen[version]


def test_authz_05_ratings_viewer_brings_black_and_red_stars(mesh: CorpusMesh) -> None:
    mesh.apply(AUTHZ / "05-ratings-viewer.yaml")
    colours: dict[str, str] = {}
    for _ in range(30):
        status, page = productpage(mesh)
        assert status == 200 and "Error fetching" not in page and "currently unavailable" not in page, page
        for colour in re.findall(r'<font color="(\w+)"><span class="glyphicon glyphicon-star">', page):
            colours[colour] = served_version(page) or ""
        if {"black", "red"} <= set(colours):
            break
    assert colours == {"black": "v2", "red": "v3"}
