"""Cross-resource analysis (warnings), as ``istioctl analyze`` does it."""

from __future__ import annotations

from ._errors import Diagnostic
from ._loader import LoadResult


def analyze(result: LoadResult) -> list[Diagnostic]:
    return []
