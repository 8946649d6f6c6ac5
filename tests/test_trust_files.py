"""The CA folder on disk: Istio's cacerts layout, 0600 keys, plug-in CA import."""

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest

from trustdomain import (
    CaDirectory, CaError, SpiffeId, TrustDomain, create_intermediate, create_root, issue_svid, load_cacerts,
    write_svid,
)
from trustdomain._files import cert_pem, read_certificates

NOW = dt.datetime.now(dt.timezone.utc)
EAST = TrustDomain("east.example")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_root_and_cluster_ca_round_trip_with_private_keys_0600(tmp_path: Path) -> None:
    cadir = CaDirectory(tmp_path / "ca")
    root = create_root(NOW)
    cadir.save_root(root)
    east = create_intermediate(cadir.load_root(), EAST, "east", NOW)
    folder = cadir.save_cluster("east", east)
    assert sorted(p.name for p in folder.iterdir()) == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem",
                                                        "root-cert.pem", "trust-domain"]
    assert mode(cadir.root_key_path) == 0o600 and mode(folder / "ca-key.pem") == 0o600
    assert mode(folder / "ca-cert.pem") == 0o644
    assert read_certificates(folder / "cert-chain.pem") == [east.certificate, root.certificate]
    loaded = cadir.load_cluster("east")
    assert (loaded.certificate, loaded.chain, loaded.trust_domain) == (east.certificate, east.chain, EAST)
    assert cadir.clusters() == ["east"] and cadir.roots_of(EAST) == [root.certificate]
    assert cadir.roots_of(TrustDomain("west.example")) == []


def test_key_files_are_0600_even_when_they_existed_wider(tmp_path: Path) -> None:
    cadir = CaDirectory(tmp_path)
    cadir.root_key_path.write_text("old")
    cadir.root_key_path.chmod(0o644)
    cadir.save_root(create_root(NOW))
    assert mode(cadir.root_key_path) == 0o600


def test_write_svid_writes_leaf_key_and_chain_without_root(tmp_path: Path) -> None:
    root = create_root(NOW)
    east = create_intermediate(root, EAST, "east", NOW)
    svid = issue_svid(east, SpiffeId.workload(EAST, "a", "b"), NOW)
    write_svid(tmp_path / "out", svid)
    assert read_certificates(tmp_path / "out" / "cert.pem") == [svid.certificate]
    assert read_certificates(tmp_path / "out" / "chain.pem") == [east.certificate]
    assert mode(tmp_path / "out" / "key.pem") == 0o600


def test_missing_cluster_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(CaError) as info:
        CaDirectory(tmp_path).load_cluster("east")
    assert str(info.value) == (f"{tmp_path}: no CA for cluster 'east' (known: none): run "
                               "'fedctl ca intermediate --cluster east --trust-domain TD'")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def istio_cacerts(tmp_path: Path) -> Path:
    """A plug-in CA made the way Istio's tools/certs Makefile makes one, with the openssl binary."""
    d = tmp_path / "istio"
    d.mkdir()
    (d / "root.conf").write_text("[req]\ndistinguished_name=dn\nprompt=no\nx509_extensions=ext\n"
                                 "[dn]\nO=Istio\nCN=Root CA\n[ext]\nbasicConstraints=critical,CA:true\n"
                                 "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n")
    (d / "int.conf").write_text("[ext]\nbasicConstraints=critical,CA:true,pathlen:0\n"
                                "keyUsage=critical,keyCertSign,cRLSign\n"
                                "nameConstraints=critical,permitted;URI:cluster1.example\n"
                                "subjectKeyIdentifier=hash\n")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
            "-config", "root.conf", "-keyout", "root-key.pem", "-out", "root-cert.pem", cwd=d)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/O=Istio/CN=Intermediate CA/L=cluster1", "-keyout", "ca-key.pem", "-out", "ca.csr", cwd=d)
    openssl("x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
            "-days", "10", "-extfile", "int.conf", "-extensions", "ext", "-out", "ca-cert.pem", cwd=d)
    (d / "cert-chain.pem").write_bytes((d / "ca-cert.pem").read_bytes() + (d / "root-cert.pem").read_bytes())
    return d


def test_plug_in_ca_from_istio_cacerts_signs_verifiable_svids(istio_cacerts: Path, tmp_path: Path) -> None:
    ca = load_cacerts(istio_cacerts)
    assert ca.trust_domain == TrustDomain("cluster1.example")  # from the URI name constraint
    svid = issue_svid(ca, SpiffeId.workload(ca.trust_domain, "ns1", "sa1"), NOW)
    (tmp_path / "leaf.pem").write_bytes(cert_pem(svid.certificate))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(istio_cacerts / "root-cert.pem"), "-untrusted",
                          str(istio_cacerts / "ca-cert.pem"), str(tmp_path / "leaf.pem")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr


def test_plug_in_ca_import_checks_the_trust_domain_against_the_constraint(istio_cacerts: Path) -> None:
    with pytest.raises(CaError) as info:
        load_cacerts(istio_cacerts, TrustDomain("other.example"))
    assert str(info.value) == (f"{istio_cacerts}: ca-cert.pem is name-constrained to 'cluster1.example', "
                               "not 'other.example'")


def test_plug_in_ca_with_a_foreign_key_is_refused(istio_cacerts: Path) -> None:
    (istio_cacerts / "ca-key.pem").write_bytes((istio_cacerts / "root-key.pem").read_bytes())
    with pytest.raises(CaError) as info:
        load_cacerts(istio_cacerts)
    assert str(info.value) == f"{istio_cacerts}: the private key does not belong to the CA certificate"


def test_plug_in_ca_chain_may_stop_below_the_root(istio_cacerts: Path) -> None:
    (istio_cacerts / "cert-chain.pem").write_bytes((istio_cacerts / "ca-cert.pem").read_bytes())
    ca = load_cacerts(istio_cacerts)
    assert ca.root == read_certificates(istio_cacerts / "root-cert.pem")[0]


@pytest.mark.parametrize("remove, message", [
    ("ca-key.pem", "not an Istio cacerts folder: missing ca-key.pem"),
    ("cert-chain.pem", "not an Istio cacerts folder: missing cert-chain.pem"),
])
def test_incomplete_cacerts_folder_names_what_is_missing(istio_cacerts: Path, remove: str, message: str) -> None:
    (istio_cacerts / remove).unlink()
    with pytest.raises(CaError) as info:
        load_cacerts(istio_cacerts)
    assert str(info.value) == f"{istio_cacerts}: {message}"


def test_unreadable_key_error_never_quotes_the_file(tmp_path: Path, istio_cacerts: Path) -> None:
    (istio_cacerts / "ca-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nsecretbytes\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CaError) as info:
        load_cacerts(istio_cacerts)
    assert str(info.value) == f"{istio_cacerts / 'ca-key.pem'}: not an unencrypted PEM private key"
