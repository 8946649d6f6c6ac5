"""Trust across clusters: independent roots federated by bundle exchange, linked trust domains in
AuthorizationPolicies, trustDomainAliases, and mesh DNS for imported services.

Pure and in-process first (two CAs with independent roots, what a cluster trusts, rotations,
the exchange endpoint, authorization, proxy documents, DNS); then end to end on 127.70.1/2.0/24:
one topology whose clusters each have a root of their own (``rootCA: own``) linked with
``fedctl link``, and two topologies (two hosts' worth) linked with ``link export``/``apply``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trio

from federation._cplistener import ControlPlaneListener
from federation._dns_reach import reachable_view
from federation._dns_table import DnsTable
from federation._federation_model import ExportSet, ExportedService, federated_view
from federation._link_store import (
    AcceptedBundle, AppliedLink, LinkDocument, LinkSet, LocalLink, credential_expiry, mint_credential, read_links,
)
from federation._proxygen import ProxyGenerator
from federation._trust_bundles import BundleTransitions, ClusterRoots, ClusterTrust, wanted_bundles
from federation._trust_exchange import (
    PATH_BUNDLE, BundleExchange, BundleOffer, ExchangeRefused, accept_offer, offer_bundle,
)
from federation._up import ensure_ca
from federation._launch import Layout
from gateway._authz import Authorizer
from gateway._authz_match import AuthzRequest
from gateway._discovery_wire import control_plane_id
from topology import Endpoint, Service, ServicePort, ServiceRegistry, load_text
from topology._mesh import RootCa
from trustdomain import (
    Bundle, BundleSet, CaDirectory, MtlsContexts, PeerRefused, PeerRole, RefusalReason, SpiffeId, TrustDomain,
    create_intermediate, create_root, issue_svid,
)
from trustdomain._files import cert_pem
from trustdomain._verify import verify_peer_chain
from meshproc import fedctl, kill_leftovers, recorded_pids as recorded

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
EAST, WEST = TrustDomain("east.example"), TrustDomain("west.example")


# -- two independent roots ------------------------------------------------------------------


def make_pki(now: dt.datetime) -> dict:
    out = {}
    for name, td in (("east", EAST), ("west", WEST)):
        root = create_root(now - dt.timedelta(days=1), common_name=f"{name} root CA")
        ca = create_intermediate(root, td, name, now - dt.timedelta(days=1))
        out[name] = {"root": root, "ca": ca, "bundle": Bundle(td, (root.certificate,)),
                     "svid": issue_svid(ca, SpiffeId.workload(td, "demo", "client" if name == "east" else "echo"),
                                        now - dt.timedelta(hours=1)),
                     "cp": issue_svid(ca, control_plane_id(td), now - dt.timedelta(hours=1))}
    return out


@pytest.fixture(scope="module")
def pki() -> dict:
    return make_pki(NOW)


@pytest.fixture(scope="module")
def live_pki() -> dict:
    """Valid now: OpenSSL checks validity against the real clock during handshakes."""
    return make_pki(dt.datetime.now(dt.timezone.utc))


def test_independent_roots_are_refused_until_their_bundles_are_exchanged_then_verify_both_ways(pki: dict) -> None:
    east_only, west_only = BundleSet.of(pki["east"]["bundle"]), BundleSet.of(pki["west"]["bundle"])
    with pytest.raises(PeerRefused) as refused:
        verify_peer_chain(pki["east"]["svid"].chain_der(), west_only, NOW, PeerRole.CLIENT)
    assert refused.value.reason is RefusalReason.UNKNOWN_TRUST_DOMAIN
    assert "east.example" in str(refused.value)
    federated_east = east_only.with_bundle(pki["west"]["bundle"])
    federated_west = west_only.with_bundle(pki["east"]["bundle"])
    assert verify_peer_chain(pki["east"]["svid"].chain_der(), federated_west, NOW, PeerRole.CLIENT)[0] == \
        pki["east"]["svid"].certificate
    assert verify_peer_chain(pki["west"]["svid"].chain_der(), federated_east, NOW, PeerRole.SERVER)[0] == \
        pki["west"]["svid"].certificate


def test_an_svid_claiming_a_federated_domain_but_chained_to_the_other_root_is_refused(pki: dict) -> None:
    rogue = create_intermediate(pki["east"]["root"], WEST, "rogue", NOW - dt.timedelta(days=1))  # east's root
    forged = issue_svid(rogue, SpiffeId.workload(WEST, "demo", "echo"), NOW - dt.timedelta(hours=1))
    both = BundleSet.of(pki["east"]["bundle"], pki["west"]["bundle"])
    with pytest.raises(PeerRefused) as refused:
        verify_peer_chain(forged.chain_der(), both, NOW, PeerRole.SERVER)
    assert refused.value.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE


# -- what a cluster trusts --------------------------------------------------------------------

R_SHARED, R_EAST, R_WEST, R_NEW = b"shared", b"east-root", b"west-root", b"west-new"
TOPOLOGY = {"a": ClusterRoots("a.example", (R_SHARED,)), "b": ClusterRoots("b.example", (R_SHARED,)),
            "east": ClusterRoots("east.example", (R_EAST,)), "west": ClusterRoots("west.example", (R_WEST,))}


def doc(cluster: str, td: str, bundle: str = "", credential: str = "") -> LinkDocument:
    return LinkDocument(cluster, "net-" + cluster, "", td, "127.70.9.1:15012", "127.70.9.2:15443", bundle, credential)


def pem_of(pki: dict, name: str) -> str:
    return cert_pem(pki[name]["root"].certificate).decode()


@pytest.mark.parametrize(("cluster", "links", "expected"), [
    ("a", LinkSet(), {"a.example": (R_SHARED,), "b.example": (R_SHARED,)}),
    ("east", LinkSet(), {"east.example": (R_EAST,)}),
    ("east", LinkSet((LocalLink(("west", "east")),)), {"east.example": (R_EAST,), "west.example": (R_WEST,)}),
    ("west", LinkSet((LocalLink(("west", "east")),)), {"east.example": (R_EAST,), "west.example": (R_WEST,)}),
    ("a", LinkSet((LocalLink(("west", "east")),)), {"a.example": (R_SHARED,), "b.example": (R_SHARED,)}),
    ("a", LinkSet((LocalLink(("a", "east")),)), {"a.example": (R_SHARED,), "b.example": (R_SHARED,),
                                                  "east.example": (R_EAST,)}),
], ids=["shared-root-trusted-without-link", "own-root-alone", "local-link-importer", "local-link-other-side",
        "other-pairs-link-changes-nothing", "shared-and-own-root-linked"])
def test_a_cluster_trusts_its_root_group_and_its_linked_peers_only(cluster: str, links: LinkSet,
                                                                   expected: dict) -> None:
    assert wanted_bundles(cluster, TOPOLOGY, links, NOW) == expected


def test_applied_documents_and_accepted_offers_add_their_bundles_until_the_credential_expires(pki: dict) -> None:
    west_pem = pem_of(pki, "west")
    west_der = Bundle.from_pem(WEST, west_pem.encode()).x509_authorities[0].public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
    applied = LinkSet(applied=(AppliedLink("east", doc("far", "far.example", west_pem)),))
    assert wanted_bundles("east", TOPOLOGY, applied, NOW)["far.example"] == (west_der,)
    expires = (NOW + dt.timedelta(hours=1)).isoformat()
    accepted = LinkSet(accepted=(AcceptedBundle("east", "far", "far.example", west_pem, expires),))
    assert wanted_bundles("east", TOPOLOGY, accepted, NOW)["far.example"] == (west_der,)
    assert "far.example" not in wanted_bundles("east", TOPOLOGY, accepted, NOW + dt.timedelta(hours=2))
    assert "far.example" not in wanted_bundles("west", TOPOLOGY, accepted, NOW), "accepted by east only"
    # an offer made by a cluster of this very topology is read from the CA folder, not from the offer
    spoofed = LinkSet(accepted=(AcceptedBundle("east", "west", "west.example", west_pem, expires),))
    assert wanted_bundles("east", TOPOLOGY, spoofed, NOW)["west.example"] == (R_WEST,)


def test_unlink_removes_the_peers_bundle_and_every_applied_or_accepted_entry_of_the_pair() -> None:
    links = LinkSet((LocalLink(("east", "west")),), (AppliedLink("east", doc("west", "west.example")),),
                    (AcceptedBundle("west", "east", "east.example", "", "2030-01-01T00:00:00+00:00"),))
    after = links.without_link("west", "east")
    assert after == LinkSet()
    assert wanted_bundles("east", TOPOLOGY, after, NOW) == {"east.example": (R_EAST,)}
    assert LinkSet.from_json(json.loads(json.dumps(links.to_json()))) == links


def test_a_rotated_root_stays_trusted_through_its_grace_while_an_unlinked_domain_goes_at_once() -> None:
    t = BundleTransitions(grace=60)
    assert t.advance({"east": (R_EAST,), "west": (R_WEST,)}, 0) == {"east": (R_EAST,), "west": (R_WEST,)}
    # the peer's new document carries only its new root: make-before-break keeps the old one a while
    assert t.advance({"east": (R_EAST,), "west": (R_NEW,)}, 10) == {"east": (R_EAST,), "west": (R_NEW, R_WEST)}
    assert t.next_change() == 70
    assert t.advance({"east": (R_EAST,), "west": (R_NEW,)}, 69) == {"east": (R_EAST,), "west": (R_NEW, R_WEST)}
    assert t.advance({"east": (R_EAST,), "west": (R_NEW,)}, 70) == {"east": (R_EAST,), "west": (R_NEW,)}
    assert t.next_change() is None
    assert t.advance({"east": (R_EAST,)}, 71) == {"east": (R_EAST,)}, "unlinked: no grace"


def test_cluster_trust_writes_one_file_per_domain_named_by_content_and_drops_stale_ones(tmp_path: Path,
                                                                                     pki: dict) -> None:
    cadir = CaDirectory(tmp_path / "ca")
    for name in ("east", "west"):
        cadir.save_cluster(name, pki[name]["ca"])
    trust = ClusterTrust("east", cadir.path, tmp_path / "trust", grace=0, now=lambda: 0.0, wall_clock=lambda: NOW)
    assert trust.refresh(LinkSet()) is True
    assert sorted(trust.files) == ["east.example"] and trust.refresh(LinkSet()) is False
    assert trust.refresh(LinkSet((LocalLink(("east", "west")),))) is True
    west_file = Path(trust.files["west.example"])
    assert west_file.name.startswith("west.example.") and west_file.read_bytes() == pem_of(pki, "west").encode()
    assert trust.bundle_set().trust_domains == (EAST, WEST)
    rotated = create_intermediate(create_root(NOW, common_name="west root 2"), WEST, "west", NOW)
    cadir.save_cluster("west", rotated)  # grace 0: the old root goes with the next refresh
    assert trust.refresh(LinkSet((LocalLink(("east", "west")),))) is True
    assert Path(trust.files["west.example"]) != west_file
    assert west_file.exists(), "the set a proxy may still be loading stays one refresh longer"
    trust.refresh(LinkSet())
    assert sorted(p.name.split(".")[0] for p in (tmp_path / "trust/east").iterdir()) == ["east", "west"]
    assert not west_file.exists() and sorted(trust.files) == ["east.example"]


# -- the exchange -------------------------------------------------------------------------------

SECRET = b"s" * 32


@pytest.mark.parametrize(("change", "message"), [
    ({"credential": "v1.west.1.00"}, "bundle of 'far.example' from 'far' refused: the credential was not issued "
                                     "by this cluster"),
    ({"credential": mint_credential(SECRET, "west", NOW - dt.timedelta(days=31))},
     "bundle of 'far.example' from 'far' refused: the credential expired at 2026-02-28T12:00:00+00:00"),
    ({"credential": mint_credential(SECRET, "other", NOW)},
     "bundle of 'far.example' from 'far' refused: the credential is for cluster 'other', not 'west'"),
    ({"cluster": "west"}, "'west' is this cluster: it cannot be linked to itself"),
    ({"trust_domain": "a.example"}, "trust domain 'a.example' belongs to local cluster 'a', not 'far': identities "
                                    "would be ambiguous"),
    ({"trust_domain": "Far://x"}, "trustDomain: "),
    ({"bundle": "not pem"}, "bundle for 'far.example': no PEM certificate found"),
], ids=["forged", "expired", "other-cluster", "itself", "local-domain", "bad-domain", "not-pem"])
def test_an_offer_is_refused_with_its_reason(pki: dict, change: dict, message: str) -> None:
    base = dict(cluster="far", trust_domain="far.example", bundle=pem_of(pki, "east"),
                credential=mint_credential(SECRET, "west", NOW))
    offer = BundleOffer(**{**base, **change})
    with pytest.raises(ExchangeRefused) as refused:
        accept_offer(offer, cluster="west", secret=SECRET, local_domains={"a.example": "a"}, now=NOW)
    assert str(refused.value).startswith(message)


def test_an_offer_of_a_leaf_certificate_is_refused(pki: dict) -> None:
    offer = BundleOffer("far", "far.example", cert_pem(pki["east"]["svid"].certificate).decode(),
                        mint_credential(SECRET, "west", NOW))
    with pytest.raises(ExchangeRefused) as refused:
        accept_offer(offer, cluster="west", secret=SECRET, local_domains={}, now=NOW)
    assert refused.value.status == 400 and str(refused.value).endswith("is not a CA certificate")


async def test_apply_time_exchange_makes_the_exporter_trust_the_importer_on_its_listener(
        tmp_path: Path, live_pki: dict) -> None:
    """West (the exporter) knows only its own root; east offers its bundle with west's credential,
    over TLS that authenticates west only; west keeps it and then verifies east's control plane."""
    contexts = MtlsContexts(live_pki["west"]["cp"], BundleSet.of(live_pki["west"]["bundle"]), alpn=("h2",))
    accepted: list[int] = []
    exchange = BundleExchange("west", SECRET, tmp_path, lambda: {"west.example": "west"},
                              on_accept=lambda: accepted.append(1))
    async def who(req) -> None:
        await req.respond(200, str(req.peer.spiffe_id).encode(), content_type="text/plain")
    listener = ControlPlaneListener(contexts, {**exchange.routes, "/whoami": who},
                                    anonymous_paths=frozenset({PATH_BUNDLE}))
    credential = mint_credential(SECRET, "west", dt.datetime.now(dt.timezone.utc))
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(listener.serve, "127.70.1.201", 0)
        offer = BundleOffer("east", "east.example", pem_of(live_pki, "east"), credential)
        with pytest.raises(ExchangeRefused) as wrong:
            await offer_bundle((host, port), "east.example", pem_of(live_pki, "east"), offer)
        assert "is not the control plane of east.example" in str(wrong.value), "west's server is checked first"
        answer = await offer_bundle((host, port), "west.example", pem_of(live_pki, "west"), offer)
        assert answer == {"cluster": "west", "trustDomain": "east.example",
                          "expires": credential_expiry(credential).isoformat()}
        assert accepted == [1] and [(a.cluster, a.peer) for a in read_links(tmp_path).accepted] == [("west", "east")]
        bad = BundleOffer("east", "east.example", pem_of(live_pki, "east"), "v1.west.1.00")
        with pytest.raises(ExchangeRefused) as refused:
            await offer_bundle((host, port), "west.example", pem_of(live_pki, "west"), bad)
        assert refused.value.status == 403 and "the credential was not issued by this cluster" in str(refused.value)

        east_cp = MtlsContexts(live_pki["east"]["cp"],
                               BundleSet.of(live_pki["east"]["bundle"], live_pki["west"]["bundle"]), alpn=("h2",))
        assert (await whoami(east_cp, host, port))[0] == 0, "west does not trust east before the bundle is installed"
        contexts.update(bundles=contexts.bundles.with_bundle(live_pki["east"]["bundle"]))  # what ClusterTrust does
        assert await whoami(east_cp, host, port) == (200, b"spiffe://east.example/ns/istio-system/sa/istiod")
        assert await whoami(east_cp, host, port, withdraw=lambda: contexts.update(
            bundles=contexts.bundles.without(EAST))) == (403, (
                b'{"error": "trust domain east.example is no longer trusted by this control plane (its bundle was '
                b'removed: unlinked, or the link credential expired); spiffe://east.example/ns/istio-system/sa/istiod '
                b'must be linked again"}'))
        nursery.cancel_scope.cancel()


