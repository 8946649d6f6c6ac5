"""meshfed ``RateLimit`` resources compiled into the token buckets of one proxy.

``RateLimits.compile(resources, ...)`` sorts each resource the proxy is concerned with
into one of three tables, once per snapshot:

* ``targetRef`` with ``route``: requests this proxy sends on that route to that host;
* ``targetRef`` alone: every request this proxy sends to that host (per destination);
* ``workloadSelector`` selecting this proxy's workload (same namespace): every request
  its inbound side receives.

A request takes a token from every bucket that applies, and is refused (429, ``RL``)
by the first that is empty. Buckets are created full on first use, at that instant, so
no clock is needed to compile; they start full again when a new snapshot is applied,
as Envoy's local rate limit does when its filter config changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from topology import Resource

from ._actions import qualify_host
from ._ratelimit import Allowed, Limited, TokenBucket, TokenBucketConfig

KIND = "RateLimit"


@dataclass(eq=False)
class Bucket:
    """A token bucket of one RateLimit resource, created on first use."""

    source: str
    """``namespace/name`` of the RateLimit."""
    config: TokenBucketConfig
    _bucket: TokenBucket | None = field(default=None, repr=False)

    def take(self, now: float) -> Allowed | Limited:
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(self.config, now)
        return bucket.try_take(now)


def take_all(buckets: Iterable[Bucket], now: float) -> Allowed | Limited | None:
    """One token from each bucket: the first refusal, else the grant with the fewest tokens
    left (whose headers the response carries); None when no bucket applies."""
    best: Allowed | None = None
    for b in buckets:
        got = b.take(now)
        if type(got) is Limited:
            return got
        if best is None or got.remaining < best.remaining:  # type: ignore[union-attr]
            best = got  # type: ignore[assignment]
    return best


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The buckets of one proxy (see the module docstring)."""

    by_route: Mapping[tuple[str, str], tuple[Bucket, ...]] = field(default_factory=dict)
    """(destination FQDN, route name) -> buckets."""
    by_host: Mapping[str, tuple[Bucket, ...]] = field(default_factory=dict)
    """Destination FQDN -> buckets."""
    inbound: tuple[Bucket, ...] = ()

    @property
    def has_outbound(self) -> bool:
        return bool(self.by_route or self.by_host)

    def outbound(self, host: str, route: str) -> tuple[Bucket, ...]:
        """Buckets for a request to ``host`` matched by the route named ``route``."""
        found = self.by_host.get(host, ())
        if self.by_route:
            found = found + self.by_route.get((host, route), ())
        return found

    @classmethod
    def compile(cls, resources: Iterable[Resource], *, namespace: str, labels: Mapping[str, str],
                domain: str) -> RateLimits:
        by_route: dict[tuple[str, str], list[Bucket]] = {}
        by_host: dict[str, list[Bucket]] = {}
        inbound: list[Bucket] = []
        for r in resources:
            if r.kind != KIND:
                continue
            spec = r.spec
            bucket = Bucket(f"{r.namespace}/{r.name}", TokenBucketConfig.from_spec(spec))
            if spec.target_ref is not None:
                host = qualify_host(spec.target_ref.host, r.namespace, domain)
                if spec.route is not None:
                    by_route.setdefault((host, spec.route), []).append(bucket)
                else:
                    by_host.setdefault(host, []).append(bucket)
            elif spec.workload_selector is not None and r.namespace == namespace:
                wanted = spec.workload_selector.match_labels
                if all(labels.get(k) == v for k, v in wanted.items()):
                    inbound.append(bucket)
        return cls({k: tuple(v) for k, v in by_route.items()}, {k: tuple(v) for k, v in by_host.items()},
                   tuple(inbound))


NO_RATE_LIMITS = RateLimits()
