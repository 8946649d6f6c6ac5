"""Errors and diagnostics of the topology package.

A diagnostic is data first (file, line, field path, message) so that the CLI can print
it as ``file:line: path: message`` and ``--output json`` can hand the same fields to
machines; the string form is built in exactly one place (``Diagnostic.__str__``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about the user's config, pointing at the exact field."""

    file: str
    """Path of the YAML file as the user named it."""
    line: int
    """1-based line of the offending key or value (0 when unknown)."""
    path: str
    """Field path inside the document, e.g. ``spec.http[0].route[1].weight``."""
    message: str
    """What is wrong and what was found, quoting the bad input."""
    severity: Severity = Severity.ERROR
    kind: str = ""
    """Resource kind the finding is about, when known."""
    name: str = ""
    """Resource ``metadata.name`` the finding is about, when known."""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        head = f"{where}: {self.path}: " if self.path else f"{where}: "
        tag = "warning: " if self.severity is Severity.WARNING else ""
        return f"{head}{tag}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "severity": self.severity.value,
            "kind": self.kind,
            "name": self.name,
        }


class TopologyError(Exception):
    """Base of every error raised by ``topology``."""


class ConfigError(TopologyError):
    """Config that failed validation; carries every diagnostic, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error] or self.diagnostics
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}" if errors else "invalid config")


class RegistryError(TopologyError):
    """A lookup or change of the service registry that cannot be honoured."""