async def whoami(contexts: MtlsContexts, host: str, port: int, withdraw=None) -> tuple[int, bytes]:
    """Two requests on one mTLS connection (the first establishes it); ``withdraw`` runs between them.
    (0, b"") when the connection is refused."""
    from gateway._h2channel import ChannelClosed, H2Channel
    tcp = await trio.open_tcp_stream(host, port)
    stream, server = await contexts.connect(tcp)
    assert server.spiffe_id == control_plane_id(WEST)
    channel = H2Channel(stream, ping_interval=None)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            try:
                with trio.fail_after(5):
                    answer = await channel.request("POST", "/whoami")
                    if withdraw is not None:
                        withdraw()
                        answer = await channel.request("POST", "/whoami")
            except (trio.BrokenResourceError, trio.ClosedResourceError, ChannelClosed):
                answer = (0, b"")
            nursery.cancel_scope.cancel()
    finally:
        await channel.aclose()
    return answer


# -- authorization ---------------------------------------------------------------------------


def authorizer(principals: list[str], trust_domain: str, aliases: tuple[str, ...] = ()) -> Authorizer:
    text = textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: echo-callers, namespace: demo}}
        spec:
          selector: {{matchLabels: {{app: echo}}}}
          action: ALLOW
          rules:
          - from:
            - source: {{principals: {json.dumps(principals)}}}
        """)
    result = load_text(text, "ap.yaml")
    assert [str(d) for d in result.errors] == []
    return Authorizer.compile(result.resources, namespace="demo", labels={"app": "echo"},
                              trust_domain=trust_domain, trust_domain_aliases=aliases)


def allowed(a: Authorizer, peer: str) -> bool:
    return a.check(AuthzRequest("127.70.2.2", 8080, SpiffeId.parse(peer), method="GET", path="/",
                                host="echo.demo:8080")).allowed


@pytest.mark.parametrize(("principals", "aliases", "peer", "expected"), [
    (["east.example/ns/demo/sa/client"], (), "spiffe://east.example/ns/demo/sa/client", True),
    (["east.example/ns/demo/sa/client"], (), "spiffe://west.example/ns/demo/sa/client", False),
    (["east.example/ns/demo/sa/client"], (), "spiffe://east.example/ns/demo/sa/other", False),
    (["cluster.local/ns/demo/sa/client"], (), "spiffe://east.example/ns/demo/sa/client", False),
    (["cluster.local/ns/demo/sa/client"], ("east.example",), "spiffe://east.example/ns/demo/sa/client", True),
    (["west.example/ns/demo/sa/client"], ("east.example",), "spiffe://east.example/ns/demo/sa/client", True),
    (["cluster.local/ns/demo/sa/client"], ("east.example",), "spiffe://far.example/ns/demo/sa/client", False),
], ids=["linked-domain-named", "other-domain", "other-account", "cluster-local-without-alias",
        "cluster-local-with-alias", "own-domain-policy-matches-alias", "not-an-alias"])
def test_policies_of_west_name_linked_domains_and_honour_aliases(principals: list[str], aliases: tuple[str, ...],
                                                                 peer: str, expected: bool) -> None:
    assert allowed(authorizer(principals, "west.example", aliases), peer) is expected


MESH_WITH_ALIASES = """\
apiVersion: meshfed.io/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  trustDomainAliases: [east.example, west.example, cluster.local]
  clusters:
  - {name: east, addressBlock: 127.70.1.0/24, trustDomain: east.example, rootCA: own}
  - {name: west, addressBlock: 127.70.2.0/24, trustDomain: west.example}
  workloads:
  - {name: echo, namespace: demo, app: echo, cluster: west, ports: [{port: 8080}]}
  - {name: client, namespace: demo, app: sleep, cluster: east}
