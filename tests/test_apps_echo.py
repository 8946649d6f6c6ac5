"""The echo demo app and the small HTTP server under every demo app (HTTP/1.1, h2c, drain)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
import h2.events as h2e

from federation.apps import (AppConfigError, AppEnv, EchoApp, HttpClient, HttpServer, Request, UpstreamError,
                             build_handler, parse_seconds)
from federation.apps.__main__ import main, parse_listen
from federation.apps._httpclient import bypasses_proxy

ROOT = Path(__file__).resolve().parent.parent
ENV = AppEnv(app="echo", cluster="east-a", locality="us-east/us-east-1a", version="v2", instance="echo-7f9c",
             namespace="demo", workload="echo")
CLIENT = HttpClient()


async def start(nursery: trio.Nursery, host: str, env: AppEnv = ENV) -> tuple[HttpServer, str]:
    server = HttpServer(build_handler(env), grace=2.0)  # type: ignore[arg-type]
    bound_host, port = await nursery.start(server.serve, host, 0)
    return server, f"http://{bound_host}:{port}"


async def curl(*args: str) -> str:
    with trio.fail_after(10):
        done = await trio.run_process(["curl", "-sS", "--max-time", "5", *args], capture_stdout=True)
    return done.stdout.decode()


@pytest.mark.parametrize("path, query", [("/", ""), ("/hello/world", "a=1&b=2"), ("/headers", "")])
async def test_echo_answers_with_its_identity_and_the_request(nursery: trio.Nursery, path: str, query: str) -> None:
    _, base = await start(nursery, "127.0.6.1")
    url = base + path + (f"?{query}" if query else "")
    response = await CLIENT.get(url, headers=(("end-user", "jason"), ("x-request-id", "r-1")), timeout=5)
    body = response.json()
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    assert {k: body[k] for k in ("cluster", "locality", "version", "instance", "namespace", "workload")} == {
        "cluster": "east-a", "locality": "us-east/us-east-1a", "version": "v2", "instance": "echo-7f9c",
        "namespace": "demo", "workload": "echo"}
    assert (body["method"], body["path"], body["query"], body["protocol"]) == ("GET", path, query, "HTTP/1.1")
    assert body["headers"]["end-user"] == "jason"
    assert body["headers"]["x-request-id"] == "r-1"
    assert body["headers"]["host"] == base.removeprefix("http://")


async def test_echo_echoes_a_posted_body(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.2")
    response = await CLIENT.request("POST", base + "/anything", body=b"ping", timeout=5)
    assert (response.status, response.json()["method"], response.json()["body"]) == (200, "POST", "ping")


@pytest.mark.parametrize("code", [200, 201, 404, 418, 500, 503, 599])
async def test_status_path_answers_with_that_status_and_says_who_answered(nursery: trio.Nursery, code: int) -> None:
    _, base = await start(nursery, "127.0.6.3")
    response = await CLIENT.get(f"{base}/status/{code}", timeout=5)
    assert response.status == code
    assert response.json()["instance"] == "echo-7f9c"


async def test_status_204_answers_without_a_body(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.3")
    response = await CLIENT.get(f"{base}/status/204", timeout=5)
    assert (response.status, response.body) == (204, b"")


@pytest.mark.parametrize("path, message", [
    ("/status/abc", "/status/CODE: CODE must be an HTTP status 200..599; found 'abc'\n"),
    ("/status/101", "/status/CODE: CODE must be an HTTP status 200..599; found '101'\n"),
    ("/status/600", "/status/CODE: CODE must be an HTTP status 200..599; found '600'\n"),
    ("/delay/-1", "/delay/SECONDS: SECONDS must be a number 0 or more; found '-1'\n"),
    ("/delay/soon", "/delay/SECONDS: SECONDS must be a number 0 or more; found 'soon'\n"),
    ("/delay/nan", "/delay/SECONDS: SECONDS must be a number 0 or more; found 'nan'\n"),
])
async def test_bad_status_and_delay_arguments_are_answered_400(nursery: trio.Nursery, path: str, message: str) -> None:
    _, base = await start(nursery, "127.0.6.4")
    response = await CLIENT.get(base + path, timeout=5)
    assert (response.status, response.body.decode()) == (400, message)


async def test_delay_path_answers_after_that_delay(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.5")
    started = trio.current_time()
    response = await CLIENT.get(f"{base}/delay/0.3", timeout=5)
    assert response.status == 200
    assert 0.3 <= trio.current_time() - started < 2.0


@pytest.mark.parametrize("asked, waited", [("0", 0.0), ("1.5", 1.5), ("60", 60.0), ("3600", 60.0), ("inf", 60.0)])
async def test_delay_is_capped_at_sixty_seconds(autojump_clock: trio.testing.MockClock, asked: str,
                                                waited: float) -> None:
    app = EchoApp(ENV)
    started = trio.current_time()
    response = await app(Request("GET", f"/delay/{asked}", ()))
    assert response.status == 200
    assert trio.current_time() - started == waited


async def test_keep_alive_serves_pipelined_requests_on_one_connection(nursery: trio.Nursery) -> None:
    server, base = await start(nursery, "127.0.6.6")
    host, port = base.removeprefix("http://").split(":")
    conn = h11.Connection(h11.CLIENT)
    paths: list[str] = []

    def sent(path: str) -> None:  # both requests went out raw, pipelined: tell h11 what was sent
        conn.send(h11.Request(method="GET", target=path, headers=[("host", "a")]))
        conn.send(h11.EndOfMessage())
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
            body = b""
            sent("/one")
            while len(paths) < 2:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                    assert dict(event.headers)[b"content-length"]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    paths.append(json.loads(body)["path"])
                    body = b""
                    conn.start_next_cycle()
                    sent("/two")
            assert server.connections == 1
    assert paths == ["/one", "/two"]


async def test_h2c_prior_knowledge_with_curl(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.7")
    out = await curl("--http2-prior-knowledge", "-H", "end-user: jason", f"{base}/h2?x=1")
    body = json.loads(out)
    assert (body["protocol"], body["path"], body["query"], body["headers"]["end-user"]) == ("HTTP/2", "/h2", "x=1", "jason")
    assert body["headers"]["host"] == base.removeprefix("http://")


async def test_h2c_upgrade_from_http_1_1_with_curl(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.8")
    out = await curl("--http2", "-w", "\n%{http_version}", f"{base}/upgraded")
    body, version = out.rsplit("\n", 1)
    assert (json.loads(body)["protocol"], version) == ("HTTP/2", "2")
    assert "upgrade" not in json.loads(body)["headers"]


async def test_h2_flow_control_carries_bodies_larger_than_the_window(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, base = await start(nursery, "127.0.6.9")
    payload = "x" * 300_000  # over the 65,535-byte initial window both ways
    (tmp_path / "payload").write_text(payload)
    out = await curl("--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'payload'}", f"{base}/big")
    assert json.loads(out)["body"] == payload


async def test_drain_closes_idle_connections_and_finishes_requests_in_flight(nursery: trio.Nursery) -> None:
    server = HttpServer(build_handler(ENV), grace=3.0)  # type: ignore[arg-type]
    served = trio.Event()

    async def serve(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[type-arg]
        await server.serve("127.0.6.10", 0, task_status=task_status)
        served.set()

    host, port = await nursery.start(serve)
    base = f"http://{host}:{port}"
    results = []

    async def slow() -> None:
        results.append(await CLIENT.get(f"{base}/delay/0.5", timeout=5))

    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, port) as idle:
            await idle.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            reply = b""
            while not reply.endswith(b"\n}\n"):  # the whole JSON response: the connection is idle again
                reply += await idle.receive_some(65536)
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            async with trio.open_nursery() as inner:
                inner.start_soon(slow)
                await trio.sleep(0.2)
                server.drain()
                assert await idle.receive_some(65536) == b""  # the idle keep-alive connection is closed
            assert results[0].status == 200
            assert results[0].header("connection") == "close"
        await served.wait()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, port)


async def test_h2_drain_refuses_new_streams_finishes_open_ones_then_goaway(nursery: trio.Nursery) -> None:
    server, base = await start(nursery, "127.0.6.11")
    host, port = base.removeprefix("http://").split(":")
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"echo"), (b":path", b"/delay/0.4")]
    events: list[h2e.Event] = []
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            conn.send_headers(1, head, end_stream=True)
            await stream.send_all(conn.data_to_send())
            await trio.sleep(0.1)
            server.drain()
            await trio.sleep(0.1)
            conn.send_headers(3, head, end_stream=True)
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                events += conn.receive_data(data)
                await stream.send_all(conn.data_to_send())
    kinds = [(type(e).__name__, getattr(e, "stream_id", None)) for e in events
             if isinstance(e, (h2e.ResponseReceived, h2e.StreamEnded, h2e.StreamReset, h2e.ConnectionTerminated))]
    assert kinds == [("StreamReset", 3), ("ResponseReceived", 1), ("StreamEnded", 1), ("ConnectionTerminated", None)]
    reset = next(e for e in events if isinstance(e, h2e.StreamReset))
    assert reset.error_code == ErrorCodes.REFUSED_STREAM
    goaway = next(e for e in events if isinstance(e, h2e.ConnectionTerminated))
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 3)


async def test_client_gives_up_after_its_timeout(nursery: trio.Nursery) -> None:
    _, base = await start(nursery, "127.0.6.12")
    started = trio.current_time()
    with pytest.raises(UpstreamError) as caught:
        await CLIENT.get(f"{base}/delay/5", timeout=0.2)
    assert caught.value.reason == "timed out after 0.2s"
    assert str(caught.value) == f"{base}/delay/5: timed out after 0.2s"
    assert trio.current_time() - started < 1.0


async def test_client_reports_a_refused_connection() -> None:
    with pytest.raises(UpstreamError) as caught:
        await CLIENT.get("http://127.0.6.13:1/", timeout=2)
    assert caught.value.url == "http://127.0.6.13:1/"
    assert caught.value.reason.startswith("OSError")


@pytest.mark.parametrize("host, no_proxy, bypass", [
    ("reviews.bookinfo.svc.cluster.local", "", False),
    ("reviews.bookinfo.svc.cluster.local", "*", True),
    ("reviews.bookinfo.svc.cluster.local", "cluster.local", True),
    ("reviews.bookinfo.svc.cluster.local", ".svc.cluster.local", True),
    ("reviews.bookinfo.svc.cluster.local", "local.other,localhost", False),
    ("localhost", "localhost, 127.0.0.1", True),
])
def test_no_proxy_matches_hosts_and_parent_domains_as_curl(host: str, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, no_proxy) is bypass


@pytest.mark.parametrize("text, seconds", [("3s", 3.0), ("2.5s", 2.5), ("250ms", 0.25), ("2", 2.0), (".5", 0.5)])
def test_timeouts_from_the_environment_take_durations(text: str, seconds: float) -> None:
    assert parse_seconds("MESHFED_REVIEWS_TIMEOUT", text) == seconds


def test_identity_comes_from_the_environment() -> None:
    env = AppEnv.from_environ("reviews", {
        "MESHFED_CLUSTER": "west", "MESHFED_LOCALITY": "us-west/us-west-1a", "MESHFED_VERSION": "v3",
        "MESHFED_INSTANCE": "reviews-v3-0", "MESHFED_NAMESPACE": "bookinfo", "MESHFED_WORKLOAD": "reviews-v3",
        "HTTP_PROXY": "http://127.1.3.11:15001", "MESHFED_RATINGS_TIMEOUT": "100ms"})
    assert env == AppEnv(app="reviews", cluster="west", locality="us-west/us-west-1a", version="v3",
                         instance="reviews-v3-0", namespace="bookinfo", workload="reviews-v3",
                         http_proxy="http://127.1.3.11:15001", ratings_timeout=0.1)
    assert env.domain == "bookinfo.svc.cluster.local"
    assert AppEnv.from_environ("echo", {}).instance == f"echo-{os.getpid()}"


@pytest.mark.parametrize("environ, message", [
    ({"MESHFED_REVIEWS_TIMEOUT": "3 sec"},
     "MESHFED_REVIEWS_TIMEOUT: must be a duration such as '3s', '2.5s' or '250ms'; found '3 sec'"),
    ({"MESHFED_PORT": "99999"}, "MESHFED_PORT: must be a port number 1..65535; found '99999'"),
])
def test_bad_environment_values_are_refused_with_the_value(environ: dict[str, str], message: str) -> None:
    with pytest.raises(AppConfigError) as caught:
        AppEnv.from_environ("echo", environ)
    assert str(caught.value) == message


@pytest.mark.parametrize("argv, environ, message", [
    (["echo", "--listen", "nowhere"], {}, "echo: error: --listen must be HOST:PORT; found 'nowhere'\n"),
    (["reviews"], {"MESHFED_VERSION": "v4"},
     "reviews: error: MESHFED_VERSION: the reviews app comes in versions v1, v2, v3; found 'v4'\n"),
    (["echo"], {"HTTP_PROXY": "https://sidecar:15001"},
     "echo: error: HTTP_PROXY: must be http://HOST:PORT; found 'https://sidecar:15001'\n"),
])
def test_main_refuses_bad_arguments_with_exit_1(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                environ: dict[str, str], message: str) -> None:
    assert main(argv, environ) == 1
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("text, address", [("127.0.0.5:8080", ("127.0.0.5", 8080)), (":9080", ("127.9.9.9", 9080)),
                                           ("[::1]:80", ("::1", 80))])
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text, "127.9.9.9") == address


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "federation.apps", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": os.environ.get("PATH", ""), **env})


def _readline(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline()


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_echo_process_serves_curl_over_http_1_1_and_h2_and_exits_cleanly_on_sigterm() -> None:
    proc = _spawn("echo", "--listen", "127.0.6.30:0", env={
        "MESHFED_CLUSTER": "east-b", "MESHFED_INSTANCE": "echo-east-b-0", "MESHFED_VERSION": "v1"})
    try:
        line = _readline(proc)
        assert line.startswith("echo: listening on http://127.0.6.30:"), line
        url = line.split(" on ", 1)[1].strip()
        for flag, protocol in (("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2")):
            out = subprocess.run(["curl", "-sS", "--max-time", "5", flag, url + "/who"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            body = json.loads(out)
            assert (body["cluster"], body["instance"], body["protocol"]) == ("east-b", "echo-east-b-0", protocol)
    finally:
        code, out, err = _stop(proc)
    assert (code, err) == (0, "")
    assert "received SIGTERM: draining" in out


def test_sleep_process_idles_until_sigterm() -> None:
    proc = _spawn("sleep", env={})
    try:
        assert _readline(proc) == "sleep: idle until SIGTERM\n"
        assert proc.poll() is None
    finally:
        code, _, err = _stop(proc)
    assert (code, err) == (0, "")
