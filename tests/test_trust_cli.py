"""``fedctl ca`` and ``fedctl certs``, called through ``main(argv)`` as a user would run them."""

import json
import stat
import subprocess
from pathlib import Path

import pytest

from federation.cli import main
from trustdomain import Bundle, TrustDomain
from trustdomain._files import read_certificates


@pytest.fixture
def cadir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(d)]) == 0
    assert main(["ca", "intermediate", "--dir", str(d), "--cluster", "east", "--trust-domain", "east.example"]) == 0
    return d


def test_init_intermediate_issue_write_the_documented_files(cadir: Path, tmp_path: Path) -> None:
    out = tmp_path / "svid"
    assert main(["certs", "issue", "--dir", str(cadir), "--cluster", "east", "--namespace", "bookinfo",
                 "--service-account", "reviews", "--out", str(out), "--dns", "reviews.bookinfo.svc"]) == 0
    assert sorted(p.name for p in cadir.iterdir()) == ["east", "root-cert.pem", "root-key.pem"]
    assert sorted(p.name for p in out.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
    for key in (cadir / "root-key.pem", cadir / "east" / "ca-key.pem", out / "key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    result = subprocess.run(["openssl", "verify", "-CAfile", str(cadir / "root-cert.pem"), "-untrusted",
                             str(out / "chain.pem"), str(out / "cert.pem")], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 0, result.stderr


def test_init_refuses_to_overwrite_a_root(cadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["ca", "init", "--dir", str(cadir)]) == 1
    assert capsys.readouterr().err == (f"fedctl: error: {cadir}/root-cert.pem: a root CA exists already "
                                       "(use --force to replace it)\n")


def test_rsa_root_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path), "--key-type", "rsa-3072"]) == 0
    assert "(RSA 3072, valid until " in capsys.readouterr().out


def test_bad_trust_domain_is_a_usage_error_quoting_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "intermediate", "--dir", str(tmp_path), "--cluster", "e", "--trust-domain", "East"]) == 2
    assert ("argument --trust-domain: invalid SPIFFE ID or trust domain 'East': trust domain characters are "
            "limited to lowercase letters") in capsys.readouterr().err


def test_issue_for_an_unknown_cluster_names_the_known_ones(cadir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "issue", "--dir", str(cadir), "--cluster", "west", "--namespace", "a",
                 "--service-account", "b", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == (f"fedctl: error: {cadir}: no CA for cluster 'west' (known: east): run "
                                       "'fedctl ca intermediate --cluster west --trust-domain TD'\n")


def test_issue_with_a_short_lifetime(cadir: Path, tmp_path: Path) -> None:
    out = tmp_path / "svid"
    assert main(["certs", "issue", "--dir", str(cadir), "--cluster", "east", "--namespace", "a",
                 "--service-account", "b", "--out", str(out), "--lifetime", "5m"]) == 0
    cert = read_certificates(out / "cert.pem")[0]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 5 * 60 + 30


def test_inspect_shows_identity_chain_expiry_and_issuer_but_no_key(cadir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "svid"
    main(["certs", "issue", "--dir", str(cadir), "--cluster", "east", "--namespace", "bookinfo",
          "--service-account", "reviews", "--out", str(out)])
    capsys.readouterr()
    assert main(["certs", "inspect", str(out / "cert.pem")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"{out / 'cert.pem'}:"
    assert lines[1] == "  identity:  spiffe://east.example/ns/bookinfo/sa/reviews"
    assert lines[2].startswith("  kind:      workload certificate, ECDSA secp256r1, serial ")
    assert lines[3].startswith("  valid:     ") and "(expires in 23:59:" in lines[3]
    assert lines[4] == "  issuer:    CN=meshfed intermediate CA,L=east,O=meshfed"
    assert lines[5] == "  chain:"
    assert lines[6].startswith("    [0] spiffe://east.example/ns/bookinfo/sa/reviews (signed by CN=meshfed "
                               "intermediate CA,L=east,O=meshfed; until ")
    assert lines[7].startswith("    [1] CN=meshfed intermediate CA,L=east,O=meshfed (signed by CN=meshfed root "
                               "CA,O=meshfed; until ") and lines[7].endswith(", permits spiffe://east.example)")
    assert lines[8] == "    (the root, CN=meshfed root CA,O=meshfed, is not in the file)"
    assert "PRIVATE KEY" not in text


def test_inspect_refuses_a_key_file_without_printing_it(cadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "inspect", str(cadir / "root-key.pem")]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"fedctl: error: {cadir}/root-key.pem: no PEM certificate found\n"
    assert "PRIVATE" not in captured.out + captured.err


def test_inspect_json_lists_the_chain(cadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["certs", "inspect", "-o", "json", str(cadir / "east" / "cert-chain.pem")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["ca"] for c in doc["chain"]] == [True, True]
    assert doc["chain"][0]["nameConstraint"] == "east.example"


@pytest.mark.parametrize("fmt", ["spiffe", "pem"])
def test_bundle_prints_the_trust_domain_roots(cadir: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    capsys.readouterr()
    assert main(["ca", "bundle", "--dir", str(cadir), "--trust-domain", "east.example", "--format", fmt]) == 0
    text = capsys.readouterr().out
    td = TrustDomain("east.example")
    bundle = Bundle.from_json(td, text) if fmt == "spiffe" else Bundle.from_pem(td, text.encode())
    assert list(bundle.x509_authorities) == read_certificates(cadir / "root-cert.pem")
    if fmt == "spiffe":
        assert (bundle.sequence, bundle.refresh_hint.total_seconds()) == (1, 300)  # type: ignore[union-attr]


def test_bundle_of_an_unknown_trust_domain_is_an_error(cadir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "bundle", "--dir", str(cadir), "--trust-domain", "west.example"]) == 1
    assert capsys.readouterr().err == f"fedctl: error: {cadir}: no cluster CA signs trust domain 'west.example'\n"


def test_import_plugs_a_cacerts_folder_in_as_a_cluster(cadir: Path, tmp_path: Path) -> None:
    assert main(["ca", "import", "--dir", str(tmp_path / "other"), "--cluster", "c1", "--from",
                 str(cadir / "east")]) == 0
    assert (tmp_path / "other" / "c1" / "trust-domain").read_text() == "east.example\n"
    assert main(["certs", "issue", "--dir", str(tmp_path / "other"), "--cluster", "c1", "--namespace", "a",
                 "--service-account", "b", "--out", str(tmp_path / "o")]) == 0