"""


def test_mesh_trust_domain_aliases_reach_every_proxy_document_without_its_own_domain(tmp_path: Path) -> None:
    from federation._configsource import ConfigSource
    (tmp_path / "mesh.yaml").write_text(MESH_WITH_ALIASES)
    version = ConfigSource(tmp_path, in_thread=False).poll()
    mesh = version.mesh
    assert [c.root_ca for c in mesh.clusters] == [RootCa.OWN, RootCa.SHARED]
    gen = ProxyGenerator(version)
    nodes = {p.cluster: gen.document(p).to_dict()["spec"]["node"] for p in version.placements}
    assert nodes["east"]["trustDomainAliases"] == ["west.example", "cluster.local"]
    assert nodes["west"]["trustDomainAliases"] == ["east.example", "cluster.local"]


@pytest.mark.parametrize(("snippet", "message"), [
    ("rootCA: mine", "spec.clusters[0].rootCA: must be one of shared, own; found string 'mine'"),
    ("trustDomain: a.example", None),
], ids=["bad-root-ca", "valid"])
def test_mesh_root_ca_is_validated(snippet: str, message: str | None) -> None:
    text = ("apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
            "  trustDomainAliases: [old.example]\n"
            f"  clusters:\n  - {{name: a, addressBlock: 127.70.1.0/24, {snippet}}}\n")
    errors = [str(d) for d in load_text(text, "m.yaml").errors]
    assert errors == ([f"m.yaml:7: {message}"] if message else [])


def test_mesh_trust_domain_aliases_must_be_trust_domains() -> None:
    text = ("apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
            "  trustDomainAliases: [ok.example, 'spiffe://x']\n"
            "  clusters:\n  - {name: a, addressBlock: 127.70.1.0/24}\n")
    assert [str(d) for d in load_text(text, "m.yaml").errors] == [
        "m.yaml:5: spec.trustDomainAliases[1]: must be a SPIFFE trust domain (lowercase letters, digits, '.', '-', "
        "'_'; no scheme); found string 'spiffe://x'"]


def test_ensure_ca_gives_an_own_root_cluster_a_root_of_its_own(tmp_path: Path) -> None:
    mesh = load_text(MESH_WITH_ALIASES, "m.yaml").of_kind("Mesh")[0].spec
    layout = Layout(tmp_path)
    assert ensure_ca(layout, mesh, NOW) == ["root", "east root", "east", "west"]
    cadir = CaDirectory(layout.ca)
    east, west = cadir.load_cluster("east"), cadir.load_cluster("west")
    assert east.root == cadir.own_root("east").load_root().certificate
    assert west.root == cadir.load_root().certificate and east.root != west.root
    assert cadir.clusters() == ["east", "west"]
    assert ensure_ca(layout, mesh, NOW) == [], "kept on the next run"


# -- mesh DNS ----------------------------------------------------------------------------------


def imported_registry() -> ServiceRegistry:
    local = ServiceRegistry([Service("client.demo.svc.cluster.local", "demo", "client",
                                     (ServicePort("http", 80, "HTTP", 80),),
                                     endpoints=(Endpoint("127.70.1.10", 80, cluster="east", network="net-east"),))])
    ports = (ServicePort("http", 8080, "HTTP", 8080),)
    eps = tuple(Endpoint(f"127.70.2.{i}", 8080, cluster="west", network="net-west", instance=f"echo-{i}")
                for i in (10, 11))
    export = ExportSet("west", "net-west", "us-west", "west.example", "127.70.2.2:15443",
                       (ExportedService("echo.demo.svc.cluster.local", "demo", "echo", ports, eps),), "r1")
    return federated_view(local, "east", [export])


def ask(table: DnsTable, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    from federation._dns_answer import answer as respond
    query = dns.message.make_query(name, rdtype)
    answer = dns.message.from_wire(respond(query.to_wire(), table))
    return dns.rcode.to_text(answer.rcode()), sorted(rd.to_text() for rrset in answer.answer for rd in rrset)


def test_an_imported_only_service_resolves_to_its_clusters_gateway_not_to_remote_pod_addresses() -> None:
    table = DnsTable(reachable_view(imported_registry(), "east", "net-east"), cluster="east")
    assert ask(table, "echo.demo.svc.cluster.local.") == ("NOERROR", ["127.70.2.2"])
    assert ask(table, "echo.demo.svc.clusterset.local.") == ("NOERROR", ["127.70.2.2"])
    assert ask(table, "_http._tcp.echo.demo.svc.cluster.local.", "SRV") == (
        "NOERROR", ["0 100 8080 127-70-2-2.echo.demo.svc.cluster.local."])
    assert ask(table, "echo-10.echo.demo.svc.cluster.local.")[0] == "NXDOMAIN", "no pod names of other networks"
    assert ask(table, "client.demo.svc.cluster.local.") == ("NOERROR", ["127.70.1.10"]), "local answers unchanged"


def test_a_same_network_peer_is_answered_with_its_endpoints_and_unlinked_names_are_nxdomain() -> None:
    table = DnsTable(reachable_view(imported_registry(), "east", "net-west"), cluster="east")
    assert ask(table, "echo.demo.svc.cluster.local.") == ("NOERROR", ["127.70.2.10", "127.70.2.11"])
    unlinked = federated_view(ServiceRegistry(), "east", [])
    assert ask(DnsTable(reachable_view(unlinked, "east", "net-east"), cluster="east"),
               "echo.demo.svc.cluster.local.")[0] == "NXDOMAIN"


# -- end to end: independent roots, fedctl up + fedctl link (127.70.1.0/24, 127.70.2.0/24) -----------

EAST_CLUSTER = """\
  - name: east
    network: net-east
    locality: {region: us-east, zone: us-east-1a}
    trustDomain: east.example
    addressBlock: 127.70.1.0/24
