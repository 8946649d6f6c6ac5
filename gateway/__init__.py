"""The data plane: one proxy engine in three roles (sidecar, east-west and ingress gateway)."""


class GatewayError(Exception):
    """Base of every error raised by ``gateway``."""


__all__ = ["GatewayError"]
from ._balancer import ActiveRequests, Balancer, BalancerError, BalancerHost, Host, PickContext, load_balancer_for, make_balancer, subset_hosts  # noqa: E402,E501
from ._hashkey import HashDecision, HashPolicy, stable_hash64  # noqa: E402
__all__ += ["ActiveRequests", "Balancer", "BalancerError", "BalancerHost", "HashDecision", "HashPolicy", "Host", "PickContext", "load_balancer_for", "make_balancer", "stable_hash64", "subset_hosts"]
from ._breaker import CircuitBreaker, CircuitBreakerConfig, Overflow, Permit, Resource, RetryBudget  # noqa: E402
from ._fault import Abort, FaultDecision, FaultPolicy  # noqa: E402
from ._flags import ResponseFlag, format_flags  # noqa: E402
from ._outlier import EjectionType, OutlierAction, OutlierConfig, OutlierDetector, OutlierEvent, OutlierEventSink, OutlierResult, RecordingSink  # noqa: E402,E501
from ._ratelimit import Allowed, Limited, TokenBucket, TokenBucketConfig  # noqa: E402
from ._retry import AttemptOutcome, AttemptResult, RetryCondition, RetryDecision, RetryPolicy, RetryVerdict  # noqa: E402
from ._retry_state import RetryState  # noqa: E402
from ._timeouts import Deadline, RequestTimer, TimeoutExpired, TimeoutKind, TimeoutPolicy  # noqa: E402
from ._transitions import IllegalTransitionError  # noqa: E402
__all__ += ["Abort", "Allowed", "AttemptOutcome", "AttemptResult", "CircuitBreaker", "CircuitBreakerConfig", "Deadline", "EjectionType", "FaultDecision", "FaultPolicy", "IllegalTransitionError", "Limited", "OutlierAction", "OutlierConfig", "OutlierDetector", "OutlierEvent", "OutlierEventSink", "OutlierResult", "Overflow", "Permit", "RecordingSink", "RequestTimer", "Resource", "ResponseFlag", "RetryBudget", "RetryCondition", "RetryDecision", "RetryPolicy", "RetryState", "RetryVerdict", "TimeoutExpired", "TimeoutKind", "TimeoutPolicy", "TokenBucket", "TokenBucketConfig", "format_flags"]  # noqa: E501
from ._events import (ConnectionClosed, Data, EndOfMessage, Event, GoAway, Headers, InformationalResponse,  # noqa: E402
                      LocalProtocolError, ProtocolError, RemoteProtocolError, Request, Response, Role, StreamReset)
