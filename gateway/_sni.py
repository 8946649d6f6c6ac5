"""Reading a TLS ClientHello without terminating TLS, and Istio's outbound SNI.

The east-west gateway and the inbound sidecar must know a connection's server name (and
ALPN) before any handshake, to choose where the bytes go; they never hold the key that
would let them decrypt. So ``ClientHelloParser`` reads the first flight as bytes in,
answer out, no socket - h11's shape: feed what arrived, get ``NEED_DATA`` or the hello.

Theory of operation. The record layer (RFC 8446 5.1) wraps the handshake message; a
ClientHello may be split across any number of records, and records across any number of
reads. The parser consumes only whole records, appends their payload to the handshake
buffer, and parses the ClientHello (RFC 8446 4.1.2) once the handshake header's length is
satisfied - so each byte is looked at a bounded number of times and the work ends. Every
length is checked against what encloses it; a verdict is final: after an error the parser
raises it again. Bytes that cannot start TLS raise ``NotTls`` (the caller may treat them
as plaintext); TLS that breaks the rules or the size limit raises ``MalformedHello``.

Between proxies the SNI names a service port, as Istio's AUTO_PASSTHROUGH clusters are
named: ``outbound_.<port>_.<subset>_.<fqdn>``, ``_`` alone for no subset.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import GatewayError

TLS_HANDSHAKE = 22
"""Content type of a handshake record: how the inbound port tells TLS from plaintext."""
MAX_RECORD_PAYLOAD = 1 << 14  # RFC 8446 5.1: "The length MUST NOT exceed 2^14 bytes."
MAX_CLIENT_HELLO = 64 * 1024  # Envoy tls_inspector's TLS_MAX_CLIENT_HELLO (its max_client_hello_size cap)
"""Default limit on the bytes (record headers included) a ClientHello may take. RFC 8446
allows a handshake message of 2^24-1 bytes; real hellos are 0.5-2 KiB."""
_CLIENT_HELLO = 1
_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS = 0, 16, 43
_HOST_NAME = 0


class Hello(enum.Enum):
    NEED_DATA = "NEED_DATA"
    """Feed more bytes: the ClientHello is not complete yet."""
    NOT_TLS = "NOT_TLS"
    """``sniff_server_name`` only: the bytes are not a usable ClientHello."""


NEED_DATA = Hello.NEED_DATA
NOT_TLS = Hello.NOT_TLS


class SniError(GatewayError):
    """Base of the errors of this module; ``reason`` says what was wrong, quoting it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotTls(SniError):
    """The first bytes are not a TLS handshake record (plaintext, SSLv2, another protocol)."""


class MalformedHello(SniError):
    """TLS records that do not carry a valid ClientHello within the limits."""


class NotMeshSni(SniError):
    """A server name that is not ``outbound_.<port>_.<subset>_.<fqdn>``."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(reason)
        self.name = name


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What a passthrough proxy routes on, read from a ClientHello."""

    server_name: str | None
    """SNI host_name (RFC 6066 3), lower-cased; None when the hello carries none."""
    alpn_protocols: tuple[str, ...]
    """ALPN protocol names in the client's order (RFC 7301); () without the extension."""
    supported_versions: tuple[int, ...]
    """supported_versions as sent (0x0304 is TLS 1.3, GREASE values kept); () without it."""
    legacy_version: int
    """ClientHello.legacy_version (0x0303 for TLS 1.2 and 1.3)."""
    record_bytes: int
    """Bytes of the records that carried the hello; anything after them is the client's next flight."""


