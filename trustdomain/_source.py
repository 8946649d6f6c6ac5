"""The SVID source that follows rotation: a trio task feeding fresh SVIDs to MtlsContexts.

The decisions (when to renew, how long to back off) are ``RenewalSchedule``'s; this is
the loop of sleep -> renew -> swap around it. Sleeping uses trio's clock and the
renewal point uses the injected wall clock, so under trio's MockClock a test runs many
rotations in no real time while every certificate stays valid for the real OpenSSL.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import random
from typing import Awaitable, Callable, Union

import trio

from ._errors import TrustDomainError
from ._rotation import RenewalPolicy, renewal_schedule
from ._svid import X509Svid
from ._tls import MtlsContexts

log = logging.getLogger("meshfed.trustdomain.rotation")

Renew = Callable[[dt.datetime], Union[X509Svid, Awaitable[X509Svid]]]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class SvidRotator:
    """Renews ``contexts``' SVID at its scheduled point, forever, until cancelled."""

    def __init__(self, contexts: MtlsContexts, renew: Renew, *, policy: RenewalPolicy = RenewalPolicy(),
                 rng: random.Random | None = None, wall_clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.contexts = contexts
        self.renew = renew
        self.policy = policy
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.rotations = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (f"<SvidRotator {self.contexts.svid.spiffe_id} rotations={self.rotations} "
                f"failures={self.failures}>")

    async def _renew_once(self, now: dt.datetime) -> X509Svid:
        result = self.renew(now)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        schedule = renewal_schedule(self.contexts.svid.certificate, self.rng, self.policy)
        while True:
            now = self.wall_clock()
            due = schedule.next_renewal(now) if attempt == 0 else schedule.retry_at(now, attempt)
            await trio.sleep(max(0.0, (due - now).total_seconds()))
            now = self.wall_clock()
            try:
                svid = await self._renew_once(now)
            except TrustDomainError as exc:
                attempt += 1
                self.failures += 1
                log.warning("renewing %s failed (attempt %d): %s", self.contexts.svid.spiffe_id, attempt, exc)
                continue
            self.contexts.update(svid=svid)
            self.rotations += 1
            attempt = 0
            schedule = renewal_schedule(svid.certificate, self.rng, self.policy)
            log.info("rotated %s: serial %x until %s", svid.spiffe_id, svid.serial, svid.not_after)
