"""``fedctl curl``: one HTTP request sent the way a workload's app sends it - through its sidecar.

The request goes to the instance's sidecar outbound listener (``<address>:15001``) in
absolute form (``GET http://echo.demo:8080/ HTTP/1.1``), exactly what an HTTP client does
with ``HTTP_PROXY`` set. Output and exit codes follow curl's: the body on stdout (``-i``:
status line and headers first), 0 when a response came back, 22 for a status >= 400
with ``-f``, 7 when the sidecar cannot be reached, 28 on ``--max-time``, 52 when the
connection closed without a response, 56 when it broke mid-response.

Plain sockets and ``http.client``: ``fedctl curl`` must start fast, so no trio here.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ._errors import FederationError

EXIT_OK, EXIT_CONNECT, EXIT_HTTP_ERROR, EXIT_TIMEOUT, EXIT_EMPTY, EXIT_RECV = 0, 7, 22, 28, 52, 56
EXIT_URL = 3


class CurlError(FederationError):
    """The request got no usable response; ``code`` is curl's exit code for the reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CurlRequest:
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class CurlResponse:
    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def head(self) -> bytes:
        """Status line and headers as curl ``-i`` prints them."""
        lines = [f"{self.version} {self.status} {self.reason}".rstrip()]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_header(text: str) -> tuple[str, str]:
    """``'name: value'`` -> (name, value), as ``curl -H`` takes it."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ValueError(f"-H must be 'name: value'; found {text!r}")
    return name.strip(), value.strip()


def build_request(url: str, method: str | None, headers: list[str], data: str | None) -> CurlRequest:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise CurlError(EXIT_URL, f"URL must be http://HOST[:PORT]/PATH (the sidecar speaks plain HTTP to the app "
                                  f"side); found {url!r}")
    parsed = [parse_header(h) for h in headers]
    body = None
    if data is not None:
        if data.startswith("@"):
            try:
                with open(data[1:], "rb") as f:
                    body = f.read()
            except OSError as exc:
                raise CurlError(26, f"cannot read {data[1:]!r}: {exc.strerror}") from None
        else:
            body = data.encode()
        if not any(k.lower() == "content-type" for k, _ in parsed):
            parsed.append(("Content-Type", "application/x-www-form-urlencoded"))  # curl -d's default
    return CurlRequest(parts.geturl(), method or ("POST" if body is not None else "GET"), tuple(parsed), body)


def send(proxy: tuple[str, int], request: CurlRequest, timeout: float | None = None) -> CurlResponse:
    """Send ``request`` through the HTTP proxy at ``proxy`` and read the whole response."""
    conn = http.client.HTTPConnection(proxy[0], proxy[1], timeout=timeout)
    try:
        try:
            conn.connect()
        except socket.timeout:
            raise CurlError(EXIT_TIMEOUT, f"Failed to connect to {proxy[0]} port {proxy[1]}: timed out") from None
        except OSError as exc:
            raise CurlError(EXIT_CONNECT, f"Failed to connect to {proxy[0]} port {proxy[1]}: "
                                          f"{exc.strerror or exc}") from None
        try:
            conn.putrequest(request.method, request.url, skip_accept_encoding=True,
                            skip_host=any(k.lower() == "host" for k, _ in request.headers))
            if not any(k.lower() == "user-agent" for k, _ in request.headers):
                conn.putheader("User-Agent", "fedctl-curl")
            if not any(k.lower() == "accept" for k, _ in request.headers):
                conn.putheader("Accept", "*/*")
            for name, value in request.headers:
                conn.putheader(name, value)
            if request.body is not None:
                conn.putheader("Content-Length", str(len(request.body)))
            conn.endheaders(request.body)
            resp = conn.getresponse()
            body = resp.read()
        except socket.timeout:
            raise CurlError(EXIT_TIMEOUT, "Operation timed out") from None
        except http.client.RemoteDisconnected:
            raise CurlError(EXIT_EMPTY, "Empty reply from server") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CurlError(EXIT_RECV, f"Failure when receiving data from the peer: {exc}") from None
        version = {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(resp.version, "HTTP/1.1")
        return CurlResponse(version, resp.status, resp.reason, tuple(resp.getheaders()), body)
    finally:
        conn.close()
