"""One DNS query in, one response out: the mesh DNS's wire logic, with no sockets.

``reply(query_bytes, table, tcp=...)`` decides everything a response depends on - rcode,
flags, sections, EDNS, truncation - from the query bytes and a ``DnsTable``; the trio
server (``_dns_server``) only moves bytes. The rules, each from its RFC:

* A message whose header does not parse (under 12 octets) or that is itself a response
  (QR set) is dropped: there is no one to answer, and answering responses invites loops.
* An opcode other than QUERY gets NOTIMP (RFC 1035 §4.1.1); a query that does not parse
  past its header, or asks no or several questions, gets FORMERR, header only; a
  TSIG-signed query gets NOTAUTH (RFC 8945 §5.2: meshfed holds no TSIG keys); an EDNS
  version above 0 gets BADVERS (RFC 6891 §6.1.3).
* Meta-types in the question (OPT, TSIG, TKEY) are FORMERR (RFC 6895 §3.1); zone
  transfers are REFUSED; a class other than IN (or ANY) is REFUSED.
* Names meshfed serves are answered authoritatively (AA): data, NODATA or NXDOMAIN with
  the zone's SOA in the authority section, whose minimum is the negative-caching TTL
  (RFC 2308). Names outside them are REFUSED: meshfed is not a recursive resolver, RA is
  never set, and a client with another resolver configured moves on to it.
* Over UDP the response must fit the client's limit - 512 octets (RFC 1035 §4.2.1), or
  its EDNS payload size, capped by the server's own - else it carries TC and only what
  fits, and the client retries over TCP (RFC 7766). Additional records (SRV glue) are
  left out first without TC (RFC 2181 §9). Over TCP a record set too large for one 64 KiB
  message is cut to what fits, the answering cluster's endpoints first.
* Records go out in the table's order, unshuffled, so that the answering cluster's
  endpoints stay first; spreading load is the sidecar's balancer's work, not DNS's.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from topology import ServiceRegistry

from ._dns_records import make_rrset
from ._dns_table import DnsTable

DEFAULT_MAX_UDP = 1232
"""Largest UDP response the server sends and advertises in EDNS (DNS Flag Day 2020's
recommended buffer size, which avoids IP fragmentation). Defaults to 1232."""
MIN_UDP = 512
"""The UDP limit without EDNS (RFC 1035 §4.2.1)."""
MAX_TCP = 65535
"""A DNS message over TCP has a 2-octet length (RFC 1035 §4.2.2)."""

_HEADER = 12
_QR, _OPCODE_MASK, _RD = 0x8000, 0x7800, 0x0100
_META = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})
_MIN_RECORD = 14  # a compressed owner (2), type, class, TTL, length (10), two octets of data at least
_TRANSFER = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


@dataclass(frozen=True, slots=True)
class Reply:
    """A response ready to send, with what the server counts about it."""

    wire: bytes
    rcode: dns.rcode.Rcode
    truncated: bool


def answer(query: bytes, registry: ServiceRegistry | DnsTable, *, max_udp: int = DEFAULT_MAX_UDP,
           tcp: bool = False) -> bytes | None:
    """The response to ``query`` (DNS wire format), or None when it is to be dropped.

    ``registry`` is a registry snapshot or the ``DnsTable`` made from one (servers keep a
    table, so that records built for one query serve the next). ``max_udp`` is the server's
    own ceiling for UDP responses; the limit applied is the client's (512, or its EDNS
    payload size) under it. ``tcp`` lifts the limit to 65535.
    """
    r = reply(query, registry, max_udp=max_udp, tcp=tcp)
    return None if r is None else r.wire


def reply(query: bytes, registry: ServiceRegistry | DnsTable, *, max_udp: int = DEFAULT_MAX_UDP,
          tcp: bool = False) -> Reply | None:
    """``answer`` with the response's rcode and TC flag; never raises on any input bytes."""
    if len(query) < _HEADER:
        return None
    flags = int.from_bytes(query[2:4], "big")
    if flags & _QR:
        return None
    if (flags & _OPCODE_MASK) >> 11 != dns.opcode.QUERY:
        return _bare(query, dns.rcode.NOTIMP)
    try:
        msg = dns.message.from_wire(query, keyring=False)
    except (dns.exception.DNSException, ValueError, TypeError, KeyError, IndexError, UnicodeError):
        # dnspython's parsers raise FormError for most damage, and plain Python errors
        # from rdata decoders for the rest; all of it is the client's malformed message.
        return _bare(query, dns.rcode.FORMERR)
    if msg.had_tsig:
        return _bare(query, dns.rcode.NOTAUTH)
    if len(msg.question) != 1:
        return _bare(query, dns.rcode.FORMERR)
    table = registry if isinstance(registry, DnsTable) else DnsTable(registry)
    max_udp = max(MIN_UDP, min(max_udp, MAX_TCP))
    response = dns.message.make_response(msg, our_payload=max_udp)
    if msg.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
    else:
        _fill(response, msg.question[0], table)
    if tcp:
        limit = MAX_TCP
    else:
        limit = min(max(msg.payload, MIN_UDP), max_udp) if msg.edns >= 0 else MIN_UDP
    wire = _render(response, limit, tcp)
    return Reply(wire, response.rcode(), bool(wire[2] & (dns.flags.TC >> 8)))


