"""Istio's bookinfo, rewritten small: productpage, details, reviews v1/v2/v3 and ratings.

What the Istio tasks rely on is kept exactly (shared/corpora/istio/EXPECTED.md): the call
graph (productpage -> details, reviews; reviews v2/v3 -> ratings), the ``end-user`` header
sent once a user has logged in, the tracing headers passed along, the page title, the
stars (none for v1, ``<font color="black">`` per star for v2, ``red`` for v3), the error
texts, and the app-side timeouts the fault-injection tasks are built on: productpage tries
reviews twice with 3 s each (about 6 s in all) and details likewise; reviews v2 waits 10 s
for ratings, v3 2.5 s. The timeouts can be shortened through the environment (``AppEnv``)
so tests need not wait for them.

Services are called as ``http://<svc>.<namespace>.svc.cluster.local:9080`` through
``HTTP_PROXY`` (``AppEnv.domain`` changes the suffix, like bookinfo's SERVICES_DOMAIN).
meshfed addition: a request to productpage that carries ``end-user`` but no login cookie
passes that header on, so ``fedctl curl -H 'end-user: jason'`` acts as a logged-in jason.
"""

from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from ._env import AppEnv
from ._httpclient import HttpClient, UpstreamError
from ._httpserve import Request, Response, plain
from ._productpage_html import render_index, render_productpage

BOOKINFO_PORT = 9080
DETAILS_TIMEOUT = 3.0  # productpage.py: requests.get(..., timeout=3.0)
REVIEWS_TIMEOUT = 3.0
PRODUCTPAGE_RATINGS_TIMEOUT = 3.0
ATTEMPTS = 2  # productpage.py: "for _ in range(2)" - the retry the fault-injection task relies on
RATINGS_TIMEOUT = {"v2": 10.0, "v3": 2.5}  # reviews LibertyRestEndpoint: 10000 ms / 2500 ms
STAR_COLOR = {"v2": "black", "v3": "red"}
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

# What productpage and reviews pass on to the services they call (bookinfo's lists).
FORWARDED = ("x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
             "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-ot-span-context", "x-cloud-trace-context",
             "grpc-trace-bin", "sw8", "user-agent", "cookie", "authorization", "jwt")

PRODUCTS = [{
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
                       "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his "
                       "shortest and one of his most farcical comedies, with a major part of the humour coming "
                       "from slapstick and mistaken identity, in addition to puns and word play.",
}]
REVIEWS = [
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared "
                  "to other plays by Shakespeare."),
]
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


def _json(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (("content-type", "application/json"), *headers), json.dumps(body).encode())


def _product_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _forward(request: Request, names: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.headers if k in names]


def _user(request: Request) -> str:
    cookie = SimpleCookie()
    try:
        cookie.load(request.header("cookie") or "")
    except CookieError:
        return ""
    return cookie["user"].value if "user" in cookie else ""


class _Caller:
    """Calls one bookinfo service, ``attempts`` times at most, each within ``timeout``."""

    def __init__(self, client: HttpClient, env: AppEnv) -> None:
        self.client = client
        self.env = env

    async def get(self, service: str, path: str, headers: list[tuple[str, str]], *,
                  timeout: float, attempts: int = 1) -> tuple[int, Any]:
        """(200, decoded JSON) or (the last status, or 500 when nothing came back, None)."""
        url = f"http://{service}.{self.env.domain}:{BOOKINFO_PORT}{path}"
        status = 500
        for _ in range(attempts):
            try:
                response = await self.client.get(url, headers=tuple(headers), timeout=timeout)
            except UpstreamError:
                status = 500
                continue
            status = response.status
            if status == 200:
                try:
                    return 200, response.json()
                except ValueError:
                    status = 500
        return status, None


