"""``fedctl proxy --config FILE``: run one proxy from a config document, as ``envoy -c`` does.

The document is re-read when its modification time (or size) changes - polled once a
second - and on SIGHUP. A document that does not load or compile is refused with
``file:line: field: message`` lines on stderr and the running config stays. SIGINT and
SIGTERM stop the proxy cleanly (exit 0). Once every listener is bound one line is
printed on stdout, ``ready <name>=<host:port> ...``, for scripts (and tests) that start
the proxy with port 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from typing import Any

import trio

from gateway import GatewayError
from gateway._config import load_proxy_config
from gateway._proxy import Proxy, ProxyConfigError
from topology import Diagnostic

log = logging.getLogger("meshfed.fedctl.proxy")
POLL_SECONDS = 1.0
GC_GEN0_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700)."""


def register(sub: Any) -> None:
    p = sub.add_parser("proxy", help="run one sidecar/gateway proxy from a config document",
                       description="Run one meshfed proxy from a ProxyConfig document (see README, "
                                   "'Proxy config document'); reloads when the file changes or on SIGHUP.")
    p.add_argument("--config", required=True, metavar="FILE", help="the ProxyConfig document")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="logging level (default info)")
    p.set_defaults(func=run)


def _print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for d in diagnostics:
        print(str(d), file=sys.stderr)


def _stamp(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime, st.st_size


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, diagnostics = load_proxy_config(args.config)
    _print_diagnostics(diagnostics)
    if config is None:
        return 1
    try:
        proxy = Proxy(config)
    except ProxyConfigError as exc:
        _print_diagnostics([d for d in exc.diagnostics if d not in diagnostics])
        return 1
    settle_heap()
    try:
        return trio.run(_serve, proxy, args.config)
    except KeyboardInterrupt:
        return 0
    except (GatewayError, BaseExceptionGroup) as exc:  # a listener that cannot bind, ...
        found = _gateway_errors(exc)
        if found is None:
            raise
        for err in found:
            print(f"fedctl proxy: error: {err}", file=sys.stderr)
        return 1


def settle_heap() -> None:
    """Take everything built at start-up (modules, the compiled config) out of the cyclic
    collector's sight and make young collections rarer.

    A proxy allocates a few hundred short-lived objects per request; with CPython's
    default threshold a collection runs every few requests, and each older-generation
    pass walks every object the imports and the config made - a pause of milliseconds
    that lands in p99. Frozen objects are never scanned; the larger threshold keeps the
    young generation's passes to a few per second at 1000 rps."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _gateway_errors(exc: BaseException) -> list[GatewayError] | None:
    """The GatewayErrors in ``exc`` (trio's nurseries wrap them in groups), or None when
    anything else is in there too, which must propagate."""
    if isinstance(exc, GatewayError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(GatewayError)
        if rest is None and matched is not None:
            out: list[GatewayError] = []
            for sub in matched.exceptions:
                inner = _gateway_errors(sub)
                out.extend(inner or [])
            return out
    return None


def reload(proxy: Proxy, path: str) -> bool:
    """Load and apply ``path``; False (and the reasons on stderr) when it is refused."""
    config, diagnostics = load_proxy_config(path)
    if config is None:
        _print_diagnostics(diagnostics)
        print(f"fedctl proxy: {path}: refused; version {proxy.snapshot.version!r} stays in force",
              file=sys.stderr, flush=True)
        return False
    applied = proxy.apply(config)
    _print_diagnostics(applied)
    if proxy.snapshot.config is not config:
        print(f"fedctl proxy: {path}: refused; version {proxy.snapshot.version!r} stays in force",
              file=sys.stderr, flush=True)
        return False
    print(f"fedctl proxy: {path}: version {config.version!r} applied", file=sys.stderr, flush=True)
    return True


async def _serve(proxy: Proxy, path: str) -> int:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(proxy.run)
            print("ready " + " ".join(f"{k}={h}:{p}" for k, (h, p) in sorted(addresses.items())), flush=True)
            nursery.start_soon(_watch, proxy, path)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload(proxy, path)
                    continue
                log.info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


async def _watch(proxy: Proxy, path: str) -> None:
    seen = _stamp(path)
    while True:
        await trio.sleep(POLL_SECONDS)
        now = _stamp(path)
        if now is not None and now != seen:
            seen = now
            reload(proxy, path)
