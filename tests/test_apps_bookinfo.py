"""Bookinfo end to end without a mesh: the apps call each other through a stub HTTP_PROXY.

The stub stands where a sidecar would: it receives the apps' absolute-form requests, maps
``<svc>.bookinfo.svc.cluster.local`` to the local app, and can delay or abort a service the
way the fault-injection samples do. Timeouts are shortened through AppEnv, as the
MESHFED_*_TIMEOUT variables do, so the give-up paths take a fraction of a second.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import trio

from federation.apps import (ATTEMPTS, AppEnv, HttpClient, HttpServer, ProductPage, RATINGS_UNAVAILABLE, Request,
                             Response, Reviews, build_handler)

DOMAIN = "bookinfo.svc.cluster.local"
REVIEWS_ERROR = ("Error fetching product reviews! "
                 "Sorry, product reviews are currently unavailable for this book.")
DETAILS_ERROR = ("Error fetching product details! "
                 "Sorry, product details are currently unavailable for this book.")
DIRECT = HttpClient()


class StubProxy:
    """A sidecar stand-in: routes by the absolute-form target's host, records what it saw."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.delays: dict[str, float] = {}
        self.aborts: dict[str, int] = {}
        self.seen: list[Request] = []

    def calls(self, service: str) -> list[Request]:
        return [r for r in self.seen if urlsplit(r.target).hostname == f"{service}.{DOMAIN}"]

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        target = urlsplit(request.target)
        if target.scheme != "http" or target.hostname not in self.routes:
            return Response(503, body=f"stub proxy: no route for {request.target!r}".encode())
        service = target.hostname.split(".")[0]
        if service in self.aborts:
            return Response(self.aborts[service], body=b"fault filter abort")
        await trio.sleep(self.delays.get(service, 0))
        headers = tuple((k, v) for k, v in request.headers if k != "host")
        reply = await DIRECT.request(request.method, f"http://{self.routes[target.hostname]}{target.path}",
                                     headers=headers, body=request.body, timeout=10)
        return Response(reply.status, tuple((k, v) for k, v in reply.headers if k == "content-type"), reply.body)


async def serve(nursery: trio.Nursery, handler, host: str) -> str:  # type: ignore[no-untyped-def]
    server = HttpServer(handler, grace=0.5)
    bound, port = await nursery.start(server.serve, host, 0)
    return f"{bound}:{port}"


async def bookinfo(nursery: trio.Nursery, reviews_version: str, **timeouts: float) -> tuple[str, StubProxy]:
    """Start proxy, details, ratings, reviews <version> and productpage; productpage's address."""
    stub = StubProxy()
    proxy = "http://" + await serve(nursery, stub, "127.0.7.1")
    base = AppEnv(app="", cluster="east-a", namespace="bookinfo", http_proxy=proxy, **timeouts)  # type: ignore[arg-type]
    apps = [("details", "v1", "127.0.7.2"), ("ratings", "v1", "127.0.7.3"), ("reviews", reviews_version, "127.0.7.4"),
            ("productpage", "v1", "127.0.7.5")]
    for app, version, host in apps:
        env = replace(base, app=app, version=version, workload=f"{app}-{version}", instance=f"{app}-{version}-0")
        stub.routes[f"{app}.{DOMAIN}"] = await serve(nursery, build_handler(env), host)
    return "http://" + stub.routes[f"productpage.{DOMAIN}"], stub


async def page(productpage: str, *headers: tuple[str, str]) -> str:
    response = await DIRECT.get(f"{productpage}/productpage", headers=headers, timeout=10)
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    return response.body.decode()


@pytest.mark.parametrize("version, black, red", [("v1", 0, 0), ("v2", 9, 0), ("v3", 0, 9)])
async def test_page_shows_details_and_the_stars_of_the_reviews_version(nursery: trio.Nursery, version: str,
                                                                       black: int, red: int) -> None:
    productpage, stub = await bookinfo(nursery, version)
    html = await page(productpage)
    assert "<title>Simple Bookstore App</title>" in html
    assert "The Comedy of Errors" in html
    assert "<dd>PublisherA</dd>" in html and "<dd>1234567890</dd>" in html
    assert "An extremely entertaining play by Shakespeare." in html
    assert f"Reviews served by: reviews-{version}-0 on cluster east-a" in html
    # 5 + 4 stars: one <font color=...> per full star, as bookinfo renders them
    assert (html.count('<font color="black">'), html.count('<font color="red">')) == (black, red)
    assert "Error fetching" not in html and RATINGS_UNAVAILABLE not in html
    assert len(stub.calls("ratings")) == (0 if version == "v1" else 1)  # v1 never calls ratings


