"""The outbound request stack, front half: telemetry, route match, CORS, faults, the
weighted split, rate limits and mirrors - and ``build_outbound``, which lists every
layer in order (STYLE 5).

Each layer is a small object compiled once per proxy with ``handle(x)`` for one
``OutboundRequest``; it reads the route's compiled ``RouteConfig`` (one attribute test
when the route has nothing for it), answers locally or calls ``inner``. Order and why:

1. ``TelemetryLayer`` - one result per downstream request, as Istio counts: failures
   become Envoy's reply here (``_rescue``), then metrics, access log and span.
2. ``RouteLayer`` - route match (404 ``NR``), redirects and direct responses.
3. ``CorsLayer`` - preflights answered, CORS headers added to actual responses.
4. ``FaultLayer`` - delay (``DI``), abort (``FI``): before anything goes upstream.
5. ``SplitLayer`` - the weighted destination, once per request as Envoy picks its
   weighted cluster; the upstream head (rewrite, header ops, trace context).
6. ``RateLimitLayer`` - per route and per destination buckets (429 ``RL``).
7. ``MirrorLayer`` - fire-and-forget copies; never in the way of the real response.
8. then ``_attempts``: route timeout -> retry -> per-try timeout -> balancer gated by
   breaker and outlier detector -> pooled (m)TLS endpoint.

Metrics sit outermost rather than per attempt (linkerd's place) because Istio's standard
metrics count what the client saw; per-attempt results feed host stats and the outlier
detector in the balancer layer instead.
"""

from __future__ import annotations

import logging
import operator
import random
from typing import TYPE_CHECKING, Any

import trio

from ._events import InformationalResponse, _new_request
from ._exchange import ResponseAborted, apply_ops, request_headers
from ._fault import FAULT_BODY, MILLION
from ._flags import ResponseFlag
from ._match import fast_route_request
from ._outbound_request import LazyHeaders, split_target
from ._ratelimit import Limited
from ._ratelimits import take_all
from ._replay import RequestBody
from ._rescue import NoClusterError, NoRouteError, ProxyError, UpstreamTimeoutError, rescue
from ._retry import IGNORED_REQUEST_HEADERS
from ._downstream import DownstreamGone
from ._timeouts import PER_TRY_TIMEOUT_HEADER, TIMEOUT_HEADER
from ._tracing import SpanKind
from ._tunnel import split_authority

if TYPE_CHECKING:
    from ._mirror import Mirrors
    from ._outbound_request import OutboundRequest
    from ._proxy import Proxy

log = logging.getLogger("meshfed.gateway.outbound")

_CONTINUE = InformationalResponse(100)
_XFP = (b"x-forwarded-proto", b"http")
_RATE_LIMITED_BODY = b"local_rate_limited"  # Envoy local_ratelimit's local reply body
_NAME = operator.itemgetter(0)
_STRIPPED = frozenset(h.encode() for h in IGNORED_REQUEST_HEADERS) | {TIMEOUT_HEADER.encode(),
                                                                        PER_TRY_TIMEOUT_HEADER.encode()}


