"""Mesh DNS answers, bytes in and bytes out: names, rcodes, EDNS, truncation, malformed queries."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation._dns_answer import MIN_UDP, answer, reply
from federation._dns_table import DnsTable
from topology import Endpoint, RegistryBuilder, Service, ServicePort, build_registry, load_paths
from topology._endpoint import Resolution
from topology._hostname import resolution_candidates

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = build_registry(load_paths([ROOT / "examples" / "multi-cluster"]))
TABLE = DnsTable(REGISTRY, cluster="east-b")
SOA = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
SOA_SET = "clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 7200 1800 86400 5"


def ask(name: str, rdtype: str = "A", *, table: DnsTable = TABLE, tcp: bool = False,
        **query: object) -> dns.message.Message:
    wire = answer(dns.message.make_query(name, rdtype, **query).to_wire(), table, tcp=tcp)  # type: ignore[arg-type]
    assert wire is not None
    return dns.message.from_wire(wire)


def lines(section: list) -> list[str]:
    return [line for rrset in section for line in rrset.to_text().splitlines()]


def data(m: dns.message.Message) -> list[str]:
    """Answer records without owner, TTL and class: ``A 127.1.2.11``."""
    return [" ".join(line.split()[3:]) for line in lines(m.answer)]


def many(n: int, *, cluster: str = "east") -> RegistryBuilder:
    b = RegistryBuilder()
    b.add_service(Service("big.demo.svc.cluster.local", "demo", "big", ports=(ServicePort("http", 80, "HTTP"),)))
    b.add_endpoints("big.demo.svc.cluster.local", cluster,
                    [Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 80, instance=f"big-{i}") for i in range(n)])
    return b


# -- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, rdtype, expected", [
    # every healthy endpoint of every cluster, the answering cluster's (east-b) first
    ("reviews.bookinfo.svc.cluster.local", "A", ["A 127.1.2.11", "A 127.1.1.12", "A 127.1.3.10"]),
    ("reviews.bookinfo.svc.clusterset.local", "A", ["A 127.1.2.11", "A 127.1.1.12", "A 127.1.3.10"]),
    ("REVIEWS.Bookinfo.svc.Cluster.Local", "A", ["A 127.1.2.11", "A 127.1.1.12", "A 127.1.3.10"]),
    ("productpage.bookinfo.svc.cluster.local.", "A", ["A 127.1.2.10", "A 127.1.1.10"]),
    # Istio's DNS proxy short names: namespace-independent, so a per-cluster server answers them
    ("reviews.bookinfo", "A", ["A 127.1.2.11", "A 127.1.1.12", "A 127.1.3.10"]),
    ("ratings.bookinfo.svc", "A", ["A 127.1.3.11"]),
    # instance names: unique ones, and echo-0 which every cluster has
    ("reviews-v3-0.reviews.bookinfo.svc.cluster.local", "A", ["A 127.1.3.10"]),
    ("echo-0.echo.demo.svc.cluster.local", "A", ["A 127.1.2.12", "A 127.1.1.13", "A 127.1.3.12"]),
    ("127-1-3-12.echo.demo.svc.cluster.local", "A", ["A 127.1.3.12"]),
    ("echo-0.west.echo.demo.svc.clusterset.local", "A", ["A 127.1.3.12"]),
    # SRV as the Kubernetes DNS spec: priority 0, weight = share in percent, port, hostname
    ("_http._tcp.reviews.bookinfo.svc.cluster.local", "SRV", [
        "SRV 0 33 9080 reviews-v2-0.reviews.bookinfo.svc.cluster.local.",
        "SRV 0 33 9080 reviews-v1-0.reviews.bookinfo.svc.cluster.local.",
        "SRV 0 33 9080 reviews-v3-0.reviews.bookinfo.svc.cluster.local."]),
    ("_http2._tcp.echo.demo.svc.cluster.local", "SRV", [  # echo-0 names three addresses: dashed addresses
        "SRV 0 33 8080 127-1-2-12.echo.demo.svc.cluster.local.",
        "SRV 0 33 8080 127-1-1-13.echo.demo.svc.cluster.local.",
        "SRV 0 33 8080 127-1-3-12.echo.demo.svc.cluster.local."]),
    ("_http2._tcp.echo.demo.svc.clusterset.local", "SRV", [  # MCS: <hostname>.<clusterid>.<svc>...
        "SRV 0 33 8080 echo-0.east-b.echo.demo.svc.clusterset.local.",
        "SRV 0 33 8080 echo-0.east-a.echo.demo.svc.clusterset.local.",
        "SRV 0 33 8080 echo-0.west.echo.demo.svc.clusterset.local."]),
    ("productpage.bookinfo.svc.cluster.local", "SRV", [  # the bare name lists every named port
        "SRV 0 50 9080 127-1-2-10.productpage.bookinfo.svc.cluster.local.",
        "SRV 0 50 9080 127-1-1-10.productpage.bookinfo.svc.cluster.local."]),
    ("10.1.1.127.in-addr.arpa", "PTR", ["PTR 127-1-1-10.productpage.bookinfo.svc.cluster.local."]),
    ("12.1.1.127.in-addr.arpa", "PTR", ["PTR reviews-v1-0.reviews.bookinfo.svc.cluster.local."]),
    ("dns-version.cluster.local", "TXT", ['TXT "1.0.0"']),
    ("dns-version.clusterset.local", "TXT", ['TXT "1.0.0"']),
    ("cluster.local", "SOA", ["SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"]),
    ("ratings.bookinfo.svc.cluster.local", "ANY", [
        "A 127.1.3.11", "SRV 0 100 9080 ratings-v1-0.ratings.bookinfo.svc.cluster.local."]),
])
def test_known_names_are_answered_authoritatively(name: str, rdtype: str, expected: list[str]) -> None:
    m = ask(name, rdtype)
    assert (dns.rcode.to_text(m.rcode()), data(m)) == ("NOERROR", expected)
    assert m.flags & dns.flags.AA and not m.flags & dns.flags.RA
    assert m.question[0].name.to_text() == dns.message.make_query(name, rdtype).question[0].name.to_text()


def test_srv_answers_carry_their_targets_addresses_in_the_additional_section() -> None:
    m = ask("_http._tcp.reviews.bookinfo.svc.clusterset.local", "SRV")
    assert lines(m.additional) == [
        "reviews-v2-0.east-b.reviews.bookinfo.svc.clusterset.local. 5 IN A 127.1.2.11",
        "reviews-v1-0.east-a.reviews.bookinfo.svc.clusterset.local. 5 IN A 127.1.1.12",
        "reviews-v3-0.west.reviews.bookinfo.svc.clusterset.local. 5 IN A 127.1.3.10",
    ]


def test_srv_weight_is_the_endpoints_share_of_the_port_in_percent() -> None:
    b = RegistryBuilder()
    b.add_service(Service("w.demo.svc.cluster.local", "demo", "w", ports=(ServicePort("grpc", 50051, "GRPC"),)))
    b.add_endpoints("w.demo.svc.cluster.local", "east", [Endpoint("10.0.0.1", 50051, weight=3, instance="w-0"),
                                                         Endpoint("10.0.0.2", 50051, weight=1, instance="w-1")])
    m = ask("_grpc._tcp.w.demo.svc.cluster.local", "SRV", table=DnsTable(b.build()))
    assert data(m) == ["SRV 0 75 50051 w-0.w.demo.svc.cluster.local.", "SRV 0 25 50051 w-1.w.demo.svc.cluster.local."]


@pytest.mark.parametrize("name, rdtype, rcode, authority", [
    # NXDOMAIN in the zones, with the SOA that bounds negative caching (RFC 2308)
    ("nope.bookinfo.svc.cluster.local", "A", "NXDOMAIN", [SOA]),
    ("reviews.nope.svc.cluster.local", "A", "NXDOMAIN", [SOA]),
    ("reviews-v9-0.reviews.bookinfo.svc.cluster.local", "A", "NXDOMAIN", [SOA]),
    ("_grpc._tcp.reviews.bookinfo.svc.cluster.local", "SRV", "NXDOMAIN", [SOA]),
    ("echo-0.echo.demo.svc.clusterset.local", "A", "NXDOMAIN", [SOA_SET]),  # MCS names carry the cluster
    ("reviews.bookinfo.cluster.local", "A", "NXDOMAIN", [SOA]),
    ("a\\.b.bookinfo.svc.cluster.local", "A", "NXDOMAIN", [SOA]),  # a label with a dot in it
    # names that exist without data of the type asked: NODATA, never NXDOMAIN
    ("reviews.bookinfo.svc.cluster.local", "AAAA", "NOERROR", [SOA]),
    ("reviews.bookinfo.svc.cluster.local", "MX", "NOERROR", [SOA]),
    ("reviews-v1-0.reviews.bookinfo.svc.cluster.local", "SRV", "NOERROR", [SOA]),
    ("bookinfo.svc.cluster.local", "A", "NOERROR", [SOA]),  # empty non-terminals
    ("svc.cluster.local", "A", "NOERROR", [SOA]),
    ("_tcp.reviews.bookinfo.svc.cluster.local", "SRV", "NOERROR", [SOA]),
    ("west.echo.demo.svc.clusterset.local", "A", "NOERROR", [SOA_SET]),
    ("reviews.bookinfo", "AAAA", "NOERROR", []),
    # not meshfed's to answer: it is no recursive resolver
    ("www.example.com", "A", "REFUSED", []),
    ("reviews", "A", "REFUSED", []),
    (".", "NS", "REFUSED", []),
    ("8.8.8.8.in-addr.arpa", "PTR", "REFUSED", []),
])
def test_unknown_names_and_missing_types(name: str, rdtype: str, rcode: str, authority: list[str]) -> None:
    m = ask(name, rdtype)
    assert (dns.rcode.to_text(m.rcode()), data(m), lines(m.authority)) == (rcode, [], authority)
    assert bool(m.flags & dns.flags.AA) == (rcode != "REFUSED")


@pytest.mark.parametrize("short, namespace", [
    ("reviews", "bookinfo"), ("reviews.bookinfo", "bookinfo"), ("reviews.bookinfo", "demo"),
    ("reviews.bookinfo.svc", "demo"), ("echo", "demo"), ("echo.demo.svc.cluster.local", "bookinfo"),
    ("reviews.bookinfo.svc.clusterset.local", "demo"),
])
def test_a_pods_search_path_reaches_the_service_registry_lookup_finds(short: str, namespace: str) -> None:
    """glibc tries the search-path candidates in order: every wrong expansion must be
    NXDOMAIN (or the resolver stops there), and the first answer the registry's own choice."""
    candidates = resolution_candidates(short, namespace)
    service = REGISTRY.lookup(short, namespace)
    assert service is not None
    outcomes = []
    for name in candidates:
        m = ask(name + ".")
        outcomes.append((name, dns.rcode.to_text(m.rcode())))
        if m.answer:
            break
    found, rcode = outcomes[-1]
    assert rcode == "NOERROR" and all(r == "NXDOMAIN" for _, r in outcomes[:-1]), outcomes
    assert data(ask(found)) == data(ask(str(service.hostname)))


