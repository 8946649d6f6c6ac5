"""``fedctl ca ...`` and ``fedctl certs ...``: the shared root, cluster CAs and workload SVIDs.

Every command takes ``--dir`` (the CA folder, default ``.meshfed/ca``). Private keys are
written 0600 and never printed: ``certs inspect`` reads certificates only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from topology import Duration
from topology._duration import DurationSyntaxError
from trustdomain import (
    DEFAULT_CA_DIR, DEFAULT_SVID_LIFETIME, Bundle, CaDirectory, KeyType, SpiffeId, TrustDomain,
    TrustDomainError, create_intermediate, create_root, issue_svid, load_cacerts, write_svid,
)
from trustdomain._ca import describe_key, is_ca_certificate, permitted_trust_domain
from trustdomain._files import read_certificates
from trustdomain._svid import dns_sans, uri_sans

from ._errors import FederationError

KEY_TYPES = [k.value for k in KeyType]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _duration(text: str) -> dt.timedelta:
    try:
        return dt.timedelta(microseconds=Duration.parse(text).nanos // 1000)
    except DurationSyntaxError as exc:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {exc}") from None


def _trust_domain(text: str) -> TrustDomain:
    try:
        return TrustDomain.parse(text)
    except TrustDomainError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_CA_DIR, metavar="DIR",
                   help=f"the CA folder (default {DEFAULT_CA_DIR})")


def register(sub: Any) -> None:
    ca = sub.add_parser("ca", help="the shared root and per-cluster intermediate CAs",
                        description="Create and manage the mesh's CA hierarchy in Istio's plug-in CA layout.")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    p = ca_sub.add_parser("init", help="create the shared root CA: DIR/root-cert.pem, DIR/root-key.pem")
    _dir_arg(p)
    p.add_argument("--key-type", choices=KEY_TYPES, default=KeyType.ECDSA_P256.value)
    p.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    p.add_argument("--force", action="store_true", help="replace an existing root")
    p.set_defaults(func=run_init)

    p = ca_sub.add_parser("intermediate", help="sign a cluster CA into DIR/CLUSTER/ (Istio cacerts layout)")
    _dir_arg(p)
    p.add_argument("--cluster", required=True)
    p.add_argument("--trust-domain", required=True, type=_trust_domain, metavar="TD")
    p.add_argument("--key-type", choices=KEY_TYPES, default=KeyType.ECDSA_P256.value)
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.set_defaults(func=run_intermediate)

    p = ca_sub.add_parser("import", help="plug in an existing CA from an Istio cacerts folder")
    _dir_arg(p)
    p.add_argument("--cluster", required=True)
    p.add_argument("--from", dest="source", required=True, metavar="FOLDER",
                   help="folder holding ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem")
    p.add_argument("--trust-domain", type=_trust_domain, metavar="TD",
                   help="the domain this CA signs (default: its URI name constraint)")
    p.set_defaults(func=run_import)

    p = ca_sub.add_parser("bundle", help="print the trust bundle of a trust domain")
    _dir_arg(p)
    p.add_argument("--trust-domain", required=True, type=_trust_domain, metavar="TD")
    p.add_argument("--format", choices=("spiffe", "pem"), default="spiffe")
    p.add_argument("--sequence", type=int, default=1, help="spiffe_sequence (default 1)")
    p.add_argument("--refresh-hint", type=_duration, default=dt.timedelta(minutes=5), metavar="DURATION",
                   help="spiffe_refresh_hint (default 5m)")
    p.set_defaults(func=run_bundle)

    certs = sub.add_parser("certs", help="workload certificates (X.509 SVIDs)")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    p = certs_sub.add_parser("issue", help="issue an SVID: OUT/cert.pem, OUT/key.pem, OUT/chain.pem")
    _dir_arg(p)
    p.add_argument("--cluster", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--service-account", required=True)
    p.add_argument("--out", required=True, metavar="OUT")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="a DNS SAN (repeatable)")
    p.add_argument("--lifetime", type=_duration, default=DEFAULT_SVID_LIFETIME, metavar="DURATION",
                   help="e.g. 24h (default), 30m")
    p.add_argument("--key-type", choices=KEY_TYPES, default=KeyType.ECDSA_P256.value)
    p.set_defaults(func=run_issue)

    p = certs_sub.add_parser("inspect", help="identity, chain, expiry and issuer of a certificate file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.set_defaults(func=run_inspect)


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except TrustDomainError as exc:
            raise FederationError(str(exc)) from None
    run.__name__ = fn.__name__
    return run


@_guard
def run_init(args: argparse.Namespace) -> int:
    cadir = CaDirectory(args.dir)
    if cadir.has_root() and not args.force:
        raise FederationError(f"{cadir.root_cert_path}: a root CA exists already (use --force to replace it)")
    root = create_root(_now(), key_type=KeyType(args.key_type), validity=dt.timedelta(days=args.days))
    cadir.save_root(root)
    print(f"wrote {cadir.root_cert_path} and {cadir.root_key_path} "
          f"({describe_key(root.key)}, valid until {root.not_after:%Y-%m-%d})")
    return 0


@_guard
def run_intermediate(args: argparse.Namespace) -> int:
    cadir = CaDirectory(args.dir)
    root = cadir.load_root()
    ca = create_intermediate(root, args.trust_domain, args.cluster, _now(),
                             key_type=KeyType(args.key_type), validity=dt.timedelta(days=args.days))
    folder = cadir.save_cluster(args.cluster, ca)
    print(f"wrote {folder}/ (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem): CA of cluster "
          f"{args.cluster!r} for trust domain {args.trust_domain.name!r}, valid until {ca.not_after:%Y-%m-%d}")
    return 0


@_guard
def run_import(args: argparse.Namespace) -> int:
    cadir = CaDirectory(args.dir)
    ca = load_cacerts(Path(args.source), args.trust_domain)
    folder = cadir.save_cluster(args.cluster, ca)
    print(f"imported {args.source} as the CA of cluster {args.cluster!r} "
          f"(trust domain {ca.trust_domain}) into {folder}/")
    return 0


@_guard
def run_bundle(args: argparse.Namespace) -> int:
    cadir = CaDirectory(args.dir)
    roots = cadir.roots_of(args.trust_domain)
    if not roots:
        raise FederationError(f"{cadir.path}: no cluster CA signs trust domain {args.trust_domain.name!r}")
    bundle = Bundle(args.trust_domain, tuple(roots), sequence=args.sequence,
                    refresh_hint=args.refresh_hint)
    sys.stdout.write(bundle.to_json() + "\n" if args.format == "spiffe" else bundle.to_pem().decode())
    return 0


@_guard
def run_issue(args: argparse.Namespace) -> int:
    cadir = CaDirectory(args.dir)
    ca = cadir.load_cluster(args.cluster)
    assert ca.trust_domain is not None
    spiffe_id = SpiffeId.workload(ca.trust_domain, args.namespace, args.service_account)
    svid = issue_svid(ca, spiffe_id, _now(), lifetime=args.lifetime, dns_names=args.dns,
                      key_type=KeyType(args.key_type))
    out = Path(args.out)
    write_svid(out, svid)
    print(f"wrote {out}/cert.pem, {out}/key.pem, {out}/chain.pem: {spiffe_id}, "
          f"valid until {svid.not_after:%Y-%m-%dT%H:%M:%SZ}")
    return 0


def _describe(cert: x509.Certificate, now: dt.datetime) -> dict[str, Any]:
    left = cert.not_valid_after_utc - now
    if left.total_seconds() < 0:
        state = f"expired {-left} ago"
    elif cert.not_valid_before_utc > now:
        state = "not yet valid"
    else:
        state = f"expires in {dt.timedelta(seconds=int(left.total_seconds()))}"
    td = permitted_trust_domain(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "identity": uri_sans(cert),
        "dns": dns_sans(cert),
        "ca": is_ca_certificate(cert),
        "nameConstraint": td.name if td else None,
        "serial": f"{cert.serial_number:x}",
        "key": describe_key(cert.public_key()),
        "notBefore": f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
        "notAfter": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        "state": state,
    }


@_guard
def run_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    certs = read_certificates(path)
    sibling = path.with_name("chain.pem")
    if len(certs) == 1 and path.name != "chain.pem" and sibling.is_file() and sibling.stat().st_size:
        certs += read_certificates(sibling)
    now = _now()
    info = [_describe(c, now) for c in certs]
    if args.output == "json":
        json.dump({"file": str(path), "chain": info}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    leaf = info[0]
    print(f"{path}:")
    print(f"  identity:  {', '.join(leaf['identity']) or '(no URI SAN)'}")
    if leaf["dns"]:
        print(f"  dns:       {', '.join(leaf['dns'])}")
    print(f"  kind:      {'CA certificate' if leaf['ca'] else 'workload certificate'}, {leaf['key']}, "
          f"serial {leaf['serial']}")
    print(f"  valid:     {leaf['notBefore']} to {leaf['notAfter']} ({leaf['state']})")
    print(f"  issuer:    {leaf['issuer']}")
    print("  chain:")
    for i, c in enumerate(info):
        what = ", ".join(c["identity"]) or c["subject"] or "(empty subject)"
        extra = f", permits spiffe://{c['nameConstraint']}" if c["nameConstraint"] else ""
        print(f"    [{i}] {what} (signed by {c['issuer']}; until {c['notAfter']}{extra})")
    if info[-1]["ca"] and info[-1]["subject"] == info[-1]["issuer"]:
        print("    (ends in a self-signed root)")
    else:
        print(f"    (the root, {info[-1]['issuer']}, is not in the file)")
    return 0