class Layer:
    """A layer of the stack: ``handle`` one request, usually by calling ``inner``."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    async def handle(self, x: OutboundRequest) -> None:
        await self.inner.handle(x)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class TelemetryLayer(Layer):
    """Failures become replies (the one place, ``rescue``); then one report per request."""

    def __init__(self, inner: Any, proxy: Proxy) -> None:
        super().__init__(inner)
        self.proxy = proxy

    async def handle(self, x: OutboundRequest) -> None:
        try:
            await self.inner.handle(x)
        except ProxyError as exc:
            reply = rescue(exc)
            if reply.flag is not None:
                x.flags.append(reply.flag)
            x.state.status = reply.status
            x.details = type(exc).__name__
            log.debug("outbound %s %s: %s", x.req.method, x.req.target[:200], exc)
            try:
                x.keep_alive = await x.down.rescue(reply)
            except DownstreamGone:
                x.keep_alive = False
        except ResponseAborted as exc:
            log.debug("outbound %s %s: %s", x.req.method, x.req.target[:200], exc)
            x.flags.append(ResponseFlag.UT if isinstance(exc.cause, UpstreamTimeoutError) else ResponseFlag.UC)
            x.keep_alive = False
        except DownstreamGone as exc:
            log.debug("outbound %s %s: %s", x.req.method, x.req.target[:200], exc)
            x.flags.append(ResponseFlag.DC)
            x.keep_alive = False
        except BaseException:
            # Cancelled: the HTTP/1.1 client hung up mid-request (``IdleWatch.busy``) and its
            # connection went, upstream included; reported as Envoy does (an HTTP/2 stream's
            # reset is reported by ``_h2serve``, which has no ``watch``).
            if getattr(x.down, "watch", None) is not None:
                x.flags.append(ResponseFlag.DC)
                x.keep_alive = False
                self.proxy.report.outbound_request(x)
            raise
        self.proxy.report.outbound_request(x)


class RouteLayer(Layer):
    """Route match; redirects and direct responses answered here."""

    skip_to: Layer | None = None
    """The split layer: next for a route without CORS and fault (``RouteConfig.plain_front``)."""

    async def handle(self, x: OutboundRequest) -> None:
        req, down = x.req, x.down
        x.authority, x.path_q = authority, path_q = split_target(req.target, req.headers)
        if down.codec.they_are_waiting_for_100_continue:
            await down.send_bytes(down.codec.send(_CONTINUE))
        _, port = split_authority(authority)
        path, _, query = path_q.partition(b"?")
        x.rr = rr = fast_route_request(req.method.decode("latin-1"), "http", authority.decode("latin-1"),
                                 path.decode("latin-1"), query.decode("latin-1"), LazyHeaders(req.headers), port)
        route = x.snap.routes.route(rr)
        if route is None:
            raise NoRouteError(rr.authority, rr.path, port)
        x.route = route
        x.policy = x.snap.route_config(route)
        action: Any = route.action
        kind = action.kind
        if kind == "redirect":
            await x.reply(action.status, b"", [(b"location", action.location(rr).encode("latin-1"))],
                          details="redirect")
            return
        if kind == "direct_response":
            await x.reply(action.status, action.body, details="direct_response")
            return
        await (self.skip_to if x.policy.plain_front and self.skip_to is not None else self.inner).handle(x)


class CorsLayer(Layer):
    """Envoy's CORS filter with the route's compiled ``CorsConfig``."""

    async def handle(self, x: OutboundRequest) -> None:
        cors = x.policy.cors
        if cors is not None and x.rr is not None:
            decision = cors.decide(x.rr.method, x.rr.headers)
            if decision is not None:
                headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in decision.headers]
                if decision.respond:
                    await x.reply(decision.status, b"", headers, details="cors_preflight")
                    return
                x.add_response_headers(headers)
        await self.inner.handle(x)


class FaultLayer(Layer):
    """Client-side faults: a delay (``DI``), then maybe an abort (``FI``), one draw each."""

    def __init__(self, inner: Any, rng: random.Random) -> None:
        super().__init__(inner)
        self.rng = rng

    async def handle(self, x: OutboundRequest) -> None:
        fault = x.policy.fault
        if fault is not None:
            decision = fault.decide(self.rng)
            if decision.delay is not None:
                x.flags.append(ResponseFlag.DI)
                x.proxy.metrics.stat("meshfed_fault_delays_injected_total").labels(x.policy.name).inc()
                await trio.sleep(decision.delay)
            abort = decision.abort
            if abort is not None:
                x.proxy.metrics.stat("meshfed_fault_aborts_injected_total").labels(x.policy.name).inc()
                if abort.grpc_status is None:
                    await x.reply(abort.http_status, FAULT_BODY, flag=ResponseFlag.FI, details="fault_filter_abort")
                else:  # gRPC: a trailers-only reply, HTTP 200 carrying grpc-status
                    await x.reply(200, b"", abort.wire_headers,
                                  flag=ResponseFlag.FI, details="fault_filter_abort")
                return
        await self.inner.handle(x)


class SplitLayer(Layer):
    """The weighted destination and its cluster; the head sent upstream."""

    skip_to: Layer | None = None
    """The retry layer: next when the rate-limit, mirror and route-timeout layers have
    nothing to do (no buckets, ``RouteConfig.plain_back``, no timeout override header)."""

    def __init__(self, inner: Any, proxy: Proxy, rng: random.Random) -> None:
        super().__init__(inner)
        self.proxy = proxy
        self.rng = rng

    async def handle(self, x: OutboundRequest) -> None:
        action: Any = x.route.action  # type: ignore[union-attr]
        rr = x.rr
        assert rr is not None
        x.dest = dest = action.pick(self.rng)
        cluster = x.snap.clusters.get((dest.host, dest.subset or "", dest.port_for(rr.port)))
        if cluster is None:
            raise NoClusterError(dest.cluster)
        x.cluster = cluster
        req = x.req
        out_authority = dest.authority.encode("latin-1") if dest.authority else x.authority
        headers, x.has_body, upgrade = request_headers(req.headers, out_authority)
        x.upgrade = upgrade is not None
        headers.append(_XFP)
        if not _STRIPPED.isdisjoint(map(_NAME, headers)):
            # Retry steering is never honoured; timeout overrides are, from our own app.
            x.envoy_headers = {n.decode(): v.decode("latin-1") for n, v in headers if n in _STRIPPED}
            headers = [p for p in headers if p[0] not in _STRIPPED]
        tracer = self.proxy.telemetry.tracer
        span_name = f"{cluster.fqdn}:{cluster.port}/*" if tracer.sink is not None else ""  # unused untraced
        x.hop, headers = tracer.begin(headers, name=span_name, kind=SpanKind.CLIENT)
        if dest.request_headers:
            headers = apply_ops(dest.request_headers, headers)
        rewrite = action.rewrite
        target = rewrite.apply(rr.path, rr.query).encode("latin-1") if rewrite is not None else x.path_q
        x.head = _new_request(req.method, target, headers, b"1.1")
        x.body = RequestBody(x.policy.retry.per_request_buffer_limit)
        if cluster.hash_policy is not None:
            x.hash = cluster.hash_policy.decide(headers=req.headers, query=rr.query,
                                                source_ip=x.down.remote_ip).hash
        skip_to = self.skip_to
        if (skip_to is not None and x.policy.plain_back and x.envoy_headers is None
                and not x.snap.ratelimits.has_outbound):
            await skip_to.handle(x)
        else:
            await self.inner.handle(x)


class RateLimitLayer(Layer):
    """meshfed ``RateLimit`` buckets of the destination and of the route (429 ``RL``)."""

    async def handle(self, x: OutboundRequest) -> None:
        limits = x.snap.ratelimits
        if limits.has_outbound:
            buckets = limits.outbound(x.dest.host, x.route.name)  # type: ignore[union-attr]
            if buckets:
                got = take_all(buckets, trio.current_time())
                if got is not None:
                    headers = got.wire_headers
                    if type(got) is Limited:
                        x.proxy.metrics.stat("meshfed_ratelimit_limited_total").labels("outbound").inc()
                        await x.reply(429, _RATE_LIMITED_BODY, headers, flag=ResponseFlag.RL,
                                      details="local_rate_limited")
                        return
                    x.add_response_headers(headers)
        await self.inner.handle(x)


class MirrorLayer(Layer):
    """Copies to the route's mirrors (``-shadow`` authority), fire-and-forget."""

    def __init__(self, inner: Any, mirrors: Mirrors, rng: random.Random) -> None:
        super().__init__(inner)
        self.mirrors = mirrors
        self.rng = rng

    async def handle(self, x: OutboundRequest) -> None:
        mirrors = x.policy.mirrors
        if not mirrors or x.upgrade:
            await self.inner.handle(x)
            return
        chosen = [m for m in mirrors if m.per_million >= MILLION or self.rng.randrange(MILLION) < m.per_million]
        if not chosen:
            await self.inner.handle(x)
            return
        if not x.has_body:  # nothing to wait for: copy at once
            self.mirrors.submit(x, chosen)
            await self.inner.handle(x)
            return
        try:
            await self.inner.handle(x)
        finally:
            # the body is read by now; copied if it was kept whole (within the replay limit)
            if x.body is not None and x.body.complete:
                self.mirrors.submit(x, chosen)