def test_a_short_name_of_another_namespace_finds_nothing() -> None:
    outcomes = [dns.rcode.to_text(ask(name + ".").rcode()) for name in resolution_candidates("reviews", "demo")]
    assert outcomes == ["NXDOMAIN", "NXDOMAIN", "NXDOMAIN", "REFUSED"]


@pytest.mark.parametrize("name, rdtype, rcode, expected", [
    ("api.partner.example", "A", "NOERROR", ["A 192.0.2.7"]),
    ("api.partner.example", "AAAA", "NOERROR", ["AAAA 2001:db8::7"]),
    ("api.partner.example", "SRV", "NOERROR", []),
    ("dyn.partner.example", "A", "REFUSED", []),  # resolution DNS: the client's own resolver answers it
])
def test_a_serviceentry_host_with_addresses_is_answered_as_istios_dns_proxy_does(
        name: str, rdtype: str, rcode: str, expected: list[str]) -> None:
    b = RegistryBuilder()
    for host, resolution, addresses in (("api.partner.example", Resolution.STATIC, ("192.0.2.7", "2001:db8::7")),
                                        ("dyn.partner.example", Resolution.DNS, ("dyn.partner.example",))):
        b.add_service(Service(host, "demo", host, ports=(ServicePort("https", 443, "HTTPS"),), resolution=resolution))
        b.add_endpoints(host, "east", [Endpoint(a, 443) for a in addresses])
    m = ask(name, rdtype, table=DnsTable(b.build()))
    assert (dns.rcode.to_text(m.rcode()), data(m)) == (rcode, expected)


