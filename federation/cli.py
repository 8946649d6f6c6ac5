"""``fedctl``: the one command users touch.

Each command group lives in its own ``_cli_*`` module exposing ``register(subparsers)``;
the parsed namespace carries ``func(args) -> int``. ``main(argv) -> int`` never raises
for user errors, so tests call it directly and scripts get an exit code, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ._errors import FederationError

COMMAND_MODULES = (
    "federation._cli_validate",
    "federation._cli_ca",
    "federation._cli_proxy",
    "federation._cli_up",
    "federation._cli_link",
    "federation._cli_drill",
    "federation._cli_check",
)
PROXY_COMMAND = "federation._cli_proxy"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with ``only`` (a command module), just that command - ``fedctl proxy``
    runs for the life of a sidecar and should not hold every other command's imports."""
    parser = argparse.ArgumentParser(
        prog="fedctl",
        description="meshfed: a multi-cluster service mesh driven by the Istio YAML you already write.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(PROXY_COMMAND if argv[:1] == ["proxy"] else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args))
    except FederationError as exc:
        print(f"fedctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
