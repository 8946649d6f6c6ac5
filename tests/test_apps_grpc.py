"""gRPC on the echo app's port, checked with the real grpcio client and the protobuf runtime.

The app hand-encodes its messages; here the messages come from the protobuf runtime, built
from the .proto in federation/apps/_grpc.py's docstring, so both ends of the wire format
are checked against an independent codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from federation.apps import AppEnv, GrpcError, GrpcEcho, HttpServer, Request, build_handler
from federation.apps._grpc import decode_message, encode_message, field_int32, field_str, frame, percent_encode

ENV = AppEnv(app="echo", cluster="west", locality="us-west/us-west-1a", version="v1", instance="echo-west-0",
             namespace="demo", workload="echo")
F = descriptor_pb2.FieldDescriptorProto


def _messages() -> dict[str, Any]:
    files = descriptor_pb2.FileDescriptorSet()
    demo = files.file.add(name="meshfed_demo.proto", package="meshfed.demo", syntax="proto3")
    req = demo.message_type.add(name="EchoRequest")
    for number, name, kind in ((1, "message", F.TYPE_STRING), (2, "count", F.TYPE_INT32), (3, "interval_ms", F.TYPE_INT32),
                               (4, "status_code", F.TYPE_INT32), (5, "status_message", F.TYPE_STRING)):
        req.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    resp = demo.message_type.add(name="EchoResponse")
    for number, name in enumerate(("message", "cluster", "locality", "version", "instance", "namespace",
                                   "workload", "protocol"), start=1):
        resp.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    resp.field.add(name="sequence", number=9, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    entry = resp.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    resp.field.add(name="metadata", number=10, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                   type_name=".meshfed.demo.EchoResponse.MetadataEntry")
    health = files.file.add(name="health.proto", package="grpc.health.v1", syntax="proto3")
    health.message_type.add(name="HealthCheckRequest").field.add(
        name="service", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    status = health.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    health.message_type.add(name="HealthCheckResponse").field.add(
        name="status", number=1, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL, type_name=".grpc.health.v1.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    names = ("meshfed.demo.EchoRequest", "meshfed.demo.EchoResponse", "grpc.health.v1.HealthCheckRequest",
             "grpc.health.v1.HealthCheckResponse")
    return {n.rsplit(".", 1)[1]: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


PB = _messages()
EchoRequest, EchoResponse = PB["EchoRequest"], PB["EchoResponse"]
HealthCheckRequest, HealthCheckResponse = PB["HealthCheckRequest"], PB["HealthCheckResponse"]


async def start(nursery: trio.Nursery, host: str) -> str:
    server = HttpServer(build_handler(ENV), grace=1.0)  # type: ignore[arg-type]
    bound, port = await nursery.start(server.serve, host, 0)
    return f"{bound}:{port}"


async def in_thread(target: str, call: Callable[[grpc.Channel], Any]) -> Any:
    """Run a blocking grpcio call (grpcio has its own threads) without blocking trio."""
    def run() -> Any:
        with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            return call(channel)
    with trio.fail_after(10):
        return await trio.to_thread.run_sync(run)


def unary(channel: grpc.Channel, method: str, response_cls: Any) -> Any:
    return channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_cls.FromString)


def streaming(channel: grpc.Channel) -> Any:
    return channel.unary_stream("/meshfed.demo.Echo/EchoStream", request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=EchoResponse.FromString)


async def test_unary_echo_names_the_instance_and_returns_status_ok(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.1")

    def call(channel: grpc.Channel) -> Any:
        reply, rpc = unary(channel, "/meshfed.demo.Echo/Echo", EchoResponse).with_call(
            EchoRequest(message="héllo"), metadata=[("end-user", "jason")], timeout=5)
        return reply, rpc.code(), rpc.trailing_metadata()

    reply, code, trailers = await in_thread(target, call)
    assert code == grpc.StatusCode.OK
    assert (reply.message, reply.cluster, reply.locality, reply.version, reply.instance, reply.namespace,
            reply.workload, reply.protocol, reply.sequence) == (
        "héllo", "west", "us-west/us-west-1a", "v1", "echo-west-0", "demo", "echo", "gRPC", 0)
    assert reply.metadata["end-user"] == "jason"
    assert reply.metadata["content-type"] == "application/grpc"
    assert trailers == ()  # grpc-status itself is consumed by grpcio


async def test_server_streaming_sends_count_replies_in_order(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.2")
    replies = await in_thread(target, lambda ch: list(streaming(ch)(
        EchoRequest(message="s", count=5, interval_ms=10), timeout=5)))
    assert [(r.sequence, r.message, r.instance) for r in replies] == [(i, "s", "echo-west-0") for i in range(5)]


async def test_streaming_defaults_to_three_replies(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.2")
    replies = await in_thread(target, lambda ch: list(streaming(ch)(EchoRequest(), timeout=5)))
    assert [r.sequence for r in replies] == [0, 1, 2]


async def test_requested_error_status_and_message_arrive_intact_in_the_trailers(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.3")

    def call(channel: grpc.Channel) -> Any:
        try:
            unary(channel, "/meshfed.demo.Echo/Echo", EchoResponse)(
                EchoRequest(status_code=9, status_message="not now: 100% ünïcode"), timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return None

    assert await in_thread(target, call) == (grpc.StatusCode.FAILED_PRECONDITION, "not now: 100% ünïcode")


async def test_stream_ends_with_the_requested_status_after_its_replies(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.4")

    def call(channel: grpc.Channel) -> Any:
        seen = []
        try:
            for reply in streaming(channel)(EchoRequest(count=2, status_code=14, status_message="draining"), timeout=5):
                seen.append(reply.sequence)
        except grpc.RpcError as exc:
            return seen, exc.code(), exc.details()
        return seen, None, None

    assert await in_thread(target, call) == ([0, 1], grpc.StatusCode.UNAVAILABLE, "draining")


async def test_unknown_method_is_unimplemented(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.5")

    def call(channel: grpc.Channel) -> Any:
        try:
            unary(channel, "/meshfed.demo.Echo/Nope", EchoResponse)(EchoRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return None

    assert await in_thread(target, call) == (grpc.StatusCode.UNIMPLEMENTED,
                                             "Method not found: /meshfed.demo.Echo/Nope")


@pytest.mark.parametrize("service, expected", [
    ("", (grpc.StatusCode.OK, 1)),
    ("meshfed.demo.Echo", (grpc.StatusCode.OK, 1)),
    ("reviews", (grpc.StatusCode.NOT_FOUND, "unknown service 'reviews'")),
])
async def test_health_check(nursery: trio.Nursery, service: str, expected: tuple[Any, Any]) -> None:
    target = await start(nursery, "127.0.8.6")

    def call(channel: grpc.Channel) -> Any:
        try:
            reply = unary(channel, "/grpc.health.v1.Health/Check", HealthCheckResponse)(
                HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, reply.status

    assert await in_thread(target, call) == expected


async def test_health_check_says_not_serving_while_draining() -> None:
    app = GrpcEcho(ENV, draining=lambda: True)
    body = frame(HealthCheckRequest(service="").SerializeToString())
    response = await app.handle(Request("POST", "/grpc.health.v1.Health/Check",
                                        (("content-type", "application/grpc"),), body, "HTTP/2"))
    assert isinstance(response.body, bytes)
    assert HealthCheckResponse.FromString(response.body[5:]).status == 2  # NOT_SERVING
    assert response.trailers is not None and list(response.trailers()) == [("grpc-status", "0")]


async def test_a_deadline_cancels_a_slow_stream_and_the_server_keeps_serving(nursery: trio.Nursery) -> None:
    target = await start(nursery, "127.0.8.7")

    def call(channel: grpc.Channel) -> Any:
        seen = []
        try:
            for reply in streaming(channel)(EchoRequest(count=50, interval_ms=100), timeout=0.35):
                seen.append(reply.sequence)
        except grpc.RpcError as exc:
            code = exc.code()
        again = unary(channel, "/meshfed.demo.Echo/Echo", EchoResponse)(EchoRequest(message="again"), timeout=5)
        return code, len(seen) < 50, again.message

    assert await in_thread(target, call) == (grpc.StatusCode.DEADLINE_EXCEEDED, True, "again")


@pytest.mark.parametrize("fields", [
    {"message": "hi"},
    {"message": "ünïcode", "count": 300, "interval_ms": 1, "status_code": 0},
    {"count": -1},  # negative int32: ten bytes of two's complement
    {"status_code": 2147483647, "status_message": "x" * 200},  # a length over one varint byte
    {},
])
def test_hand_encoding_matches_the_protobuf_runtime(fields: dict[str, Any]) -> None:
    ours = encode_message([(1, fields.get("message", "")), (2, fields.get("count", 0)),
                           (3, fields.get("interval_ms", 0)), (4, fields.get("status_code", 0)),
                           (5, fields.get("status_message", ""))])
    assert ours == EchoRequest(**fields).SerializeToString()
    decoded = decode_message(EchoRequest(**fields).SerializeToString())
    assert (field_str(decoded, 1), field_int32(decoded, 2)) == (fields.get("message", ""), fields.get("count", 0))


@pytest.mark.parametrize("data, message", [
    (b"\x08\x80", "malformed protobuf message: truncated varint"),
    (b"\x0a\x05ab", "malformed protobuf message: truncated field"),
    (b"\x00\x01", "malformed protobuf message: field number 0"),
    (b"\x0b", "malformed protobuf message: wire type 3"),
])
def test_malformed_messages_are_refused_with_internal(data: bytes, message: str) -> None:
    with pytest.raises(GrpcError) as caught:
        decode_message(data)
    assert (caught.value.status, caught.value.message) == (13, message)


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode("a 100% ü\n") == "a 100%25 %C3%BC%0A"