def test_unhealthy_endpoints_are_left_out_and_a_service_without_any_answers_nodata() -> None:
    one_down = REGISTRY.with_health("127.1.2.11", False)
    assert data(ask("reviews.bookinfo.svc.cluster.local", table=DnsTable(one_down, cluster="east-b"))) == [
        "A 127.1.1.12", "A 127.1.3.10"]
    all_down = one_down.with_health("127.1.1.12", False).with_health("127.1.3.10", False)
    m = ask("reviews.bookinfo.svc.cluster.local", table=DnsTable(all_down))
    assert (dns.rcode.to_text(m.rcode()), data(m), lines(m.authority)) == ("NOERROR", [], [SOA])
    assert data(ask("reviews-v2-0.reviews.bookinfo.svc.cluster.local", table=DnsTable(all_down))) == []


def test_ttl_and_serial_are_the_tables() -> None:
    table = DnsTable(REGISTRY, ttl=30, serial=7)
    assert lines(ask("ratings.bookinfo.svc.cluster.local", table=table).answer) == [
        "ratings.bookinfo.svc.cluster.local. 30 IN A 127.1.3.11"]
    assert lines(ask("nope.cluster.local", table=table).authority) == [
        "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 30"]
    with pytest.raises(ValueError, match="DNS TTL must be 0..2147483647 seconds; found -1"):
        DnsTable(REGISTRY, ttl=-1)


