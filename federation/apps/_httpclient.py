"""How the demo apps call other services: through ``HTTP_PROXY`` when set, as a user's app would.

With a proxy, a call to ``http://reviews.bookinfo.svc.cluster.local:9080/reviews/0`` connects
to the sidecar and sends the request line in absolute form (RFC 9112 3.2.2), which is what
``requests``, curl and httpx do with ``HTTP_PROXY``; the mesh takes it from there. Without
one it connects to the host itself. Every call has its own timeout covering connect,
send and the whole response, and uses a fresh connection: the apps are stand-ins for
users' apps, not a pool benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from .._errors import FederationError

MAX_RESPONSE_BYTES = 8 << 20
USER_AGENT = "meshfed-demo-app/0.1"


class UpstreamError(FederationError):
    """A call got no response: refused, reset, malformed or timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_proxy(value: str) -> tuple[str, int]:
    """``http://127.1.1.10:15001`` (or without the scheme) -> (host, port)."""
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"HTTP_PROXY must be http://HOST:PORT; found {value!r}")
    return parts.hostname, parts.port or 80


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """NO_PROXY as curl reads it: ``*``, or names matching the host or a parent domain."""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


@dataclass(frozen=True, slots=True)
class HttpClient:
    proxy: str | None = None
    """``http://host:port`` of the sidecar's outbound listener, or None to connect directly."""
    no_proxy: str = ""

    def __post_init__(self) -> None:
        if self.proxy is not None:
            parse_proxy(self.proxy)

    async def get(self, url: str, *, headers: tuple[tuple[str, str], ...] = (), timeout: float) -> ClientResponse:
        return await self.request("GET", url, headers=headers, timeout=timeout)

    async def request(self, method: str, url: str, *, headers: tuple[tuple[str, str], ...] = (),
                      body: bytes = b"", timeout: float) -> ClientResponse:
        """Send one request and read the whole response within ``timeout`` seconds."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamError(url, "only http://HOST[:PORT]/PATH URLs are supported")
        host, port = parts.hostname, parts.port or 80
        if self.proxy is not None and not bypasses_proxy(host.lower(), self.no_proxy):
            connect_to, target = parse_proxy(self.proxy), url.split("#", 1)[0]
        else:
            connect_to, target = (host, port), (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        names = {k.lower() for k, _ in headers}
        head = [(k, v) for k, v in headers if k.lower() not in ("host", "content-length")]
        head.insert(0, ("host", parts.netloc))
        if "user-agent" not in names:
            head.append(("user-agent", USER_AGENT))
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(("content-length", str(len(body))))
        with trio.move_on_after(timeout):
            try:
                return await _exchange(connect_to, method, target, head, body)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
                raise UpstreamError(url, f"{type(exc).__name__}: {exc}") from exc
        raise UpstreamError(url, f"timed out after {timeout:g}s")  # reached only when the timeout fired


async def _exchange(address: tuple[str, int], method: str, target: str,
                    headers: list[tuple[str, str]], body: bytes) -> ClientResponse:
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_tcp_stream(*address) as stream:
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        response: h11.Response | None = None
        chunks = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks += event.data
                if len(chunks) > MAX_RESPONSE_BYTES:
                    raise h11.RemoteProtocolError(f"response body over {MAX_RESPONSE_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed before the response ended")
        assert response is not None
        headers_out = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers)
        return ClientResponse(response.status_code, headers_out, bytes(chunks))
