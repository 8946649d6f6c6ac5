"""Suite-wide pytest hooks."""

from __future__ import annotations

from typing import Any


def pytest_make_parametrize_id(config: Any, val: object, argname: str) -> str | None:
    """Long strings and bytes (tokens, wire messages) are named by their argument, not their
    value: some carry the time (an expiry, a TSIG stamp), and pytest-xdist requires every
    worker to collect the same test ids. pytest numbers the duplicates."""
    if isinstance(val, (str, bytes)) and len(val) > 40:
        return argname
    return None
