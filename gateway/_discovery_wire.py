"""The control plane's wire protocol on :15012, shared by the server (federation) and the proxy.

Everything here is pure (bytes and JSON in, values out), so ``federation/_discovery.py``
and ``gateway/_discovery_client.py`` speak the same protocol without the gateway ever
importing federation. The protocol itself is described in ``federation/_discovery.py``;
in short, over one HTTP/2 connection with mTLS:

* ``POST /v1/subscribe`` with a ``NodeIdentity`` (JSON); the response stream stays open
  and carries config frames;
* ``POST /v1/ack`` with an ``Ack`` (JSON) after each frame, ``ok`` false for a NACK;
* ``POST /v1/certificate`` with a ``CertificateRequest`` (JSON) returns a
  ``CertificateResponse`` (JSON).

A config frame is ``u32 length`` (big-endian) + that many bytes of JSON header
``{"version", "nonce", "digest", "size"}`` + ``size`` bytes of the document (UTF-8 JSON
of a ProxyConfig). The document travels after its header rather than inside it as a
JSON string: a 2 MB document would otherwise be escaped by the server and unescaped by
every proxy, and the server could no longer write shared parts without joining them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

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


def encode_frame(header: FrameHeader, parts: Iterable[bytes]) -> list[bytes]:
    """The frame as a list of buffers: prefix + header, then the document's parts as they are."""
    head = json.dumps(asdict(header), separators=(",", ":")).encode()
    return [_U32.pack(len(head)) + head, *parts]


class FrameDecoder:
    """Bytes of the subscribe stream in, (header, document) pairs out; refuses oversized frames."""

    def __init__(self, max_document: int = MAX_DOCUMENT) -> None:
        self.max_document = max_document
        self._buf = bytearray()
        self._header: FrameHeader | None = None

    def feed(self, data: bytes) -> list[tuple[FrameHeader, bytes]]:
        self._buf += data
        out = []
        while True:
            if self._header is None:
                if len(self._buf) < 4:
                    return out
                (n,) = _U32.unpack_from(self._buf)
                if n > MAX_FRAME_HEADER:
                    raise WireError("config frame", f"header of {n} bytes exceeds {MAX_FRAME_HEADER}")
                if len(self._buf) < 4 + n:
                    return out
                self._header = self._parse(bytes(self._buf[4:4 + n]))
                del self._buf[:4 + n]
            size = self._header.size
            if len(self._buf) < size:
                return out
            out.append((self._header, bytes(self._buf[:size])))
            del self._buf[:size]
            self._header = None

    def _parse(self, raw: bytes) -> FrameHeader:
        doc = _object("config frame header", raw)
        header = FrameHeader(_field("config frame header", doc, "version", int),
                             _field("config frame header", doc, "nonce", str),
                             _field("config frame header", doc, "digest", str),
                             _field("config frame header", doc, "size", int))
        if not 0 <= header.size <= self.max_document:
            raise WireError("config frame", f"document of {header.size} bytes exceeds {self.max_document}")
        return header

    @property
    def buffered(self) -> int:
        return len(self._buf)


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
