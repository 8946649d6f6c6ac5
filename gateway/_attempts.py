"""The outbound request stack, back half: the attempts of one request.

``RouteTimeoutLayer`` bounds all attempts together (VirtualService ``timeout``);
``RetryLayer`` runs attempts until one is final, Envoy's router retry loop around the
pure ``RetryPolicy``/``RetryState``; ``PerTryTimeoutLayer`` bounds one attempt;
``BalancerLayer`` takes the request permit of the circuit breaker, picks a host the
outlier detector has not ejected (and none an earlier attempt used) and records the
attempt's result for that host; ``EndpointLayer`` carries the attempt over a pooled
(m)TLS connection whose opening the cluster's connection breaker gates.

How a retry decision is made on a response: the endpoint hands the response head to
``x.attempt_accept`` before anything goes downstream; the balancer layer's part records
the status for outlier detection, the retry layer's part asks ``RetryState``. A retry
raises ``RetryableResponse``: that connection is dropped, the client has seen nothing,
and the loop goes on after the jittered backoff, on another host. Connect failures,
resets and per-try timeouts come back as errors and are judged the same way; once a
response head went downstream nothing is retried. Retries spent: the last result goes
downstream with flag ``URX``.
"""

from __future__ import annotations

import functools
import operator
import random
from typing import TYPE_CHECKING, Any

import trio

from ._breaker import Overflow, Resource
from ._events import Response
from ._exchange import ResponseAborted, RetryableResponse, forward_attempt, forward_upgrade
from ._h2forward import forward_attempt_h2, needs_h2_relay
from ._layers import Layer
from ._balancer import NO_CONTEXT, PickContext
from ._outlier_config import OutlierResult
from ._rescue import (NoHealthyUpstreamError, UpstreamConnectError, UpstreamOverflowError, UpstreamProtocolError,
                      UpstreamResetError, UpstreamTimeoutError)
from ._retry import AttemptOutcome, AttemptResult
from ._retry_state import RetryState
from ._upstream import open_connection

if TYPE_CHECKING:
    from ._outbound_request import OutboundRequest
    from ._proxy import Proxy

_RETRY_HEADERS = frozenset({b"grpc-status", b"x-envoy-ratelimited"})
"""Response headers the retry conditions read besides ``retriable_headers``."""
_PENDING = Overflow(Resource.PENDING_REQUESTS)
_NAME = operator.itemgetter(0)


def is_cancelled(exc: BaseException) -> bool:
    """A trio cancellation, bare or in a nursery's exception group."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None


def record_timeout(x: OutboundRequest, proxy: Proxy) -> None:
    """The attempt in flight was cancelled by a timeout: the host's stats and its outlier monitor."""
    host = x.inflight
    cluster = x.cluster
    if host is None or cluster is None:
        return
    x.inflight = None
    host.endpoint.stats.rq_timeout += 1
    proxy.metrics.stat("meshfed_upstream_rq_timeout_total").labels(cluster.name).inc()
    cluster.picker.record_result(host.key, OutlierResult.LOCAL_ORIGIN_TIMEOUT, trio.current_time())


class RouteTimeoutLayer(Layer):
    """The route ``timeout`` (or a trusted ``x-envoy-upstream-rq-timeout-ms``): 504 ``UT``."""

    def __init__(self, inner: Any, proxy: Proxy) -> None:
        super().__init__(inner)
        self.proxy = proxy

    async def handle(self, x: OutboundRequest) -> None:
        if not x.policy.has_timeouts and not x.envoy_headers:
            await self.inner.handle(x)
            return
        x.timer = timer = x.policy.timeouts.start(x.started, x.envoy_headers)
        deadline = timer.route_deadline
        if deadline is None:
            await self.inner.handle(x)
            return
        with trio.move_on_at(deadline) as scope:
            await self.inner.handle(x)
        if scope.cancelled_caught:
            record_timeout(x, self.proxy)
            error = UpstreamTimeoutError(timer.route_timeout or 0.0)
            if x.state.head_sent:
                raise ResponseAborted(error)
            raise error


