"""meshfed.io/v1alpha1 ``RateLimit``: local token-bucket rate limits, meshfed's own kind.

Istio has no first-class local rate limit - its docs configure Envoy's
``envoy.filters.http.local_ratelimit`` through an EnvoyFilter patch, which meshfed does
not accept. This kind says the same thing in a few typed fields::

    apiVersion: meshfed.io/v1alpha1
    kind: RateLimit
    metadata: {name: reviews, namespace: bookinfo}
    spec:
      targetRef: {host: reviews}     # per destination: every client sidecar limits its calls
      route: jason                   # optional: only requests matched by this VirtualService route name
      maxTokens: 100                 # bucket size: the burst, and the tokens at start
      tokensPerFill: 10              # tokens added per fill (default 1)
      fillInterval: 1s               # time between fills (at least 50ms, as Envoy requires)

or, instead of ``targetRef``, ``workloadSelector: {matchLabels: {app: reviews}}``: the
sidecars of the selected workloads (in the resource's namespace) limit the requests they
receive, after authorization (Envoy's inbound local rate limit). Each sidecar keeps its
own buckets, as Envoy's local rate limit does: the limit is per proxy, not global.
A refused request is answered 429 with response flag ``RL`` and ``x-ratelimit-*``
headers (``gateway._ratelimit``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._decode import Check, describe, opt
from ._duration import Duration
from ._istio_checks import check_selector_labels, check_wildcard_domain

MIN_FILL_INTERVAL_NANOS = 50_000_000  # Envoy TokenBucket: fill_interval "must be >= 50ms"


@dataclass(frozen=True, slots=True)
class RateLimitTarget:
    """The destination whose callers are limited."""

    host: str = opt(required=True)
    """Service host as in a VirtualService destination; a short name is qualified with
    the resource's namespace. Required."""

    def _check(self, c: Check) -> None:
        if self.host == "*":
            c.error("host", "'*' cannot be limited as one destination; name one host")
        else:
            check_wildcard_domain(c, "host", self.host)


@dataclass(frozen=True, slots=True)
class RateLimitSelector:
    """The workloads (of the resource's namespace) that limit what they receive."""

    match_labels: dict[str, str] = opt(factory=dict)
    """Labels a workload must carry, all of them; empty selects every workload of the namespace."""

    def _check(self, c: Check) -> None:
        check_selector_labels(c, "matchLabels", self.match_labels)


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """One token bucket and where it applies."""

    max_tokens: int = opt(required=True)
    """Bucket size: the burst allowed, and the tokens at start. Required, at least 1."""
    fill_interval: Duration = opt(required=True)
    """Time between fills. Required, at least 50ms."""
    tokens_per_fill: int = 1
    """Tokens added per fill. Defaults to 1."""
    target_ref: RateLimitTarget | None = None
    """Per destination, enforced by client sidecars. One of targetRef or workloadSelector."""
    workload_selector: RateLimitSelector | None = None
    """Per receiving workload, enforced by its sidecar. One of targetRef or workloadSelector."""
    route: str | None = None
    """Name of a VirtualService http route (``http[].name``, ``.<match name>`` appended as
    Istio names routes): only requests matched by it are limited. Needs targetRef.
    Defaults to every request to the target."""

    def _check(self, c: Check) -> None:
        if self.max_tokens < 1:
            c.error("maxTokens", f"must be at least 1; found {describe(self.max_tokens)}")
        if self.tokens_per_fill < 1:
            c.error("tokensPerFill", f"must be at least 1; found {describe(self.tokens_per_fill)}")
        if self.fill_interval.nanos < MIN_FILL_INTERVAL_NANOS:
            c.error("fillInterval", f"must be at least 50ms; found {str(self.fill_interval)!r}")
        if self.target_ref is None and self.workload_selector is None:
            c.error("", "one of targetRef or workloadSelector must be set; found neither")
        elif self.target_ref is not None and self.workload_selector is not None:
            c.error("workloadSelector", "only one of targetRef and workloadSelector may be set; found both")
        if self.route is not None and self.target_ref is None:
            c.error("route", f"needs targetRef: routes belong to the callers' VirtualServices; "
                             f"found route {describe(self.route)} with workloadSelector")
        if self.route == "":
            c.error("route", "must not be empty; omit it to limit every route")
