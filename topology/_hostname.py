"""Hostnames, wildcard hosts and the namespace search path a client resolves names through.

Theory of operation. A client inside the mesh names a service the way a pod does in
Kubernetes: ``reviews``, ``reviews.bookinfo``, ``reviews.bookinfo.svc`` or the full
``reviews.bookinfo.svc.cluster.local``. A pod's resolv.conf reads

    search <ns>.svc.cluster.local svc.cluster.local cluster.local
    options ndots:5

so a name with fewer than five dots is first tried with each search suffix appended, then
as given; a name with five or more dots (or a trailing dot) is tried as given first.
``resolution_candidates`` produces exactly that order and the registry takes the first
candidate it knows. The MCS API adds ``<svc>.<ns>.svc.clusterset.local`` for the
service as a whole across the cluster set; because meshfed merges same-named services
across clusters as Istio multi-primary does, it names the same service as
``.svc.cluster.local`` (``canonical``).

Wildcard hosts follow Istio's ``host.Name.Matches``: ``*.example.com`` matches a name
ending in ``.example.com`` (one or more labels in front, never ``example.com`` itself)
and ``*`` matches every name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterator

from ._decode import describe
from ._errors import RegistryError

DEFAULT_DOMAIN = "cluster.local"
"""Kubernetes' default cluster domain, the suffix of every service FQDN."""
CLUSTERSET_DOMAIN = "clusterset.local"
"""MCS API (KEP-1645) domain for a service exported across the cluster set."""
NDOTS = 5
"""Kubernetes pods' resolv.conf ``options ndots:5``."""

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Istio's IsWildcardDNS1123Label: `*`, `*foo` or `*-foo` as the first label only.
_WILDCARD_LABEL = re.compile(r"\*([-a-z0-9]*[a-z0-9])?")


class InvalidValueError(RegistryError, ValueError):
    """A registry value (hostname, locality, port, weight) that cannot be represented."""

    def __init__(self, message: str, value: object) -> None:
        super().__init__(message)
        self.value = value


class InvalidHostnameError(InvalidValueError):
    """A name that is not a DNS name, nor a wildcard host as Istio accepts one."""

    def __init__(self, message: str, hostname: str) -> None:
        super().__init__(message, hostname)
        self.hostname = hostname


def _problem(name: str) -> str | None:
    """Why ``name`` (already lowercased, no trailing dot) is not a host; None if it is."""
    if not name:
        return "is empty"
    if len(name) > 253:
        return f"is {len(name)} characters long; DNS allows 253"
    first, *rest = name.split(".")
    labels = rest if first.startswith("*") else [first, *rest]
    if first.startswith("*") and not _WILDCARD_LABEL.fullmatch(first):
        return f"has a wildcard label {first!r}; only '*' or a '*' prefix in the first label is allowed"
    for label in labels:
        if "*" in label:
            return f"has a '*' in label {label!r}; a wildcard may only begin the first label"
        if len(label) > 63:
            return f"has a label of {len(label)} characters; DNS allows 63"
        if not _LABEL.fullmatch(label):
            return f"has an invalid label {label!r} (a-z, 0-9, '-', not starting or ending with '-')"
    return None


@dataclass(frozen=True, slots=True, order=True)
class Hostname:
    """A fully qualified host name or an Istio wildcard host, lowercase, without a trailing dot.

    Built with ``Hostname.parse`` from what users write (any case, optional trailing dot);
    the constructor only accepts the canonical form so that equal names compare equal.
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidHostnameError(f"hostname must be a string; found {describe(self.name)}", str(self.name))
        if self.name != self.name.lower():
            problem: str | None = "is not lowercase; use Hostname.parse"
        else:
            problem = _problem(self.name)
        if problem:
            raise InvalidHostnameError(f"hostname {self.name!r} {problem}", self.name)

    @classmethod
    def parse(cls, text: str | Hostname) -> Hostname:
        if isinstance(text, Hostname):
            return text
        if not isinstance(text, str):
            raise InvalidHostnameError(f"hostname must be a string; found {describe(text)}", str(text))
        name = text.strip().lower()
        return cls(name[:-1] if name.endswith(".") and name != "." else name)

    def __str__(self) -> str:
        return self.name

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    def matches(self, other: Hostname | str) -> bool:
        """Whether the concrete name ``other`` is covered by this (possibly wildcard) host."""
        o = other.name if isinstance(other, Hostname) else other
        return host_matches(self.name, o)


def host_matches(pattern: str, name: str) -> bool:
    """Istio's ``host.Name.Matches`` for a wildcard or exact ``pattern`` and a concrete ``name``."""
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    return pattern == name


def wildcard_keys(name: str) -> Iterator[str]:
    """Label-aligned wildcard hosts that cover ``name``, most specific first.

    ``a.b.example.com`` -> ``*.b.example.com``, ``*.example.com``, ``*.com``, ``*``.
    """
    rest = name
    while True:
        dot = rest.find(".")
        if dot < 0:
            break
        rest = rest[dot + 1:]
        yield "*." + rest
    yield "*"


def service_fqdn(name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> Hostname:
    """``<svc>.<ns>.svc.<domain>``, the name Kubernetes and Istio give a Service."""
    return Hostname.parse(f"{name}.{namespace}.svc.{domain}")


def split_service_fqdn(host: Hostname | str, domain: str = DEFAULT_DOMAIN) -> tuple[str, str] | None:
    """``(name, namespace)`` of a Kubernetes service FQDN (either domain), else None."""
    h = canonical(str(host), domain)
    suffix = f".svc.{domain}"
    if not h.endswith(suffix):
        return None
    parts = h[: -len(suffix)].split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def canonical(name: str, domain: str = DEFAULT_DOMAIN) -> str:
    """The registry key for a concrete name: ``.svc.clusterset.local`` becomes ``.svc.<domain>``."""
    tail = ".svc." + CLUSTERSET_DOMAIN
    if name.endswith(tail):
        return name[: -len(tail)] + ".svc." + domain
    return name


def search_path(namespace: str, domain: str = DEFAULT_DOMAIN) -> tuple[str, str, str]:
    """The ``search`` line of a pod's resolv.conf in ``namespace``."""
    return (f"{namespace}.svc.{domain}", f"svc.{domain}", domain)


@functools.lru_cache(maxsize=4096)
def resolution_candidates(name: str, namespace: str, domain: str = DEFAULT_DOMAIN,
                          ndots: int = NDOTS) -> tuple[str, ...]:
    """Names a pod's resolver tries for ``name``, in order (glibc's ndots rule).

    The result is lowercase and without a trailing dot; an empty or malformed name yields
    ``()``. A trailing dot marks the name absolute: it is tried as given and only so.
    """
    text = name.strip().lower()
    if text.endswith("."):
        text = text[:-1]
        return (text,) if _problem(text) is None else ()
    if _problem(text) is not None:
        return ()
    expanded = tuple(f"{text}.{suffix}" for suffix in search_path(namespace, domain))
    expanded = tuple(c for c in expanded if len(c) <= 253)
    if text.count(".") >= ndots:
        return (text, *expanded)
    return (*expanded, text)
