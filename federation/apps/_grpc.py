"""gRPC on the echo app's port: ``meshfed.demo.Echo`` and ``grpc.health.v1.Health``.

Messages are hand-encoded protobuf (a few strings and ints are a few bytes of varint and
length-delimited fields; no generated code, no protobuf runtime). The services, as .proto::

    syntax = "proto3";
    package meshfed.demo;

    service Echo {
      rpc Echo(EchoRequest) returns (EchoResponse);              // one reply
      rpc EchoStream(EchoRequest) returns (stream EchoResponse); // `count` replies
    }
    message EchoRequest {
      string message = 1;         // echoed back in every reply
      int32 count = 2;            // EchoStream: replies to send; 0 means 3, at most 1000
      int32 interval_ms = 3;      // EchoStream: pause between replies; at most 10000
      int32 status_code = 4;      // end the call with this gRPC status (after the replies)
      string status_message = 5;  // ... and this grpc-message
    }
    message EchoResponse {
      string message = 1;
      string cluster = 2;
      string locality = 3;
      string version = 4;
      string instance = 5;
      string namespace = 6;
      string workload = 7;
      string protocol = 8;        // always "gRPC"
      int32 sequence = 9;         // 0-based index of the reply within the call
      map<string, string> metadata = 10;  // the request's headers, pseudo-headers left out
    }

    // grpc/grpc doc/health-checking.md: grpc.health.v1.Health/Check
    message HealthCheckRequest { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }  // UNKNOWN 0, SERVING 1, NOT_SERVING 2

Check answers SERVING for ``""`` and ``meshfed.demo.Echo`` (NOT_SERVING once the server
drains) and status NOT_FOUND for any other service, as the health-checking protocol says.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Iterable

import trio

from .._errors import FederationError
from ._env import AppEnv
from ._httpserve import Request, Response

SERVICE = "meshfed.demo.Echo"
MAX_STREAM_COUNT = 1000
MAX_INTERVAL_MS = 10_000
DEFAULT_STREAM_COUNT = 3
_GRPC_HEADERS = (("content-type", "application/grpc"),)


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (grpc/grpc doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    INTERNAL = 13
    UNIMPLEMENTED = 12
    UNAVAILABLE = 14


class ServingStatus(enum.IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2


class GrpcError(FederationError):
    """Ends a call with ``status`` and ``message`` in the trailers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- protobuf wire format (protobuf.dev/programming-guides/encoding) --------------------------

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # negative int32/int64: ten bytes of two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def encode_message(fields: Iterable[tuple[int, str | int | bytes]]) -> bytes:
    """Fields as (number, value): ints as varints, str/bytes length-delimited; proto3 defaults left out."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            if value:
                out += _varint(number << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            if data:
                out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise GrpcError(GrpcStatus.INTERNAL, "malformed protobuf message: truncated varint")


def decode_message(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values in order; fixed-width fields kept as raw bytes."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise GrpcError(GrpcStatus.INTERNAL, "malformed protobuf message: field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire in (1, 2, 5):
            size = 8 if wire == 1 else 4 if wire == 5 else None
            if size is None:
                size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise GrpcError(GrpcStatus.INTERNAL, "malformed protobuf message: truncated field")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise GrpcError(GrpcStatus.INTERNAL, f"malformed protobuf message: wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def field_str(fields: dict[int, list[int | bytes]], number: int) -> str:
    value = fields.get(number, [b""])[-1]  # proto3: the last occurrence wins
    if not isinstance(value, bytes):
        raise GrpcError(GrpcStatus.INTERNAL, f"field {number}: expected a string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise GrpcError(GrpcStatus.INTERNAL, f"field {number}: string is not valid UTF-8") from None


def field_int32(fields: dict[int, list[int | bytes]], number: int) -> int:
    value = fields.get(number, [0])[-1]
    if not isinstance(value, int):
        raise GrpcError(GrpcStatus.INTERNAL, f"field {number}: expected a varint")
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# -- gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md) --------------------------------------

def frame(message: bytes) -> bytes:
    """Length-Prefixed-Message: compressed flag 0, 4-byte big-endian length, the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise GrpcError(GrpcStatus.INTERNAL, "truncated gRPC message prefix")
        if body[pos] != 0:
            raise GrpcError(GrpcStatus.UNIMPLEMENTED, "compressed messages are not supported")
        size = int.from_bytes(body[pos + 1:pos + 5], "big")
        if pos + 5 + size > len(body):
            raise GrpcError(GrpcStatus.INTERNAL, "truncated gRPC message")
        messages.append(body[pos + 5:pos + 5 + size])
        pos += 5 + size
    return messages


