"""The mesh DNS server: ``_dns_answer`` behind a UDP socket and a TCP listener, on one port.

The I/O is all there is here. A UDP datagram is one query; over TCP each message has a
2-octet length in front (RFC 1035 §4.2.2) and a client may send several on one
connection (RFC 7766 §6.2.1), which are answered in order. A connection is closed when
it has been idle - or has sat on a partial message - for ``tcp_idle_timeout``; beyond
``max_tcp_connections`` new connections are closed at once. The registry snapshot is
swapped whole by ``set_registry``; a query in flight finishes on the table it started on.
Endpoints of other networks are answered by their cluster's east-west gateway
(``_dns_reach``): the answering cluster's ``network`` is given, or read off its endpoints.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field

import dns.rcode
import trio

from topology import ServiceRegistry

from ._dns_answer import DEFAULT_MAX_UDP, MAX_TCP, reply, servfail
from ._dns_reach import network_of, reachable_view
from ._dns_records import DEFAULT_TTL
from ._dns_table import DnsTable
from ._errors import FederationError

log = logging.getLogger("meshfed.federation.dns")

DNS_PORT = 15053
"""meshfed's mesh DNS port (Istio's DNS proxy port)."""
DEFAULT_TCP_IDLE_TIMEOUT = 30.0
"""Seconds a TCP connection may stay idle, as BIND's and Unbound's tcp-idle-timeout. Defaults to 30."""
DEFAULT_MAX_TCP_CONNECTIONS = 150
"""Concurrent TCP connections, as BIND's tcp-clients. Defaults to 150."""
_BIND_ATTEMPTS = 20


class DnsServerError(FederationError):
    """The DNS server could not take its address."""

    def __init__(self, message: str, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


@dataclass(slots=True)
class DnsCounters:
    """What the server has done since it started; the control plane's metrics read these."""

    by_rcode: Counter[str] = field(default_factory=Counter)
    """Responses sent, by rcode name (``NOERROR``, ``NXDOMAIN``, ``FORMERR``...)."""
    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0
    """Messages not answered: too short for a header, or themselves responses."""
    truncated: int = 0
    """UDP responses sent with TC, for the client to retry over TCP."""
    tcp_rejected: int = 0
    """TCP connections closed at once because ``max_tcp_connections`` were open."""
    errors: int = 0
    """Queries answered SERVFAIL because answering them raised (a bug, logged)."""


class DnsServer:
    """Serves one cluster's mesh DNS over UDP and TCP on ``host``:``port``."""

    def __init__(self, registry: ServiceRegistry, *, cluster: str = "", host: str = "127.0.0.1",
                 port: int = DNS_PORT, ttl: int = DEFAULT_TTL, max_udp: int = DEFAULT_MAX_UDP,
                 tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT,
                 max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS, network: str | None = None) -> None:
        """``port`` 0 takes a free port, the same for UDP and TCP (see ``port`` once serving);
        ``network`` is the answering cluster's (None: the network of its own endpoints)."""
        self.cluster = cluster
        self.network = network
        self.host = host
        self.port = port
        self.ttl = ttl
        self.max_udp = max_udp
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.counters = DnsCounters()
        self._serial = 0
        self._tcp_open = 0
        self.table = self._table(registry)

    def __repr__(self) -> str:
        c = self.counters
        return (f"<DnsServer {self.host}:{self.port} cluster={self.cluster or '-'} serial={self.table.serial} "
                f"[{c.udp_queries} udp, {c.tcp_queries} tcp, {self._tcp_open} open tcp]>")

    @property
    def tcp_connections(self) -> int:
        """TCP connections open now."""
        return self._tcp_open

    def _table(self, registry: ServiceRegistry) -> DnsTable:
        self._serial += 1
        network = self.network if self.network is not None else network_of(registry, self.cluster)
        return DnsTable(reachable_view(registry, self.cluster, network), cluster=self.cluster, ttl=self.ttl,
                        serial=self._serial)

    def set_registry(self, registry: ServiceRegistry) -> None:
        """Answer from ``registry`` from now on (one assignment; the SOA serial goes up)."""
        self.table = self._table(registry)

    # -- answering -------------------------------------------------------------------

    def _answer(self, query: bytes, *, tcp: bool) -> bytes | None:
        try:
            r = reply(query, self.table, max_udp=self.max_udp, tcp=tcp)
        except Exception:  # a bug in answering must cost one query, never the server
            log.exception("mesh DNS failed to answer a %d-octet query", len(query))
            self.counters.errors += 1
            r = servfail(query)
        if r is None:
            self.counters.dropped += 1
            return None
        self.counters.by_rcode[dns.rcode.to_text(r.rcode)] += 1
        self.counters.truncated += r.truncated
        return r.wire

    # -- serving ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report ``(host, port)`` through ``task_status``, serve until cancelled."""
        udp, listeners = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(trio.serve_listeners, self._serve_tcp, listeners)
                log.info("mesh DNS for cluster %s on %s:%d (udp, tcp)", self.cluster or "-", self.host, self.port)
                task_status.started((self.host, self.port))
        finally:
            udp.close()
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener]]:
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        attempts = _BIND_ATTEMPTS if self.port == 0 else 1
        for _ in range(attempts):
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                await udp.bind((self.host, self.port))
                port = udp.getsockname()[1]
                listeners = await trio.open_tcp_listeners(port, host=self.host)
            except OSError as e:
                udp.close()
                if self.port == 0 and e.errno == errno.EADDRINUSE:
                    continue  # the kernel's free UDP port is taken for TCP: draw another
                raise DnsServerError(f"mesh DNS cannot listen on {self.host}:{self.port}: {e.strerror}",
                                     self.host, self.port) from e
            self.port = port
            return udp, listeners
        raise DnsServerError(f"mesh DNS found no port free for both UDP and TCP on {self.host} "
                             f"in {attempts} attempts", self.host, self.port)

    async def _serve_udp(self, udp: trio.socket.SocketType) -> None:
        while True:
            try:
                query, peer = await udp.recvfrom(MAX_TCP)
            except OSError as e:  # e.g. an ICMP error surfacing on the socket: the next datagram is fine
                log.debug("mesh DNS udp receive failed: %s", e)
                continue
            self.counters.udp_queries += 1
            wire = self._answer(query, tcp=False)
            if wire is not None:
                try:
                    await udp.sendto(wire, peer)
                except OSError as e:
                    log.debug("mesh DNS udp reply to %s failed: %s", peer, e)

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        if self._tcp_open >= self.max_tcp_connections:
            self.counters.tcp_rejected += 1
            await trio.aclose_forcefully(stream)
            return
        self._tcp_open += 1
        try:
            buffer = bytearray()
            while True:
                query = None
                with trio.move_on_after(self.tcp_idle_timeout):
                    query = await _read_message(stream, buffer)
                if query is None:  # closed by the client, or idle too long
                    return
                self.counters.tcp_queries += 1
                wire = self._answer(query, tcp=True)
                if wire is None:
                    continue
                with trio.move_on_after(self.tcp_idle_timeout) as sending:
                    await stream.send_all(len(wire).to_bytes(2, "big") + wire)
                if sending.cancelled_caught:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self._tcp_open -= 1
            await trio.aclose_forcefully(stream)


async def _read_message(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """The next length-prefixed message, or None at end of stream (a partial one is dropped)."""
    while True:
        if len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) >= 2 + size:
                message = bytes(buffer[2:2 + size])
                del buffer[:2 + size]
                return message
        data = await stream.receive_some(MAX_TCP + 2)
        if not data:
            return None
        buffer += data

