"""Envoy response flags: short codes, long names, access-log formatting."""

import pytest

from gateway._flags import ResponseFlag, format_flags


@pytest.mark.parametrize("code,long_name", [
    ("UH", "NoHealthyUpstream"), ("UF", "UpstreamConnectionFailure"), ("UO", "UpstreamOverflow"),
    ("NR", "NoRouteFound"), ("URX", "UpstreamRetryLimitExceeded"), ("UT", "UpstreamRequestTimeout"),
    ("LH", "FailedLocalHealthCheck"), ("UC", "UpstreamConnectionTermination"),
    ("DC", "DownstreamConnectionTermination"), ("DI", "DelayInjected"), ("FI", "FaultInjected"),
    ("RL", "RateLimited"), ("UAEX", "UnauthorizedExternalService"), ("RLSE", "RateLimitServiceError"),
    ("NC", "NoClusterFound"), ("DPE", "DownstreamProtocolError"), ("UPE", "UpstreamProtocolError"),
    ("UMSDR", "UpstreamMaxStreamDurationReached"), ("OM", "OverloadManagerTerminated"),
])
def test_flag_codes_and_long_names_are_envoys(code: str, long_name: str) -> None:
    flag = ResponseFlag.from_code(code)
    assert (flag.code, flag.long_name, str(flag)) == (code, long_name, code)


def test_every_code_is_unique() -> None:
    assert len({f.code for f in ResponseFlag}) == len({f.long_name for f in ResponseFlag}) == len(ResponseFlag) == 30


def test_unknown_code_is_refused_quoting_it() -> None:
    with pytest.raises(ValueError, match="^unknown response flag 'XX'$"):
        ResponseFlag.from_code("XX")


@pytest.mark.parametrize("flags,text", [
    ([], "-"), ([ResponseFlag.URX, ResponseFlag.UT], "UT,URX"), ([ResponseFlag.UO, ResponseFlag.UO], "UO"),
    ([ResponseFlag.FI, ResponseFlag.DI], "DI,FI"),
])
def test_access_log_field_lists_codes_in_envoys_order(flags: list, text: str) -> None:
    assert format_flags(flags) == text
