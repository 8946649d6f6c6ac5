"""Envoy's response flags: the short codes of ``%RESPONSE_FLAGS%`` in access logs.

Istio's dashboards, ``istioctl`` and every operator's muscle memory read these codes
(``UO`` = the circuit breaker said no, ``URX`` = retries ran out, ...), so meshfed
reports exactly Envoy's codes and long names (``%RESPONSE_FLAGS_LONG%``), in Envoy's
order, which is also the order a combined flag string is written in.
Source: envoyproxy/envoy ``source/common/stream_info/utility.h`` ``CORE_RESPONSE_FLAGS``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ResponseFlag(enum.Enum):
    """One response flag; ``value`` is the short code, ``long_name`` Envoy's long form."""

    LH = ("LH", "FailedLocalHealthCheck")
    UH = ("UH", "NoHealthyUpstream")
    UT = ("UT", "UpstreamRequestTimeout")
    LR = ("LR", "LocalReset")
    UR = ("UR", "UpstreamRemoteReset")
    UF = ("UF", "UpstreamConnectionFailure")
    UC = ("UC", "UpstreamConnectionTermination")
    UO = ("UO", "UpstreamOverflow")
    NR = ("NR", "NoRouteFound")
    DI = ("DI", "DelayInjected")
    FI = ("FI", "FaultInjected")
    RL = ("RL", "RateLimited")
    UAEX = ("UAEX", "UnauthorizedExternalService")
    RLSE = ("RLSE", "RateLimitServiceError")
    DC = ("DC", "DownstreamConnectionTermination")
    URX = ("URX", "UpstreamRetryLimitExceeded")
    SI = ("SI", "StreamIdleTimeout")
    IH = ("IH", "InvalidEnvoyRequestHeaders")
    DPE = ("DPE", "DownstreamProtocolError")
    UMSDR = ("UMSDR", "UpstreamMaxStreamDurationReached")
    RFCF = ("RFCF", "ResponseFromCacheFilter")
    NFCF = ("NFCF", "NoFilterConfigFound")
    DT = ("DT", "DurationTimeout")
    UPE = ("UPE", "UpstreamProtocolError")
    NC = ("NC", "NoClusterFound")
    OM = ("OM", "OverloadManagerTerminated")
    DF = ("DF", "DnsResolutionFailed")
    DO = ("DO", "DropOverload")
    DR = ("DR", "DownstreamRemoteReset")
    UDO = ("UDO", "UnconditionalDropOverload")

    @property
    def code(self) -> str:
        """The short code written by ``%RESPONSE_FLAGS%`` (``"UO"``)."""
        return self.value[0]

    @property
    def long_name(self) -> str:
        """The PascalCase name written by ``%RESPONSE_FLAGS_LONG%`` (``"UpstreamOverflow"``)."""
        return self.value[1]

    @classmethod
    def from_code(cls, code: str) -> "ResponseFlag":
        """The flag for a short code; ``ValueError`` quoting the code when unknown."""
        try:
            return _BY_CODE[code]
        except KeyError:
            raise ValueError(f"unknown response flag {code!r}") from None

    def __str__(self) -> str:
        return self.code


_BY_CODE = {f.code: f for f in ResponseFlag}
_ORDER = {f: i for i, f in enumerate(ResponseFlag)}


def format_flags(flags: Iterable[ResponseFlag]) -> str:
    """The access-log field: codes in Envoy's order joined by ``,``; ``-`` when none."""
    ordered = sorted(set(flags), key=_ORDER.__getitem__)
    return ",".join(f.code for f in ordered) or "-"
