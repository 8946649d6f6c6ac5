"""CORS answered by the proxy: Istio's ``corsPolicy`` as Envoy's CORS filter applies it.

Theory of operation (Envoy ``cors_filter.cc``). A request without a non-empty ``Origin``
is not a CORS request and passes untouched. A preflight is ``OPTIONS`` with an
``Origin`` and a non-empty ``Access-Control-Request-Method``; the proxy answers it
itself with ``200`` and the policy's headers, echoing the origin when it is allowed. A
preflight from an origin that is not allowed is forwarded upstream unless
``unmatchedPreflights: IGNORE``, in which case it is still answered ``200`` but without
``Access-Control-Allow-Origin`` - the browser then refuses the real request. Any other
request from an allowed origin is forwarded and its response gets
``Access-Control-Allow-Origin`` (the request's origin, never ``*``), the credentials flag
and ``Access-Control-Expose-Headers``. An origin matcher that matches the literal ``*``
allows every origin. Istio (``TranslateCORSPolicy``) joins the lists with ``,``, writes
``maxAge`` in whole seconds, uses ``allowOrigins`` or else the deprecated exact
``allowOrigin`` list, and leaves the filter fully enabled.

Everything but the echoed values is computed once per policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from topology._http_policy import CorsPolicy
from topology._istio_types import StringMatch

from ._match import StringMatcher

ALLOW_ORIGIN = "access-control-allow-origin"
ALLOW_CREDENTIALS = "access-control-allow-credentials"
ALLOW_METHODS = "access-control-allow-methods"
ALLOW_HEADERS = "access-control-allow-headers"
EXPOSE_HEADERS = "access-control-expose-headers"
MAX_AGE = "access-control-max-age"
REQUEST_METHOD = "access-control-request-method"
REQUEST_HEADERS = "access-control-request-headers"

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CorsDecision:
    """What the proxy does about CORS for one request."""

    respond: bool
    """True: answer now with ``status`` and ``headers`` and do not forward (a preflight)."""
    headers: Pairs = ()
    """The preflight answer's headers, or (``respond`` False) headers to set on the
    upstream response."""
    status: int = 200


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """A compiled ``corsPolicy``."""

    spec: CorsPolicy = field(repr=False)
    origins: tuple[StringMatcher, ...] = ()
    allow_all_origins: bool = False
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    forward_unmatched_preflights: bool = True
    _response_tail: Pairs = field(default=(), repr=False, compare=False)

    @classmethod
    def compile(cls, spec: CorsPolicy) -> CorsConfig:
        if spec.allow_origins:
            origins = tuple(StringMatcher.compile(sm) for sm in spec.allow_origins)
        else:
            origins = tuple(StringMatcher.compile(StringMatch(exact=o)) for o in spec.allow_origin)
        # Envoy's isOriginAllowed tries `*` first: a matcher that accepts it opens all origins.
        allow_all = any(m.kind != "present" and m("*") for m in origins)
        methods = ",".join(spec.allow_methods)
        headers = ",".join(spec.allow_headers)
        expose = ",".join(spec.expose_headers)
        max_age = str(int(spec.max_age.seconds)) if spec.max_age is not None else ""
        credentials = bool(spec.allow_credentials)
        response: list[tuple[str, str]] = []
        if credentials:
            response.append((ALLOW_CREDENTIALS, "true"))
        if expose:
            response.append((EXPOSE_HEADERS, expose))
        forward = spec.unmatched_preflights is None or spec.unmatched_preflights.value != "IGNORE"
        return cls(spec, origins, allow_all, methods, headers, expose, max_age, credentials, forward,
                   tuple(response))

    def is_origin_allowed(self, origin: str) -> bool:
        if self.allow_all_origins:
            return True
        for m in self.origins:
            if m.test(origin):
                return True
        return False

    def decide(self, method: str, headers: Mapping[str, str]) -> CorsDecision | None:
        """The CORS decision for a request (lowercase header names); None: nothing to do."""
        origin = headers.get("origin")
        if not origin:
            return None
        allowed = self.is_origin_allowed(origin)
        request_method = headers.get(REQUEST_METHOD) if method == "OPTIONS" else None
        if not request_method:  # an actual request
            if not allowed:
                return None
            return CorsDecision(False, ((ALLOW_ORIGIN, origin), *self._response_tail))
        if not allowed and self.forward_unmatched_preflights:
            return None
        out: list[tuple[str, str]] = [(ALLOW_ORIGIN, origin)] if allowed else []
        if self.allow_credentials:
            out.append((ALLOW_CREDENTIALS, "true"))
        if self.allow_methods:
            out.append((ALLOW_METHODS, request_method if self.allow_methods == "*" else self.allow_methods))
        if self.allow_headers:
            if self.allow_headers != "*":
                out.append((ALLOW_HEADERS, self.allow_headers))
            elif headers.get(REQUEST_HEADERS):
                out.append((ALLOW_HEADERS, headers[REQUEST_HEADERS]))
        if self.max_age:
            out.append((MAX_AGE, self.max_age))
        return CorsDecision(True, tuple(out))


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    """``OPTIONS`` with a non-empty ``Origin`` and ``Access-Control-Request-Method``."""
    return method == "OPTIONS" and bool(headers.get("origin")) and bool(headers.get(REQUEST_METHOD))