class RetryLayer(Layer):
    """Envoy's retry loop (module docstring); a route with ``attempts: 0`` passes through."""

    skip_to: Layer | None = None
    """The balancer layer: next when the request has no per-try timeout (one coroutine
    less per attempt than passing through ``PerTryTimeoutLayer``)."""

    def __init__(self, inner: Any, proxy: Proxy, rng: random.Random) -> None:
        super().__init__(inner)
        self.proxy = proxy
        self.rng = rng

    async def handle(self, x: OutboundRequest) -> None:
        policy = x.policy.retry
        cluster = x.cluster
        timer = x.timer
        inner = self.skip_to if timer is None or timer.per_try_timeout is None else self.inner
        if inner is None:
            inner = self.inner
        if policy.attempts <= 0 or x.upgrade or cluster is None:
            await inner.handle(x)
            return
        names = _header_names(policy.retriable_headers)
        codes = policy.retriable_status_codes
        rs: RetryState | None = None  # made at the first decision: most requests never need one

        def sync() -> RetryState:
            nonlocal rs
            if rs is None:
                rs = RetryState(policy, self.rng, cluster.breaker if cluster.limits_retries else None)
            host = x.host
            while rs.attempts < x.attempts and host is not None:
                rs.record_attempt(host.key, host.locality)
            body = x.body
            if body is not None:
                rs.body_bytes = body.size
                rs.body_dropped = not body.replayable
            return rs

        def accept(response: Response) -> None:
            status = response.status
            if (rs is None and status < 500 and status != 409 and status not in codes
                    and names.isdisjoint(map(_NAME, response.headers))):
                return  # no retryOn condition can match (``_retry.classify``): nothing to decide
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in response.headers if n in names}
            decision = sync().should_retry(AttemptResult.response(status, headers))
            if decision.retry:
                raise RetryableResponse(response.status, decision)
            if decision.flag is not None:
                x.flags.append(decision.flag)

        x.accept = accept
        try:
            while True:
                try:
                    await inner.handle(x)
                    return
                except RetryableResponse as r:
                    decision: Any = r.decision
                except (UpstreamConnectError, UpstreamResetError, UpstreamProtocolError, UpstreamTimeoutError) as exc:
                    if x.state.head_sent or x.attempts == 0:
                        raise
                    decision = sync().should_retry(AttemptResult.failure(_outcome(exc)))
                    if not decision.retry:
                        if decision.flag is not None:
                            x.flags.append(decision.flag)
                        raise
                self.proxy.metrics.stat("meshfed_upstream_rq_retry_total").labels(cluster.name).inc()
                x.exclude = sync().excluded_hosts
                x.new_attempt()
                if decision.backoff:
                    await trio.sleep(decision.backoff)
        finally:
            if rs is not None:
                rs.close()
            x.accept = None


@functools.lru_cache(maxsize=64)
def _header_names(retriable: tuple[str, ...]) -> frozenset[bytes]:
    """Response header names a retry decision reads: computed once per policy, not per request."""
    return _RETRY_HEADERS | {h.lower().encode("latin-1") for h in retriable}


def _outcome(exc: Exception) -> AttemptOutcome:
    if isinstance(exc, UpstreamConnectError):
        return AttemptOutcome.CONNECT_FAILURE
    if isinstance(exc, UpstreamTimeoutError):
        return AttemptOutcome.PER_TRY_TIMEOUT
    return AttemptOutcome.RESET


class PerTryTimeoutLayer(Layer):
    """``retries.perTryTimeout``: one attempt's bound; an expiry is retriable (504 ``UT``)."""

    def __init__(self, inner: Any, proxy: Proxy) -> None:
        super().__init__(inner)
        self.proxy = proxy

    async def handle(self, x: OutboundRequest) -> None:
        timer = x.timer
        per_try = timer.per_try_timeout if timer is not None else None
        if per_try is None:
            await self.inner.handle(x)
            return
        with trio.move_on_after(per_try) as scope:
            await self.inner.handle(x)
        if scope.cancelled_caught:
            record_timeout(x, self.proxy)
            error = UpstreamTimeoutError(per_try, "per-try timeout")
            if x.state.head_sent:
                raise ResponseAborted(error)
            raise error