def servfail(query: bytes) -> Reply | None:
    """SERVFAIL, header only, for a query that answering failed on (None: drop it)."""
    if len(query) < _HEADER or int.from_bytes(query[2:4], "big") & _QR:
        return None
    return _bare(query, dns.rcode.SERVFAIL)


def _bare(query: bytes, rcode: dns.rcode.Rcode) -> Reply:
    """A header-only response: the query's ID, opcode and RD, the rcode, no sections."""
    flags = int.from_bytes(query[2:4], "big")
    out = _QR | (flags & (_OPCODE_MASK | _RD)) | int(rcode)
    return Reply(query[:2] + out.to_bytes(2, "big") + bytes(8), rcode, False)


def _fill(response: dns.message.Message, question: dns.rrset.RRset, table: DnsTable) -> None:
    qtype, qclass = question.rdtype, question.rdclass
    if qtype in _META:
        response.set_rcode(dns.rcode.FORMERR)
        return
    if qclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or qtype in _TRANSFER:
        response.set_rcode(dns.rcode.REFUSED)
        return
    if qtype in (dns.rdatatype.MAILA, dns.rdatatype.MAILB):
        response.set_rcode(dns.rcode.NOTIMP)
        return
    node, zone = table.lookup(question.name)
    if node is None and zone is None:
        response.set_rcode(dns.rcode.REFUSED)
        return
    response.flags |= dns.flags.AA
    if node is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    else:
        for rdtype in node.types() if qtype == dns.rdatatype.ANY else (qtype,):
            rrset = node.rrset(question.name, rdtype)
            if rrset is not None:
                response.answer.append(rrset)
        if response.answer:
            if any(rrset.rdtype == dns.rdatatype.SRV for rrset in response.answer):
                response.additional.extend(node.glue())
            return
    if zone is not None:  # NXDOMAIN or NODATA: the SOA tells resolvers how long to remember it
        response.authority.append(make_rrset(zone, table.ttl, (table.soa(zone),)))


def _render(response: dns.message.Message, limit: int, tcp: bool) -> bytes:
    records = sum(len(rrset) for rrset in response.answer)
    if records * _MIN_RECORD + 512 <= limit:  # fits whatever the names: render once
        return response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)
    if not tcp:
        # Surely too big (a record takes at least _MIN_RECORD octets): TC at once, rather
        # than render thousands of records to find out.
        if records * _MIN_RECORD > limit:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)
    # Over TCP there is no retry to fall back to: keep a prefix of the largest record set
    # (the answering cluster's endpoints come first) and shrink it until the message fits.
    response.additional.clear()
    i = max(range(len(response.answer)), key=lambda i: len(response.answer[i]))
    big = response.answer[i]
    rdatas = tuple(big)
    per_record = len(rdatas[0].to_wire()) + 12  # compressed owner, type, class, TTL, length
    keep = min(len(rdatas), (limit - 1024) // per_record)
    for _ in range(32):  # bounded; each round keeps 9/10 of the last
        response.answer[i] = make_rrset(big.name, big.ttl, rdatas[:max(keep, 1)])
        wire = response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)
        if not wire[2] & (dns.flags.TC >> 8) or keep <= 1:
            break
        keep = keep * 9 // 10
    return wire