class ClientHelloParser:
    """Incremental ClientHello reader for one connection: ``receive_data(chunk)`` per read."""

    __slots__ = ("max_size", "_pending", "_payload", "_need", "_seen", "_records", "_done")

    def __init__(self, max_size: int = MAX_CLIENT_HELLO) -> None:
        self.max_size = max_size
        self._pending = bytearray()  # bytes of the record not yet complete
        self._payload = bytearray()  # handshake bytes joined from complete records
        self._need: int | None = None  # handshake message length, header included, once known
        self._seen = 0  # wire bytes of complete records consumed
        self._records = 0
        self._done: ClientHelloInfo | SniError | None = None

    def receive_data(self, data: bytes) -> ClientHelloInfo | Hello:
        """The hello once complete, else NEED_DATA; raises NotTls / MalformedHello (again on every later call)."""
        if isinstance(self._done, SniError):
            raise self._done
        if self._done is None:
            self._pending += data
            try:
                self._done = self._advance()
            except SniError as exc:
                self._done = exc
                raise
        return self._done if self._done is not None else NEED_DATA

    def _advance(self) -> ClientHelloInfo | None:
        buf = self._pending
        while True:
            first = self._records == 0
            if first:
                _check_first_bytes(buf)
                if buf and buf[0] != TLS_HANDSHAKE:
                    return None  # an SSLv2-like header not yet told apart
            elif buf and buf[0] != TLS_HANDSHAKE:
                raise MalformedHello(f"record of content type {buf[0]} before the ClientHello ended")
            if len(buf) >= 2 and buf[1] != 3:
                what = f"record version {buf[1]}.x is not TLS (3.x)"
                raise NotTls(what) if first else MalformedHello(what)
            if len(buf) < 5:
                return None
            length = int.from_bytes(buf[3:5], "big")
            if length == 0:
                raise MalformedHello("empty handshake record (RFC 8446 5.1 forbids zero-length handshake fragments)")
            if length > MAX_RECORD_PAYLOAD:
                raise MalformedHello(f"record length {length} exceeds 2^14 (RFC 8446 5.1)")
            if self._seen + 5 + length > self.max_size:
                raise MalformedHello(f"ClientHello longer than the {self.max_size}-byte limit "
                                     f"(record {self._records + 1} ends at byte {self._seen + 5 + length})")
            if len(buf) < 5 + length:
                return None
            self._payload += buf[5:5 + length]
            del buf[:5 + length]
            self._seen += 5 + length
            self._records += 1
            payload = self._payload
            if payload[0] != _CLIENT_HELLO:
                raise MalformedHello(f"handshake message type {payload[0]} is not a ClientHello (1)")
            if self._need is None and len(payload) >= 4:
                self._need = 4 + int.from_bytes(payload[1:4], "big")
                if self._need > self.max_size:
                    raise MalformedHello(f"ClientHello of {self._need} bytes exceeds the {self.max_size}-byte limit")
            if self._need is not None and len(payload) >= self._need:
                return _parse_body(bytes(payload[4:self._need]), self._seen)


def parse_client_hello(data: bytes, max_size: int = MAX_CLIENT_HELLO) -> ClientHelloInfo | Hello:
    """One-shot ``ClientHelloParser``: ``data`` is every byte read so far."""
    return ClientHelloParser(max_size).receive_data(data)


def sniff_server_name(data: bytes, max_size: int = MAX_CLIENT_HELLO) -> str | None | Hello:
    """For a port that also takes plaintext: the server name (None if none), NEED_DATA,
    or NOT_TLS for anything ``parse_client_hello`` refuses."""
    try:
        hello = parse_client_hello(data, max_size)
    except SniError:
        return NOT_TLS
    return hello if hello is NEED_DATA else hello.server_name  # type: ignore[union-attr]


def _check_first_bytes(buf: bytearray) -> None:
    if not buf or buf[0] == TLS_HANDSHAKE:
        return
    if buf[0] & 0x80:  # SSLv2 record header: 2-byte length with the high bit set, then msg_type
        if len(buf) < 3:
            return
        if buf[2] == _CLIENT_HELLO:
            raise NotTls("SSLv2-style ClientHello; only TLS records are accepted")
    raise NotTls(f"first byte {bytes(buf[:1])!r} does not start a TLS handshake record (content type 22)")


