"""The inbound request's local answers after authorization: the workload's rate limits (429
``RL``) and WorkloadFaults (delay ``DI``, abort ``FI``), and how a local answer is counted.

Kept apart from ``_inbound`` (connections, TLS, the request path) because each is a policy
of its own with its own metrics; the request path asks them in Envoy's filter order:
RBAC -> local rate limit -> fault -> router.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import trio

from ._fault import FAULT_BODY, NO_FAULT, Abort
from ._flags import format_flags
from ._h2down import H2Downstream
from ._ratelimit import Limited
from ._ratelimits import take_all
from ._rescue import grpc_status_for

if TYPE_CHECKING:
    from ._proxy import Proxy
    from ._snapshot import InboundConfig, Snapshot


def rate_limited(snap: Snapshot, proxy: Proxy) -> list[tuple[bytes, bytes]] | None:
    """Take a token from the workload's ``RateLimit`` buckets; the 429's headers when refused."""
    got = take_all(snap.ratelimits.inbound, trio.current_time())
    if got is None or type(got) is not Limited:
        return None
    proxy.metrics.stat("meshfed_ratelimit_limited_total").labels("inbound").inc()
    return got.wire_headers


async def draw_faults(inbound: InboundConfig, rng: random.Random, proxy: Proxy) -> tuple[str, Abort | None]:
    """Draw the workload's faults for one request and sleep its delays: its flags and its abort."""
    decision, delayed, aborted = inbound.faults.decide(rng)
    if decision is NO_FAULT:
        return "-", None
    stat = proxy.metrics.stat
    for source in delayed:
        stat("meshfed_fault_delays_injected_total").labels(source).inc()
    for source in aborted:
        stat("meshfed_fault_aborts_injected_total").labels(source).inc()
    if decision.delay is not None:
        await trio.sleep(decision.delay)
    return format_flags(decision.flags), decision.abort


async def answer_abort(down: Any, abort: Abort) -> bool:
    """The fault filter's local reply (a gRPC abort is Trailers-Only); whether the connection goes on."""
    if abort.grpc_status is None:
        return bool(await down.local_reply(abort.http_status, FAULT_BODY))
    return bool(await down.local_reply(200, b"", abort.wire_headers))


def reported(down: object, status: int) -> tuple[int, int | None]:
    """(response code, gRPC status) of a local reply as the metrics count it: a gRPC call's
    Trailers-Only reply is HTTP 200 carrying the mapped gRPC status."""
    if type(down) is H2Downstream and down.grpc:
        return 200, grpc_status_for(status)
    return status, None
