"""Saturation load: wrk (C, epoll) over a few keep-alive connections for a bounded time.

wrk is closed-loop - each connection sends its next request when the previous answer is
in - which is right for "how many requests per second at most" and wrong for latency
(see _load.py). It runs on the same cores as the servers it loads, so its CPU is part of
what limits the figure. The meshfed sidecars need absolute-form request lines; wrk sends
``wrk.path`` as the request target, so a two-line Lua script sets it.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int


_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", re.M)
_RPS = re.compile(r"^Requests/sec:\s*([\d.]+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> WrkResult:
    """The figures of wrk's summary; ValueError naming what is missing."""
    requests, rps = _REQUESTS.search(text), _RPS.search(text)
    if requests is None or rps is None:
        raise ValueError(f"no 'N requests in' / 'Requests/sec:' lines in wrk output: {text[-400:]!r}")
    sock = _SOCKET.search(text)
    non2xx = _NON2XX.search(text)
    return WrkResult(float(rps.group(1)), int(requests.group(1)),
                     float(requests.group(2)) * _UNIT[requests.group(3)],
                     sum(int(x) for x in sock.groups()) if sock else 0,
                     int(non2xx.group(1)) if non2xx else 0)


def wrk_script(path: str | None, host_header: str) -> str:
    """A wrk Lua script setting the request line's target (absolute form when ``path`` is a URL)."""
    lines = [f'wrk.headers["Host"] = "{host_header}"']
    if path is not None:
        lines.insert(0, f'wrk.path = "{path}"')
    return "\n".join(lines) + "\n"


def run_wrk(url: str, script: str, *, seconds: float, connections: int, threads: int,
            sample: Callable[[], None] | None = None, sample_every: float = 0.25) -> WrkResult:
    """wrk for ``seconds`` (bounded: killed ``seconds + 15`` later at most), ``sample()`` called meanwhile."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", script, url]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds + 15
        while popen.poll() is None and time.monotonic() < deadline:
            if sample is not None:
                sample()
            time.sleep(sample_every)
        out, _ = popen.communicate(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(timeout=5)
    text = out.decode(errors="replace")
    if popen.returncode != 0:
        raise RuntimeError(f"wrk exited with {popen.returncode}: {text[-400:]}")
    return parse_wrk(text)