"""
WEST_CLUSTER = EAST_CLUSTER.replace("east", "west").replace("127.70.1.", "127.70.2.")
WORKLOADS = {"east": "  - {name: client, namespace: demo, app: sleep, cluster: east}\n",
             "west": "  - {name: echo, namespace: demo, app: echo, cluster: west, ports: [{name: http, port: 8080}]}\n"}
# west exports echo, requires mTLS, and lets only east's client in: a principal of the linked trust domain
WEST_POLICIES = """\
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: echo, namespace: demo}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-callers, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [east.example/ns/demo/sa/client]}
"""


def write_mesh(folder: Path, clusters: list[str], root_ca: str = "") -> Path:
    folder.mkdir(parents=True)
    blocks = {"east": EAST_CLUSTER, "west": WEST_CLUSTER}
    text = ("apiVersion: meshfed.io/v1alpha1\nkind: Mesh\nmetadata: {name: roots}\nspec:\n  clusters:\n"
            + "".join(blocks[c] + (f"    rootCA: {root_ca}\n" if root_ca else "") for c in clusters)
            + "  workloads:\n" + "".join(WORKLOADS[c] for c in clusters))
    (folder / "mesh.yaml").write_text(text)
    if "west" in clusters:
        (folder / "policies.yaml").write_text(WEST_POLICIES)
    return folder


@pytest.fixture
def meshes(tmp_path: Path) -> Iterator[tuple[list[Path], dict[str, str]]]:
    """Start each folder the test appends (``fedctl up --detach``); stop them all at the end."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    started: list[Path] = []
    seen: set[tuple[int, int | None]] = set()
    try:
        yield started, env
    finally:
        for mesh_dir in started:
            seen |= recorded(mesh_dir)
            fedctl(env, "down", str(mesh_dir), "--timeout", "30")
        kill_leftovers(seen)


