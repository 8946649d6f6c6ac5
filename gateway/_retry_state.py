"""Per-request retry bookkeeping around a ``RetryPolicy``.

A ``RetryState`` lives as long as one downstream request. It counts attempts, keeps the
hosts (and localities) already tried so the balancer picks another one - Envoy's
``previous_hosts`` retry predicate, which Istio installs by default - measures the
request body against the replay buffer, and holds the cluster's retry permit from the
moment a retry is decided until that retry's outcome is known (Envoy's
``RetryStateImpl`` takes ``retries().inc()`` at ``shouldRetry`` and gives it back at the
next decision or when the request ends). It draws the backoff with the injected
``random.Random``; the caller sleeps it.
"""

from __future__ import annotations

import random

from ._breaker import CircuitBreaker, Overflow, Permit, Resource
from ._retry import AttemptResult, RetryDecision, RetryPolicy, RetryVerdict


class RetryState:
    """Retry bookkeeping of one request: attempts, hosts tried, replay buffer, retry permit."""

    def __init__(self, policy: RetryPolicy, rng: random.Random, breaker: CircuitBreaker | None = None) -> None:
        self.policy = policy
        self._rng = rng
        self._breaker = breaker
        self.attempts = 0
        self.body_bytes = 0
        self.body_dropped = False
        """The replay buffer let go of the body (``RequestBody.replayable`` turned False)."""
        self._hosts: list[str] = []
        self._localities: list[str] = []
        self._permit: Permit | None = None

    def record_attempt(self, host: str, locality: str | None = None) -> int:
        """An attempt starts on ``host``; returns its number (1 = first try)."""
        self.attempts += 1
        self._hosts.append(host)
        if locality is not None:
            self._localities.append(locality)
        return self.attempts

    def record_request_body(self, nbytes: int) -> bool:
        """Body bytes arrived; returns whether the request can still be replayed."""
        self.body_bytes += nbytes
        return self.replayable

    @property
    def replayable(self) -> bool:
        return not self.body_dropped and self.body_bytes <= self.policy.per_request_buffer_limit

    @property
    def tried_hosts(self) -> tuple[str, ...]:
        return tuple(self._hosts)

    @property
    def excluded_hosts(self) -> frozenset[str]:
        """Hosts the balancer should avoid for the next attempt (``previous_hosts``)."""
        return frozenset(self._hosts) if self.policy.retry_ignore_previous_hosts else frozenset()

    @property
    def tried_localities(self) -> frozenset[str]:
        return frozenset(self._localities)

    def should_retry(self, result: AttemptResult) -> RetryDecision:
        """Decision for the attempt that just ended; on RETRY a retry permit is held
        until the next decision or ``close()``, and the backoff is drawn."""
        self._release_permit()
        decision = self.policy.should_retry(result, max(self.attempts, 1), replayable=self.replayable)
        if not decision.retry:
            return decision
        if self._breaker is not None:
            got = self._breaker.try_acquire(Resource.RETRIES)
            if isinstance(got, Overflow):
                return RetryDecision(RetryVerdict.OVERFLOW, decision.condition, flag=got.flag)
            self._permit = got
        backoff = self.policy.draw_backoff(self._rng, self.attempts - 1)
        return RetryDecision(RetryVerdict.RETRY, decision.condition, backoff)

    def close(self) -> None:
        """The request is over: give back a retry permit still held."""
        self._release_permit()

    def _release_permit(self) -> None:
        if self._permit is not None:
            self._permit.release()
            self._permit = None

    def __repr__(self) -> str:
        return f"<RetryState {self.attempts}/{self.policy.attempts + 1} attempts, tried {list(self._hosts)}>"
