"""Ketama ring hash: Envoy's RING_HASH table (``ring_hash_lb.cc``), built from host keys
and weights, looked up by a 64-bit request hash.

Theory of operation. Every host is hashed onto a 64-bit circle many times
(``"<key>_0"``, ``"<key>_1"``, ...); a request goes to the first point at or after its own
hash, wrapping at the top. Removing a host moves the keys on its own points (1/N of
them) plus, if the other hosts' point counts change, the keys their extra points cover.
Envoy sizes the ring as ``scale = ceil(min_weight * minimum_ring_size) / min_weight``
(weights normalised, capped at ``maximum_ring_size``), so with equal weights each host
has ``ceil(minimum_ring_size / N)`` points: from 100 to 99 hosts both are 11 and only
the removed host's keys move; from 10 to 9 hosts 103 become 114 and the survivors' new
points take about 7 % more (17.6 % moved in all, measured). Points are laid out in key
order, so a rebuild does not depend on the order the hosts came in.

A retry that must avoid earlier hosts walks on around the ring to the next point of a
host it may use - the ring's own notion of "the next host" - where Envoy's retry steps
one point per attempt and may land on the same host again.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Sequence

from . import GatewayError
from ._hashkey import stable_hash64

DEFAULT_MINIMUM_RING_SIZE = 1024  # Envoy RingHash.minimum_ring_size default
MAXIMUM_RING_SIZE = 8 * 1024 * 1024  # Envoy: "Defaults to 8M entries, and limited to 8M entries"


class RingSizeError(GatewayError):
    """A ring size outside 1..8M, or a minimum above the maximum."""

    def __init__(self, message: str, minimum: int, maximum: int) -> None:
        super().__init__(message)
        self.minimum = minimum
        self.maximum = maximum


class RingHashTable:
    """An immutable ring over ``(key, weight)`` pairs; ``lookup`` returns an index into them."""

    __slots__ = ("_points", "_owners", "size", "min_points", "max_points", "_n")

    name = "ring_hash"

    def __init__(self, hosts: Sequence[tuple[str, int]], minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE,
                 maximum_ring_size: int = MAXIMUM_RING_SIZE) -> None:
        if not 1 <= minimum_ring_size <= MAXIMUM_RING_SIZE or not 1 <= maximum_ring_size <= MAXIMUM_RING_SIZE:
            raise RingSizeError(f"ring sizes must be between 1 and {MAXIMUM_RING_SIZE}; found minimum "
                                f"{minimum_ring_size}, maximum {maximum_ring_size}",
                                minimum_ring_size, maximum_ring_size)
        if minimum_ring_size > maximum_ring_size:
            raise RingSizeError(f"minimum ring size {minimum_ring_size} is above the maximum {maximum_ring_size}",
                                minimum_ring_size, maximum_ring_size)
        self._n = len(hosts)
        entries: list[tuple[int, int]] = []
        counts = [0] * len(hosts)
        if hosts:
            # Envoy: scale = min(ceil(min_w * minimum) / min_w, maximum) with normalised
            # weights, then walks the hosts with running sums so that fractional shares
            # still add up. Here the same sums are exact fractions num/den (Envoy uses
            # doubles, which can give a host one point too many), and the walk goes in key
            # order so that it does not depend on the order the hosts came in.
            total = sum(w for _, w in hosts)
            smallest = min(w for _, w in hosts)
            per_smallest = -(-smallest * minimum_ring_size // total)  # ceil(min_w * minimum)
            if per_smallest * total > maximum_ring_size * smallest:
                num, den = maximum_ring_size, total
            else:
                num, den = per_smallest, smallest
            cumulative, placed = 0, 0
            for index in sorted(range(len(hosts)), key=lambda i: hosts[i][0]):
                key, weight = hosts[index]
                cumulative += weight
                target = -(-num * cumulative // den)  # ceil(scale * cumulative weight share)
                counts[index] = target - placed
                entries.extend((stable_hash64(f"{key}_{i}"), index) for i in range(target - placed))
                placed = target
            entries.sort()
        self._points = [h for h, _ in entries]
        self._owners = [i for _, i in entries]
        self.size = len(entries)
        """Number of points on the ring."""
        self.min_points = min(counts, default=0)
        """Fewest points any host has (Envoy stat ``min_hashes_per_host``)."""
        self.max_points = max(counts, default=0)

    def __len__(self) -> int:
        return self._n

    def lookup(self, hash_: int) -> int:
        """Index of the host owning the first point at or after ``hash_``."""
        i = bisect_left(self._points, hash_)
        return self._owners[i if i < self.size else 0]

    def lookup_avoiding(self, hash_: int, avoid: Collection[int]) -> int:
        """As ``lookup``, walking on clockwise past points of hosts in ``avoid``; when every
        host is to be avoided, the plain lookup."""
        if len(avoid) >= self._n:
            return self.lookup(hash_)
        start = bisect_left(self._points, hash_)
        owners, size = self._owners, self.size
        for step in range(size):
            owner = owners[(start + step) % size]
            if owner not in avoid:
                return owner
        return self.lookup(hash_)  # unreachable: every host has at least one point

    def points_of(self, index: int) -> int:
        """How many points host ``index`` has (for tests and ``/clusters``)."""
        return self._owners.count(index)

    def __repr__(self) -> str:
        return f"<RingHashTable [{self._n} hosts, {self.size} points, {self.min_points}..{self.max_points} per host]>"
