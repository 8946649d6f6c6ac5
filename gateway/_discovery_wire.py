"""The control plane's wire protocol on :15012, shared by the server (federation) and the proxy.

Pure (bytes and JSON in, values out), so that the server and ``_discovery_client`` speak
one protocol without the gateway importing federation. The protocol is described in
``federation/_discovery.py``; in short, over one HTTP/2 connection with mTLS:

* ``POST /v1/subscribe`` with a ``NodeIdentity`` (JSON); the response stream stays open
  and carries config frames;
* ``POST /v1/ack`` with an ``Ack`` (JSON) after each frame, ``ok`` false for a NACK;
* ``POST /v1/certificate`` with a ``CertificateRequest`` (JSON) returns a
  ``CertificateResponse`` (JSON).

A config frame is ``u32 length`` (big-endian) + that many bytes of JSON header
``{"version", "nonce", "digest", "size", "parts"}`` + ``size`` bytes of body. The
document (UTF-8 JSON of a ProxyConfig) is the concatenation of its parts, listed in
``parts`` as ``[id, length, fresh]``; the body holds the fresh parts, in order, and a
part that is not fresh is one the proxy received in the previous frame on this
connection (same id). Both ends keep exactly the parts of the last frame, so the server
knows what the proxy holds without being told (a new connection holds nothing): a 2 MB
document whose VirtualServices changed travels as a few kilobytes. Raw bytes after the
header, not a JSON string inside it, spare both ends escaping megabytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from trustdomain import SpiffeId, TrustDomain

from . import GatewayError

DISCOVERY_PORT = 15012  # Istio's istiod XDS + CA port
PATH_SUBSCRIBE = "/v1/subscribe"
PATH_ACK = "/v1/ack"
PATH_CERTIFICATE = "/v1/certificate"
CONTENT_JSON = "application/json"
CONTENT_FRAMES = "application/x-meshfed-frames"

CONTROL_PLANE_NAMESPACE = "istio-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "istiod"  # the control plane's identity, as istiod's

MAX_REQUEST_BODY = 1 << 20
"""Largest request body (a node identity, an ACK, a CSR) the server accepts."""
MAX_FRAME_HEADER = 64 << 10
MAX_DOCUMENT = 256 << 20
CLIENT_WINDOW = 16 << 20
"""Flow-control window the client grants per stream and per connection: a whole document."""
CLIENT_MAX_FRAME = 1 << 20
"""HTTP/2 DATA frame size the client accepts (RFC 9113 6.5.2 allows up to 2^24-1)."""

_U32 = struct.Struct(">I")


class WireError(GatewayError):
    """A message that does not follow the protocol; ``what`` names the message."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"{what}: {problem}")


def control_plane_id(trust_domain: str | TrustDomain) -> SpiffeId:
    return SpiffeId.workload(trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)


