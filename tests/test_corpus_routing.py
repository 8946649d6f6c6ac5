"""Istio's bookinfo routing samples, copied unchanged into the watched folder of a mesh started
with ``fedctl up``, route as shared/corpora/istio/EXPECTED.md says.

One cluster (127.20.1.0/24, trust domain cluster.local, namespace ``default`` as the
docs' ``kubectl apply``) runs productpage, details, reviews v1/v2/v3, ratings and an idle
client. The tests follow the docs' apply order; each copied file is in force on every
proxy (ACKed, applied per ``/config_dump``) before requests are measured. Which reviews
version answered is read from reviews' JSON, called from the client through its sidecar,
and from productpage's page (stars and "Reviews served by"). Splits are asserted within
binomial bounds that a correct split leaves about once in a million runs.

A file that defines a resource already defined by an earlier one replaces it, as the
last ``kubectl apply`` does, whatever the file names (``_configsource`` apply order);
the first test checks that rule on the config source alone.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from corpus_mesh import (BOOKINFO, CorpusMesh, Through, binomial_bounds, bookinfo, fedctl, get_direct, running_mesh,
                         workload)
from federation._configsource import ConfigSource

REVIEWS = "http://reviews.default.svc.cluster.local:9080/reviews/0"
PRODUCTPAGE = "http://productpage.default.svc.cluster.local:9080/productpage"
VERSION = re.compile(r'Reviews served by: [^<]*\(<span class="version">(v\d)</span>\)')


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusMesh]:
    with running_mesh(tmp_path_factory.mktemp("routing"), "127.20.1.0/24",
                      bookinfo() + workload("client", "sleep", port=None)) as m:
        yield m


@pytest.fixture(scope="module")
def client(mesh: CorpusMesh) -> Iterator[Through]:
    through = Through(mesh.address("default/client-0"))
    yield through
    through.close()


def reviews_versions(client: Through, n: int, user: str | None = None) -> collections.Counter[str]:
    """Which reviews version answered each of ``n`` direct calls."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, body = client.get(REVIEWS, {"end-user": user} if user else None)
        assert status == 200, body
        seen[json.loads(body)["version"]] += 1
    return seen


def page(client: Through, user: str | None = None) -> tuple[str, str]:
    """(reviews version shown, star colour shown or "none") of one productpage load."""
    status, body = client.get(PRODUCTPAGE, {"end-user": user} if user else None)
    text = body.decode()
    assert status == 200 and "<title>Simple Bookstore App</title>" in text, text
    served = VERSION.search(text)
    assert served is not None, text
    colours = set(re.findall(r'<font color="(\w+)"><span class="glyphicon glyphicon-star">', text))
    assert len(colours) <= 1, colours
    return served.group(1), colours.pop() if colours else "none"


def pages_until(client: Through, wanted: set[tuple[str, str]], most: int = 40) -> set[tuple[str, str]]:
    """What the page showed over loads until everything ``wanted`` was seen (``most`` loads at most):
    the docs' "refresh a few times"."""
    shown: set[tuple[str, str]] = set()
    for _ in range(most):
        shown.add(page(client))
        if shown >= wanted:
            break
    return shown


def assert_split(seen: collections.Counter[str], n: int, weights: dict[str, int]) -> None:
    assert set(seen) <= set(weights) and sum(seen.values()) == n, seen
    for version, weight in weights.items():
        low, high = binomial_bounds(n, weight / 100)
        assert low <= seen[version] <= high, (version, seen, (low, high))


