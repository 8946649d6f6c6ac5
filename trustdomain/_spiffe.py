"""SPIFFE IDs and trust domain names as value objects, validated once when built.

The rules are the SPIFFE-ID specification's (section 2): the scheme is exactly
``spiffe``; a trust domain name holds only lowercase letters, digits, ``.``, ``-`` and
``_`` (so a port, userinfo or uppercase host is refused); the path is ``/``-separated
segments of letters, digits, ``.``, ``-``, ``_``, with no empty, ``.`` or ``..`` segment
and no trailing ``/``; no query and no fragment. Once a ``SpiffeId`` exists it is valid,
so the rest of the package compares and hashes them instead of re-parsing strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import SpiffeIdError

SCHEME_PREFIX = "spiffe://"
MAX_URI_LENGTH = 2048  # SPIFFE-ID spec 2.3: "URIs ... SHOULD NOT exceed 2048 bytes"
MAX_TRUST_DOMAIN_LENGTH = 255  # SPIFFE-ID spec 2.1: "MUST NOT exceed 255 characters"

_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS = _TD_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_trust_domain(value: str, name: str) -> None:
    if not name:
        raise SpiffeIdError(value, "trust domain is missing")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdError(value, f"trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    bad = next((ch for ch in name if ch not in _TD_CHARS), None)
    if bad is not None:
        raise SpiffeIdError(value, f"trust domain characters are limited to lowercase letters, numbers, "
                                   f"dots, dashes, and underscores; found {bad!r}")


def _check_path(value: str, path: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise SpiffeIdError(value, "path must start with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise SpiffeIdError(value, "path cannot contain empty segments or a trailing slash")
        if segment in (".", ".."):
            raise SpiffeIdError(value, "path cannot contain dot segments")
        bad = next((ch for ch in segment if ch not in _PATH_CHARS), None)
        if bad is not None:
            raise SpiffeIdError(value, f"path segment characters are limited to letters, numbers, dots, "
                                       f"dashes, and underscores; found {bad!r}")


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A trust domain name such as ``east.example``: the unit a bundle and a CA belong to."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpiffeIdError(repr(self.name), "trust domain must be a string")
        _check_trust_domain(self.name, self.name)

    @classmethod
    def parse(cls, text: str) -> "TrustDomain":
        """Accept a bare name (``east.example``) or a SPIFFE ID and keep its trust domain."""
        if "://" in text:
            return SpiffeId.parse(text).trust_domain
        return cls(text)

    @property
    def id_string(self) -> str:
        """``spiffe://<name>``: the trust domain's own SPIFFE ID."""
        return SCHEME_PREFIX + self.name

    def workload_id(self, namespace: str, service_account: str) -> "SpiffeId":
        """Istio's identity for a service account: ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
        for what, value in (("namespace", namespace), ("service account", service_account)):
            if not value or "/" in value:
                raise SpiffeIdError(f"{self.id_string}/ns/{namespace}/sa/{service_account}",
                                    f"{what} {value!r} must be one non-empty path segment")
        return SpiffeId(self, f"/ns/{namespace}/sa/{service_account}")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """``spiffe://<trust domain><path>``, validated when built and hashable."""

    trust_domain: TrustDomain
    path: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise SpiffeIdError(repr(self.trust_domain), "trust_domain must be a TrustDomain")
        full = SCHEME_PREFIX + self.trust_domain.name + self.path
        _check_path(full, self.path)
        if len(full) > MAX_URI_LENGTH:
            raise SpiffeIdError(full[:60] + "...", f"longer than {MAX_URI_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> "SpiffeId":
        if not isinstance(text, str):
            raise SpiffeIdError(repr(text), "must be a string")
        if not text:
            raise SpiffeIdError(text, "cannot be empty")
        if not text.startswith(SCHEME_PREFIX):
            raise SpiffeIdError(text, "scheme is missing or invalid (must be 'spiffe://')")
        rest = text[len(SCHEME_PREFIX):]
        for ch, what in (("?", "query"), ("#", "fragment")):
            if ch in rest:
                raise SpiffeIdError(text, f"a SPIFFE ID cannot contain a {what}")
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if "@" in authority:
            raise SpiffeIdError(text, "a SPIFFE ID cannot contain userinfo")
        if ":" in authority:
            raise SpiffeIdError(text, "a SPIFFE ID cannot contain a port")
        _check_trust_domain(text, authority)
        _check_path(text, path)
        return cls(TrustDomain(authority), path)

    @classmethod
    def workload(cls, trust_domain: str | TrustDomain, namespace: str, service_account: str) -> "SpiffeId":
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        return td.workload_id(namespace, service_account)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The ``ns`` of an Istio-shaped ID (``/ns/<ns>/sa/<sa>``), else None."""
        s = self.segments
        return s[1] if len(s) == 4 and s[0] == "ns" and s[2] == "sa" else None

    @property
    def service_account(self) -> str | None:
        s = self.segments
        return s[3] if len(s) == 4 and s[0] == "ns" and s[2] == "sa" else None

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path
