"""The certificate service on :15012: a CSR in, the workload's SVID and chain out.

``POST /v1/certificate`` with ``{"csr_pem", "token"}``. Two ways to be allowed:

* **bootstrap** - ``token`` is a bootstrap credential (``trustdomain.BootstrapAuthority``
  HMAC token) naming the (namespace, service account) pairs its holder may become; the
  cluster's ``ClusterSigner`` checks it and signs only its own trust domain. This is
  the one request an anonymous TLS connection may make (``_cplistener``).
* **renewal** - no token, over mTLS: the client's current, still valid SVID is the
  credential, and the CSR may ask only for that same SPIFFE ID.

200 answers ``{"cert_pem", "chain_pem", "spiffe_id", "not_after"}`` (chain: the
intermediates, issuer first, without the root, which the proxy has in its bundle); a
refusal is 403 ``{"error": ...}`` naming what was asked for and why, a malformed
request 400. The lifetime is the signer's ``max_lifetime`` (24 h by default, as
Istio's workload certificates).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from cryptography import x509

from gateway._discovery_wire import CertificateRequest, CertificateResponse, WireError
from trustdomain import ClusterSigner, IssuanceRefused, PeerIdentity, X509Svid, requested_id, sign_csr
from trustdomain._files import cert_pem

from ._cplistener import Request
from ._cpmetrics import ControlPlaneMetrics

log = logging.getLogger("meshfed.federation.ca")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertificateService:
    """Issues SVIDs from one cluster's signer; ``issue`` is the decision, ``handle`` the endpoint."""

    def __init__(self, signer: ClusterSigner, *, clock: Callable[[], dt.datetime] = _utcnow,
                 metrics: ControlPlaneMetrics | None = None, lifetime: dt.timedelta | None = None) -> None:
        self.signer = signer
        self.clock = clock
        self.metrics = metrics or ControlPlaneMetrics()
        self.lifetime = lifetime
        self.issued = 0
        self.refused = 0
        self.last_refusal: str | None = None

    def __repr__(self) -> str:
        return f"<CertificateService {self.signer.ca.trust_domain} issued={self.issued} refused={self.refused}>"

    def issue(self, csr: x509.CertificateSigningRequest, token: str | None, peer: PeerIdentity | None,
              now: dt.datetime) -> X509Svid:
        """The SVID for ``csr``, or IssuanceRefused (see the module docstring for the two rules)."""
        if token:
            return self.signer.sign(csr, token, now, self.lifetime)
        wanted = requested_id(csr)
        if peer is None:
            raise IssuanceRefused(f"refused {str(wanted)!r}: send a bootstrap token, or renew over mTLS with "
                                  "the current certificate", str(wanted))
        if wanted != peer.spiffe_id:
            raise IssuanceRefused(f"refused {str(wanted)!r}: a renewal over mTLS may only ask for the caller's "
                                  f"own identity {str(peer.spiffe_id)!r}", str(wanted))
        limit = self.signer.max_lifetime
        return sign_csr(self.signer.ca, csr, now, min(self.lifetime or limit, limit))

    async def handle(self, req: Request) -> None:
        self.metrics.csr.inc()
        try:
            creq = CertificateRequest.from_json(req.body)
            csr = x509.load_pem_x509_csr(creq.csr_pem.encode())
        except WireError as exc:
            return await self._refuse(req, 400, str(exc))
        except ValueError as exc:
            return await self._refuse(req, 400, f"csr_pem is not a PEM certificate signing request: {exc}")
        try:
            svid = self.issue(csr, creq.token, req.peer, self.clock())
        except IssuanceRefused as exc:
            return await self._refuse(req, 403, str(exc))
        self.issued += 1
        self.metrics.issued.inc()
        log.info("issued %s serial %x until %s (%s)", svid.spiffe_id, svid.serial, svid.not_after,
                 "token" if creq.token else "renewal")
        body = CertificateResponse(cert_pem(svid.certificate).decode(), cert_pem(*svid.intermediates).decode(),
                                   str(svid.spiffe_id), svid.not_after.isoformat())
        await req.respond(200, body.to_json())

    async def _refuse(self, req: Request, status: int, message: str) -> None:
        self.refused += 1
        self.last_refusal = message
        self.metrics.csr_refused.inc()
        log.warning("certificate request refused (%d): %s", status, message)
        await req.error(status, message)

    def status(self) -> dict[str, object]:
        return {"trustDomain": str(self.signer.ca.trust_domain), "issued": self.issued, "refused": self.refused,
                "lastRefusal": self.last_refusal, "caNotAfter": self.signer.ca.not_after.isoformat()}
