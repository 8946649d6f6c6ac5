"""The certificate service: bootstrap tokens, refusals, renewal over mTLS, and the proxy's client."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from federation._casvc import CertificateService
from federation._controlplane import ControlPlane
from gateway._cert_client import CertificateClient, CertificateFetchError, bootstrap_context
from gateway._discovery_wire import control_plane_id
from gateway._h2channel import H2Channel
from trustdomain import (
    BootstrapAuthority, BootstrapGrant, ClusterSigner, IssuanceRefused, KeyType, MtlsContexts, PeerIdentity,
    SpiffeId, TrustDomain, make_csr,
)
from trustdomain.testing import MeshPki, utcnow

TD = "east.meshfed.local"
HOST = "127.86.0.1"
SECRET = b"bootstrap-secret-of-east"
REVIEWS = SpiffeId.workload(TD, "bookinfo", "reviews")
MESH = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  clusters: [{name: east, addressBlock: 127.86.0.0/24, trustDomain: east.meshfed.local}]
"""


@pytest.fixture(scope="module")
def pki() -> MeshPki:
    return MeshPki.shared_root(TD, "west.meshfed.local")


def token(namespace: str = "bookinfo", sa: str = "reviews", secret: bytes = SECRET) -> str:
    grant = BootstrapGrant(TrustDomain(TD), ((namespace, sa),), utcnow() + dt.timedelta(hours=1))
    return BootstrapAuthority(secret).mint(grant)


def csr_for(spiffe_id: SpiffeId) -> Any:
    return make_csr(KeyType.ECDSA_P256.generate(), spiffe_id)


@pytest.fixture
def service(pki: MeshPki) -> CertificateService:
    return CertificateService(ClusterSigner(pki.ca(TD), BootstrapAuthority(SECRET)))


@pytest.mark.parametrize(("wanted", "tok", "peer", "message"), [
    (SpiffeId.workload(TD, "other", "reviews"), token(), None,
     "refused 'spiffe://east.meshfed.local/ns/other/sa/reviews': the bootstrap credential allows only "
     "ns/bookinfo/sa/reviews"),
    (REVIEWS, token(secret=b"another-clusters-secret"), None,
     "refused 'spiffe://east.meshfed.local/ns/bookinfo/sa/reviews': bootstrap credential signature does not "
     "verify (forged, or another cluster's)"),
    (SpiffeId.workload("west.meshfed.local", "bookinfo", "reviews"), token(), None,
     "refused 'spiffe://west.meshfed.local/ns/bookinfo/sa/reviews': this CA signs only trust domain "
     "'east.meshfed.local'"),
    (REVIEWS, None, None,
     "refused 'spiffe://east.meshfed.local/ns/bookinfo/sa/reviews': send a bootstrap token, or renew over mTLS "
     "with the current certificate"),
    (REVIEWS, None, SpiffeId.workload(TD, "bookinfo", "ratings"),
     "refused 'spiffe://east.meshfed.local/ns/bookinfo/sa/reviews': a renewal over mTLS may only ask for the "
     "caller's own identity 'spiffe://east.meshfed.local/ns/bookinfo/sa/ratings'"),
])
def test_issue_refuses_what_the_credential_does_not_allow(service: CertificateService, wanted: SpiffeId,
                                                         tok: str | None, peer: SpiffeId | None,
                                                         message: str) -> None:
    identity = PeerIdentity(peer, peer.trust_domain) if peer else None
    with pytest.raises(IssuanceRefused) as info:
        service.issue(csr_for(wanted), tok, identity, utcnow())
    assert str(info.value) == message


@pytest.mark.parametrize("how", ["token", "renewal"])
def test_issue_signs_the_token_holder_or_the_renewing_peer(service: CertificateService, how: str) -> None:
    peer = PeerIdentity(REVIEWS, REVIEWS.trust_domain) if how == "renewal" else None
    svid = service.issue(csr_for(REVIEWS), token() if how == "token" else None, peer, utcnow())
    assert svid.spiffe_id == REVIEWS
    assert svid.not_after - svid.not_before == dt.timedelta(hours=24, minutes=5)  # 24 h plus the backdate
    assert svid.intermediates == (service.signer.ca.certificate,)