async def test_calls_go_through_http_proxy_in_absolute_form(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v2")
    await page(productpage)
    assert [(r.method, r.target, r.header("host")) for r in stub.seen] == [
        ("GET", f"http://details.{DOMAIN}:9080/details/0", f"details.{DOMAIN}:9080"),
        ("GET", f"http://reviews.{DOMAIN}:9080/reviews/0", f"reviews.{DOMAIN}:9080"),
        ("GET", f"http://ratings.{DOMAIN}:9080/ratings/0", f"ratings.{DOMAIN}:9080"),
    ]


async def test_login_sets_the_user_cookie_and_end_user_reaches_reviews_and_ratings(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v2")
    login = await DIRECT.request("POST", f"{productpage}/login", body=b"username=jason&passwd=x",
                                 headers=(("content-type", "application/x-www-form-urlencoded"),
                                          ("referer", f"{productpage}/productpage")), timeout=5)
    assert (login.status, login.header("set-cookie"), login.header("location")) == (
        302, "user=jason; Path=/", f"{productpage}/productpage")
    html = await page(productpage, ("cookie", "user=jason"))
    assert '<span class="user">jason</span>' in html
    assert stub.calls("reviews")[0].header("end-user") == "jason"
    assert stub.calls("ratings")[0].header("end-user") == "jason"
    assert stub.calls("details")[0].header("end-user") == "jason"
    logout = await DIRECT.get(f"{productpage}/logout", timeout=5)
    assert (logout.status, logout.header("set-cookie")) == (
        302, "user=; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/")


async def test_anonymous_page_loads_send_no_end_user(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v3")
    html = await page(productpage)
    assert 'name="login_form"' in html
    assert [r.header("end-user") for r in stub.seen] == [None, None, None]


async def test_an_end_user_header_without_login_is_passed_on(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v2")
    await page(productpage, ("end-user", "jason"))
    assert [r.header("end-user") for r in stub.seen] == ["jason", "jason", "jason"]


async def test_tracing_headers_are_forwarded_along_the_call_graph(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v3")
    tracing = (("x-request-id", "req-42"), ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
               ("tracestate", "meshfed=1"), ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1"),
               ("x-b3-traceid", "80f198ee56343ba8"), ("x-b3-spanid", "e457b5a2e4d86bd1"),
               ("x-b3-parentspanid", "05e3ac9a4f6e3b90"), ("x-b3-sampled", "1"))
    await page(productpage, *tracing, ("x-not-forwarded", "1"))
    for request in stub.seen:  # details, reviews and (from reviews) ratings
        assert [(k, request.header(k)) for k, _ in tracing] == list(tracing)
        assert request.header("x-not-forwarded") is None


async def test_productpage_gives_up_on_slow_reviews_after_two_tries(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v1", reviews_timeout=0.2)
    stub.delays["reviews"] = 2.0
    started = trio.current_time()
    html = await page(productpage)
    elapsed = trio.current_time() - started
    assert REVIEWS_ERROR in html
    assert "<dd>PublisherA</dd>" in html  # details still shown
    assert len(stub.calls("reviews")) == ATTEMPTS == 2
    assert 0.4 <= elapsed < 1.5  # 2 x 0.2 s, the ~6 s of the fault-injection task scaled down


async def test_details_abort_shows_the_details_error_after_two_tries(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v1")
    stub.aborts["details"] = 555
    html = await page(productpage)
    assert DETAILS_ERROR in html
    assert "Book Reviews" in html
    assert len(stub.calls("details")) == 2
    api = await DIRECT.get(f"{productpage}/api/v1/products/0", timeout=5)
    assert (api.status, api.json()) == (555, {"error": "Sorry, product details are currently unavailable for this book."})


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_ratings_abort_shows_ratings_unavailable_without_stars(nursery: trio.Nursery, version: str) -> None:
    productpage, stub = await bookinfo(nursery, version)
    stub.aborts["ratings"] = 500
    html = await page(productpage)
    assert html.count(f'<p class="rating-error">{RATINGS_UNAVAILABLE}</p>') == 2
    assert "<font color=" not in html
    assert "Error fetching" not in html


@pytest.mark.parametrize("version, ratings_timeout, shown", [
    ("v3", 0.1, False),  # v3's short timeout gives up on a delayed ratings
    ("v2", 2.0, True),   # v2's long one tolerates the same delay
])
async def test_delayed_ratings_against_the_reviews_timeout(nursery: trio.Nursery, version: str,
                                                           ratings_timeout: float, shown: bool) -> None:
    productpage, stub = await bookinfo(nursery, version, ratings_timeout=ratings_timeout)
    stub.delays["ratings"] = 0.3
    html = await page(productpage)
    assert ("<font color=" in html) is shown
    assert (RATINGS_UNAVAILABLE in html) is not shown


async def test_api_endpoints(nursery: trio.Nursery) -> None:
    productpage, _ = await bookinfo(nursery, "v3")
    products = await DIRECT.get(f"{productpage}/api/v1/products", timeout=5)
    assert [p["title"] for p in products.json()] == ["The Comedy of Errors"]
    details = (await DIRECT.get(f"{productpage}/api/v1/products/0", timeout=5)).json()
    assert (details["author"], details["ISBN-10"]) == ("William Shakespeare", "1234567890")
    reviews = (await DIRECT.get(f"{productpage}/api/v1/products/0/reviews", timeout=5)).json()
    assert (reviews["podname"], reviews["clustername"], reviews["version"]) == ("reviews-v3-0", "east-a", "v3")
    assert [r["rating"] for r in reviews["reviews"]] == [{"stars": 5, "color": "red"}, {"stars": 4, "color": "red"}]
    ratings = (await DIRECT.get(f"{productpage}/api/v1/products/0/ratings", timeout=5)).json()
    assert ratings == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
    health = await DIRECT.get(f"{productpage}/health", timeout=5)
    assert (health.status, health.body) == (200, b"Product page is healthy")
    missing = await DIRECT.get(f"{productpage}/api/v1/products/0/nope", timeout=5)
    assert missing.status == 404


async def test_reviews_v1_json_has_no_ratings(nursery: trio.Nursery) -> None:
    productpage, stub = await bookinfo(nursery, "v1")
    reviews = (await DIRECT.get(f"http://{stub.routes['reviews.' + DOMAIN]}/reviews/0", timeout=5)).json()
    assert reviews["version"] == "v1"
    assert [sorted(r) for r in reviews["reviews"]] == [["reviewer", "text"], ["reviewer", "text"]]


@pytest.mark.parametrize("app, path, status, body", [
    ("details", "/details/zero", 400, b'{"error": "please provide numeric product id"}'),
    ("ratings", "/ratings/zero", 400, b'{"error": "please provide numeric product ID"}'),
    ("details", "/health", 200, b'{"status": "Details is healthy"}'),
    ("ratings", "/health", 200, b'{"status": "Ratings is healthy"}'),
    ("reviews", "/health", 200, b'{"status": "Reviews is healthy"}'),
])
async def test_service_endpoints(nursery: trio.Nursery, app: str, path: str, status: int, body: bytes) -> None:
    _, stub = await bookinfo(nursery, "v2")
    response = await DIRECT.get(f"http://{stub.routes[f'{app}.{DOMAIN}']}{path}", timeout=5)
    assert (response.status, response.body) == (status, body)


@pytest.mark.parametrize("app, version, attribute, seconds", [
    ("productpage", "v1", "reviews_timeout", 3.0),
    ("productpage", "v1", "details_timeout", 3.0),
    ("reviews", "v2", "ratings_timeout", 10.0),
    ("reviews", "v3", "ratings_timeout", 2.5),
])
def test_default_timeouts_are_bookinfos(app: str, version: str, attribute: str, seconds: float) -> None:
    handler = build_handler(AppEnv(app=app, version=version))
    assert isinstance(handler, (ProductPage, Reviews))
    assert getattr(handler, attribute) == seconds


def test_sleep_has_no_handler() -> None:
    assert build_handler(AppEnv(app="sleep")) is None
