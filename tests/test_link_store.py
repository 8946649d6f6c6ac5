"""The link file, link documents and their credentials, and the checks of ``fedctl link apply``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from federation._link_apply import LocalCluster, check_link, read_document
from federation._link_health import ProbePolicy
from federation._link_store import (
    AppliedLink, LinkDocument, LinkError, LinkSet, check_credential, credential_expiry, mint_credential, read_links,
    write_links,
)
from trustdomain._files import cert_pem
from trustdomain.testing import MeshPki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SECRET = b"s" * 32
PKI = MeshPki.shared_root("east-a.example", "west.example", now=NOW)
OTHER = MeshPki.independent_roots("far.example", now=NOW)
ROOT = cert_pem(PKI.ca("west.example").root).decode()


def doc(**changes: str) -> LinkDocument:
    fields = dict(cluster="west", network="net-west", locality="us-west/a", trust_domain="west.example",
                  federation="127.9.3.1:15012", gateway="127.9.3.2:15443", trust_bundle=ROOT,
                  credential=mint_credential(SECRET, "west", NOW))
    fields.update(changes)
    return LinkDocument(**fields)


def test_links_are_both_directions_and_unlink_removes_applied_documents_too(tmp_path: Path) -> None:
    links = LinkSet().with_link("east-a", "west", ProbePolicy(), "t0")
    links = links.with_applied(AppliedLink("east-b", doc()))
    write_links(tmp_path, links)
    back = read_links(tmp_path)
    assert back == links
    assert (back.peers_of("east-a"), back.peers_of("west"), back.peers_of("east-b")) == (["west"], ["east-a"], ["west"])
    assert back.without_link("west", "east-b").applied == ()
    assert back.without_link("west", "east-a").links == ()


def test_relinking_replaces_the_settings_and_reapplying_replaces_the_document() -> None:
    links = LinkSet().with_link("a", "b", ProbePolicy(), "t0").with_link("b", "a", ProbePolicy(ttl=60), "t1")
    assert [(l.clusters, l.probe.ttl) for l in links.links] == [(("b", "a"), 60)]
    twice = LinkSet().with_applied(AppliedLink("a", doc())).with_applied(AppliedLink("a", doc(gateway="127.9.9.2:15443")))
    assert [x.peer.gateway for x in twice.applied] == ["127.9.9.2:15443"]


def test_a_missing_link_file_is_no_links_and_a_damaged_one_is_an_error(tmp_path: Path) -> None:
    assert read_links(tmp_path) == LinkSet()
    (tmp_path / ".meshfed").mkdir()
    (tmp_path / ".meshfed" / "links.json").write_text("{not json")
    with pytest.raises(LinkError, match="damaged link file"):
        read_links(tmp_path)


@pytest.mark.parametrize("cluster, credential, now, expected", [
    ("west", mint_credential(SECRET, "west", NOW), NOW, None),
    ("east-a", mint_credential(SECRET, "west", NOW), NOW, "the credential is for cluster 'west', not 'east-a'"),
    ("west", mint_credential(b"x" * 32, "west", NOW), NOW, "the credential was not issued by this cluster"),
    ("west", "v1.west.123", NOW, "the credential is malformed"),
    ("west", mint_credential(SECRET, "west", NOW, dt.timedelta(days=1)), NOW + dt.timedelta(days=2),
     "the credential expired at 2026-01-02T00:00:00+00:00"),
])
def test_credentials_are_checked_by_the_cluster_that_minted_them(cluster: str, credential: str, now: dt.datetime,
                                                                  expected: str | None) -> None:
    assert check_credential(SECRET, cluster, credential, now) == expected


def test_a_link_document_round_trips_and_a_bad_one_names_what_is_wrong(tmp_path: Path) -> None:
    d = doc()
    assert LinkDocument.from_json(d.to_json()) == d
    assert credential_expiry(d.credential) == NOW + dt.timedelta(days=30)
    bad = d.to_json()
    bad["spec"]["gateway"] = "nowhere"
    path = tmp_path / "west.link"
    path.write_text(str(bad).replace("'", '"'))
    with pytest.raises(LinkError) as caught:
        read_document(path)
    assert str(caught.value) == f"{path}: spec.gateway: must be host:port; found 'nowhere'"
    with pytest.raises(LinkError, match="not a link document"):
        LinkDocument.from_json({"kind": "Mesh"})


LOCAL = [LocalCluster("east-a", "east-a.example", "net-east-a"), LocalCluster("west", "west.example", "net-west")]


def findings(d: LinkDocument, importer: str = "east-a", reachable: str | None = None) -> dict[str, tuple[str, str]]:
    me = next(c for c in LOCAL if c.name == importer)
    out = check_link(d, me, LOCAL, ROOT, NOW, lambda hostport: reachable)
    return {f.check: (f.level, f.message) for f in out}


def test_a_good_document_passes_every_check() -> None:
    got = findings(doc())
    assert {k: v[0] for k, v in got.items()} == {"names": "ok", "trust": "ok", "trust domains": "ok",
                                                  "networks": "ok", "gateway": "ok", "federation API": "ok",
                                                  "credential": "ok"}
    assert got["trust"][1] == "same root CA: west.example chains to this mesh's root"


@pytest.mark.parametrize("changes, check, level, message", [
    ({"cluster": "east-a", "trust_domain": "east-a.example", "network": "net-east-a"}, "names", "fail",
     "the document describes 'east-a' itself; a cluster cannot link to itself"),
    ({"trust_domain": "other.example"}, "names", "fail",
     "name conflict: this mesh has a cluster 'west' with trust domain 'west.example' and network 'net-west'; the "
     "document's has 'other.example' and 'net-west'"),
    ({"cluster": "far", "trust_domain": "east-a.example", "network": "net-far"}, "trust domains", "fail",
     "'far' uses 'east-a.example', the trust domain of 'east-a': identities would be ambiguous"),
    ({"cluster": "far", "trust_domain": "far.example", "network": "net-west"}, "networks", "fail",
     "network 'net-west' belongs to local cluster 'west': traffic for it would take the wrong gateway"),
    ({"cluster": "far", "trust_domain": "far.example", "network": "net-east-a"}, "networks", "note",
     "'far' is on 'east-a''s network 'net-east-a': its endpoints are dialled directly, not through its gateway"),
    ({"trust_bundle": ""}, "trust", "fail", "the document carries no trust bundle (spec.trustBundle: PEM roots)"),
    ({"trust_bundle": cert_pem(OTHER.ca("far.example").root).decode()}, "trust", "note",
     "independent root: the bundle of west.example (1 root(s)) is federated for this link"),
    ({"credential": ""}, "credential", "fail", "the document carries no credential (spec.credential)"),
    ({"credential": mint_credential(SECRET, "west", NOW - dt.timedelta(days=31))}, "credential", "fail",
     "expired at 2025-12-31T00:00:00+00:00; export a new document"),
])
def test_each_check_reports_what_it_found(changes: dict, check: str, level: str, message: str) -> None:
    assert findings(doc(**changes))[check] == (level, message)


def test_an_unreachable_gateway_fails_and_an_unreachable_federation_api_is_only_a_note() -> None:
    got = findings(doc(), reachable="[Errno 111] Connection refused")
    assert got["gateway"] == ("fail", "127.9.3.2:15443 unreachable: [Errno 111] Connection refused")
    assert got["federation API"][0] == "note"