def test_a_resource_defined_again_by_a_later_file_replaces_it_whatever_the_file_names(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("")
    (tmp_path / "virtual-service-reviews-v3.yaml").write_bytes((BOOKINFO / "virtual-service-reviews-v3.yaml")
                                                                .read_bytes())
    source = ConfigSource(tmp_path, in_thread=False, clock=lambda: dt.datetime.now(dt.timezone.utc))
    first = source.poll()
    assert [r.file.rsplit("/", 1)[1] for r in first.resources] == ["virtual-service-reviews-v3.yaml"]
    (tmp_path / "virtual-service-reviews-90-10.yaml").write_bytes(
        (BOOKINFO / "virtual-service-reviews-90-10.yaml").read_bytes())
    second = source.poll()  # "90-10" sorts before "v3", yet it was applied last: it is the one in force
    assert [(r.key, r.file.rsplit("/", 1)[1]) for r in second.resources] == [
        (("VirtualService", "default", "reviews"), "virtual-service-reviews-90-10.yaml")]
    (tmp_path / "virtual-service-reviews-v3.yaml").write_text(
        (BOOKINFO / "virtual-service-reviews-v3.yaml").read_text() + "# applied again\n")
    third = source.poll()
    assert [r.file.rsplit("/", 1)[1] for r in third.resources] == ["virtual-service-reviews-v3.yaml"]


def test_without_virtual_service_reviews_rotate_across_v1_v2_v3_and_destination_rule_all_changes_nothing(
        mesh: CorpusMesh, client: Through) -> None:
    assert set(reviews_versions(client, 30)) == {"v1", "v2", "v3"}
    mesh.apply(BOOKINFO / "destination-rule-all.yaml")
    assert set(reviews_versions(client, 30)) == {"v1", "v2", "v3"}
    assert pages_until(client, {("v1", "none"), ("v2", "black"), ("v3", "red")}) == {
        ("v1", "none"), ("v2", "black"), ("v3", "red")}


def test_all_v1_sends_every_request_to_v1_so_the_page_never_shows_stars(mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-all-v1.yaml")
    assert reviews_versions(client, 50) == {"v1": 50}
    assert reviews_versions(client, 10, user="jason") == {"v1": 10}
    assert {page(client) for _ in range(5)} == {("v1", "none")}


def test_reviews_test_v2_sends_jason_to_v2_black_stars_and_everyone_else_to_v1(
        mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-test-v2.yaml")
    assert reviews_versions(client, 20, user="jason") == {"v2": 20}
    assert reviews_versions(client, 20) == {"v1": 20}
    assert reviews_versions(client, 10, user="Jason") == {"v1": 10}  # exact match is case-sensitive
    assert {page(client, user="jason") for _ in range(3)} == {("v2", "black")}  # productpage forwards end-user
    assert {page(client) for _ in range(3)} == {("v1", "none")}


def test_reviews_50_v3_applied_after_test_v2_splits_half_v1_half_v3_red_stars(
        mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-50-v3.yaml")
    assert_split(reviews_versions(client, 200), 200, {"v1": 50, "v3": 50})
    assert_split(reviews_versions(client, 40, user="jason"), 40, {"v1": 50, "v3": 50})  # no jason rule now
    assert pages_until(client, {("v1", "none"), ("v3", "red")}) == {("v1", "none"), ("v3", "red")}


def test_reviews_v3_sends_every_request_to_v3_red_stars_on_every_load(mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-v3.yaml")
    assert reviews_versions(client, 50) == {"v3": 50}
    assert {page(client) for _ in range(5)} == {("v3", "red")}


def test_an_invalid_file_is_refused_with_file_and_line_and_the_routing_in_force_stays(
        mesh: CorpusMesh, client: Through) -> None:
    before = mesh.cluster()["controlPlane"]
    bad = mesh.istio / "virtual-service-reviews-bad.yaml"
    bad.write_text((BOOKINFO / "virtual-service-reviews-90-10.yaml").read_text().replace("weight: 90",
                                                                                         "weight: ninety"))
    message = f"{bad}:13: spec.http[0].route[0].weight: expected an integer, found string 'ninety'"
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(300):  # requests keep flowing while the change is evaluated and refused
        seen += reviews_versions(client, 5)
        cp = mesh.cluster()["controlPlane"]
        if cp["refusedTotal"] > before["refusedTotal"]:
            break
    assert cp["lastRefusal"]["messages"] == [message]
    assert cp["lastRefusal"]["files"] == [str(bad)]
    assert cp["configVersion"] == before["configVersion"]
    assert set(seen) == {"v3"} and reviews_versions(client, 50) == {"v3": 50}
    text = fedctl(mesh.env, "status", str(mesh.dir))
    assert text.returncode == 0, text.stderr
    assert "the previous version stays:\n  " + message in text.stdout
    versions = {name: i["configVersion"] for name, i in mesh.instances().items()}
    assert set(versions.values()) == {str(before["configVersion"])}, (before, versions)
    bad.unlink()  # back to the content in force: the refusal is cleared, no new version
    for _ in range(100):
        cp = mesh.cluster()["controlPlane"]
        if cp["lastRefusal"] is None:
            break
        reviews_versions(client, 2)
    assert (cp["lastRefusal"], cp["configVersion"]) == (None, before["configVersion"])


def test_reviews_90_10_with_destination_rule_reviews_sends_about_a_tenth_to_v2(
        mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-90-10.yaml", BOOKINFO / "destination-rule-reviews.yaml")
    assert_split(reviews_versions(client, 200), 200, {"v1": 90, "v2": 10})
    assert {page(client) for _ in range(20)} <= {("v1", "none"), ("v2", "black")}
    dump = json.loads(get_direct(mesh.address("default/client-0"), 15000, "/config_dump")[1])
    subset_v1 = next(c for c in dump["clusters"] if c["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local")
    assert subset_v1["destination_rule"] == "default/reviews"
    assert "random" in subset_v1["load_balancer"].lower()  # destination-rule-reviews (RANDOM) replaced -all's


def test_jason_v2_v3_sends_jason_to_v2_and_everyone_else_to_v3(mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml")
    assert reviews_versions(client, 20, user="jason") == {"v2": 20}
    assert reviews_versions(client, 30) == {"v3": 30}
    assert {page(client, user="jason") for _ in range(2)} == {("v2", "black")}
    assert {page(client) for _ in range(2)} == {("v3", "red")}


def test_reviews_80_20_splits_v1_and_v2(mesh: CorpusMesh, client: Through) -> None:
    mesh.apply(BOOKINFO / "virtual-service-reviews-80-20.yaml")
    assert_split(reviews_versions(client, 200), 200, {"v1": 80, "v2": 20})
