"""The mesh DNS server on loopback, asked by the real ``dig`` and by raw sockets."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dns.message
import dns.rcode
import pytest
import trio

from federation._dns_server import DnsServer, DnsServerError
from topology import Endpoint, RegistryBuilder, Service, ServicePort, build_registry, load_paths

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = build_registry(load_paths([ROOT / "examples" / "multi-cluster"]))


def many(n: int) -> RegistryBuilder:
    b = RegistryBuilder()
    b.add_service(Service("big.demo.svc.cluster.local", "demo", "big", ports=(ServicePort("http", 80, "HTTP"),)))
    b.add_endpoints("big.demo.svc.cluster.local", "east",
                    [Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 80, instance=f"big-{i}") for i in range(n)])
    return b


async def start(nursery: trio.Nursery, host: str, registry=REGISTRY, **kw: object) -> DnsServer:
    server = DnsServer(registry, cluster="east-a", host=host, port=0, **kw)  # type: ignore[arg-type]
    await nursery.start(server.serve)
    return server


async def dig(server: DnsServer, *args: str) -> str:
    with trio.fail_after(10):
        done = await trio.run_process(["dig", f"@{server.host}", "-p", str(server.port), "+tries=1", "+time=2", *args],
                                      capture_stdout=True)
    return done.stdout.decode()


def records(out: str) -> list[str]:
    """``dig +noall +answer`` lines as ``name TTL class type data`` with single spaces."""
    return [" ".join(line.split()) for line in out.splitlines() if line and not line.startswith(";")]


# -- the real dig -----------------------------------------------------------------------

async def test_dig_gets_reviews_addresses_own_cluster_first(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.1")
    out = await dig(server, "reviews.bookinfo.svc.cluster.local")
    assert "status: NOERROR" in out and "flags: qr aa rd;" in out and "(UDP)" in out
    assert records(await dig(server, "+noall", "+answer", "reviews.bookinfo.svc.cluster.local")) == [
        "reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.1.12",
        "reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.2.11",
        "reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.3.10",
    ]


async def test_dig_gets_the_clusterset_name_and_srv_over_tcp(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.2")
    assert records(await dig(server, "+noall", "+answer", "ratings.bookinfo.svc.clusterset.local")) == [
        "ratings.bookinfo.svc.clusterset.local. 5 IN A 127.1.3.11"]
    srv = "_http._tcp.reviews.bookinfo.svc.cluster.local"
    out = await dig(server, "+tcp", "+noall", "+answer", "+additional", srv, "SRV")
    assert records(out) == [
        f"{srv}. 5 IN SRV 0 33 9080 reviews-v1-0.reviews.bookinfo.svc.cluster.local.",
        f"{srv}. 5 IN SRV 0 33 9080 reviews-v2-0.reviews.bookinfo.svc.cluster.local.",
        f"{srv}. 5 IN SRV 0 33 9080 reviews-v3-0.reviews.bookinfo.svc.cluster.local.",
        "reviews-v1-0.reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.1.12",
        "reviews-v2-0.reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.2.11",
        "reviews-v3-0.reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.3.10",
    ]
    assert server.counters.tcp_queries == 1


@pytest.mark.parametrize("name, status", [
    ("nope.bookinfo.svc.cluster.local", "NXDOMAIN"),
    ("www.example.com", "REFUSED"),
    ("bookinfo.svc.cluster.local", "NOERROR"),
])
async def test_dig_sees_nxdomain_refused_and_nodata(nursery: trio.Nursery, name: str, status: str) -> None:
    server = await start(nursery, "127.0.53.3")
    out = await dig(server, name)
    assert f"status: {status}" in out and "ANSWER: 0" in out
    assert server.counters.by_rcode == {status: 1}


async def test_a_big_answer_is_truncated_over_udp_and_dig_gets_it_all_over_tcp(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.4", many(100).build())
    out = await dig(server, "big.demo.svc.cluster.local")
    assert ";; Truncated, retrying in TCP mode." in out and "(TCP)" in out
    assert records(out) == [f"big.demo.svc.cluster.local. 5 IN A 10.0.{i // 250}.{i % 250 + 1}" for i in range(100)]
    c = server.counters
    assert (c.udp_queries, c.truncated, c.tcp_queries, c.by_rcode) == (1, 1, 1, {"NOERROR": 2})


async def test_set_registry_swaps_the_answers_and_raises_the_serial(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.5")
    server.set_registry(REGISTRY.with_health("127.1.1.12", False))
    assert records(await dig(server, "+noall", "+answer", "reviews.bookinfo.svc.cluster.local")) == [
        "reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.2.11",
        "reviews.bookinfo.svc.cluster.local. 5 IN A 127.1.3.10",
    ]
    assert records(await dig(server, "+noall", "+answer", "cluster.local", "SOA")) == [
        "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 2 7200 1800 86400 5"]


# -- raw sockets: malformed input, TCP framing and limits ---------------------------------

QUERY = dns.message.make_query("ratings.bookinfo.svc.cluster.local", "A", id=0x4242).to_wire()


async def udp_exchange(server: DnsServer, payload: bytes, wait: float = 2.0) -> bytes | None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect((server.host, server.port))
        await sock.send(payload)
        with trio.move_on_after(wait):
            return await sock.recv(65535)
    return None


@pytest.mark.parametrize("payload, rcode", [
    (b"\x00\x01\x02", None),
    (QUERY[:2] + b"\x80" + QUERY[3:], None),
    (QUERY[:12] + b"\xff" * 40, "FORMERR"),
    (QUERY[:-2], "FORMERR"),
    (QUERY[:2] + b"\x28" + QUERY[3:], "NOTIMP"),
], ids=["no-header", "a-response", "garbage-question", "cut-short", "update-opcode"])
async def test_malformed_udp_packets_get_formerr_or_nothing_and_serving_goes_on(
        nursery: trio.Nursery, payload: bytes, rcode: str | None) -> None:
    server = await start(nursery, "127.0.53.6")
    got = await udp_exchange(server, payload, wait=0.3 if rcode is None else 2.0)
    if rcode is None:
        assert got is None and server.counters.dropped == 1
    else:
        assert got is not None and got[:2] == payload[:2] and dns.rcode.to_text(got[3] & 0xF) == rcode
    good = await udp_exchange(server, QUERY)
    assert good is not None and [rd.address for rd in dns.message.from_wire(good).answer[0]] == ["127.1.3.11"]


async def tcp_send(stream: trio.SocketStream, *messages: bytes) -> None:
    await stream.send_all(b"".join(struct.pack("!H", len(m)) + m for m in messages))


async def tcp_receive(stream: trio.SocketStream, count: int) -> list[dns.message.Message]:
    buffer, out = b"", []
    with trio.fail_after(5):
        while len(out) < count:
            if len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
                size = struct.unpack("!H", buffer[:2])[0]
                out.append(dns.message.from_wire(buffer[2:2 + size]))
                buffer = buffer[2 + size:]
                continue
            data = await stream.receive_some(65536)
            assert data, "server closed the connection"
            buffer += data
    return out


async def test_tcp_answers_pipelined_queries_on_one_connection_in_order(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.7")
    names = ["ratings.bookinfo.svc.cluster.local", "nope.cluster.local", "details.bookinfo.svc.cluster.local"]
    stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        await tcp_send(stream, *(dns.message.make_query(n, "A", id=i).to_wire() for i, n in enumerate(names)),
                       b"\x00\x01\x02\x03" * 3)  # then a malformed one, answered FORMERR
        replies = await tcp_receive(stream, 4)
    assert [(m.id, dns.rcode.to_text(m.rcode())) for m in replies] == [
        (0, "NOERROR"), (1, "NXDOMAIN"), (2, "NOERROR"), (1, "FORMERR")]


async def test_an_idle_or_stalled_tcp_connection_is_closed(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.8", tcp_idle_timeout=0.2)
    stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        await stream.send_all(b"\x00\x40\x00")  # a partial message that never completes
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
    with trio.fail_after(5):
        while server.tcp_connections:  # the handler's finally has run
            await trio.sleep(0.01)


async def test_connections_beyond_the_limit_are_closed_at_once(nursery: trio.Nursery) -> None:
    server = await start(nursery, "127.0.53.9", max_tcp_connections=2)
    held = [await trio.open_tcp_stream(server.host, server.port) for _ in range(2)]
    for stream in held:
        await tcp_send(stream, QUERY)
        await tcp_receive(stream, 1)
    extra = await trio.open_tcp_stream(server.host, server.port)
    with trio.fail_after(5):
        assert await extra.receive_some(100) == b""
    assert server.counters.tcp_rejected == 1
    await tcp_send(held[0], QUERY)
    assert [m.id for m in await tcp_receive(held[0], 1)] == [0x4242]
    for stream in (*held, extra):
        await stream.aclose()


async def test_a_taken_port_is_a_clear_error_and_a_cancelled_server_frees_its_port() -> None:
    blocker = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await blocker.bind(("127.0.53.10", 0))
    port = blocker.getsockname()[1]
    with blocker:
        taken = rf"mesh DNS cannot listen on 127\.0\.53\.10:{port}: Address already in use"
        with pytest.raises(DnsServerError, match=taken):
            await DnsServer(REGISTRY, host="127.0.53.10", port=port).serve()
    async with trio.open_nursery() as nursery:
        server = DnsServer(REGISTRY, host="127.0.53.10", port=port)
        assert await nursery.start(server.serve) == ("127.0.53.10", port)
        nursery.cancel_scope.cancel()
    again = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with again:
        await again.bind(("127.0.53.10", port))
