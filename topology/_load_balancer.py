"""Load-balancer settings of a DestinationRule: a simple algorithm or consistent hashing,
locality settings and slow start (istio/api ``networking/v1`` ``LoadBalancerSettings``)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ._decode import Check, describe
from ._duration import Duration
from ._istio_checks import check_duration, check_oneof
from ._locality import LocalityLoadBalancerSetting

MAGLEV_TABLE_LIMIT = 5_000_011
"""Envoy: the Maglev table size must be a prime below 5000011."""


class SimpleLB(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    LEAST_CONN = "LEAST_CONN"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"


@dataclass(frozen=True, slots=True)
class HTTPCookie:
    """Cookie whose value is the hash key."""

    name: str | None = None
    """Name of the cookie. Required."""
    path: str | None = None
    """Path set on a generated cookie."""
    ttl: Duration | None = None
    """Lifetime of a generated cookie; 0s makes a session cookie. Without it no cookie is generated."""

    def _check(self, c: Check) -> None:
        if not self.name:
            c.error("", "an httpCookie needs a name")


@dataclass(frozen=True, slots=True)
class RingHash:
    """Ring hash (ketama) consistent hashing."""

    minimum_ring_size: int | None = None
    """Minimum number of virtual nodes on the ring. Defaults to 1024."""


@dataclass(frozen=True, slots=True)
class MagLev:
    """Maglev consistent hashing."""

    table_size: int | None = None
    """Size of the Maglev lookup table, a prime below 5000011. Defaults to 65537."""

    def _check(self, c: Check) -> None:
        size = self.table_size
        if not size:
            c.error("", "maglev needs tableSize")
        elif size >= MAGLEV_TABLE_LIMIT or size < 0:
            c.error("tableSize", f"must be below {MAGLEV_TABLE_LIMIT}; found {describe(size)}")
        elif not _is_prime(size):
            c.error("tableSize", f"must be a prime number; found {describe(size)}")


def _is_prime(x: int) -> bool:
    """Envoy's Primes::isPrime (source/common/common/utility.cc)."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % f for f in range(3, math.isqrt(x) + 1, 2))


@dataclass(frozen=True, slots=True)
class ConsistentHashLB:
    """Soft session affinity: requests with the same key go to the same host."""

    http_header_name: str | None = None
    """Hash on this request header."""
    http_cookie: HTTPCookie | None = None
    """Hash on a cookie."""
    use_source_ip: bool | None = None
    """Hash on the source IP (TCP and HTTP)."""
    http_query_parameter_name: str | None = None
    """Hash on this query parameter."""
    ring_hash: RingHash | None = None
    """Ring hash algorithm (the default algorithm)."""
    maglev: MagLev | None = None
    """Maglev algorithm."""
    minimum_ring_size: int | None = None
    """Deprecated; use ringHash.minimumRingSize."""

    def _check(self, c: Check) -> None:
        check_oneof(c, self, ("http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name"))
        check_oneof(c, self, ("ring_hash", "maglev"))
        if self.minimum_ring_size is not None:
            c.warning("minimumRingSize", "'minimumRingSize' is deprecated; use 'ringHash: {minimumRingSize: ...}'")
            if self.ring_hash is not None or self.maglev is not None:
                c.error("minimumRingSize", "only one of minimumRingSize and ringHash/maglev may be set")


@dataclass(frozen=True, slots=True)
class WarmupConfiguration:
    """Slow start for new endpoints."""

    duration: Duration | None = None
    """Length of the warmup window. Required."""
    minimum_percent: float | None = None
    """Traffic share a new endpoint starts with, 0..100. Defaults to 10."""
    aggression: float | None = None
    """Curve of the ramp; 1.0 is linear, at least 1. Defaults to 1.0."""

    def _check(self, c: Check) -> None:
        if self.duration is None:
            c.error("", "warmup needs a duration")
        check_duration(c, "duration", self.duration)
        if self.minimum_percent is not None and not 0 <= self.minimum_percent <= 100:
            c.error("minimumPercent", f"must be between 0 and 100; found {describe(self.minimum_percent)}")
        if self.aggression is not None and self.aggression < 1:
            c.error("aggression", f"must be at least 1; found {describe(self.aggression)}")


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    """How a host is picked among the endpoints of a service."""

    simple: SimpleLB | None = None
    """A standard algorithm. Defaults to UNSPECIFIED, which Istio resolves to LEAST_REQUEST."""
    consistent_hash: ConsistentHashLB | None = None
    """Consistent hashing for session affinity."""
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    """Locality weighting and failover; replaces the mesh-wide setting entirely."""
    warmup_duration_secs: Duration | None = None
    """Slow-start window for new endpoints (ROUND_ROBIN and LEAST_REQUEST only)."""
    warmup: WarmupConfiguration | None = None
    """Slow-start configuration; supersedes warmupDurationSecs."""

    def _check(self, c: Check) -> None:
        check_oneof(c, self, ("simple", "consistent_hash"))
        check_oneof(c, self, ("warmup_duration_secs", "warmup"))
        check_duration(c, "warmupDurationSecs", self.warmup_duration_secs)
