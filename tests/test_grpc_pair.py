"""gRPC through a sidecar pair with the real grpcio on both ends: the client goes through the
client sidecar with ``grpc.http_proxy`` (CONNECT, then HTTP/2 inside, terminated there), the
sidecars speak pooled HTTP/2 over mTLS, the server sidecar reaches the grpcio server over h2c.

Messages are raw bytes (identity serializers): what is checked is the transport - trailers,
statuses, deadlines, streaming - not protobuf."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from gateway._events import Request, Response, Role
from gateway._h2session import H2Session
from gateway.testing import Pair, curl, start_pair
from trustdomain.testing import MeshPki

GRPC = {"app_protocol": "grpc", "service_protocol": "grpc"}
TIMEOUT = 10


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root("east.example")


class Echo:
    """A grpcio server: ``/demo.Echo/{Unary,Fail,Stream,Bidi,Slow}`` on raw bytes."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.metadata: list[dict[str, str]] = []

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        context.send_initial_metadata((("x-initial", "i1"),))
        context.set_trailing_metadata((("x-trailer", "t1"), ("x-bin-bin", b"\x00\xff")))
        return b"echo:" + request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now: 100% ünïcode")
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request or b"3")):
            yield b"%d" % i
        context.set_trailing_metadata((("x-count", request.decode() or "3"),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield message.upper()

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(self.cancelled.set)
        deadline = time.monotonic() + TIMEOUT
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        return b"late"

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        }
        return grpc.method_handlers_generic_handler("demo.Echo", methods)

    async def serve(self, host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[self.handler()])
        port = server.add_insecure_port(f"{host}:0")
        server.start()
        try:
            task_status.started((host, port))
            await trio.sleep_forever()
        finally:
            server.stop(0)


async def grpc_pair(nursery: trio.Nursery, pki: MeshPki, folder: Path, **config: Any) -> tuple[Pair, Echo]:
    echo = Echo()
    pair = await start_pair(nursery, pki, folder, app_serve=echo.serve, **GRPC, **config)
    return pair, echo


async def call(pair: Pair, use: Callable[[grpc.Channel], Any], authority: str = "") -> Any:
    """Run blocking grpcio calls in a thread, through the client sidecar as its http proxy."""
    target = authority or f"{pair.addrs.fqdn}:{pair.addrs.service_port}"

    def run() -> Any:
        options = [("grpc.http_proxy", pair.proxy_url), ("grpc.enable_retries", 0)]
        with grpc.insecure_channel(target, options=options) as channel:
            return use(channel)
    with trio.fail_after(TIMEOUT + 5):
        return await trio.to_thread.run_sync(run)


def method(channel: grpc.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(channel, kind)(f"/demo.Echo/{name}")


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except grpc.RpcError as exc:
        return (exc.code(), exc.details(), dict(exc.trailing_metadata() or ()))


async def test_unary_call_keeps_initial_and_trailing_metadata(nursery: trio.Nursery, pki: MeshPki,
                                                              tmp_path: Path) -> None:
    pair, echo = await grpc_pair(nursery, pki, tmp_path)

    def use(channel: grpc.Channel) -> Any:
        reply, rpc = method(channel, "Unary").with_call(b"hi", metadata=[("end-user", "jason")], timeout=TIMEOUT)
        return reply, rpc.code(), dict(rpc.initial_metadata()), dict(rpc.trailing_metadata())

    reply, code, initial, trailing = await call(pair, use)
    assert (reply, code) == (b"echo:hi", grpc.StatusCode.OK)
    assert initial["x-initial"] == "i1"
    assert (trailing["x-trailer"], trailing["x-bin-bin"]) == ("t1", b"\x00\xff")
    seen = echo.metadata[0]
    assert seen["end-user"] == "jason"
    assert "URI=spiffe://east.example/ns/demo/sa/client" in seen["x-forwarded-client-cert"]


async def test_a_non_ok_status_arrives_with_its_message_and_trailers(nursery: trio.Nursery, pki: MeshPki,
                                                                     tmp_path: Path) -> None:
    pair, _ = await grpc_pair(nursery, pki, tmp_path)
    got = await call(pair, lambda ch: outcome(lambda: method(ch, "Fail")(b"", timeout=TIMEOUT)))
    assert got[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "not now: 100% ünïcode")
    assert got[2]["x-why"] == "because"


async def test_server_streaming_replies_in_order_then_the_final_status(nursery: trio.Nursery, pki: MeshPki,
                                                                       tmp_path: Path) -> None:
    pair, _ = await grpc_pair(nursery, pki, tmp_path)

    def use(channel: grpc.Channel) -> Any:
        seen: list[bytes] = []
        responses = method(channel, "Stream", "unary_stream")(b"50", timeout=TIMEOUT)
        try:
            for reply in responses:
                seen.append(reply)
        except grpc.RpcError as exc:
            return seen, exc.code(), exc.details(), dict(exc.trailing_metadata())
        return seen, None, None, None

    seen, code, details, trailing = await call(pair, use)
    assert seen == [b"%d" % i for i in range(50)]
    assert (code, details, trailing["x-count"]) == (grpc.StatusCode.UNAVAILABLE, "draining", "50")


async def test_bidi_streaming_echoes_each_message_as_it_goes(nursery: trio.Nursery, pki: MeshPki,
                                                             tmp_path: Path) -> None:
    pair, _ = await grpc_pair(nursery, pki, tmp_path)

    def use(channel: grpc.Channel) -> Any:
        replies = []
        call = method(channel, "Bidi", "stream_stream")(iter([b"a" * 70_000, b"b", b"c" * 200_000]), timeout=TIMEOUT)
        for reply in call:
            replies.append(reply)
        return [(r[:1], len(r)) for r in replies], call.code()

    assert await call(pair, use) == ([(b"A", 70_000), (b"B", 1), (b"C", 200_000)], grpc.StatusCode.OK)


async def test_a_deadline_ends_the_call_and_cancels_it_upstream(nursery: trio.Nursery, pki: MeshPki,
                                                                tmp_path: Path) -> None:
    pair, echo = await grpc_pair(nursery, pki, tmp_path)
    got = await call(pair, lambda ch: outcome(lambda: method(ch, "Slow")(b"", timeout=0.3)))
    assert got[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(5):
        while not echo.cancelled.is_set():
            await trio.sleep(0.02)


async def test_unknown_method_is_unimplemented_from_the_app(nursery: trio.Nursery, pki: MeshPki,
                                                            tmp_path: Path) -> None:
    pair, _ = await grpc_pair(nursery, pki, tmp_path)
    got = await call(pair, lambda ch: outcome(lambda: method(ch, "Nope")(b"", timeout=TIMEOUT)))
    assert got[0] == grpc.StatusCode.UNIMPLEMENTED


def vs(http: str) -> str:
    return ("\n  - apiVersion: networking.istio.io/v1\n    kind: VirtualService\n"
            f"    metadata: {{name: echo, namespace: demo}}\n    spec: {{hosts: [echo], http: {http}}}")


def deny(path: str) -> str:
    return ("\n  - apiVersion: security.istio.io/v1\n    kind: AuthorizationPolicy\n"
            "    metadata: {name: deny, namespace: demo}\n"
            f"    spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]}}\n")


async def test_local_replies_are_trailers_only_with_envoys_grpc_status(nursery: trio.Nursery, pki: MeshPki,
                                                                      tmp_path: Path) -> None:
    pair, echo = await grpc_pair(
        nursery, pki, tmp_path, server_resources=deny("/demo.Echo/Slow"),
        client_resources=vs("[{match: [{uri: {prefix: /demo.Echo/}}], route: [{destination: {host: echo}}]}]"))

    def use(channel: grpc.Channel) -> Any:
        return [outcome(lambda: channel.unary_unary("/other.Service/Call")(b"", timeout=TIMEOUT)),
                outcome(lambda: method(channel, "Slow")(b"", timeout=TIMEOUT))]

    no_route, denied = await call(pair, use)
    assert no_route[:2] == (grpc.StatusCode.UNIMPLEMENTED, "")  # 404 NR
    assert denied[:2] == (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")  # 403 from the server sidecar
    assert not echo.cancelled.is_set() and echo.metadata == []
    code, out, _ = await curl(f"http://{pair.addrs.client}:15000/metrics")
    lines = [x for x in out.splitlines() if x.startswith("istio_requests_total{")]
    assert any('response_code="200"' in x and 'grpc_response_status="12"' in x and 'response_flags="NR"' in x
               and 'request_protocol="grpc"' in x for x in lines), lines
    code, out, _ = await curl(f"http://{pair.addrs.server}:15000/metrics")
    lines = [x for x in out.splitlines() if x.startswith("istio_requests_total{")]
    assert any('response_code="200"' in x and 'grpc_response_status="7"' in x for x in lines), lines


async def test_an_app_that_is_gone_is_unavailable(nursery: trio.Nursery, pki: MeshPki, tmp_path: Path) -> None:
    async def nothing(host: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=host)
        address = listeners[0].socket.getsockname()[:2]
        for listener in listeners:
            await listener.aclose()  # the port is free again: connecting is refused
        task_status.started(address)

    pair = await start_pair(nursery, pki, tmp_path, app_serve=nothing, **GRPC)
    got = await call(pair, lambda ch: outcome(lambda: method(ch, "Unary")(b"", timeout=TIMEOUT)))
    assert got[0] == grpc.StatusCode.UNAVAILABLE
    assert "connection failure" in got[1]


async def test_concurrent_calls_share_one_http2_connection_between_sidecars(nursery: trio.Nursery, pki: MeshPki,
                                                                            tmp_path: Path) -> None:
    pair, echo = await grpc_pair(nursery, pki, tmp_path)

    def use(channel: grpc.Channel) -> Any:
        stub = method(channel, "Stream", "unary_stream")
        calls = [stub(b"20", timeout=TIMEOUT) for _ in range(16)]
        return [len([outcome(lambda: [*c])]) for c in calls]

    assert await call(pair, use) == [1] * 16
    stats = list(pair.client.h2pool.stats.values())
    assert [(s.cx_total, s.rq_total) for s in stats] == [(1, 16)]
    code, out, _ = await curl(f"http://{pair.addrs.client}:15000/metrics")
    line = next(x for x in out.splitlines() if x.startswith("istio_requests_total{") and 'grpc_response_status="14"' in x)
    assert 'response_code="200"' in line and 'request_protocol="grpc"' in line and line.endswith(" 16.0")


async def raw_call(nursery: trio.Nursery, pair: Pair, path: str, grpc_timeout: str) -> tuple[int, dict[bytes, bytes]]:
    """One gRPC call as h2c by prior knowledge to the client sidecar, with ``grpc-timeout``
    and no deadline of its own (it never resets the stream): the response head's status and fields."""
    with trio.fail_after(TIMEOUT):
        session = H2Session(await trio.open_tcp_stream(pair.addrs.client, 15001), Role.CLIENT)
        await nursery.start(session.run)
        stream = session.open_stream()
        authority = f"{pair.addrs.fqdn}:{pair.addrs.service_port}".encode()
        await stream.send_head(Request(b"POST", path.encode(), [
            (b"host", authority), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            (b"grpc-timeout", grpc_timeout.encode())]))
        await stream.send_data(b"\0\0\0\0\0", end=True)  # one empty message
        head = await stream.receive()
        session.close()
    assert type(head) is Response
    return head.status, dict(head.headers)


@pytest.mark.parametrize("route_timeout, grpc_timeout, status, message", [
    ("0.3s", "10S", b"14", b"upstream request timeout"),  # a route timeout: 504, which gRPC reads as UNAVAILABLE
    ("10s", "300m", b"4", b"upstream request timeout"),   # the caller's own deadline: DEADLINE_EXCEEDED
])
async def test_a_timeout_is_unavailable_unless_it_is_the_callers_grpc_timeout(
        nursery: trio.Nursery, pki: MeshPki, tmp_path: Path, route_timeout: str, grpc_timeout: str,
        status: bytes, message: bytes) -> None:
    pair, echo = await grpc_pair(nursery, pki, tmp_path, client_resources=vs(
        f"[{{timeout: {route_timeout}, route: [{{destination: {{host: echo}}}}]}}]"))
    code, fields = await raw_call(nursery, pair, "/demo.Echo/Slow", grpc_timeout)
    assert (code, fields[b"grpc-status"], fields[b"grpc-message"]) == (200, status, message)
    code, out, _ = await curl(f"http://{pair.addrs.client}:15000/metrics")
    lines = [x for x in out.splitlines() if x.startswith("istio_requests_total{") and 'reporter="source"' in x]
    assert [('response_code="200"' in x, f'grpc_response_status="{status.decode()}"' in x,
             'response_flags="UT"' in x, 'request_protocol="grpc"' in x) for x in lines] == [(True,) * 4], lines
