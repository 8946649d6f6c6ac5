"""mTLS over trio with SPIFFE verification per trust domain, refusals, federation, rotation."""

import datetime as dt
import logging
import random
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trustdomain import (
    Bundle, BundleSet, CertificateAuthority, MtlsContexts, PeerIdentity, PeerRefused, RefusalReason, SpiffeId,
    SvidRotator, TrustDomain, X509Svid, create_root, issue_svid,
)
from trustdomain._capture import has_hook, parse_certificate_message
from trustdomain._files import cert_pem
from trustdomain.testing import MeshPki, utcnow

EAST, WEST = TrustDomain("east.example"), TrustDomain("west.example")


@pytest.fixture(scope="module")
def shared() -> MeshPki:
    return MeshPki.shared_root("east.example", "west.example")


async def pair(server: MtlsContexts, client: MtlsContexts | ssl.SSLContext) -> dict[str, Any]:
    """Handshake both ends over a memory stream pair; each result is (stream, identity) or the exception."""
    a, b = trio.testing.memory_stream_pair()
    out: dict[str, Any] = {}

    async def run(name: str, fn: Any, stream: Any) -> None:
        try:
            out[name] = await fn(stream)
        except (PeerRefused, trio.BrokenResourceError) as exc:
            out[name] = exc

    async def plain_client(stream: Any) -> Any:
        assert isinstance(client, ssl.SSLContext)
        s = trio.SSLStream(stream, client, server_hostname=None)
        await s.do_handshake()
        await s.send_all(b"x")
        return s, None

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "server", server.accept, a)
            nursery.start_soon(run, "client", client.connect if isinstance(client, MtlsContexts) else plain_client, b)
    return out


async def exchange(server_stream: trio.SSLStream, client_stream: trio.SSLStream, payload: bytes) -> bytes:
    await client_stream.send_all(payload)
    got = await server_stream.receive_some(len(payload))
    await server_stream.send_all(got.upper())
    return await client_stream.receive_some(len(payload))