class ProductPage:
    def __init__(self, env: AppEnv, client: HttpClient) -> None:
        self.env = env
        self.caller = _Caller(client, env)
        self.details_timeout = env.details_timeout or DETAILS_TIMEOUT
        self.reviews_timeout = env.reviews_timeout or REVIEWS_TIMEOUT
        self.ratings_timeout = env.ratings_timeout or PRODUCTPAGE_RATINGS_TIMEOUT

    def _headers(self, request: Request) -> list[tuple[str, str]]:
        headers = _forward(request, FORWARDED)
        user = _user(request) or request.header("end-user")
        if user:
            headers.append(("end-user", user))
        return headers

    async def details(self, product_id: int, headers: list[tuple[str, str]]) -> tuple[int, Any]:
        status, body = await self.caller.get("details", f"/details/{product_id}", headers,
                                             timeout=self.details_timeout, attempts=ATTEMPTS)
        return (status, body) if status == 200 else (
            status, {"error": "Sorry, product details are currently unavailable for this book."})

    async def reviews(self, product_id: int, headers: list[tuple[str, str]]) -> tuple[int, Any]:
        status, body = await self.caller.get("reviews", f"/reviews/{product_id}", headers,
                                             timeout=self.reviews_timeout, attempts=ATTEMPTS)
        return (status, body) if status == 200 else (
            status, {"error": "Sorry, product reviews are currently unavailable for this book."})

    async def ratings(self, product_id: int, headers: list[tuple[str, str]]) -> tuple[int, Any]:
        status, body = await self.caller.get("ratings", f"/ratings/{product_id}", headers,
                                             timeout=self.ratings_timeout)
        return (status, body) if status == 200 else (
            status, {"error": "Sorry, product ratings are currently unavailable for this book."})

    async def __call__(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path in ("/", "/index.html") and method in ("GET", "HEAD"):
            return Response(200, (("content-type", "text/html; charset=utf-8"),), render_index().encode())
        if path == "/health":
            return plain(200, "Product page is healthy")
        if path == "/login" and method == "POST":
            return self._login(request)
        if path == "/logout":
            return self._redirect(request, "user=; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/")
        if path == "/productpage" and method in ("GET", "HEAD"):
            headers = self._headers(request)
            details = await self.details(0, headers)
            reviews = await self.reviews(0, headers)
            page = render_productpage(PRODUCTS[0], details, reviews, _user(request))
            return Response(200, (("content-type", "text/html; charset=utf-8"),), page.encode())
        parts = path.split("/")
        if parts[:4] == ["", "api", "v1", "products"] and method in ("GET", "HEAD"):
            if len(parts) == 4:
                return _json(200, PRODUCTS)
            product_id = _product_id(parts[4])
            fetch = {(): self.details, ("reviews",): self.reviews, ("ratings",): self.ratings}.get(tuple(parts[5:]))
            if product_id is not None and fetch is not None:
                status, body = await fetch(product_id, self._headers(request))
                return _json(status, body)
        return plain(404)

    def _login(self, request: Request) -> Response:
        form = parse_qs(request.body.decode("utf-8", "replace"))
        username = (form.get("username") or [""])[0]
        if not username:
            return plain(400, "login: form field 'username' is required\n")
        cookie = SimpleCookie()
        cookie["user"] = username
        cookie["user"]["path"] = "/"
        return self._redirect(request, cookie["user"].OutputString())

    def _redirect(self, request: Request, set_cookie: str) -> Response:
        location = request.header("referer") or "/productpage"
        return Response(302, (("location", location), ("set-cookie", set_cookie),
                              ("content-type", "text/plain")), b"")


class Details:
    def __init__(self, env: AppEnv) -> None:
        self.env = env

    async def __call__(self, request: Request) -> Response:
        parts = request.path.split("/")
        if request.path == "/health":
            return _json(200, {"status": "Details is healthy"})
        if len(parts) == 3 and parts[1] == "details":
            product_id = _product_id(parts[2])
            if product_id is None:
                return _json(400, {"error": "please provide numeric product id"})
            return _json(200, {"id": product_id, "author": "William Shakespeare", "year": 1595,
                               "type": "paperback", "pages": 200, "publisher": "PublisherA",
                               "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"})
        return plain(404)


class Ratings:
    def __init__(self, env: AppEnv) -> None:
        self.env = env

    async def __call__(self, request: Request) -> Response:
        parts = request.path.split("/")
        if request.path == "/health":
            return _json(200, {"status": "Ratings is healthy"})
        if len(parts) == 3 and parts[1] == "ratings":
            product_id = _product_id(parts[2])
            if product_id is None:
                return _json(400, {"error": "please provide numeric product ID"})
            return _json(200, {"id": product_id, "ratings": RATINGS})
        return plain(404)


class Reviews:
    """v1 never calls ratings; v2 and v3 do, and colour the stars black and red."""

    def __init__(self, env: AppEnv, client: HttpClient) -> None:
        self.env = env
        self.caller = _Caller(client, env)
        self.calls_ratings = env.version in STAR_COLOR
        self.ratings_timeout = env.ratings_timeout or RATINGS_TIMEOUT.get(env.version, 10.0)

    async def __call__(self, request: Request) -> Response:
        parts = request.path.split("/")
        if request.path == "/health":
            return _json(200, {"status": "Reviews is healthy"})
        if len(parts) != 3 or parts[1] != "reviews":
            return plain(404)
        product_id = _product_id(parts[2])
        if product_id is None:
            return _json(400, {"error": "please provide numeric product id"})
        reviews: list[dict[str, Any]] = [{"reviewer": who, "text": text} for who, text in REVIEWS]
        if self.calls_ratings:
            status, ratings = await self.caller.get("ratings", f"/ratings/{product_id}",
                                                    _forward(request, FORWARDED + ("end-user",)),
                                                    timeout=self.ratings_timeout)
            for review in reviews:
                stars = (ratings or {}).get("ratings", {}).get(review["reviewer"]) if status == 200 else None
                review["rating"] = ({"stars": stars, "color": STAR_COLOR[self.env.version]}
                                    if isinstance(stars, int) else {"error": RATINGS_UNAVAILABLE})
        return _json(200, {"id": str(product_id), "podname": self.env.instance,
                           "clustername": self.env.cluster or "null", "version": self.env.version,
                           "reviews": reviews})
