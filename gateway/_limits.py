"""Every limit the HTTP codecs and connection loops enforce, with Envoy's defaults.

Field names follow Envoy's (``HttpConnectionManager``, ``HttpProtocolOptions``,
``Http2ProtocolOptions``) where one exists. Where Envoy's own default is unbounded and its
"Configuring Envoy as an edge proxy" guide recommends a bound (concurrent streams, HTTP/2
windows), the edge value is the default here: a sidecar's inbound port is an edge too.
Timeouts are enforced by the I/O loops; the codecs enforce the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from topology import Check, Duration
from topology._decode import describe, yaml_key

KIB = 1024


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Limits of one HTTP connection, for both codecs and the loop around them."""

    # --- both protocols -------------------------------------------------------------------
    max_header_bytes: int = 60 * KIB
    """Bytes of one header section: names + values (on HTTP/2 HPACK's decoded size, pseudo-
    headers and 32 bytes a field included); trailers count apart against the same bound.
    Over it: 431 on HTTP/1.1, GOAWAY on HTTP/2 (the HPACK bomb bound). Envoy
    ``max_request_headers_kb``; defaults to 60 KiB."""
    max_headers: int = 100
    """Header fields in one section. Over it: 431 on HTTP/1.1, stream reset on HTTP/2.
    Envoy ``max_headers_count``; defaults to 100."""
    max_target_bytes: int = 60 * KIB
    """Bytes of the HTTP/1.1 request target (URL). Over it: 414. Envoy has no separate limit
    (the path counts toward ``max_request_headers_kb``, as ``:path`` does here on HTTP/2);
    defaults to the same 60 KiB."""
    max_body_bytes: int | None = None
    """Bytes of one HTTP/1.1 message body. Over it: 413. On HTTP/2 the codec bounds only what
    is unacknowledged (the stream window); the proxy counts Data per stream. Envoy streams
    bodies without a bound unless a buffering filter sets ``max_request_bytes``; defaults to
    None (unbounded, streamed)."""

    # --- timeouts (enforced by the connection loops) ---------------------------------------
    request_headers_timeout: Duration | None = None
    """Time to receive a complete request header section. Envoy ``request_headers_timeout``;
    defaults to None (disabled)."""
    idle_timeout: Duration | None = Duration.of_seconds(3600)
    """Close a connection with no active stream this long. Envoy ``idle_timeout``; defaults to 1h."""
    stream_idle_timeout: Duration | None = Duration.of_seconds(300)
    """Reset a stream that sends or receives nothing this long. Envoy ``stream_idle_timeout``;
    defaults to 5m."""
    request_timeout: Duration | None = None
    """Time for a whole request to arrive. Envoy ``request_timeout``; defaults to None (disabled)."""
    max_connection_duration: Duration | None = None
    """Drain a connection this old. Envoy ``max_connection_duration``; defaults to None."""

    # --- HTTP/2 -----------------------------------------------------------------------------
    max_concurrent_streams: int = 100
    """Streams the peer may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). Envoy
    defaults to 2^31-1 and recommends 100 at the edge; defaults to 100."""
    initial_stream_window_size: int = 64 * KIB
    """Per-stream receive window: the most a peer can make us buffer per stream. Envoy
    defaults to 256 MiB and recommends 64 KiB at the edge; defaults to 64 KiB."""
    initial_connection_window_size: int = 1024 * KIB
    """Connection receive window. Envoy defaults to 256 MiB, 1 MiB at the edge; defaults to 1 MiB."""
    max_frame_size: int = 16 * KIB
    """SETTINGS_MAX_FRAME_SIZE we accept. RFC 9113 and Envoy: 16 KiB."""
    hpack_table_size: int = 4096
    """HPACK dynamic table we let the peer's encoder use. Envoy ``hpack_table_size``; 4096."""
    max_continuation_frames: int = 32
    """CONTINUATION frames after one HEADERS frame (CONTINUATION flood, CVE-2024-27316). The
    block's bytes are also bounded by ``max_header_bytes``. h2 itself stops at 64; defaults to 32."""
    premature_reset_lifetime: Duration = Duration.of_seconds(1)
    """A stream the peer resets younger than this counts as a rapid reset. Envoy
    ``overload.premature_reset_min_stream_lifetime_seconds``; defaults to 1s."""
    rapid_reset_window: Duration = Duration.of_seconds(10)
    """Sliding window over which rapid resets are counted; defaults to 10s."""
    max_rapid_resets: int = 250
    """Rapid resets tolerated within the window before GOAWAY ENHANCE_YOUR_CALM
    (CVE-2023-44487). Envoy closes after 500 streams if more than half were premature
    resets (``overload.premature_reset_total_stream_count``); defaults to 250."""
    max_outbound_control_frames: int = 1000
    """PING/SETTINGS acknowledgements we let pile up before the loop collects our bytes
    (ping and settings floods). Envoy ``max_outbound_control_frames``; defaults to 1000."""
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    """Consecutive empty DATA/HEADERS/CONTINUATION frames without END_STREAM (CVE-2019-9518).
    Envoy, same name; defaults to 1."""
    max_inbound_priority_frames_per_stream: int = 100
    """PRIORITY frames allowed: this * (1 + streams opened) (CVE-2019-9513). Envoy, same
    name; defaults to 100."""
    max_inbound_window_update_frames_per_data_frame_sent: int = 10
    """WINDOW_UPDATE frames allowed: 5 + 2 * (streams opened + this * DATA frames sent)
    (CVE-2019-9511 and window-update floods). Envoy, same name; defaults to 10."""
    min_outbound_data_frame: int = 1024
    """Smallest DATA frame we send while more is queued: a peer that opens its window a few
    bytes at a time gets nothing until a window this large is open, not a flood of tiny frames
    (data dribble, CVE-2019-9511). Envoy has no equivalent; defaults to 1 KiB."""

    def _check(self, c: Check) -> None:
        for name in ("max_header_bytes", "max_headers", "max_target_bytes", "max_concurrent_streams",
                     "max_rapid_resets", "max_outbound_control_frames",
                     "max_inbound_priority_frames_per_stream",
                     "max_inbound_window_update_frames_per_data_frame_sent"):
            value = getattr(self, name)
            if value < 1:
                c.error(yaml_key(name), f"must be at least 1; found {describe(value)}")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            c.error("maxBodyBytes", f"must not be negative; found {describe(self.max_body_bytes)}")
        for name in ("max_consecutive_inbound_frames_with_empty_payload", "min_outbound_data_frame"):
            if getattr(self, name) < 0:
                c.error(yaml_key(name), f"must not be negative; found {describe(getattr(self, name))}")
        if not 1 <= self.max_continuation_frames <= 64:
            c.error("maxContinuationFrames",
                    f"must be between 1 and 64 (h2's own bound); found {describe(self.max_continuation_frames)}")
        for name in ("initial_stream_window_size", "initial_connection_window_size"):
            value = getattr(self, name)
            if not 65535 <= value <= 2**31 - 1:
                c.error(yaml_key(name), f"must be between 65535 and 2147483647 (RFC 9113 6.9.2 and "
                                    f"Envoy's range); found {describe(value)}")
        if not 16384 <= self.max_frame_size <= 2**24 - 1:
            c.error("maxFrameSize", f"must be between 16384 and 16777215 (RFC 9113 6.5.2); "
                                    f"found {describe(self.max_frame_size)}")
        for name in ("premature_reset_lifetime", "rapid_reset_window"):
            if getattr(self, name).nanos <= 0:
                c.error(yaml_key(name), f"must be longer than 0s; found {describe(str(getattr(self, name)))}")
        if not 0 <= self.hpack_table_size <= 2**32 - 1:
            c.error("hpackTableSize", f"must be between 0 and 4294967295; found {describe(self.hpack_table_size)}")


DEFAULT_LIMITS = HttpLimits()