class BalancerLayer(Layer):
    """Request permit, host pick (outlier-aware, avoiding tried hosts), per-host results."""

    def __init__(self, inner: Any, proxy: Proxy) -> None:
        super().__init__(inner)
        self.proxy = proxy

    async def handle(self, x: OutboundRequest) -> None:
        cluster = x.cluster
        assert cluster is not None
        permit = None
        if cluster.limits_requests:
            got = cluster.breaker.try_acquire(Resource.REQUESTS)
            if type(got) is Overflow:
                self.proxy.metrics.record_overflow(cluster.name, got)
                raise UpstreamOverflowError(cluster.name, "requests")
            permit = got
        # The attempt in this same coroutine (not a method of its own): one coroutine less per attempt.
        try:
            picker = cluster.picker
            exclude = x.exclude
            host = picker.pick(PickContext(x.hash, exclude, x.policy.retry.retry_remote_localities)
                               if x.hash is not None or exclude else NO_CONTEXT)
            if host is None:
                raise NoHealthyUpstreamError(cluster.name)
            x.host = x.inflight = host
            x.target = target = host.endpoint
            x.attempts += 1
            stats = target.stats
            stats.rq_total += 1
            stats.rq_active += 1
            picker.on_request_start(host)
            retry_accept = x.accept
            if picker.outlier is not None:
                key = host.key

                def accept(response: Response) -> None:
                    picker.record_status(key, response.status, trio.current_time())
                    if retry_accept is not None:
                        retry_accept(response)

                x.attempt_accept = accept
            else:
                x.attempt_accept = retry_accept
            try:
                await self.inner.handle(x)
            except BaseException as exc:
                stats.rq_error += 1
                if is_cancelled(exc):
                    raise  # x.inflight stays: the timeout that cancelled it records it
                x.inflight = None
                if isinstance(exc, UpstreamConnectError):
                    stats.cx_connect_fail += 1
                    picker.record_result(host.key, OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, trio.current_time())
                elif isinstance(exc, (UpstreamResetError, UpstreamProtocolError)) or (
                        isinstance(exc, ResponseAborted) and not isinstance(exc.cause, UpstreamTimeoutError)):
                    # Envoy router: any upstream reset but an overflow counts as a local-origin failure
                    picker.record_result(host.key, OutlierResult.LOCAL_ORIGIN_CONNECT_FAILED, trio.current_time())
                elif isinstance(exc, UpstreamOverflowError):
                    self.proxy.metrics.record_overflow(cluster.name, _PENDING)
                raise
            else:
                x.inflight = None
                if x.state.status >= 500:
                    stats.rq_error += 1
                else:
                    stats.rq_success += 1
            finally:
                stats.rq_active -= 1
                picker.on_request_end(host)
                # The retry layer's accept closes over ``x``: dropping it here leaves no cycle
                # x -> accept -> x, so the request's objects go when it ends, not at the
                # next collection of the cyclic GC.
                x.attempt_accept = None
        finally:
            if permit is not None:
                permit.release()  # type: ignore[union-attr]


class EndpointLayer(Layer):
    """The attempt itself: a pooled connection (gated by the cluster's connection breaker)
    to the picked endpoint, the request and its response (``_exchange``)."""

    def __init__(self, inner: Any, proxy: Proxy) -> None:
        super().__init__(inner)
        self.proxy = proxy

    async def handle(self, x: OutboundRequest) -> None:
        target, cluster, dest = x.target, x.cluster, x.dest
        assert target is not None and cluster is not None and dest is not None and x.head is not None
        if needs_h2_relay(x):  # HTTP/2 at either end (_h2forward)
            await forward_attempt_h2(x, self.proxy)
            return
        timeouts = cluster.timeouts
        if x.upgrade:  # WebSocket: a connection of its own, a tunnel after 101
            x.down.unwatch()  # a tunnel's half-close is not a hang-up
            conn = await open_connection(target.pool_key, self.proxy.client_mtls if target.tls else None,
                                         timeouts.connect_timeout)
            await forward_upgrade(x.down, x.head, conn, dest.response_headers, x.state)
            return
        await forward_attempt(x.down, x.head, self.proxy.pool, target.pool_key, timeouts.connect_timeout,
                              dest.response_headers, timeouts.idle_timeout, x.state, body=x.body,
                              accept=x.attempt_accept, gate=cluster.gate,
                              max_requests_per_connection=cluster.breaker.config.max_requests_per_connection)
