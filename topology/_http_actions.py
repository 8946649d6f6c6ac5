"""What an HTTP rule does besides forwarding: header changes, redirects, direct
responses, rewrites, delegation and mirroring (istio/api ``networking/v1``)."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._istio_checks import check_oneof, check_port, check_regex, dns_label_problem, header_value_problem
from ._istio_types import Destination, Percent

DIRECT_RESPONSE_MAX = 1024 * 1024
"""istioctl refuses direct response bodies over 1MB and warns above 100KB."""
DIRECT_RESPONSE_WARN = 100 * 1024


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """Header changes: ``set`` overwrites, ``add`` appends, ``remove`` deletes."""

    set: dict[str, str] = opt(factory=dict)
    """Headers overwritten with the given value."""
    add: dict[str, str] = opt(factory=dict)
    """Values appended to the headers."""
    remove: tuple[str, ...] = ()
    """Headers removed."""


@dataclass(frozen=True, slots=True)
class Headers:
    """Changes to request headers (before forwarding) and response headers (before replying)."""

    request: HeaderOperations | None = None
    """Changes to the request before it is forwarded. Defaults to none."""
    response: HeaderOperations | None = None
    """Changes to the response before it is returned. Defaults to none."""

    @property
    def authority(self) -> tuple[str, ...]:
        """Values this block writes to the authority (``:authority``/``host``)."""
        ops = self.request
        if ops is None:
            return ()
        return tuple(v for m in (ops.set, ops.add) for k, v in m.items() if k.lower() in (":authority", "host"))

    def _check(self, c: Check) -> None:
        for side, ops in (("request", self.request), ("response", self.response)):
            if ops is None:
                continue
            for verb in ("set", "add"):
                for name, value in getattr(ops, verb).items():
                    where = f"{side}.{verb}.{name}"
                    _check_op_name(c, where, name, authority_ok=side == "request")
                    problem = header_value_problem(value)
                    if problem:
                        c.error(where, f"invalid header value {value!r}: {problem}")
            for i, name in enumerate(ops.remove):
                _check_op_name(c, f"{side}.remove[{i}]", name, authority_ok=False)


def _check_op_name(c: Check, rel: str, name: str, *, authority_ok: bool) -> None:
    lower = name.lower()
    if name == "":
        c.error(rel, "header name must not be empty")
    elif lower in (":authority", "host") and authority_ok:
        return
    elif lower == "host":
        c.error(rel, "the Host header cannot be changed here; use rewrite.authority or request.set")
    elif name.startswith(":"):
        c.error(rel, f"pseudo-header {name!r} cannot be changed")


class DerivePort(enum.Enum):
    FROM_PROTOCOL_DEFAULT = "FROM_PROTOCOL_DEFAULT"
    FROM_REQUEST_PORT = "FROM_REQUEST_PORT"


@dataclass(frozen=True, slots=True)
class HTTPRedirect:
    """Answer with a redirect instead of forwarding."""

    uri: str | None = None
    """Replacement path of the Location."""
    authority: str | None = None
    """Replacement authority of the Location."""
    port: int | None = None
    """Replacement port of the Location."""
    derive_port: DerivePort | None = None
    """Take the port from the scheme's default or from the request."""
    scheme: str | None = None
    """Replacement scheme, ``http`` or ``https``. Defaults to the request's scheme."""
    redirect_code: int | None = None
    """Status code of the redirect, 3xx. Defaults to 301."""

    def _check(self, c: Check) -> None:
        check_oneof(c, self, ("port", "derive_port"))
        if not (self.uri or self.authority or self.port is not None or self.derive_port or self.scheme):
            c.error("", "a redirect must set uri, authority, scheme or port")
        if self.redirect_code is not None and not 300 <= self.redirect_code <= 399:
            c.error("redirectCode", f"must be a 3xx status code; found {describe(self.redirect_code)}")
        if self.scheme is not None and self.scheme not in ("http", "https"):
            c.error("scheme", f"must be 'http' or 'https'; found {describe(self.scheme)}")
        if self.port is not None:
            check_port(c, "port", self.port)


@dataclass(frozen=True, slots=True)
class HTTPBody:
    """Body of a direct response: text, or bytes written base64 in YAML."""

    string_: str | None = None
    """Body as text (YAML key ``string``)."""
    bytes_: str | None = None
    """Body as base64-encoded bytes (YAML key ``bytes``)."""

    def _check(self, c: Check) -> None:
        if check_oneof(c, self, ("string_", "bytes_")):
            return
        size = len(self.string_.encode("utf-8", "surrogatepass")) if self.string_ is not None else 0
        if self.bytes_ is not None:
            try:
                size = len(base64.b64decode(self.bytes_, validate=True))
            except (binascii.Error, ValueError):
                c.error("bytes", f"must be base64; found {describe(self.bytes_)}")
                return
        if size > DIRECT_RESPONSE_MAX:
            c.error("", f"a direct response body must be at most 1MB; found {size} bytes")
        elif size > DIRECT_RESPONSE_WARN:
            c.warning("", f"large direct response body ({size} bytes) may slow config distribution")


@dataclass(frozen=True, slots=True)
class HTTPDirectResponse:
    """Answer with a fixed response instead of forwarding."""

    status: int = opt(required=True)
    """Status code of the response, 200..599. Required."""
    body: HTTPBody | None = None
    """Body of the response. Defaults to none."""

    def _check(self, c: Check) -> None:
        if not 200 <= self.status <= 599:
            c.error("status", f"HTTP status must be in the range 200..599; found {describe(self.status)}")


@dataclass(frozen=True, slots=True)
class Delegate:
    """Hand the rule over to another VirtualService (one without hosts)."""

    name: str = opt(required=True)
    """Name of the delegate VirtualService. Required."""
    namespace: str | None = None
    """Its namespace. Defaults to this VirtualService's namespace."""

    def _check(self, c: Check) -> None:
        if self.namespace is not None and dns_label_problem(self.namespace):
            c.error("namespace", f"must be a namespace name; found {describe(self.namespace)}")


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """Rewrite the path by RE2 regex substitution."""

    match: str | None = None
    """RE2 regex matched against the path. Required."""
    rewrite: str | None = None
    """Replacement, with ``\\1``-style capture group references. Required."""

    def _check(self, c: Check) -> None:
        if not self.match or not self.rewrite:
            c.error("", "uriRegexRewrite needs both match and rewrite")
        if self.match:
            check_regex(c, "match", self.match)


@dataclass(frozen=True, slots=True)
class HTTPRewrite:
    """Rewrite the path and/or authority before forwarding."""

    uri: str | None = None
    """Replaces the matched ``uri`` prefix (or the whole path for exact/regex matches)."""
    authority: str | None = None
    """Replaces the Host/:authority."""
    uri_regex_rewrite: RegexRewrite | None = None
    """Regex-based path rewrite; not together with ``uri``."""

    def _check(self, c: Check) -> None:
        if self.uri and self.uri_regex_rewrite is not None:
            c.error("uriRegexRewrite", "only one of uri and uriRegexRewrite may be set")
        elif not (self.uri or self.authority or self.uri_regex_rewrite is not None):
            c.error("", "a rewrite must set uri, uriRegexRewrite or authority")


@dataclass(frozen=True, slots=True)
class HTTPMirrorPolicy:
    """A destination that receives a copy of the traffic (responses are discarded)."""

    destination: Destination | None = None
    """Where copies go. Required."""
    percentage: Percent | None = None
    """Share of requests copied. Defaults to 100%."""

    def _check(self, c: Check) -> None:
        if self.destination is None:
            c.error("", "missing required field 'destination'")