def percent_encode(message: str) -> str:
    """grpc-message: bytes outside printable ASCII, and '%', as %XX (PROTOCOL-HTTP2.md)."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode())


def _trailers(status: int, message: str = "") -> Callable[[], list[tuple[str, str]]]:
    pairs = [("grpc-status", str(int(status)))]
    if message:
        pairs.append(("grpc-message", percent_encode(message)))
    return lambda: pairs


def status_response(status: int, message: str) -> Response:
    return Response(200, _GRPC_HEADERS, b"", _trailers(status, message))


class GrpcEcho:
    """The echo app's gRPC services; ``draining`` says whether the server is shutting down."""

    def __init__(self, env: AppEnv, draining: Callable[[], bool] = lambda: False) -> None:
        self.env = env
        self.draining = draining
        self._methods = {
            f"/{SERVICE}/Echo": self._echo,
            f"/{SERVICE}/EchoStream": self._echo_stream,
            "/grpc.health.v1.Health/Check": self._health_check,
        }

    async def handle(self, request: Request) -> Response:
        method = self._methods.get(request.path)
        if request.method != "POST":
            return Response(405, (("allow", "POST"),))
        if method is None:
            return status_response(GrpcStatus.UNIMPLEMENTED, f"Method not found: {request.path}")
        try:
            messages = unframe(request.body)
            if len(messages) != 1:
                raise GrpcError(GrpcStatus.INTERNAL, f"expected one request message; found {len(messages)}")
            return await method(request, decode_message(messages[0]))
        except GrpcError as exc:
            return status_response(exc.status, exc.message)

    def _reply(self, request: Request, message: str, sequence: int) -> bytes:
        env = self.env
        metadata = [(10, encode_message([(1, k), (2, v)])) for k, v in request.headers]
        return encode_message([(1, message), (2, env.cluster), (3, env.locality), (4, env.version),
                               (5, env.instance), (6, env.namespace), (7, env.workload), (8, "gRPC"),
                               (9, sequence), *metadata])

    async def _echo(self, request: Request, fields: dict[int, list[int | bytes]]) -> Response:
        status, status_message = field_int32(fields, 4), field_str(fields, 5)
        if status:
            return status_response(status, status_message)
        return Response(200, _GRPC_HEADERS, frame(self._reply(request, field_str(fields, 1), 0)), _trailers(0))

    async def _echo_stream(self, request: Request, fields: dict[int, list[int | bytes]]) -> Response:
        message = field_str(fields, 1)
        count = min(field_int32(fields, 2), MAX_STREAM_COUNT)
        count = count if count > 0 else DEFAULT_STREAM_COUNT
        interval = max(0, min(field_int32(fields, 3), MAX_INTERVAL_MS)) / 1000

        async def replies() -> AsyncIterator[bytes]:
            for sequence in range(count):
                if sequence and interval:
                    await trio.sleep(interval)
                yield frame(self._reply(request, message, sequence))

        return Response(200, _GRPC_HEADERS, replies(), _trailers(field_int32(fields, 4), field_str(fields, 5)))

    async def _health_check(self, request: Request, fields: dict[int, list[int | bytes]]) -> Response:
        service = field_str(fields, 1)
        if service not in ("", SERVICE):
            return status_response(GrpcStatus.NOT_FOUND, f"unknown service {service!r}")
        status = ServingStatus.NOT_SERVING if self.draining() else ServingStatus.SERVING
        return Response(200, _GRPC_HEADERS, frame(encode_message([(1, int(status))])), _trailers(0))
