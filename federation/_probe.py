"""Readiness probes over loopback: does a port accept, what does a plain HTTP GET answer.

Kubernetes' ``tcpSocket`` and ``httpGet`` probes, in trio, each bounded by ``PROBE_TIMEOUT``;
any failure is "not ready", never an exception.
"""

from __future__ import annotations

import trio

PROBE_TIMEOUT = 1.0
"""Seconds a probe may take. Defaults to 1."""


async def accepts(host: str, port: int) -> bool:
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError):
        return False
    await trio.aclose_forcefully(stream)
    return True


async def http_get(host: str, port: int, path: str, limit: int = 8 << 20) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP/1.1 GET; (0, b"") when there is no answer."""
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
            try:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                                      .encode())
                data = bytearray()
                while len(data) < limit and (chunk := await stream.receive_some(65536)):
                    data += chunk
            finally:
                await trio.aclose_forcefully(stream)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return 0, b""
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return 0, b""
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError:
            return bytes(out)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