async def test_east_and_west_under_one_root_see_each_others_identity(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example", "bookinfo", "reviews"), shared.bundles())
    client = MtlsContexts(shared.svid("west.example", "bookinfo", "productpage"), shared.bundles())
    out = await pair(server, client)
    (s_stream, s_peer), (c_stream, c_peer) = out["server"], out["client"]
    assert s_peer == PeerIdentity(SpiffeId.parse("spiffe://west.example/ns/bookinfo/sa/productpage"), WEST, "h2")
    assert c_peer == PeerIdentity(SpiffeId.parse("spiffe://east.example/ns/bookinfo/sa/reviews"), EAST, "h2")
    assert await exchange(s_stream, c_stream, b"ping") == b"PING"
    assert server.stats.handshakes == 1 and client.stats.handshakes == 1


async def test_alpn_falls_back_to_http_1_1(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example"), shared.bundles())
    client = MtlsContexts(shared.svid("west.example"), shared.bundles(), alpn=("http/1.1",))
    out = await pair(server, client)
    assert out["server"][1].alpn == "http/1.1" and out["client"][1].alpn == "http/1.1"


def bundle_exchange(pki: MeshPki, name: str) -> Bundle:
    """What a federation link carries: the peer's bundle as SPIFFE JSON, parsed on arrival."""
    td = TrustDomain(name)
    return Bundle.from_json(td, pki.bundle(name, sequence=1).to_json())


async def test_independent_roots_federated_by_bundle_exchange_interoperate() -> None:
    pki = MeshPki.independent_roots("east.example", "west.example")
    east_bundles = BundleSet.of(pki.bundle("east.example")).with_bundle(bundle_exchange(pki, "west.example"))
    west_bundles = BundleSet.of(pki.bundle("west.example")).with_bundle(bundle_exchange(pki, "east.example"))
    server = MtlsContexts(pki.svid("east.example", "bookinfo", "reviews"), east_bundles)
    client = MtlsContexts(pki.svid("west.example", "bookinfo", "productpage"), west_bundles)
    out = await pair(server, client)
    assert out["server"][1].trust_domain == WEST and out["client"][1].trust_domain == EAST


async def test_unfederated_domain_is_refused_as_unknown(caplog: pytest.LogCaptureFixture) -> None:
    pki = MeshPki.independent_roots("east.example", "west.example")
    server = MtlsContexts(pki.svid("east.example"), pki.bundles("east.example"))
    client = MtlsContexts(pki.svid("west.example", "bookinfo", "productpage"), pki.bundles())
    with caplog.at_level(logging.WARNING, logger="meshfed.trustdomain.tls"):
        out = await pair(server, client)
    refusal = out["server"]
    assert isinstance(refusal, PeerRefused) and refusal.reason is RefusalReason.UNKNOWN_TRUST_DOMAIN
    assert str(refusal) == ("unknown_trust_domain: no bundle for trust domain 'west.example' of "
                            "'spiffe://west.example/ns/bookinfo/sa/productpage' (trusted: east.example)")
    assert server.stats.refused == {RefusalReason.UNKNOWN_TRUST_DOMAIN: 1}
    assert [r.reason for r in caplog.records] == ["unknown_trust_domain"]  # type: ignore[attr-defined]
    assert caplog.records[0].getMessage() == (
        "refused TLS client spiffe://west.example/ns/bookinfo/sa/productpage: " + str(refusal))


async def test_svid_of_one_domain_from_another_domains_ca_is_refused_even_when_both_are_trusted() -> None:
    pki = MeshPki.independent_roots("east.example", "west.example")
    west_root = create_root(pki.now, common_name="unconstrained west root")
    # a CA trusted for west that (wrongly) signs east identities, with no name constraint to stop it
    rogue = CertificateAuthority(west_root.certificate, west_root.key, (), EAST)
    forged = issue_svid(rogue, SpiffeId.workload(EAST, "bookinfo", "reviews"), pki.now)
    bundles = BundleSet.of(pki.bundle("east.example"), Bundle(WEST, (west_root.certificate,)))
    server = MtlsContexts(pki.svid("east.example"), bundles)
    client = MtlsContexts(forged, bundles)
    out = await pair(server, client)  # OpenSSL accepts: the west root is in its union of authorities
    refusal = out["server"]
    assert isinstance(refusal, PeerRefused) and refusal.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE
    assert refusal.detail == ("'spiffe://east.example/ns/bookinfo/sa/reviews' does not chain to the bundle of "
                              "'east.example': it ends at root 'CN=unconstrained west root,O=meshfed', which is not "
                              "in that bundle")


async def test_client_without_certificate_is_refused(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example"), shared.bundles())
    anonymous = ssl.create_default_context(cadata=cert_pem(shared.ca("east.example").root).decode())
    anonymous.check_hostname = False
    out = await pair(server, anonymous)
    assert isinstance(out["server"], PeerRefused)
    assert out["server"].reason is RefusalReason.NO_CLIENT_CERTIFICATE
    assert server.stats.refused == {RefusalReason.NO_CLIENT_CERTIFICATE: 1}


async def test_expired_client_certificate_is_refused_as_expired(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example"), shared.bundles())
    old = shared.svid("west.example", lifetime=dt.timedelta(minutes=1), now=utcnow() - dt.timedelta(minutes=2))
    out = await pair(server, MtlsContexts(old, shared.bundles()))
    assert isinstance(out["server"], PeerRefused) and out["server"].reason is RefusalReason.EXPIRED


async def test_new_contexts_swap_in_for_new_handshakes_only(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example", "bookinfo", "reviews"), shared.bundles())
    client = MtlsContexts(shared.svid("west.example"), shared.bundles())
    first = await pair(server, client)
    old_ctx = server.server_context()
    server.update(svid=shared.svid("east.example", "bookinfo", "reviews-v2"))
    assert server.server_context() is not old_ctx and server.generation == 2
    second = await pair(server, client)
    assert second["client"][1].spiffe_id.service_account == "reviews-v2"
    assert await exchange(first["server"][0], first["client"][0], b"still") == b"STILL"


async def test_connection_stays_up_across_rotations_of_both_ends(autojump_clock: trio.testing.MockClock) -> None:
    """Two-minute SVIDs, renewed at 70-80 % of their lifetime, for ten virtual minutes."""
    pki = MeshPki.shared_root("east.example", "west.example")

    def renewer(td: str, sa: str) -> Any:
        def renew(now: dt.datetime) -> X509Svid:
            return pki.svid(td, "bookinfo", sa, lifetime=dt.timedelta(minutes=2), now=utcnow())
        return renew

    server = MtlsContexts(pki.svid("east.example", "bookinfo", "reviews", lifetime=dt.timedelta(minutes=2)),
                          pki.bundles())
    client = MtlsContexts(pki.svid("west.example", "bookinfo", "productpage", lifetime=dt.timedelta(minutes=2)),
                          pki.bundles())
    first_serials = (server.svid.serial, client.svid.serial)
    rotators = [SvidRotator(server, renewer("east.example", "reviews"), rng=random.Random(1)),
                SvidRotator(client, renewer("west.example", "productpage"), rng=random.Random(2))]
    async with trio.open_nursery() as nursery:
        for r in rotators:
            await nursery.start(r.run)
        out = await pair(server, client)
        s_stream, c_stream = out["server"][0], out["client"][0]
        start = trio.current_time()
        exchanges = 0
        while trio.current_time() - start < 600:
            assert await exchange(s_stream, c_stream, b"ping %d" % exchanges) == b"PING %d" % exchanges
            exchanges += 1
            await trio.sleep(10)
        assert exchanges == 60
        assert all(r.rotations >= 5 and r.failures == 0 for r in rotators), rotators
        assert (server.svid.serial, client.svid.serial) != first_serials
        fresh = await pair(server, client)  # a new connection presents the newest certificates
        assert fresh["client"][0].getpeercert(binary_form=True) == server.svid.chain_der()[0]
        assert fresh["server"][0].getpeercert(binary_form=True) == client.svid.chain_der()[0]
        nursery.cancel_scope.cancel()


# --- real clients: openssl s_client against a trio server -------------------------------

async def serve_once(contexts: MtlsContexts, listener: trio.SocketListener) -> None:
    transport = await listener.accept()
    try:
        stream, peer = await contexts.accept(transport)
    except (PeerRefused, trio.BrokenResourceError):
        return
    async with stream:
        data = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        body = f"hello {peer.spiffe_id} over {peer.alpn}\n".encode()
        await stream.send_all(b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)


async def s_client(port: int, root: Path, files: dict[str, Path] | None) -> str:
    args = ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-CAfile", str(root),
            "-alpn", "http/1.1"]
    if files:
        args += ["-cert", str(files["cert"]), "-key", str(files["key"]), "-cert_chain", str(files["chain"])]
    with trio.fail_after(15):
        done = await trio.run_process(args, stdin=b"GET / HTTP/1.0\r\n\r\n", capture_stdout=True,
                                      capture_stderr=True, check=False)
    return done.stdout.decode(errors="replace")


@pytest.mark.parametrize("with_svid", [True, False])
async def test_openssl_s_client_mtls_against_a_trio_server(shared: MeshPki, tmp_path: Path, with_svid: bool) -> None:
    server = MtlsContexts(shared.svid("east.example", "bookinfo", "reviews"), shared.bundles())
    files = shared.write_svid(shared.svid("west.example", "bookinfo", "productpage"), tmp_path)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once, server, listeners[0])
        out = await s_client(port, files["root"], files if with_svid else None)
    await listeners[0].aclose()
    if with_svid:
        assert "HTTP/1.0 200 OK" in out
        assert "hello spiffe://west.example/ns/bookinfo/sa/productpage over http/1.1" in out
        assert server.stats.handshakes == 1 and not server.stats.refused
    else:
        assert "200 OK" not in out
        assert server.stats.refused == {RefusalReason.NO_CLIENT_CERTIFICATE: 1}


# --- the capture of what the peer sent ------------------------------------------------

async def test_refusal_is_explained_from_the_captured_chain_over_tls_1_2_too(tmp_path: Path) -> None:
    pki = MeshPki.independent_roots("east.example", "west.example")
    server = MtlsContexts(pki.svid("east.example"), pki.bundles("east.example"))
    svid = pki.svid("west.example", "bookinfo", "productpage")
    files = pki.write_svid(svid, tmp_path)
    old_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    old_client.check_hostname, old_client.verify_mode = False, ssl.CERT_NONE
    old_client.load_cert_chain(files["cert"], files["key"])
    out = await pair(server, old_client)
    assert isinstance(out["server"], PeerRefused)
    assert out["server"].reason is RefusalReason.UNKNOWN_TRUST_DOMAIN
    assert out["server"].spiffe_id == svid.spiffe_id


async def test_established_connections_run_without_the_capture_hook(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example"), shared.bundles())
    client = MtlsContexts(shared.svid("west.example"), shared.bundles())
    out = await pair(server, client)
    for stream, handshake_ctx in ((out["server"][0], server.server_context()),
                                  (out["client"][0], client.client_context())):
        assert has_hook(handshake_ctx)
        assert stream.context is not handshake_ctx
        assert not has_hook(stream.context)
    assert await exchange(out["server"][0], out["client"][0], b"after swap") == b"AFTER SWAP"


async def test_handshake_failing_for_other_causes_is_not_a_refusal(shared: MeshPki) -> None:
    server = MtlsContexts(shared.svid("east.example"), shared.bundles())
    a, b = trio.testing.memory_stream_pair()
    await b.send_all(b"GET / HTTP/1.1\r\n\r\n")  # plaintext to a TLS port
    with pytest.raises(trio.BrokenResourceError):
        await server.accept(a)
    assert not server.stats.refused and server.stats.handshakes == 0


@pytest.mark.parametrize("message, problem", [
    (b"\x0b\x00\x00\x05" b"\x00" b"\x00\x00\x09" b"\x00", "truncated certificate list"),
    (b"\x0b\x00\x00\x08" b"\x00" b"\x00\x00\x04" b"\x00\x00\x09" b"a", "truncated certificate entry"),
])
def test_truncated_certificate_messages_are_rejected(message: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^{problem}$"):
        parse_certificate_message(message, tls13=True)


def test_certificate_message_of_tls_1_3_parses_to_der_certificates(shared: MeshPki) -> None:
    ders = shared.svid("east.example").chain_der()
    entries = b"".join(len(d).to_bytes(3, "big") + d + b"\x00\x00" for d in ders)
    body = b"\x00" + len(entries).to_bytes(3, "big") + entries
    assert parse_certificate_message(b"\x0b" + len(body).to_bytes(3, "big") + body, tls13=True) == ders


def test_contexts_repr_and_stats_repr(shared: MeshPki) -> None:
    ctx = MtlsContexts(shared.svid("east.example", "bookinfo", "reviews"), shared.bundles())
    assert repr(ctx) == ("<MtlsContexts spiffe://east.example/ns/bookinfo/sa/reviews generation=1 "
                         "trusting [east.example, west.example]>")
    ctx.stats.record_refusal(RefusalReason.EXPIRED)
    assert repr(ctx.stats) == "<TlsStats handshakes=0 refused[expired=1]>"


async def test_peer_domain_added_at_link_time_is_trusted_from_the_next_handshake() -> None:
    pki = MeshPki.independent_roots("east.example", "west.example")
    server = MtlsContexts(pki.svid("east.example"), pki.bundles("east.example"))
    client = MtlsContexts(pki.svid("west.example"), pki.bundles("west.example"))
    before = await pair(server, client)
    assert isinstance(before["client"], PeerRefused)  # each refuses the other's unknown domain
    assert before["client"].reason is RefusalReason.UNKNOWN_TRUST_DOMAIN
    server.update(bundles=server.bundles.with_bundle(bundle_exchange(pki, "west.example")))
    client.update(bundles=client.bundles.with_bundle(bundle_exchange(pki, "east.example")))
    after = await pair(server, client)
    assert after["server"][1].trust_domain == WEST and after["client"][1].trust_domain == EAST
