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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedctl",
        description="meshfed: a multi-cluster service mesh driven by the Istio YAML you already write.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
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
