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
from ._limits import DEFAULT_LIMITS, HttpLimits  # noqa: E402
__all__ += ["ConnectionClosed", "DEFAULT_LIMITS", "Data", "EndOfMessage", "Event", "GoAway", "Headers", "Http1Connection", "Http1State", "HttpLimits", "InformationalResponse", "LocalProtocolError", "NEED_DATA", "PAUSED", "Pending", "ProtocolError", "RemoteProtocolError", "Request", "Response", "Role", "StreamReset"]  # noqa: E501
from ._authz import DENIED_BODY, DENIED_STATUS, Authorizer, AuthzDecision, AuthzRequest  # noqa: E402
from ._peerauth import MtlsDecision, PeerAuthConfig  # noqa: E402
from ._xfcc import XFCC_HEADER, PeerCertificate, XfccConfig  # noqa: E402
__all__ += ["Authorizer", "AuthzDecision", "AuthzRequest", "DENIED_BODY", "DENIED_STATUS", "MtlsDecision", "PeerAuthConfig", "PeerCertificate", "XFCC_HEADER", "XfccConfig"]  # noqa: E501
from ._http2 import Http2Connection  # noqa: E402
__all__ += ["Http2Connection"]
