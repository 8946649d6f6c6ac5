"""HTTP/2 flood protections, counted on frame headers before h2 parses a byte.

``FrameGuard.scan`` walks the 9-byte headers of received frames (across reads) and keeps
the counts each known abuse is made of, with Envoy's bounds from ``HttpLimits``:

- rapid reset (CVE-2023-44487): streams the peer resets within ``premature_reset_lifetime``
  of opening them, counted over a sliding ``rapid_reset_window`` on the injected clock;
- CONTINUATION flood (CVE-2024-27316): CONTINUATION frames per header block, and the
  block's bytes against ``max_header_bytes`` before any HPACK decoding;
- empty frames (CVE-2019-9518), PRIORITY (CVE-2019-9513) and WINDOW_UPDATE floods
  (Envoy's per-stream and per-DATA-frame formulas), and PINGs/SETTINGS whose answers pile
  up unread (CVE-2019-9512/9515).

A violation is returned as a message; the connection answers GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ._limits import HttpLimits

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PING, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 2, 3, 4, 6, 8, 9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
PREFACE_LENGTH = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameGuard:
    """Counts flood ingredients in frame headers; ``scan`` returns a violation message or None."""

    def __init__(self, limits: HttpLimits, clock: Callable[[], float], server: bool) -> None:
        self._limits = limits
        self._clock = clock
        self._server = server
        self._preface = PREFACE_LENGTH if server else 0
        self._partial = b""      # a frame header split across reads
        self._skip = 0           # payload bytes of the current frame not yet seen
        self._block: int | None = None  # bytes of the header block being received, None outside one
        self._continuations = 0
        self._empty = 0
        self._highest = 0
        self._lifetime = limits.premature_reset_lifetime.seconds
        self._window = limits.rapid_reset_window.seconds
        self._young: dict[int, float] = {}  # peer-opened stream -> when, while younger than lifetime
        self._resets: deque[float] = deque()
        self.opened = 0          # streams opened in either direction
        self.priority = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.control_acks = 0    # PING/SETTINGS answers queued since our bytes were last collected

    def scan(self, data: bytes) -> str | None:
        pos, end = 0, len(data)
        if self._preface:
            pos = min(self._preface, end)
            self._preface -= pos
        if self._skip:
            step = min(self._skip, end - pos)
            pos += step
            self._skip -= step
        if self._partial and pos < end:
            need = 9 - len(self._partial)
            head = self._partial + data[pos:pos + need]
            pos += need
            if len(head) < 9:
                self._partial = head
                return None
            self._partial = b""
            problem = self._frame(head, 0)
            if problem:
                return problem
            step = min(self._skip, end - pos)
            pos += step
            self._skip -= step
        while pos + 9 <= end:
            problem = self._frame(data, pos)
            if problem:
                return problem
            pos += 9
            step = min(self._skip, end - pos)
            pos += step
            self._skip -= step
        if pos < end:
            self._partial = data[pos:]
        return None

    def _frame(self, data: bytes, at: int) -> str | None:
        length = int.from_bytes(data[at:at + 3], "big")
        kind, flags = data[at + 3], data[at + 4]
        stream = int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF
        self._skip = length
        limits = self._limits
        if kind == _DATA or kind == _HEADERS or kind == _CONTINUATION:
            if length == 0 and not flags & _END_STREAM and not (kind == _CONTINUATION and flags & _END_HEADERS):
                self._empty += 1
                if self._empty > limits.max_consecutive_inbound_frames_with_empty_payload:
                    return (f"more than {limits.max_consecutive_inbound_frames_with_empty_payload} consecutive "
                            f"empty frames without END_STREAM")
            else:
                self._empty = 0
        if kind == _HEADERS:
            if stream > self._highest and (stream & 1) == self._server:
                self._highest = stream
                self.opened += 1
                if self._server:
                    self._note_open(stream)
            if not flags & _END_HEADERS:
                self._block, self._continuations = length, 0
            elif length > limits.max_header_bytes:
                return f"header block of {length} bytes exceeds {limits.max_header_bytes}"
        elif kind == _CONTINUATION and self._block is not None:
            self._block += length
            self._continuations += 1
            if self._continuations > limits.max_continuation_frames:
                return f"more than {limits.max_continuation_frames} CONTINUATION frames in one header block"
            if self._block > limits.max_header_bytes:
                return f"header block of {self._block} bytes exceeds {limits.max_header_bytes}"
            if flags & _END_HEADERS:
                self._block = None
        elif kind == _RST_STREAM and self._server:
            return self._note_reset(stream)
        elif kind == _PRIORITY:
            self.priority += 1
            allowed = limits.max_inbound_priority_frames_per_stream * (1 + self.opened)
            if self.priority > allowed:
                return f"{self.priority} PRIORITY frames for {self.opened} streams exceed {allowed}"
        elif kind == _WINDOW_UPDATE:
            self.window_updates += 1
            # Envoy's bound: 5 + 2 * (opened_streams + per_data_frame * outbound_data_frames).
            allowed = 5 + 2 * (self.opened + limits.max_inbound_window_update_frames_per_data_frame_sent
                               * self.data_frames_sent)
            if self.window_updates > allowed:
                return (f"{self.window_updates} WINDOW_UPDATE frames for {self.data_frames_sent} DATA frames "
                        f"sent exceed {allowed}")
        elif (kind == _PING or kind == _SETTINGS) and not flags & _ACK:
            self.control_acks += 1
            if self.control_acks > limits.max_outbound_control_frames:
                return f"more than {limits.max_outbound_control_frames} PING/SETTINGS frames awaiting answers"
        return None

    def _note_open(self, stream: int) -> None:
        now = self._clock()
        young = self._young
        while young:  # insertion order is age order: drop what has outgrown "premature"
            oldest = next(iter(young))
            if now - young[oldest] < self._lifetime:
                break
            del young[oldest]
        young[stream] = now

    def _note_reset(self, stream: int) -> str | None:
        opened = self._young.pop(stream, None)
        if opened is None:
            return None
        now = self._clock()
        if now - opened >= self._lifetime:
            return None
        resets = self._resets
        resets.append(now)
        while resets and now - resets[0] >= self._window:
            resets.popleft()
        if len(resets) > self._limits.max_rapid_resets:
            return (f"{len(resets)} streams reset within {self._lifetime:g}s of opening in the last "
                    f"{self._window:g}s exceed {self._limits.max_rapid_resets} (rapid reset)")
        return None