class _Reader:
    """Bounds-checked cursor over one vector of the hello: every read names what it reads."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def uint(self, size: int, what: str) -> int:
        pos, stop = self.pos, self.pos + size
        if stop > self.end:
            raise MalformedHello(f"truncated {what}: {size} bytes needed, {self.end - pos} left")
        self.pos = stop
        return int.from_bytes(self.data[pos:stop], "big")

    def vector(self, size: int, what: str, low: int = 0, high: int | None = None) -> _Reader:
        """An opaque ``<low..high>`` vector with a ``size``-byte length prefix."""
        pos, start = self.pos, self.pos + size
        if start > self.end:
            raise MalformedHello(f"truncated {what} length: {size} bytes needed, {self.end - pos} left")
        n = int.from_bytes(self.data[pos:start], "big")
        if start + n > self.end:
            raise MalformedHello(f"{what} length {n} runs past its container ({self.end - start} bytes left)")
        if n < low or (high is not None and n > high):
            raise MalformedHello(f"{what} length {n} outside {low}..{high if high is not None else 2 ** (8 * size) - 1}")
        self.pos = start + n
        return _Reader(self.data, start, start + n)

    def rest(self) -> bytes:
        return self.data[self.pos:self.end]


def _parse_body(body: bytes, record_bytes: int) -> ClientHelloInfo:
    r = _Reader(body)
    legacy_version = r.uint(2, "legacy_version")
    r.uint(32, "random")
    r.vector(1, "legacy_session_id", 0, 32)
    suites = r.vector(2, "cipher_suites", 2, 2 ** 16 - 2)
    if suites.left % 2:
        raise MalformedHello(f"cipher_suites length {suites.left} is odd")
    r.vector(1, "legacy_compression_methods", 1)
    name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if r.left:  # extensions are optional before TLS 1.3
        exts = r.vector(2, "extensions")
        if r.left:
            raise MalformedHello(f"{r.left} bytes after the extensions")
        seen: set[int] = set()
        while exts.pos < exts.end:
            kind = exts.uint(2, "extension type")
            ext = exts.vector(2, f"extension {kind}")
            if kind in seen:  # RFC 8446 4.2: "There MUST NOT be more than one extension of the same type"
                raise MalformedHello(f"extension {kind} appears twice")
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                name = _server_name(ext)
            elif kind == _EXT_ALPN:
                alpn = _alpn(ext)
            elif kind == _EXT_SUPPORTED_VERSIONS:
                listed = ext.vector(1, "supported_versions", 2, 254)
                if listed.left % 2 or ext.left:
                    raise MalformedHello("supported_versions is not a list of 2-byte versions")
                versions = tuple(listed.uint(2, "version") for _ in range(listed.left // 2))
    return ClientHelloInfo(name, alpn, versions, legacy_version, record_bytes)


def _server_name(ext: _Reader) -> str | None:
    names = ext.vector(2, "server_name list", 1)
    if ext.left:
        raise MalformedHello(f"{ext.left} bytes after the server_name list")
    host: str | None = None
    while names.left:
        name_type = names.uint(1, "server name type")
        value = names.vector(2, "server name", 1).rest()
        if name_type != _HOST_NAME:
            continue  # RFC 6066 3: unknown name types are ignored
        if host is not None:  # RFC 6066 3: "MUST NOT contain more than one name of the same name_type"
            raise MalformedHello("server_name lists two host names")
        if any(b <= 0x20 or b >= 0x7F for b in value):
            raise MalformedHello(f"server name {value[:64]!r} is not printable ASCII")
        host = value.decode("ascii").lower()
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    names = ext.vector(2, "ALPN protocol list", 2)
    if ext.left:
        raise MalformedHello(f"{ext.left} bytes after the ALPN protocol list")
    out = []
    while names.left:
        out.append(names.vector(1, "ALPN protocol name", 1).rest().decode("latin-1"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MeshSni:
    """The parts of ``outbound_.<port>_.<subset>_.<fqdn>``."""

    port: int
    subset: str
    """Empty for the whole service."""
    fqdn: str


def mesh_sni(port: int, subset: str, fqdn: str) -> str:
    """Istio's AUTO_PASSTHROUGH cluster name as an SNI; an empty subset leaves ``_._``."""
    name = f"outbound_.{port}_.{subset}_.{fqdn}"
    if not isinstance(port, int) or not 0 < port < 65536 or "." in subset or not fqdn:
        raise NotMeshSni(f"cannot name port {port!r}, subset {subset!r} of {fqdn!r} as an outbound SNI", name)
    return name


def parse_mesh_sni(name: str) -> MeshSni:
    """The parts of an outbound SNI; raises NotMeshSni saying which part is wrong."""
    parts = name.split(".", 3)
    if len(parts) < 4 or parts[0] != "outbound_":
        raise NotMeshSni(f"{name!r} is not of the form outbound_.<port>_.<subset>_.<fqdn>", name)
    port, subset, fqdn = parts[1], parts[2], parts[3]
    if not port.endswith("_") or not port[:-1].isdigit() or not 0 < int(port[:-1]) < 65536:
        raise NotMeshSni(f"{name!r}: port {port!r} is not '<1..65535>_'", name)
    if not subset.endswith("_"):
        raise NotMeshSni(f"{name!r}: subset {subset!r} does not end in '_'", name)
    if not fqdn or "" in fqdn.split("."):
        raise NotMeshSni(f"{name!r}: service name {fqdn!r} is not a host name", name)
    return MeshSni(int(port[:-1]), subset[:-1], fqdn)


def parse_outbound_sni(name: str) -> MeshSni | None:
    """``parse_mesh_sni`` for callers that treat any other name as "not a mesh name"."""
    try:
        return parse_mesh_sni(name)
    except NotMeshSni:
        return None


OutboundSni = MeshSni
outbound_sni = mesh_sni  # the name _snapshot uses
