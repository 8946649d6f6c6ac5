"""Istio's fault-injection task on a mesh started with ``fedctl up``: the ratings delay and abort
samples, copied unchanged into the watched folder, behave as shared/corpora/istio/EXPECTED.md says.

One cluster (127.20.2.0/24) runs productpage, details, reviews v1 and v2, ratings and an
idle client, with the task's starting point in force: destination-rule-all,
virtual-service-all-v1 and virtual-service-reviews-test-v2 (jason reaches reviews v2,
which calls ratings; everyone else reaches v1, which never does). The app-side timeouts
are bookinfo's own: productpage gives reviews 3 s and tries twice, reviews v2 gives
ratings 10 s. Page loads of one test run concurrently, so the 7 s delay costs its ~6 s once.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from corpus_mesh import BOOKINFO, CorpusMesh, Through, bookinfo, running_mesh, workload

PRODUCTPAGE = "http://productpage.default.svc.cluster.local:9080/productpage"
REVIEWS_UNAVAILABLE = ("Error fetching product reviews! Sorry, product reviews are currently unavailable for "
                       "this book.")
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
SERVED_BY_V1 = 'Reviews served by: reviews-v1-0 on cluster c1 (<span class="version">v1</span>)'
SERVED_BY_V2 = 'Reviews served by: reviews-v2-0 on cluster c1 (<span class="version">v2</span>)'
STARTING_POINT = ("destination-rule-all.yaml", "virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusMesh]:
    istio = {name: (BOOKINFO / name).read_text() for name in STARTING_POINT}
    with running_mesh(tmp_path_factory.mktemp("faults"), "127.20.2.0/24",
                      bookinfo(reviews=("v1", "v2")) + workload("client", "sleep", port=None), istio) as m:
        yield m


def load_pages(mesh: CorpusMesh, users: list[str | None]) -> list[tuple[str | None, int, str, float, float]]:
    """Load productpage once per user, all at the same time, each from the client through its
    sidecar on a connection of its own; (user, status, page, seconds taken, when it ended)."""
    address = mesh.address("default/client-0")
    results: list[tuple[str | None, int, str, float, float]] = []
    lock = threading.Lock()

    def load(user: str | None) -> None:
        through = Through(address, timeout=30)
        start = time.monotonic()
        try:
            status, body = through.get(PRODUCTPAGE, {"end-user": user} if user else None)
        finally:
            through.close()
        end = time.monotonic()
        with lock:
            results.append((user, status, body.decode(), end - start, end))

    threads = [threading.Thread(target=load, args=(user,)) for user in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == len(users), results
    return results


def test_before_any_fault_jason_sees_black_stars_and_others_no_stars(mesh: CorpusMesh) -> None:
    by_user = {user: page for user, status, page, _, _ in load_pages(mesh, ["jason", None])}
    assert SERVED_BY_V2 in by_user["jason"] and '<font color="black">' in by_user["jason"]
    assert SERVED_BY_V1 in by_user[None] and "glyphicon-star" not in by_user[None]


def test_ratings_delay_makes_jasons_page_give_up_on_reviews_after_two_3s_tries_and_others_wait_for_nothing(
        mesh: CorpusMesh) -> None:
    mesh.apply(BOOKINFO / "virtual-service-ratings-test-delay.yaml")
    results = load_pages(mesh, ["jason", "jason", None])
    jason = [r for r in results if r[0] == "jason"]
    other = next(r for r in results if r[0] is None)
    for _, status, page, took, _ in jason:
        assert status == 200 and "<title>Simple Bookstore App</title>" in page
        assert REVIEWS_UNAVAILABLE in page and "Reviews served by" not in page
        assert took >= 5.9  # productpage's two tries of 3 s each; the 7 s delay never completes within one
    _, status, page, _, other_end = other
    assert status == 200 and SERVED_BY_V1 in page and "Error fetching" not in page
    assert other_end < min(end for *_, end in jason)  # not held by the delay that jason's requests wait on


def test_ratings_abort_shows_ratings_unavailable_to_jason_and_nothing_wrong_to_others(mesh: CorpusMesh) -> None:
    mesh.apply(BOOKINFO / "virtual-service-ratings-test-abort.yaml")  # replaces the delay's VirtualService
    results = load_pages(mesh, ["jason", "jason", None])
    for user, status, page, _, _ in results:
        assert status == 200 and "<title>Simple Bookstore App</title>" in page
        if user == "jason":
            assert SERVED_BY_V2 in page and page.count(RATINGS_UNAVAILABLE) == 2  # one per review
            assert "glyphicon-star" not in page and "Error fetching" not in page
        else:
            assert SERVED_BY_V1 in page and RATINGS_UNAVAILABLE not in page and "Error fetching" not in page
