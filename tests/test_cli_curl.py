"""``fedctl curl`` against a tiny trio HTTP proxy standing where a workload's sidecar listens."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import trio

from federation._state import (
    ClusterRecord, InstanceRecord, MeshState, ProcessRecord, WorkloadRecord, process_start_time, write_state,
)
from federation.cli import main


def fresh_address() -> str:
    return f"127.88.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


class StubProxy:
    """Answers like a sidecar's outbound listener: records each request; ``/status/N`` answers N,
    ``/hangup`` closes without a response, anything else echoes the request as JSON."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    async def serve(self, host: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(15001, host=host)
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        line, *fields = head.decode("latin-1").split("\r\n")
        headers = [tuple(f.split(": ", 1)) for f in fields]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        method, target, _ = line.split(" ")
        self.seen.append({"line": line, "headers": headers, "body": body.decode()})
        path = target.split("://", 1)[-1].partition("/")[2]
        if path == "hangup":
            await stream.aclose()
            return
        status = int(path.split("/")[1]) if path.startswith("status/") else 200
        payload = json.dumps({"method": method, "target": target, "headers": dict(headers),
                              "body": body.decode()}).encode()
        await stream.send_all(f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
                              f"X-Multi: a\r\nX-Multi: b\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await stream.aclose()


def write_mesh(tmp_path: Path, address: str, replicas: int = 1) -> None:
    me = ProcessRecord("supervisor", os.getpid(), process_start_time(os.getpid()), "running")
    cp = ProcessRecord("east-a/control-plane", 1, None, "running")
    insts = tuple(InstanceRecord("east-a", "demo", "client", f"client-{n}", address,
                                 ProcessRecord("app"), ProcessRecord("sidecar"), (), True, True)
                  for n in range(replicas))
    write_state(tmp_path, MeshState(str(tmp_path), me, "running", None, "files", (ClusterRecord(
        "east-a", "east-a.meshfed.local", "127.1.1.0/24", "127.1.1.1", "127.1.1.1:15012", "127.1.1.1:15014",
        "127.1.1.1:15053", cp, True),), (WorkloadRecord("east-a", "demo", "client", replicas),
                                         WorkloadRecord("east-a", "demo", "echo", 1)), insts))


@pytest.fixture
async def stub(nursery: trio.Nursery, tmp_path: Path) -> tuple[StubProxy, Path]:
    proxy, address = StubProxy(), fresh_address()
    await nursery.start(proxy.serve, address)
    write_mesh(tmp_path, address)
    return proxy, tmp_path


async def fedctl(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def test_request_leaves_in_absolute_form_and_the_body_is_printed(stub, capsys) -> None:
    proxy, mesh = stub
    assert await fedctl("curl", "east-a/client", "http://echo.demo:8080/a?b=1", "--dir", str(mesh)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "http://echo.demo:8080/a?b=1"
    assert proxy.seen[0]["line"] == "GET http://echo.demo:8080/a?b=1 HTTP/1.1"
    assert ("Host", "echo.demo:8080") in proxy.seen[0]["headers"]


async def test_include_prints_status_line_and_every_header_first(stub, capsys) -> None:
    _, mesh = stub
    assert await fedctl("curl", "-i", "east-a/client", "http://echo.demo:8080/status/201", "--dir", str(mesh)) == 0
    out = capsys.readouterr().out
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 201 Whatever"
    assert lines[1:4] == ["Content-Type: application/json", "X-Multi: a", "X-Multi: b"]
    assert json.loads(body)["method"] == "GET"


@pytest.mark.parametrize("argv, code, err, body", [
    (["-f"], 22, "curl: (22) The requested URL returned error: 404\n", False),
    ([], 0, "", True),
])
async def test_fail_turns_an_error_status_into_exit_22_without_body(stub, capsys, argv, code, err, body) -> None:
    _, mesh = stub
    assert await fedctl("curl", *argv, "east-a/client", "http://echo.demo:8080/status/404", "--dir", str(mesh)) == code
    captured = capsys.readouterr()
    assert captured.err == err
    assert bool(captured.out) is body


@pytest.mark.parametrize("argv", [
    ["-X", "PUT", "-H", "a: 1", "-H", "b: two words", "-d", "hello", "east-a/client", "http://echo.demo:8080/p"],
    ["east-a/client", "http://echo.demo:8080/p", "-X", "PUT", "-H", "a: 1", "-H", "b: two words", "-d", "hello"],
    ["-H", "a: 1", "east-a/client", "-X", "PUT", "http://echo.demo:8080/p", "-d", "hello", "-H", "b: two words"],
])
async def test_options_go_before_between_or_after_the_arguments(stub, capsys, argv) -> None:
    proxy, mesh = stub
    assert await fedctl("curl", *argv, "--dir", str(mesh)) == 0
    seen = proxy.seen[-1]
    assert seen["line"] == "PUT http://echo.demo:8080/p HTTP/1.1" and seen["body"] == "hello"
    headers = seen["headers"]
    assert ("a", "1") in headers and ("b", "two words") in headers
    assert ("Content-Type", "application/x-www-form-urlencoded") in headers and ("Content-Length", "5") in headers


async def test_data_alone_makes_a_post(stub, capsys) -> None:
    proxy, mesh = stub
    assert await fedctl("curl", "-d", "x=1", "east-a/client", "http://echo.demo:8080/", "--dir", str(mesh)) == 0
    assert proxy.seen[-1]["line"] == "POST http://echo.demo:8080/ HTTP/1.1"


async def test_a_connection_closed_without_response_is_exit_52(stub, capsys) -> None:
    _, mesh = stub
    assert await fedctl("curl", "east-a/client", "http://echo.demo:8080/hangup", "--dir", str(mesh)) == 52
    assert capsys.readouterr().err == "curl: (52) Empty reply from server\n"


async def test_unreachable_sidecar_is_exit_7(tmp_path: Path, capsys) -> None:
    address = fresh_address()
    write_mesh(tmp_path, address)
    assert await fedctl("curl", "east-a/client", "http://echo.demo:8080/", "--dir", str(tmp_path)) == 7
    assert capsys.readouterr().err == (f"curl: (7) Failed to connect to {address} port 15001: Connection refused\n")


@pytest.mark.parametrize("target, message", [
    ("east-a/nope", "fedctl: error: cluster 'east-a' runs no workload 'nope'; its workloads are: demo/client, "
                    "demo/echo\n"),
    ("north/client", "fedctl: error: unknown cluster 'north'; the clusters are: east-a\n"),
    ("east-a", "fedctl: error: expected CLUSTER/WORKLOAD (or CLUSTER/NAMESPACE/WORKLOAD); found 'east-a'\n"),
])
async def test_unknown_targets_are_refused_with_what_exists(tmp_path: Path, capsys, target: str, message: str) -> None:
    write_mesh(tmp_path, fresh_address())
    assert await fedctl("curl", target, "http://echo.demo:8080/", "--dir", str(tmp_path)) == 1
    assert capsys.readouterr().err == message


async def test_a_workload_scaled_to_zero_has_nothing_to_send_from(tmp_path: Path, capsys) -> None:
    write_mesh(tmp_path, fresh_address(), replicas=0)
    assert await fedctl("curl", "east-a/client", "http://echo.demo:8080/", "--dir", str(tmp_path)) == 1
    assert capsys.readouterr().err == "fedctl: error: east-a/demo/client has no instances (scaled to 0)\n"


async def test_malformed_header_is_a_usage_error(stub, capsys) -> None:
    _, mesh = stub
    assert await fedctl("curl", "-H", "nocolon", "east-a/client", "http://echo.demo:8080/", "--dir", str(mesh)) == 2
    assert capsys.readouterr().err == "curl: (2) -H must be 'name: value'; found 'nocolon'\n"
