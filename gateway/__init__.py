"""The data plane: one proxy engine in three roles (sidecar, east-west and ingress gateway).

The names below are re-exported lazily (PEP 562 ``__getattr__``): ``from gateway import
Proxy`` imports ``gateway._proxy`` on first use, not every module at once. A sidecar
process imports only what its config needs, which keeps its idle memory down (a plain
HTTP sidecar never loads cryptography, h2 or the exposition code of prometheus-client
just because ``gateway`` was imported).
"""

from __future__ import annotations

import importlib
from typing import Any


class GatewayError(Exception):
    """Base of every error raised by ``gateway``."""


_EXPORTS: dict[str, tuple[str, ...]] = {
    "_balancer": (
        "ActiveRequests", "Balancer", "BalancerError", "BalancerHost", "Host", "PickContext", "load_balancer_for",
        "make_balancer", "subset_hosts"
    ),
    "_hashkey": ("HashDecision", "HashPolicy", "stable_hash64"),
    "_breaker": ("CircuitBreaker", "CircuitBreakerConfig", "Overflow", "Permit", "Resource", "RetryBudget"),
    "_fault": ("Abort", "FaultDecision", "FaultPolicy"),
    "_flags": ("ResponseFlag", "format_flags"),
    "_outlier": (
        "EjectionType", "OutlierAction", "OutlierConfig", "OutlierDetector", "OutlierEvent", "OutlierEventSink",
        "OutlierResult", "RecordingSink"
    ),
    "_ratelimit": ("Allowed", "Limited", "TokenBucket", "TokenBucketConfig"),
    "_retry": ("AttemptOutcome", "AttemptResult", "RetryCondition", "RetryDecision", "RetryPolicy", "RetryVerdict"),
    "_retry_state": ("RetryState",),
    "_timeouts": ("Deadline", "RequestTimer", "TimeoutExpired", "TimeoutKind", "TimeoutPolicy"),
    "_transitions": ("IllegalTransitionError",),
    "_events": (
        "ConnectionClosed", "Data", "EndOfMessage", "Event", "GoAway", "Headers", "InformationalResponse",
        "LocalProtocolError", "ProtocolError", "RemoteProtocolError", "Request", "Response", "Role", "StreamReset"
    ),
    "_http1": ("NEED_DATA", "PAUSED", "Http1Connection", "Pending"),
    "_http1_state": ("Http1State",),
    "_http2": ("Http2Connection",),
    "_limits": ("DEFAULT_LIMITS", "HttpLimits"),
    "_authz": ("DENIED_BODY", "DENIED_STATUS", "Authorizer", "AuthzDecision", "AuthzRequest"),
    "_peerauth": ("MtlsDecision", "PeerAuthConfig"),
    "_xfcc": ("XFCC_HEADER", "PeerCertificate", "XfccConfig"),
    "_accesslog": ("AccessLog", "AccessLogEntry"),
    "_metrics": ("BUCKETS", "CONTENT_TYPE", "HttpSeries", "ProxyMetrics", "TcpSeries"),
    "_metrics_labels": ("RequestLabels", "Reporter", "Service", "Workload"),
    "_otlp": ("ExporterConfigError", "OtlpExporter", "encode_spans"),
    "_proxy_stats": ("PROXY_METRICS", "MetricDef", "Stat", "StatFamily", "TlsRefusal"),
    "_tracing": ("Hop", "Span", "SpanKind", "SpanSink", "TraceContext", "Tracer"),
    "_actions": (
        "DestinationConfig", "DirectResponseAction", "ForwardAction", "RedirectAction", "RewriteConfig",
        "WeightedDestinations"
    ),
    "_headerops": ("HeaderOps",),
    "_cors": ("CorsConfig", "CorsDecision"),
    "_match": ("HttpMatchConfig", "MatchCompileError", "RouteRequest", "StringMatcher"),
    "_routing": ("RouteCompileError", "RouteDecision", "RouteTable", "VirtualHost"),
    "_tcproutes": ("ConnectionInfo", "L4RouteDecision", "TcpRouteTable"),
    "_vsselect": ("ClientWorkload",),
    "_config": ("ProxyConfig", "load_proxy_config", "load_proxy_config_text"),
    "_proxy": ("Proxy", "ProxyConfigError"),
    "_rescue": ("LocalReply", "ProxyError", "rescue"),
    "_snapshot": ("ClusterConfig", "InboundConfig", "Snapshot", "compile_snapshot"),
    "_tcpsplice": ("SpliceResult", "splice"),
    "_upstream": ("UpstreamConnection", "UpstreamPool"),
    "_sni": (
        "ClientHelloInfo", "ClientHelloParser", "Hello", "MalformedHello", "MeshSni", "NotMeshSni", "NotTls",
        "SniError", "mesh_sni", "parse_client_hello", "parse_mesh_sni"
    ),
    "_locality_levels": ("GatewayHop", "LocalityLbError", "LocalityMode", "network_hosts", "panic_threshold_for"),
    "_locality_lb": ("LocalityLb", "LocalityShare", "Loads", "PriorityView"),
    "_priority_load": ("OVERPROVISIONING_FACTOR", "PriorityLoad", "priority_load"),
}
"""Submodule -> the names it contributes to the package namespace."""

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["GatewayError", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gateway.{module}"), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
