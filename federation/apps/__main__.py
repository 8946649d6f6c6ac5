"""Run one demo app: ``python3 -m federation.apps NAME [--listen HOST:PORT]... [--grace SECONDS]``.

NAME is ``echo``, ``productpage``, ``details``, ``reviews``, ``ratings`` or ``sleep``.
``--listen`` may be repeated; without it the app listens on ``$MESHFED_ADDRESS:$MESHFED_PORT``
(port defaults: echo 8080, bookinfo 9080). ``sleep`` listens nowhere and idles.

Once listening it prints ``NAME: listening on http://HOST:PORT`` (one line per address) on
stdout. SIGTERM or SIGINT starts a graceful shutdown (stop accepting, finish requests in
flight, at most ``--grace`` seconds, default 5), then the process exits 0; a second signal
cuts it short. Exit 1 for a bad environment or an address that cannot be bound, 2 for a
usage error.

Environment (``fedctl up`` sets the identity; all optional):

==========================  =====================================================================
MESHFED_CLUSTER             cluster the instance runs in (echo and reviews report it)
MESHFED_LOCALITY            ``region/zone/subzone``
MESHFED_VERSION             the ``version`` label; reviews v1 (no stars), v2 (black), v3 (red). v1
MESHFED_INSTANCE            instance (pod) name; default ``<workload>-<pid>``
MESHFED_NAMESPACE           namespace; bookinfo calls ``<svc>.<namespace>.svc.cluster.local``. default
MESHFED_WORKLOAD            workload name (``reviews-v2``); default NAME
MESHFED_ADDRESS             the instance's own address, the default listen host. 127.0.0.1
MESHFED_PORT                the default listen port
HTTP_PROXY / http_proxy     the sidecar's outbound listener ``http://<sidecar>:15001``; every call
                            to another service goes through it (absolute-form requests). Unset:
                            services are called directly.
NO_PROXY / no_proxy         hosts called directly (comma separated, ``*`` for all)
MESHFED_SERVICES_DOMAIN     suffix of bookinfo service names; default ``<namespace>.svc.cluster.local``
MESHFED_DETAILS_TIMEOUT     productpage -> details per try (2 tries). 3s
MESHFED_REVIEWS_TIMEOUT     productpage -> reviews per try (2 tries). 3s
MESHFED_RATINGS_TIMEOUT     reviews -> ratings (v2 10s, v3 2.5s); productpage -> ratings (3s)
MESHFED_ACCESS_LOG          ``1``: one line per request on stdout
==========================  =====================================================================

Timeouts are written ``3s``, ``2.5s``, ``250ms`` or as bare seconds. The defaults are
bookinfo's own, which Istio's fault-injection and timeout tasks depend on; tests shorten them.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import trio

from . import APPS, DEFAULT_PORTS, AppConfigError, AppEnv, HttpServer, build_handler


def parse_listen(text: str, default_host: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT; found {text!r}")
    return (host.strip("[]") or default_host), int(port)


async def _watch_signals(signals: trio.abc.ReceiveChannel[int], server: HttpServer, scope: trio.CancelScope) -> None:
    async for signum in signals:
        if server.draining.is_set():
            scope.cancel()  # a second signal: stop now
            return
        print(f"received {signal.Signals(signum).name}: draining", flush=True)
        server.drain()


async def run(env: AppEnv, listen: Sequence[tuple[str, int]], *, grace: float) -> None:
    """Serve until SIGTERM/SIGINT, then drain; ``sleep`` just waits for the signal."""
    server: HttpServer | None = None
    handler = build_handler(env, draining=lambda: server is not None and server.draining.is_set())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if handler is None:
            print(f"{env.app}: idle until SIGTERM", flush=True)
            async for _ in signals:
                break
            return
        server = HttpServer(handler, grace=grace, access_log=env.access_log)
        bound = [await trio.open_tcp_listeners(port, host=host) for host, port in listen]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
            async with trio.open_nursery() as serving:
                for listeners in bound:
                    host, port = await serving.start(server.serve_listeners, listeners)
                    shown = f"[{host}]" if ":" in host else host
                    print(f"{env.app}: listening on http://{shown}:{port}", flush=True)
            nursery.cancel_scope.cancel()  # every address drained


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m federation.apps", description="Run one meshfed demo app.")
    parser.add_argument("name", choices=APPS, metavar="NAME", help=" | ".join(APPS))
    parser.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                        help="address to serve on (repeatable); default $MESHFED_ADDRESS:$MESHFED_PORT")
    parser.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                        help="longest graceful shutdown before requests are cut (default 5)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        env = AppEnv.from_environ(args.name, os.environ if environ is None else environ)
        listen = [parse_listen(text, env.address) for text in args.listen]
    except (AppConfigError, ValueError) as exc:
        print(f"{args.name}: error: {exc}", file=sys.stderr)
        return 1
    if not listen and args.name != "sleep":
        listen = [(env.address, env.port or DEFAULT_PORTS[args.name])]
    try:
        trio.run(functools.partial(run, env, listen, grace=args.grace))
    except AppConfigError as exc:
        print(f"{args.name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.name}: error: cannot listen on {', '.join(f'{h}:{p}' for h, p in listen)}: {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
