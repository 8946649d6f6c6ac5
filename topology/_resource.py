"""The Kubernetes-style envelope every resource shares, and the table of known kinds.

A kind's spec class is registered once in ``KINDS`` with the apiVersions it accepts;
the loader needs nothing else to decode it. Kinds meshfed does not use (an
IstioOperator, a ConfigMap) are reported as skipped, never as errors, because real
manifests mix them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._decode import Check, nearest_line, opt

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns1123_label(s: str) -> bool:
    return len(s) <= 63 and bool(_DNS1123_LABEL.match(s))


def is_dns1123_subdomain(s: str) -> bool:
    return len(s) <= 253 and bool(_DNS1123_SUBDOMAIN.match(s))


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """Kubernetes object metadata; only name, namespace and labels drive the mesh."""

    name: str = opt(required=True)
    """Resource name, a DNS-1123 subdomain."""
    namespace: str | None = None
    """Namespace; defaults to the one the config is applied in (``default``)."""
    labels: dict[str, str] = opt(factory=dict)
    annotations: dict[str, str] = opt(factory=dict)
    generate_name: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Any = None
    managed_fields: Any = None
    owner_references: Any = None
    finalizers: tuple[str, ...] = ()

    def _check(self, c: Check) -> None:
        if not is_dns1123_subdomain(self.name):
            c.error("name", f"must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.'); found {self.name!r}")
        if self.namespace is not None and not is_dns1123_label(self.namespace):
            c.error("namespace", f"must be a lowercase DNS-1123 label; found {self.namespace!r}")


@dataclass(frozen=True, slots=True)
class KindInfo:
    group: str
    kind: str
    versions: frozenset[str]
    spec: type | None
    """Dataclass of ``spec``; None for kinds whose body is not under ``spec``."""
    body: type | None = None
    """For kinds without ``spec`` (ServiceAccount): dataclass of the top-level extras."""
    spec_required: bool = False


KINDS: dict[tuple[str, str], KindInfo] = {}


def register_kind(group: str, kind: str, versions: set[str] | frozenset[str], spec: type | None,
                  *, body: type | None = None, spec_required: bool = False) -> None:
    KINDS[(group, kind)] = KindInfo(group, kind, frozenset(versions), spec, body, spec_required)


@dataclass(frozen=True, slots=True)
class Resource:
    """One decoded resource with where it came from."""

    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: Any
    """The typed spec (an instance of the kind's spec dataclass)."""
    file: str
    line: int
    body: Any = None
    """Typed top-level extras for kinds without ``spec`` (e.g. ServiceAccount)."""
    lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    """Line of every field path seen while decoding, so later analysis can point at fields."""

    def line_of(self, path: str) -> int:
        """Line of ``path`` or of its nearest ancestor that has one."""
        return nearest_line(self.lines, path, self.line)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def __repr__(self) -> str:
        return f"<Resource {self.kind} {self.namespace}/{self.name} at {self.file}:{self.line}>"
