"""meshfed's built-in demo apps: echo, bookinfo (productpage, details, reviews, ratings) and sleep.

``fedctl up`` runs each as its own process (``python3 -m federation.apps NAME``, see
``__main__`` for the environment it reads), the way a user's own app would run: it listens
on its own address and reaches other services only through ``HTTP_PROXY``. Tests run the
same handlers in-process::

    server = HttpServer(build_handler(AppEnv(app="echo", cluster="east-a")))
    host, port = await nursery.start(server.serve, "127.0.0.5", 0)
"""

from __future__ import annotations

from collections.abc import Callable

from ._bookinfo import (ATTEMPTS, BOOKINFO_PORT, RATINGS_TIMEOUT, RATINGS_UNAVAILABLE, STAR_COLOR, Details,
                        ProductPage, Ratings, Reviews)
from ._echo import ECHO_PORT, MAX_DELAY, EchoApp
from ._env import AppConfigError, AppEnv, parse_seconds
from ._grpc import GrpcEcho, GrpcError, GrpcStatus, ServingStatus, decode_message, encode_message
from ._httpclient import ClientResponse, HttpClient, UpstreamError
from ._httpserve import Handler, HttpServer, Request, Response

APPS = ("echo", "productpage", "details", "reviews", "ratings", "sleep")
DEFAULT_PORTS = {"echo": ECHO_PORT, "productpage": BOOKINFO_PORT, "details": BOOKINFO_PORT,
                 "reviews": BOOKINFO_PORT, "ratings": BOOKINFO_PORT}
REVIEWS_VERSIONS = ("v1", "v2", "v3")


def build_handler(env: AppEnv, *, client: HttpClient | None = None,
                  draining: Callable[[], bool] = lambda: False) -> Handler | None:
    """The request handler of app ``env.app``; None for ``sleep``, which serves nothing.

    ``client`` defaults to one that goes through ``env.http_proxy``.
    """
    if env.app not in APPS:
        raise AppConfigError("app", env.app, f"must be one of {', '.join(APPS)}")
    if client is None:
        try:
            client = HttpClient(env.http_proxy, env.no_proxy)
        except ValueError:
            raise AppConfigError("HTTP_PROXY", env.http_proxy or "", "must be http://HOST:PORT") from None
    if env.app == "echo":
        return EchoApp(env, draining)
    if env.app == "productpage":
        return ProductPage(env, client)
    if env.app == "details":
        return Details(env)
    if env.app == "reviews":
        if env.version not in REVIEWS_VERSIONS:
            raise AppConfigError("MESHFED_VERSION", env.version,
                                 f"the reviews app comes in versions {', '.join(REVIEWS_VERSIONS)}")
        return Reviews(env, client)
    if env.app == "ratings":
        return Ratings(env)
    return None


__all__ = [
    "APPS", "ATTEMPTS", "AppConfigError", "AppEnv", "BOOKINFO_PORT", "ClientResponse", "DEFAULT_PORTS",
    "Details", "ECHO_PORT", "EchoApp", "GrpcEcho", "GrpcError", "GrpcStatus", "Handler", "HttpClient",
    "HttpServer", "MAX_DELAY", "ProductPage", "RATINGS_TIMEOUT", "RATINGS_UNAVAILABLE", "Ratings", "Request",
    "Response", "Reviews", "STAR_COLOR", "ServingStatus", "UpstreamError", "build_handler", "decode_message",
    "encode_message", "parse_seconds",
]