def test_answer_takes_a_registry_as_well_as_a_table() -> None:
    query = dns.message.make_query("ratings.bookinfo.svc.cluster.local", "A")
    wire = answer(query.to_wire(), REGISTRY)
    assert wire is not None and data(dns.message.from_wire(wire)) == ["A 127.1.3.11"]


def test_edns_is_echoed_with_the_servers_payload_size() -> None:
    m = ask("ratings.bookinfo.svc.cluster.local", use_edns=0, payload=4096)
    assert (m.edns, m.payload) == (0, 1232)
    assert ask("ratings.bookinfo.svc.cluster.local").edns == -1


# -- size limits -----------------------------------------------------------------------

@pytest.mark.parametrize("edns, payload, max_udp, truncated", [
    (-1, 0, 1232, True),       # 100 A records never fit 512 octets
    (0, 1232, 1232, True),
    (0, 4096, 1232, True),     # the client may take 4096, the server sends at most 1232
    (0, 4096, 4096, False),
    (0, 100, 4096, True),      # an EDNS size under 512 means 512
])
def test_a_udp_answer_over_the_clients_limit_is_truncated(edns: int, payload: int, max_udp: int,
                                                          truncated: bool) -> None:
    query = dns.message.make_query("big.demo.svc.cluster.local", "A", use_edns=edns, payload=payload)
    r = reply(query.to_wire(), DnsTable(many(100).build()), max_udp=max_udp)
    assert r is not None and r.truncated == truncated
    m = dns.message.from_wire(r.wire)
    assert len(r.wire) <= max(MIN_UDP, min(payload, max_udp))
    assert len(data(m)) == (0 if truncated else 100)
    assert bool(m.flags & dns.flags.TC) == truncated


def test_the_same_answer_over_tcp_is_whole() -> None:
    m = ask("big.demo.svc.cluster.local", table=DnsTable(many(100).build()), tcp=True)
    assert not m.flags & dns.flags.TC
    assert data(m) == [f"A 10.0.{i // 250}.{i % 250 + 1}" for i in range(100)]


def test_srv_glue_is_dropped_before_the_answer_is_truncated() -> None:
    # 8 SRV records fit 512 octets (SRV targets are never compressed, RFC 2782), their glue does not
    m = ask("_http._tcp.big.demo.svc.cluster.local", "SRV", table=DnsTable(many(8).build()))
    assert not m.flags & dns.flags.TC
    assert len(m.answer[0]) == 8 and len(lines(m.additional)) < 8


def test_a_record_set_too_big_for_tcp_keeps_what_fits_the_answering_clusters_first() -> None:
    b = many(4000, cluster="east")
    b.add_endpoints("big.demo.svc.cluster.local", "west",
                    [Endpoint(f"10.1.{i // 250}.{i % 250 + 1}", 80, instance=f"big-{i}") for i in range(1000)])
    r = reply(dns.message.make_query("big.demo.svc.cluster.local", "A").to_wire(),
              DnsTable(b.build(), cluster="west"), tcp=True)
    assert r is not None and not r.truncated and len(r.wire) <= 65535
    addresses = [rd.address for rd in dns.message.from_wire(r.wire).answer[0]]
    assert 3000 < len(addresses) < 5000
    assert addresses[:1000] == [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1000)]


# -- malformed and unusual queries --------------------------------------------------------

