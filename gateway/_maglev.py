"""Maglev consistent hashing: Envoy's MAGLEV table (``maglev_lb.cc``, after Eisenbud et
al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016, listing 1).

Theory of operation. The table has a prime number M of slots (65537 by default). Each
host owns a permutation of the slots, ``(offset + j * skip) mod M`` with ``offset`` and
``skip`` drawn from two independent hashes of its key; M prime makes every ``skip`` walk
every slot. Hosts take turns claiming the next free slot of their permutation until the
table is full; a host of weight w takes a turn w/max_weight as often as the heaviest
(Envoy's ``target_weight_`` bookkeeping), so slot counts follow weights. A request hash
picks slot ``hash mod M``: O(1), and a host's removal frees its slots while the others
mostly keep theirs - slightly more churn than a ring, for a flat, even table.

Hosts are laid out in key order, as Envoy sorts them, so the table does not depend on
the order the hosts came in. A retry that must avoid earlier hosts re-hashes as Envoy
does (``hash ^ (2^64 - attempt)``) a few times, then walks the table from there.

Building the default table takes 30-60 ms here (3 to 1000 hosts), paid when the
endpoints change, never per request.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from . import GatewayError
from ._hashkey import stable_hash64

DEFAULT_TABLE_SIZE = 65537  # Envoy MaglevTable::DefaultTableSize
TABLE_SIZE_LIMIT = 5_000_011  # Envoy: "must be prime number limited to 5000011"
_REHASHES = 8  # re-hash attempts before walking the table on a retry
_MASK64 = (1 << 64) - 1


class TableSizeError(GatewayError):
    """A Maglev table size that is not a prime below 5000011."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


class MaglevTable:
    """An immutable Maglev lookup table over ``(key, weight)`` pairs; ``lookup`` returns an
    index into them."""

    __slots__ = ("_table", "size", "counts", "_n")

    name = "maglev"

    def __init__(self, hosts: Sequence[tuple[str, int]], table_size: int = DEFAULT_TABLE_SIZE) -> None:
        if not 2 < table_size < TABLE_SIZE_LIMIT or not is_prime(table_size):
            raise TableSizeError(f"maglev table size must be a prime between 3 and {TABLE_SIZE_LIMIT}; "
                                 f"found {table_size}", table_size)
        self.size = table_size
        self._n = len(hosts)
        self.counts = [0] * len(hosts)
        """Slots each host owns, indexed like the hosts given."""
        self._table: list[int] = [] if not hosts else self._build(hosts, table_size)

    def _build(self, hosts: Sequence[tuple[str, int]], m: int) -> list[int]:
        order = sorted(range(len(hosts)), key=lambda i: hosts[i][0])
        offsets = [stable_hash64(hosts[i][0]) % m for i in order]
        skips = [stable_hash64(hosts[i][0], seed=1) % (m - 1) + 1 for i in order]
        weights = [hosts[i][1] for i in order]
        max_weight = max(weights)
        nexts = offsets[:]  # next slot of each permutation to try
        targets = [0] * len(order)  # Envoy's target_weight_, in units of host weight
        table = [-1] * m
        counts = self.counts
        filled = 0
        iteration = 0
        while filled < m:
            iteration += 1
            for j, index in enumerate(order):
                # A host of weight w takes a turn when iteration * w has reached its target,
                # which then grows by max_weight: w/max_weight turns per iteration.
                if iteration * weights[j] < targets[j]:
                    continue
                targets[j] += max_weight
                c, skip = nexts[j], skips[j]
                while table[c] >= 0:
                    c += skip
                    if c >= m:
                        c -= m
                table[c] = index
                c += skip
                nexts[j] = c - m if c >= m else c
                counts[index] += 1
                filled += 1
                if filled == m:
                    break
        return table

    def __len__(self) -> int:
        return self._n

    def lookup(self, hash_: int) -> int:
        return self._table[hash_ % self.size]

    def lookup_avoiding(self, hash_: int, avoid: Collection[int]) -> int:
        """As ``lookup``, steering clear of hosts in ``avoid``; when every host is to be
        avoided, the plain lookup."""
        if len(avoid) >= self._n:
            return self.lookup(hash_)
        table, m = self._table, self.size
        for attempt in range(1, _REHASHES + 1):
            # Envoy: "mutate the hash to choose an alternate host ... value with most bits set".
            owner = table[(hash_ ^ ((_MASK64 - attempt + 1) & _MASK64)) % m]
            if owner not in avoid:
                return owner
        start = hash_ % m
        for step in range(1, m):
            owner = table[(start + step) % m]
            if owner not in avoid:
                return owner
        return self.lookup(hash_)  # unreachable: every host owns at least one slot when N <= M

    def __repr__(self) -> str:
        spread = f"{min(self.counts)}..{max(self.counts)} slots per host" if self.counts else "empty"
        return f"<MaglevTable [{self._n} hosts, {self.size} slots, {spread}]>"