@pytest.fixture
async def cp(pki: MeshPki, tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[ControlPlane]:
    (tmp_path / "mesh.yaml").write_text(MESH)
    plane = ControlPlane("east", tmp_path, ClusterSigner(pki.ca(TD), BootstrapAuthority(SECRET)), pki.bundles(),
                         host=HOST, discovery_port=0, metrics_port=0, in_thread=False)
    await nursery.start(plane.run)
    yield plane


def client(pki: MeshPki, cp: ControlPlane, identity: SpiffeId = REVIEWS, tok: str | None = None) -> CertificateClient:
    assert cp.discovery_address is not None
    return CertificateClient(cp.discovery_address, identity, pki.bundles(), tok, control_plane=control_plane_id(TD))


async def test_bootstrap_token_gets_the_svid_and_its_chain(cp: ControlPlane, pki: MeshPki) -> None:
    with trio.fail_after(10):
        svid = await client(pki, cp, tok=cp.mint_token("bookinfo", "reviews")).fetch()
    assert svid.spiffe_id == REVIEWS and svid.key is not None
    assert svid.intermediates == (pki.ca(TD).certificate,)
    assert cp.metrics.value("citadel_server_csr_count_total") == 1
    assert cp.metrics.value("citadel_server_success_cert_issuance_count_total") == 1
    assert cp.status()["certificates"]["issued"] == 1


async def test_token_for_another_namespace_is_refused_with_the_reason(cp: ControlPlane, pki: MeshPki) -> None:
    asking = SpiffeId.workload(TD, "payments", "reviews")
    with pytest.raises(CertificateFetchError) as info, trio.fail_after(10):
        await client(pki, cp, asking, tok=cp.mint_token("bookinfo", "reviews")).fetch()
    assert str(info.value) == (
        "spiffe://east.meshfed.local/ns/payments/sa/reviews: CA service refused (403): refused "
        "'spiffe://east.meshfed.local/ns/payments/sa/reviews': the bootstrap credential allows only "
        "ns/bookinfo/sa/reviews")
    assert info.value.status == 403
    assert cp.metrics.value("citadel_server_csr_sign_err_count_total") == 1
    assert cp.status()["certificates"]["lastRefusal"] == str(info.value).split("(403): ", 1)[1]


async def test_renewal_over_mtls_needs_no_token(cp: ControlPlane, pki: MeshPki) -> None:
    first = pki.svid(TD, "bookinfo", "reviews")
    with trio.fail_after(10):
        renewed = await client(pki, cp).renew(MtlsContexts(first, pki.bundles()))
    assert renewed.spiffe_id == REVIEWS and renewed.serial != first.serial


async def test_anonymous_requests_need_a_well_formed_csr_and_a_token(cp: ControlPlane, pki: MeshPki, nursery: trio.Nursery) -> None:
    assert cp.discovery_address is not None
    stream = trio.SSLStream(await trio.open_tcp_stream(*cp.discovery_address), bootstrap_context(pki.bundles()),
                            server_hostname=None)
    channel = H2Channel(stream, ping_interval=None)
    await nursery.start(channel.run)
    cases = [(b'{"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n"}', 400),
             (b'{"token": "x"}', 400), (b"[]", 400)]
    for body, status in cases:
        got, _ = await channel.request("POST", "/v1/certificate", body)
        assert got == status
    pem = csr_for(REVIEWS).public_bytes(serialization.Encoding.PEM).decode()
    got, body = await channel.request("POST", "/v1/certificate", json.dumps({"csr_pem": pem}).encode())
    assert (got, json.loads(body)["error"]) == (
        403, "refused 'spiffe://east.meshfed.local/ns/bookinfo/sa/reviews': send a bootstrap token, or renew over "
             "mTLS with the current certificate")
    await channel.aclose()


async def test_client_without_token_cannot_bootstrap(cp: ControlPlane, pki: MeshPki) -> None:
    with pytest.raises(CertificateFetchError, match="no bootstrap token to ask for a first certificate"):
        await client(pki, cp).fetch()


async def test_client_refuses_a_server_with_an_unexpected_identity(cp: ControlPlane, pki: MeshPki) -> None:
    assert cp.discovery_address is not None
    odd = CertificateClient(cp.discovery_address, REVIEWS, pki.bundles(), token(),
                            control_plane=SpiffeId.workload(TD, "istio-system", "someone-else"))
    with pytest.raises(CertificateFetchError) as info, trio.fail_after(10):
        await odd.fetch()
    assert str(info.value) == ("the CA service presented spiffe://east.meshfed.local/ns/istio-system/sa/istiod; "
                               "expected spiffe://east.meshfed.local/ns/istio-system/sa/someone-else")


async def test_run_renews_before_expiry_and_swaps_the_new_svid_in(cp: ControlPlane, pki: MeshPki,
                                                                  nursery: trio.Nursery) -> None:
    first = pki.svid(TD, "bookinfo", "reviews")
    late = first.not_before + dt.timedelta(hours=22)  # past the renewal point, within every validity
    contexts = MtlsContexts(first, pki.bundles(), clock=lambda: late)
    assert cp.discovery_address is not None
    cc = CertificateClient(cp.discovery_address, REVIEWS, pki.bundles(), None, control_plane=control_plane_id(TD),
                           clock=lambda: late)
    seen: list[Any] = []
    renewed = trio.Event()

    def on_svid(svid: Any) -> None:
        seen.append(svid)
        renewed.set()
    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            await inner.start(lambda task_status: cc.run(contexts, on_svid=on_svid, task_status=task_status))
            await renewed.wait()
            inner.cancel_scope.cancel()
    assert seen[0].spiffe_id == REVIEWS and seen[0].serial != first.serial
    assert contexts.svid.serial != first.serial