def up(meshes: tuple[list[Path], dict[str, str]], mesh_dir: Path) -> None:
    started, env = meshes
    started.append(mesh_dir)
    result = fedctl(env, "up", str(mesh_dir), "--detach", "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr


def call_echo(env: dict[str, str], mesh_dir: Path) -> subprocess.CompletedProcess[str]:
    return fedctl(env, "curl", "--dir", str(mesh_dir), "-m", "10", "east/client", "http://echo.demo:8080/",
                  timeout=30)


def resolve(name: str, server: str = "127.70.1.1") -> tuple[str, list[str]]:
    answer = dns.query.udp(dns.message.make_query(name, "A"), server, port=15053, timeout=5)
    return dns.rcode.to_text(answer.rcode()), sorted(rd.to_text() for rrset in answer.answer for rd in rrset)


async def handshake_to_west_echo(proxy_config: Path) -> str:
    """mTLS from east's client identity and bundles, as its sidecar holds them, to west's echo
    sidecar through west's gateway: the server's SPIFFE ID, or the refusal."""
    from gateway._config import load_proxy_config_text
    from gateway._snapshot import load_tls
    spec = load_proxy_config_text(proxy_config.read_text(), str(proxy_config))[0].spec
    tls = load_tls(spec.tls, proxy_config.parent, spec.node.trust_domain)
    contexts = MtlsContexts(tls.svid, tls.bundles)
    tcp = await trio.open_tcp_stream("127.70.2.2", 15443)
    try:
        stream, peer = await contexts.connect(tcp, "outbound_.8080_._.echo.demo.svc.cluster.local")
    except PeerRefused as exc:
        return f"refused: {exc}"
    await trio.aclose_forcefully(stream)
    return str(peer.spiffe_id)


def test_clusters_with_independent_roots_linked_call_with_mtls_and_unlinked_fail_on_trust(
        tmp_path: Path, meshes: tuple[list[Path], dict[str, str]]) -> None:
    mesh_dir = write_mesh(tmp_path / "roots", ["east", "west"], root_ca="own")
    _, env = meshes
    up(meshes, mesh_dir)
    ca = CaDirectory(mesh_dir / ".meshfed" / "ca")
    assert ca.load_cluster("east").root != ca.load_cluster("west").root
    assert resolve("echo.demo.svc.cluster.local.")[0] == "NXDOMAIN", "west's service is not east's before a link"
    config = mesh_dir / ".meshfed/proxies/east/demo.client-0/config.json"

    linked = fedctl(env, "link", "east", "west", "--dir", str(mesh_dir), "--timeout", "30")
    assert linked.returncode == 0, linked.stdout + linked.stderr
    answer = json.loads(call_echo(env, mesh_dir).stdout)
    assert answer["cluster"] == "west"
    assert answer["headers"]["x-forwarded-client-cert"].startswith("By=spiffe://west.example/ns/demo/sa/echo;")
    assert answer["headers"]["x-forwarded-client-cert"].endswith(";URI=spiffe://east.example/ns/demo/sa/client")
    assert sorted(json.loads(config.read_text())["spec"]["tls"]["bundles"]) == ["east.example", "west.example"]
    assert resolve("echo.demo.svc.cluster.local.") == ("NOERROR", ["127.70.2.2"]), "west's gateway, not its pod"
    assert trio.run(handshake_to_west_echo, config) == "spiffe://west.example/ns/demo/sa/echo"

    unlinked = fedctl(env, "unlink", "east", "west", "--dir", str(mesh_dir))
    assert unlinked.returncode == 0, unlinked.stderr
    failed = fedctl(env, "curl", "--dir", str(mesh_dir), "-m", "10", "-f", "east/client", "http://echo.demo:8080/",
                    timeout=30)
    assert failed.returncode == 22, failed.stdout + failed.stderr
    assert resolve("echo.demo.svc.cluster.local.")[0] == "NXDOMAIN"
    assert sorted(json.loads(config.read_text())["spec"]["tls"]["bundles"]) == ["east.example"]
    assert trio.run(handshake_to_west_echo, config) == (
        "refused: unknown_trust_domain: no bundle for trust domain 'west.example' of "
        "'spiffe://west.example/ns/demo/sa/echo' (trusted: east.example)")


def test_two_hosts_meshes_federate_by_bundle_exchange_when_a_link_document_is_applied(
        tmp_path: Path, meshes: tuple[list[Path], dict[str, str]]) -> None:
    """Each topology has its own shared root (two hosts); west never sees east's CA folder."""
    east_dir, west_dir = write_mesh(tmp_path / "east", ["east"]), write_mesh(tmp_path / "west", ["west"])
    _, env = meshes
    up(meshes, east_dir)
    up(meshes, west_dir)
    exported = fedctl(env, "link", "export", "--cluster", "west", "--dir", str(west_dir))
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "west.link").write_text(exported.stdout)
    applied = fedctl(env, "link", "apply", str(tmp_path / "west.link"), "--cluster", "east", "--dir", str(east_dir),
                     "--timeout", "30")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "note  trust: independent root: the bundle of west.example (1 root(s)) is federated for this link" \
        in applied.stdout
    assert "ok    trust exchange: 'west' trusts east.example until " in applied.stdout
    answer = json.loads(call_echo(env, east_dir).stdout)
    assert answer["headers"]["x-forwarded-client-cert"].endswith(";URI=spiffe://east.example/ns/demo/sa/client")
    assert [(a.cluster, a.peer, a.trust_domain) for a in read_links(west_dir).accepted] == [
        ("west", "east", "east.example")]

    revoked = fedctl(env, "unlink", "west", "east", "--dir", str(west_dir))  # on west's host: trust withdrawn
    assert revoked.returncode == 0, revoked.stderr
    rows: list[dict] = []
    for _ in range(40):  # bounded: the importer's next probe is refused within its interval
        rows = json.loads(fedctl(env, "link", "list", "--output", "json", "--dir", str(east_dir)).stdout)["links"]
        if rows and rows[0]["state"] != "up" and "trust" in (rows[0].get("lastError") or ""):
            break
        time.sleep(0.25)
    assert rows[0]["state"] != "up" and "not trust east.example" in rows[0]["lastError"] or \
        "trust domain east.example is no longer trusted" in rows[0]["lastError"], rows