from ._http1 import NEED_DATA, PAUSED, Http1Connection, Pending  # noqa: E402
from ._http1_state import Http1State  # noqa: E402
from ._http2 import Http2Connection  # noqa: E402
from ._limits import DEFAULT_LIMITS, HttpLimits  # noqa: E402
__all__ += ["ConnectionClosed", "DEFAULT_LIMITS", "Data", "EndOfMessage", "Event", "GoAway", "Headers", "Http1Connection", "Http1State", "Http2Connection", "HttpLimits", "InformationalResponse", "LocalProtocolError", "NEED_DATA", "PAUSED", "Pending", "ProtocolError", "RemoteProtocolError", "Request", "Response", "Role", "StreamReset"]  # noqa: E501
from ._authz import DENIED_BODY, DENIED_STATUS, Authorizer, AuthzDecision, AuthzRequest  # noqa: E402
from ._peerauth import MtlsDecision, PeerAuthConfig  # noqa: E402
from ._xfcc import XFCC_HEADER, PeerCertificate, XfccConfig  # noqa: E402
__all__ += ["Authorizer", "AuthzDecision", "AuthzRequest", "DENIED_BODY", "DENIED_STATUS", "MtlsDecision", "PeerAuthConfig", "PeerCertificate", "XFCC_HEADER", "XfccConfig"]  # noqa: E501
from ._accesslog import AccessLog, AccessLogEntry  # noqa: E402
from ._metrics import BUCKETS, CONTENT_TYPE, HttpSeries, ProxyMetrics, TcpSeries  # noqa: E402
from ._metrics_labels import RequestLabels, Reporter, Service, Workload  # noqa: E402
from ._otlp import ExporterConfigError, OtlpExporter, encode_spans  # noqa: E402
from ._proxy_stats import PROXY_METRICS, MetricDef, Stat, StatFamily, TlsRefusal  # noqa: E402
from ._tracing import Hop, Span, SpanKind, SpanSink, TraceContext, Tracer  # noqa: E402
__all__ += ["AccessLog", "AccessLogEntry", "BUCKETS", "CONTENT_TYPE", "ExporterConfigError", "Hop", "HttpSeries", "MetricDef", "OtlpExporter", "PROXY_METRICS", "ProxyMetrics", "Reporter", "RequestLabels", "Service", "Span", "SpanKind", "SpanSink", "Stat", "StatFamily", "TcpSeries", "TlsRefusal", "TraceContext", "Tracer", "Workload", "encode_spans"]  # noqa: E501
from ._actions import DestinationConfig, DirectResponseAction, ForwardAction, RedirectAction, RewriteConfig, WeightedDestinations  # noqa: E402,E501
from ._headerops import HeaderOps  # noqa: E402
from ._cors import CorsConfig, CorsDecision  # noqa: E402
from ._match import HttpMatchConfig, MatchCompileError, RouteRequest, StringMatcher  # noqa: E402
from ._routing import RouteCompileError, RouteDecision, RouteTable, VirtualHost  # noqa: E402
from ._tcproutes import ConnectionInfo, L4RouteDecision, TcpRouteTable  # noqa: E402
from ._vsselect import ClientWorkload  # noqa: E402
__all__ += ["ClientWorkload", "ConnectionInfo", "CorsConfig", "CorsDecision", "DestinationConfig", "DirectResponseAction", "ForwardAction", "HeaderOps", "HttpMatchConfig", "L4RouteDecision", "MatchCompileError", "RedirectAction", "RewriteConfig", "RouteCompileError", "RouteDecision", "RouteRequest", "RouteTable", "StringMatcher", "TcpRouteTable", "VirtualHost", "WeightedDestinations"]  # noqa: E501
from ._config import ProxyConfig, load_proxy_config, load_proxy_config_text  # noqa: E402
from ._proxy import Proxy, ProxyConfigError  # noqa: E402
from ._rescue import LocalReply, ProxyError, rescue  # noqa: E402
from ._snapshot import ClusterConfig, InboundConfig, Snapshot, compile_snapshot  # noqa: E402
from ._tcpsplice import SpliceResult, splice  # noqa: E402
from ._upstream import UpstreamConnection, UpstreamPool  # noqa: E402
__all__ += ["ClusterConfig", "InboundConfig", "LocalReply", "Proxy", "ProxyConfig", "ProxyConfigError", "ProxyError", "Snapshot", "SpliceResult", "UpstreamConnection", "UpstreamPool", "compile_snapshot", "load_proxy_config", "load_proxy_config_text", "rescue", "splice"]  # noqa: E501
from ._sni import ClientHelloInfo, ClientHelloParser, Hello, MalformedHello, MeshSni, NotMeshSni, NotTls, SniError, mesh_sni, parse_client_hello, parse_mesh_sni  # noqa: E402,E501
from ._locality_levels import GatewayHop, LocalityLbError, LocalityMode, network_hosts, panic_threshold_for  # noqa: E402
from ._locality_lb import LocalityLb, LocalityShare, Loads, PriorityView  # noqa: E402
from ._priority_load import OVERPROVISIONING_FACTOR, PriorityLoad, priority_load  # noqa: E402
__all__ += ["ClientHelloInfo", "ClientHelloParser", "GatewayHop", "Hello", "Loads", "LocalityLb", "LocalityLbError", "LocalityMode", "LocalityShare", "MalformedHello", "MeshSni", "NotMeshSni", "NotTls", "OVERPROVISIONING_FACTOR", "PriorityLoad", "PriorityView", "SniError", "mesh_sni", "network_hosts", "panic_threshold_for", "parse_client_hello", "parse_mesh_sni", "priority_load"]  # noqa: E501
