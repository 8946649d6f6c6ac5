"""HttpLimits: Envoy's defaults, and the range checks a config document gets."""

from __future__ import annotations

import pytest

from gateway import DEFAULT_LIMITS, HttpLimits
from topology import Decoder, Duration


def test_defaults_are_envoys() -> None:
    d = DEFAULT_LIMITS
    assert (d.max_header_bytes, d.max_headers, d.max_concurrent_streams) == (60 * 1024, 100, 100)
    assert (d.initial_stream_window_size, d.initial_connection_window_size) == (65536, 1024 * 1024)
    assert (d.idle_timeout, d.stream_idle_timeout) == (Duration.of_seconds(3600), Duration.of_seconds(300))
    assert (d.max_outbound_control_frames, d.max_consecutive_inbound_frames_with_empty_payload,
            d.max_inbound_priority_frames_per_stream, d.max_inbound_window_update_frames_per_data_frame_sent) == (
        1000, 1, 100, 10)


@pytest.mark.parametrize("doc, message", [
    ({"maxHeaders": 0}, "limits.maxHeaders: must be at least 1; found integer 0"),
    ({"maxBodyBytes": -1}, "limits.maxBodyBytes: must not be negative; found integer -1"),
    ({"maxContinuationFrames": 65}, "limits.maxContinuationFrames: must be between 1 and 64 (h2's own bound); "
                                    "found integer 65"),
    ({"initialStreamWindowSize": 1}, "limits.initialStreamWindowSize: must be between 65535 and 2147483647 "
                                     "(RFC 9113 6.9.2 and Envoy's range); found integer 1"),
    ({"maxFrameSize": 100}, "limits.maxFrameSize: must be between 16384 and 16777215 (RFC 9113 6.5.2); "
                            "found integer 100"),
    ({"rapidResetWindow": "0s"}, "limits.rapidResetWindow: must be longer than 0s; found string '0s'"),
    ({"maxHedaers": 5}, "limits.maxHedaers: unknown field 'maxHedaers' (did you mean 'maxHeaders'?)"),
])
def test_out_of_range_limits_are_reported_with_the_value_found(doc: dict[str, object], message: str) -> None:
    decoder = Decoder("proxy.yaml")
    decoder.decode(HttpLimits, doc, "limits")
    assert [f"{d.path}: {d.message}" for d in decoder.diagnostics] == [message]


def test_a_valid_document_decodes_to_limits() -> None:
    decoder = Decoder("proxy.yaml")
    limits = decoder.decode(HttpLimits, {"maxConcurrentStreams": 1000, "idleTimeout": "30s"}, "limits")
    assert decoder.diagnostics == []
    assert limits == HttpLimits(max_concurrent_streams=1000, idle_timeout=Duration.of_seconds(30))
