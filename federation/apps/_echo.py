"""The echo app: says which instance answered, like httpbin, over HTTP/1.1, HTTP/2 and gRPC.

``/status/CODE`` answers with that status, ``/delay/SECONDS`` answers after that delay
(at most ``MAX_DELAY``), every other path answers a JSON object naming the instance
(cluster, locality, version, instance, namespace, workload) and echoing the request
(method, path, query, protocol, headers, body). Requests with a gRPC content type go to
``GrpcEcho`` on the same port. Tests and failover drills tell instances apart by it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import trio

from ._env import AppEnv
from ._grpc import GrpcEcho
from ._httpserve import Request, Response, plain

ECHO_PORT = 8080
MAX_DELAY = 60.0
"""Longest ``/delay/SECONDS`` honoured; longer asks are served after this long (httpbin caps at 10)."""


class EchoApp:
    def __init__(self, env: AppEnv, draining: Callable[[], bool] = lambda: False) -> None:
        self.env = env
        self.grpc = GrpcEcho(env, draining)

    def __repr__(self) -> str:
        return f"<EchoApp {self.env.workload} {self.env.instance} in {self.env.cluster or '-'}>"

    def describe(self, request: Request) -> dict[str, object]:
        env = self.env
        headers: dict[str, str] = {}
        for name, value in request.headers:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        body: dict[str, object] = {
            "cluster": env.cluster, "locality": env.locality, "version": env.version,
            "instance": env.instance, "namespace": env.namespace, "workload": env.workload,
            "method": request.method, "path": request.path, "query": request.query,
            "protocol": request.protocol, "headers": headers,
        }
        if request.body:
            body["body"] = request.body.decode("utf-8", "replace")
        return body

    def _json(self, status: int, request: Request) -> Response:
        if status in (204, 304):
            return Response(status)
        data = json.dumps(self.describe(request), indent=2).encode() + b"\n"
        return Response(status, (("content-type", "application/json"),), data)

    async def __call__(self, request: Request) -> Response:
        if (request.header("content-type") or "").startswith("application/grpc"):
            if request.protocol != "HTTP/2":
                return plain(415, "gRPC needs HTTP/2\n")
            return await self.grpc.handle(request)
        parts = request.path.split("/")
        if len(parts) == 3 and parts[1] == "status":
            code = parts[2]
            if not (code.isascii() and code.isdigit()) or not 200 <= int(code) <= 599:
                return plain(400, f"/status/CODE: CODE must be an HTTP status 200..599; found {code!r}\n")
            return self._json(int(code), request)
        if len(parts) == 3 and parts[1] == "delay":
            try:
                seconds = float(parts[2])
            except ValueError:
                seconds = math.nan
            if not seconds >= 0:  # also refuses NaN
                return plain(400, f"/delay/SECONDS: SECONDS must be a number 0 or more; found {parts[2]!r}\n")
            await trio.sleep(min(seconds, MAX_DELAY))
        return self._json(200, request)
