"""``x-forwarded-client-cert``: the inbound sidecar tells the app who called.

Envoy's ``forward_client_cert_details: SANITIZE_SET``: whatever XFCC the caller sent is
dropped - a client must not be able to claim an identity - and, when the connection
presented a client certificate, one element describing it is set. The element is built
as Envoy's ``ConnectionManagerUtility::mutateXfccRequestHeader`` builds it:

* ``By=<URI SAN of our own certificate>`` (our SPIFFE ID), one per URI SAN;
* ``Hash=<hex SHA-256 of the peer's DER certificate>``;
* then the ``set_current_client_cert_details`` fields: ``Subject="<RFC 2253 subject>"``
  (always quoted, present even when empty), ``URI=<peer URI SAN>`` (one per SAN; ``URI=``
  when there is none) and ``DNS=<peer DNS SAN>`` (one per SAN; absent when none).

Istio's sidecar asks for Subject, URI and DNS; meshfed's default is By, Hash and URI - the
issue's format, and what an Istio SVID yields minus its empty ``Subject=""`` - with
``subject=True, dns=True`` giving Istio's exact set. Elements are joined with ``;``.

Quoting, from Envoy's XFCC format: "If ``,``, ``;`` or ``=`` appear in a value, the value
should be double-quoted. Double-quotes in the value should be replaced by backslash-double-
quote". Envoy quotes ``Subject`` always and writes the SANs raw, which is safe for SPIFFE IDs
(their characters exclude all four); a non-SPIFFE SAN that needs quoting gets it here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustdomain import SpiffeId

XFCC_HEADER = b"x-forwarded-client-cert"
_SPECIAL = frozenset(',;="\\')


def quote(value: str, *, always: bool = False) -> str:
    """An XFCC value, double-quoted when it must be (or ``always``), ``"`` and ``\\`` escaped.

    Escaping the backslash too goes beyond the quoted rule; without it an RFC 4514 subject
    (which escapes its own quotes as ``\\"``) could not be read back unambiguously."""
    if always or any(ch in _SPECIAL for ch in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What XFCC reports about the peer's leaf certificate, read once per connection."""

    hash: str
    """Lower-case hex SHA-256 of the DER encoding, as Envoy's ``sha256PeerCertificateDigest``."""
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    subject: str = ""
    """RFC 2253 / 4514 form, as Envoy's ``subjectPeerCertificate``."""

    @classmethod
    def from_der(cls, der: bytes) -> "PeerCertificate":
        from cryptography import x509  # loaded by the handshake's verification already

        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
            dns = tuple(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            uris = dns = ()
        return cls(hashlib.sha256(der).hexdigest(), uris, dns, cert.subject.rfc4514_string())


@dataclass(frozen=True, slots=True)
class XfccConfig:
    """One inbound listener's XFCC settings: our identity and which peer details to report."""

    by: tuple[str, ...]
    """Our own certificate's URI SANs: our SPIFFE ID."""
    subject: bool = False
    """Report ``Subject="..."``. Defaults to false (Istio's sidecar sets it true)."""
    uri: bool = True
    """Report ``URI=`` for the peer's URI SANs. Defaults to true (as Istio)."""
    dns: bool = False
    """Report ``DNS=`` for the peer's DNS SANs. Defaults to false (Istio's sidecar sets it true)."""

    @classmethod
    def for_identity(cls, own: SpiffeId | str, *, subject: bool = False, dns: bool = False) -> "XfccConfig":
        return cls((str(own),), subject=subject, dns=dns)

    def element(self, peer: PeerCertificate | bytes | None) -> str | None:
        """The XFCC value for a connection whose client certificate is ``peer`` (DER or read);
        None for a connection without one (plaintext): SANITIZE_SET then only removes."""
        if peer is None:
            return None
        if isinstance(peer, (bytes, bytearray, memoryview)):
            peer = PeerCertificate.from_der(bytes(peer))
        parts = [f"By={quote(b)}" for b in self.by]
        parts.append(f"Hash={peer.hash}")
        if self.subject:
            parts.append(f"Subject={quote(peer.subject, always=True)}")
        if self.uri:
            parts.extend([f"URI={quote(u)}" for u in peer.uris] or ["URI="])
        if self.dns:
            parts.extend(f"DNS={quote(d)}" for d in peer.dns)
        return ";".join(parts)

    def apply(self, headers: Iterable[tuple[bytes, bytes]], element: str | None) -> list[tuple[bytes, bytes]]:
        """SANITIZE_SET over request headers: every XFCC the caller sent is dropped; ours, if
        any, is appended. Names compare case-insensitively; order of the rest is kept."""
        out = [(k, v) for k, v in headers if k.lower() != XFCC_HEADER]
        if element is not None:
            out.append((XFCC_HEADER, element.encode("latin-1")))
        return out


def sanitize_set(headers: Iterable[tuple[bytes, bytes]], own: SpiffeId | str,
                 peer: PeerCertificate | bytes | None) -> list[tuple[bytes, bytes]]:
    """One-shot form of ``XfccConfig.for_identity(own).apply(headers, element(peer))``."""
    config = XfccConfig.for_identity(own)
    return config.apply(headers, config.element(peer))


def parse(value: str) -> list[dict[str, list[str]]]:
    """Elements of an XFCC header, each as key -> values (keys lower-cased); for tests and apps.

    Splits on ``,`` and ``;`` outside double quotes, unquotes, and unescapes ``\\"`` and ``\\\\``."""
    elements: list[dict[str, list[str]]] = []
    for element in _split(value, ","):
        pairs: dict[str, list[str]] = {}
        for pair in _split(element, ";"):
            key, _, val = pair.partition("=")
            if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
                val = re.sub(r'\\(.)', r'\1', val[1:-1])
            pairs.setdefault(key.strip().lower(), []).append(val)
        elements.append(pairs)
    return elements


def _split(text: str, sep: str) -> Sequence[str]:
    out, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out