def _object(what: str, body: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(what, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(what, f"expected a JSON object; found {type(doc).__name__}")
    return doc


def _field(what: str, doc: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    value = doc.get(key, default)
    if value is ...:
        raise WireError(what, f"missing field {key!r}")
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
        raise WireError(what, f"field {key!r} has the wrong type; found {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who subscribes, and what config it holds already (version and digest, or none)."""

    cluster: str
    namespace: str
    workload: str
    instance: str
    service_account: str
    version: str | None = None
    digest: str | None = None

    def to_json(self) -> bytes:
        d = asdict(self)
        d["serviceAccount"] = d.pop("service_account")
        return json.dumps(d).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "NodeIdentity":
        doc = _object("node identity", body)
        strs = {k: _field("node identity", doc, k, str) for k in ("cluster", "namespace", "workload", "instance",
                                                                  "serviceAccount")}
        version = _field("node identity", doc, "version", (str, int), None)
        return cls(strs["cluster"], strs["namespace"], strs["workload"], strs["instance"], strs["serviceAccount"],
                   None if version is None else str(version), _field("node identity", doc, "digest", str, None))

    def spiffe_id(self, trust_domain: str | TrustDomain) -> SpiffeId:
        return SpiffeId.workload(trust_domain, self.namespace, self.service_account)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    version: int
    nonce: str
    digest: str
    size: int
    """Bytes of body after the header: the fresh parts."""
    parts: tuple[tuple[str, int, bool], ...] = ()
    """(id, length, fresh) of each part of the document, in order."""

    @property
    def document_size(self) -> int:
        return sum(n for _, n, _ in self.parts)


def encode_frame(version: int, nonce: str, digest: str, parts: Sequence[bytes], ids: Sequence[str],
                 known: set[str]) -> list[bytes]:
    """The frame for a document as buffers, sending only parts not in ``known``; updates ``known``."""
    listed, fresh = [], []
    for part, pid in zip(parts, ids):
        is_fresh = pid not in known
        if is_fresh:
            fresh.append(part)
            known.add(pid)
        listed.append([pid, len(part), int(is_fresh)])
    known.intersection_update(ids)
    head = json.dumps({"version": version, "nonce": nonce, "digest": digest, "size": sum(map(len, fresh)),
                       "parts": listed}, separators=(",", ":")).encode()
    return [_U32.pack(len(head)) + head, *fresh]


class DocumentAssembler:
    """The proxy's half of the parts protocol: frames in, whole documents out."""

    def __init__(self) -> None:
        self.known: dict[str, bytes] = {}

    def assemble(self, header: FrameHeader, body: bytes) -> bytes:
        parts: list[tuple[str, bytes]] = []
        offset, held = 0, self.known
        fresh: dict[str, bytes] = {}
        for pid, size, is_fresh in header.parts:
            if is_fresh:
                piece = body[offset:offset + size]
                offset += size
                fresh[pid] = piece
            else:
                found = fresh.get(pid, held.get(pid))
                if found is None:
                    raise WireError("config frame", f"part {pid} is neither sent nor held from the last frame")
                piece = found
            if len(piece) != size:
                raise WireError("config frame", f"part {pid} has {len(piece)} bytes; the header says {size}")
            parts.append((pid, piece))
        if offset != len(body):
            raise WireError("config frame", f"{len(body) - offset} bytes of body belong to no part")
        self.known = dict(parts)
        return b"".join(p for _, p in parts)


class FrameDecoder:
    """Bytes of the subscribe stream in, (header, body) pairs out; refuses oversized frames.

    Received pieces are kept as a list and joined once per header or body, so a 2 MB
    body arriving in a hundred pieces is copied once, not a hundred times."""

    def __init__(self, max_document: int = MAX_DOCUMENT) -> None:
        self.max_document = max_document
        self._pieces: list[bytes] = []
        self._len = 0
        self._header: FrameHeader | None = None
        self._header_len: int | None = None

    def _take(self, n: int) -> bytes:
        data = b"".join(self._pieces)
        self._pieces = [data[n:]] if len(data) > n else []
        self._len -= n
        return data[:n]

    def feed(self, data: bytes) -> list[tuple[FrameHeader, bytes]]:
        if data:
            self._pieces.append(data)
            self._len += len(data)
        out: list[tuple[FrameHeader, bytes]] = []
        while True:
            if self._header is None:
                if self._header_len is None:
                    if self._len < 4:
                        return out
                    (n,) = _U32.unpack(self._take(4))
                    if n > MAX_FRAME_HEADER:
                        raise WireError("config frame", f"header of {n} bytes exceeds {MAX_FRAME_HEADER}")
                    self._header_len = n
                if self._len < self._header_len:
                    return out
                self._header = self._parse(self._take(self._header_len))
                self._header_len = None
            if self._len < self._header.size:
                return out
            out.append((self._header, self._take(self._header.size)))
            self._header = None

    def _parse(self, raw: bytes) -> FrameHeader:
        doc = _object("config frame header", raw)
        what = "config frame header"
        try:
            parts = tuple((str(pid), int(n), bool(f)) for pid, n, f in _field(what, doc, "parts", list))
        except (TypeError, ValueError):
            raise WireError(what, "parts must be a list of [id, length, fresh]") from None
        header = FrameHeader(_field(what, doc, "version", int), _field(what, doc, "nonce", str),
                             _field(what, doc, "digest", str), _field(what, doc, "size", int), parts)
        if not 0 <= header.size <= self.max_document or header.document_size > self.max_document:
            raise WireError("config frame", f"document of {header.document_size} bytes exceeds {self.max_document}")
        return header

    @property
    def buffered(self) -> int:
        return self._len


@dataclass(frozen=True, slots=True)
class Ack:
    """A proxy's verdict on one pushed version: ACK (``ok``) or NACK with its reasons."""

    version: int
    nonce: str
    ok: bool
    errors: tuple[str, ...] = field(default=())

    def to_json(self) -> bytes:
        return json.dumps({"version": self.version, "nonce": self.nonce, "ok": self.ok,
                           "errors": list(self.errors)}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "Ack":
        doc = _object("ack", body)
        errors = _field("ack", doc, "errors", list, [])
        return cls(_field("ack", doc, "version", int), _field("ack", doc, "nonce", str),
                   _field("ack", doc, "ok", bool), tuple(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    csr_pem: str
    token: str | None = None
    """Bootstrap credential; None for a renewal authenticated by the client certificate."""

    def to_json(self) -> bytes:
        return json.dumps({"csr_pem": self.csr_pem, "token": self.token}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "CertificateRequest":
        doc = _object("certificate request", body)
        return cls(_field("certificate request", doc, "csr_pem", str),
                   _field("certificate request", doc, "token", str, None))


@dataclass(frozen=True, slots=True)
class CertificateResponse:
    cert_pem: str
    chain_pem: str
    """The intermediates above the leaf, issuer first, without the root."""
    spiffe_id: str
    not_after: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, body: bytes) -> "CertificateResponse":
        doc = _object("certificate response", body)
        return cls(*(_field("certificate response", doc, k, str)
                     for k in ("cert_pem", "chain_pem", "spiffe_id", "not_after")))


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def error_of(body: bytes) -> str:
    """The ``error`` of an error response, else the body as text."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
    except (ValueError, UnicodeDecodeError):
        pass
    return body.decode("utf-8", "replace")[:500]