QUERY = dns.message.make_query("reviews.bookinfo.svc.cluster.local", "A", id=0x1234).to_wire()
KEYRING = dns.tsigkeyring.from_text({"meshfed-key.": "MTIzNDU2Nzg5MDEyMzQ1Ng=="})


def _with(name: str = "reviews.bookinfo.svc.cluster.local", rdtype: str | int = "A", **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, id=0x1234, **kw)  # type: ignore[arg-type]
    return q.to_wire()


def _two_questions() -> bytes:
    q = dns.message.make_query("reviews.bookinfo.svc.cluster.local", "A", id=0x1234)
    q.question.append(dns.message.make_query("ratings.bookinfo.svc.cluster.local", "A").question[0])
    return q.to_wire()


def _signed() -> bytes:
    q = dns.message.make_query("reviews.bookinfo.svc.cluster.local", "A", id=0x1234)
    q.use_tsig(KEYRING, "meshfed-key.")
    return q.to_wire()


@pytest.mark.parametrize("wire, rcode", [
    (b"", None),
    (QUERY[:11], None),                                                  # no whole header
    (QUERY[:2] + bytes([QUERY[2] | 0x80]) + QUERY[3:], None),            # a response: never answered
    (QUERY[:2] + bytes([(QUERY[2] & 0x87) | (4 << 3)]) + QUERY[3:], "NOTIMP"),   # NOTIFY
    (QUERY[:2] + bytes([(QUERY[2] & 0x87) | (5 << 3)]) + QUERY[3:], "NOTIMP"),   # UPDATE
    (QUERY[:12], "FORMERR"),                                             # header says one question, none follows
    (QUERY[:-3], "FORMERR"),                                             # cut in the question
    (QUERY + b"\x00", "FORMERR"),                                        # trailing junk
    (QUERY[:4] + b"\x00\x00" + QUERY[6:12], "FORMERR"),                  # no question at all
    (QUERY[:12] + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),               # a compression pointer to itself
    (_two_questions(), "FORMERR"),
    (_with(use_edns=1), "BADVERS"),
    (_signed(), "NOTAUTH"),
    (_with(rdtype="OPT"), "FORMERR"),
    (_with(rdtype="AXFR"), "REFUSED"),
    (_with(rdtype="MAILB"), "NOTIMP"),
    (dns.message.make_query("reviews.bookinfo.svc.cluster.local", "A", rdclass="CH", id=0x1234).to_wire(), "REFUSED"),
], ids=["empty", "short-header", "a-response", "notify", "update", "no-question-follows", "cut-question",
        "trailing-junk", "no-question", "pointer-loop", "two-questions", "edns1", "tsig", "opt-question", "axfr",
        "mailb", "chaos-class"])  # stable ids: the TSIG query's wire carries the time (pytest-xdist compares ids)
def test_malformed_and_unsupported_queries_get_their_rcode_or_are_dropped(wire: bytes, rcode: str | None) -> None:
    r = reply(wire, TABLE)
    if rcode is None:
        assert r is None
        return
    assert r is not None
    assert dns.rcode.to_text(r.rcode) == rcode
    m = dns.message.from_wire(r.wire)
    assert (m.id, dns.rcode.to_text(m.rcode()), bool(m.flags & dns.flags.QR)) == (0x1234, rcode, True)
    assert m.answer == []


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    return st.one_of(
        flips.map(lambda fs: bytes(_flip(bytearray(base), fs))),
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.binary(max_size=64).map(lambda junk: base[:12] + junk),
    )


def _flip(b: bytearray, flips: list[tuple[int, int]]) -> bytearray:
    for i, v in flips:
        b[i] = v
    return b


SEEDS = [
    _with(), _with(use_edns=0, payload=4096), _with("_http._tcp.reviews.bookinfo.svc.clusterset.local", "SRV"),
    _with("12.1.1.127.in-addr.arpa", "PTR"), _with("echo.demo", "ANY", use_edns=0), _signed(), _two_questions(),
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600), st.sampled_from(SEEDS).flatmap(_mutations)), st.booleans())
def test_no_query_bytes_make_answer_raise_and_every_reply_is_a_well_formed_response(wire: bytes, tcp: bool) -> None:
    out = answer(wire, TABLE, tcp=tcp)
    if out is None:
        assert len(wire) < 12 or wire[2] & 0x80
        return
    m = dns.message.from_wire(out)
    assert m.id == int.from_bytes(wire[:2], "big") and m.flags & dns.flags.QR
    assert len(out) <= (65535 if tcp else 1232)