def build_outbound(proxy: Proxy, rng: random.Random | None = None) -> Layer:
    """The outbound stack, outermost first - read top to bottom, it is the order a request
    passes the layers (module docstring)."""
    from ._attempts import BalancerLayer, EndpointLayer, PerTryTimeoutLayer, RetryLayer, RouteTimeoutLayer

    rng = rng or random.Random()
    stack: Layer = EndpointLayer(None, proxy)          # pooled (m)TLS connection, exchange
    stack = balancer = BalancerLayer(stack, proxy)     # host pick gated by breaker and outlier detector
    stack = PerTryTimeoutLayer(stack, proxy)           # perTryTimeout: 504 UT, retriable
    stack = retry = RetryLayer(stack, proxy, rng)      # retryOn, backoff, other host, URX
    stack = RouteTimeoutLayer(stack, proxy)            # route timeout over all attempts: 504 UT
    stack = MirrorLayer(stack, proxy.mirrors, rng)     # mirror + mirrorPercentage
    stack = RateLimitLayer(stack)                      # RateLimit per destination and route: 429 RL
    stack = split = SplitLayer(stack, proxy, rng)      # weighted destination, upstream head
    stack = FaultLayer(stack, rng)                     # delay DI, abort FI
    stack = CorsLayer(stack)                           # preflight, CORS response headers
    stack = route = RouteLayer(stack)                  # route match, redirect, direct response
    # The fast path: layers with nothing to do for a request's route are stepped over.
    route.skip_to = split
    split.skip_to = retry
    retry.skip_to = balancer  # no per-try timeout: past PerTryTimeoutLayer
    return TelemetryLayer(stack, proxy)                # rescue, metrics, access log, span
