"""PeerAuthentication composition: mesh < namespace < workload < port, UNSET inherits, ties by name."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from gateway._peerauth import PeerAuthConfig
from topology import load_paths, load_text
from topology._security import MtlsMode

STRICT, PERMISSIVE, DISABLE = MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE
SAMPLE = (Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio" / "docs" / "security"
          / "mtls-migration" / "peer-authentication-default-strict.yaml")


def pa(namespace: str, name: str, spec: str) -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n" + textwrap.indent(textwrap.dedent(spec).rstrip("\n") + "\n", "  "))


def compile_(*docs: str, namespace: str = "foo", labels: dict[str, str] | None = None,
             root_namespace: str = "istio-system") -> PeerAuthConfig:
    result = load_text("---\n".join(docs) if docs else "", "pa.yaml")
    assert result.errors == []
    return PeerAuthConfig.compile(result.resources, namespace=namespace, labels=labels or {"app": "httpbin"},
                                  root_namespace=root_namespace)


MESH_STRICT = pa("istio-system", "default", "mtls: {mode: STRICT}")
MESH_UNSET = pa("istio-system", "default", "mtls: {mode: UNSET}")
NS_DISABLE = pa("foo", "default", "mtls: {mode: DISABLE}")
NS_PERMISSIVE = pa("foo", "default", "mtls: {mode: PERMISSIVE}")
NS_UNSET = pa("foo", "default", "{}")
WL_STRICT = pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}")
WL_UNSET_PORTS = pa("foo", "httpbin", """\
    selector: {matchLabels: {app: httpbin}}
    portLevelMtls:
      8080: {mode: DISABLE}
      9090: {mode: UNSET}
    """)
WL_OTHER = pa("foo", "other", "selector: {matchLabels: {app: other}}\nmtls: {mode: DISABLE}")
WL_IN_ROOT = pa("istio-system", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: DISABLE}")
OTHER_NS = pa("bar", "default", "mtls: {mode: DISABLE}")

# (case id, documents, port, mode, why)
CASES = [
    ("no-policy-is-permissive", [], 80, PERMISSIVE,
     "PERMISSIVE: Istio's default, no PeerAuthentication sets a mode for this workload"),
    ("mesh-strict", [MESH_STRICT], 80, STRICT, "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("namespace-overrides-mesh", [MESH_STRICT, NS_DISABLE], 80, DISABLE,
     "DISABLE: PeerAuthentication foo/default (namespace-wide)"),
    ("namespace-unset-inherits-mesh", [MESH_STRICT, NS_UNSET], 80, STRICT,
     "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("mesh-unset-is-default", [MESH_UNSET], 80, PERMISSIVE,
     "PERMISSIVE: Istio's default, no PeerAuthentication sets a mode for this workload"),
    ("workload-overrides-namespace", [NS_DISABLE, WL_STRICT], 80, STRICT,
     "STRICT: PeerAuthentication foo/httpbin (workload selector)"),
    ("workload-unset-inherits-namespace", [NS_PERMISSIVE, WL_UNSET_PORTS], 80, PERMISSIVE,
     "PERMISSIVE: PeerAuthentication foo/default (namespace-wide)"),
    ("port-level-overrides-workload", [MESH_STRICT, WL_UNSET_PORTS], 8080, DISABLE,
     "DISABLE: PeerAuthentication foo/httpbin portLevelMtls[8080]"),
    ("port-level-unset-inherits-workload-result", [MESH_STRICT, WL_UNSET_PORTS], 9090, STRICT,
     "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("other-ports-keep-workload-result", [MESH_STRICT, WL_UNSET_PORTS], 80, STRICT,
     "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("selector-for-other-labels-ignored", [MESH_STRICT, WL_OTHER], 80, STRICT,
     "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("selector-in-root-namespace-ignored", [MESH_STRICT, WL_IN_ROOT], 80, STRICT,
     "STRICT: PeerAuthentication istio-system/default (mesh-wide)"),
    ("other-namespace-ignored", [OTHER_NS], 80, PERMISSIVE,
     "PERMISSIVE: Istio's default, no PeerAuthentication sets a mode for this workload"),
    ("namespace-tie-lowest-name-wins", [pa("foo", "zz", "mtls: {mode: DISABLE}"), pa("foo", "aa", "mtls: {mode: STRICT}")],
     80, STRICT, "STRICT: PeerAuthentication foo/aa (namespace-wide)"),
    ("mesh-tie-lowest-name-wins", [pa("istio-system", "b", "mtls: {mode: DISABLE}"),
                                   pa("istio-system", "a", "mtls: {mode: UNSET}")], 80, PERMISSIVE,
     "PERMISSIVE: Istio's default, no PeerAuthentication sets a mode for this workload"),
    ("workload-tie-lowest-name-wins", [pa("foo", "w2", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: DISABLE}"),
                                       pa("foo", "w1", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}")],
     80, STRICT, "STRICT: PeerAuthentication foo/w1 (workload selector)"),
    ("empty-selector-is-namespace-wide", [pa("foo", "all", "selector: {}\nmtls: {mode: STRICT}"), WL_UNSET_PORTS],
     80, STRICT, "STRICT: PeerAuthentication foo/all (namespace-wide)"),
]


@pytest.mark.parametrize(("docs", "port", "mode", "why"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_effective_mode_and_the_policy_that_decided(docs: list[str], port: int, mode: MtlsMode, why: str) -> None:
    decision = compile_(*docs).mode_for(port)
    assert (decision.mode, decision.why) == (mode, why)


def test_decision_names_the_deciding_policy_or_none_for_the_default() -> None:
    assert compile_(MESH_STRICT, WL_UNSET_PORTS).mode_for(8080).policy == "foo/httpbin"
    assert compile_(MESH_STRICT, WL_UNSET_PORTS).mode_for(80).policy == "istio-system/default"
    assert compile_().mode_for(80).policy is None


def test_root_namespace_is_configurable() -> None:
    config = compile_(pa("mesh-root", "default", "mtls: {mode: STRICT}"), MESH_UNSET, root_namespace="mesh-root")
    assert config.mode_for(80).why == "STRICT: PeerAuthentication mesh-root/default (mesh-wide)"


def test_workload_in_the_root_namespace_reads_the_mesh_policy_as_its_own() -> None:
    config = compile_(MESH_STRICT, WL_IN_ROOT, namespace="istio-system")
    assert config.mode_for(80).why == "STRICT: PeerAuthentication istio-system/default (mesh-wide)"


def test_other_kinds_among_resources_are_skipped() -> None:
    authz = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\n"
             "spec: {}\n")
    assert compile_(authz, MESH_STRICT).mode_for(80).mode is STRICT


@pytest.mark.parametrize(("mode", "plaintext", "mtls"), [(STRICT, False, True), (PERMISSIVE, True, True),
                                                         (DISABLE, True, False)])
def test_what_each_mode_accepts(mode: MtlsMode, plaintext: bool, mtls: bool) -> None:
    decision = compile_(pa("foo", "default", f"mtls: {{mode: {mode.value}}}")).mode_for(80)
    assert (decision.accepts_plaintext, decision.accepts_mtls) == (plaintext, mtls)


def test_repr_shows_default_and_port_overrides() -> None:
    assert repr(compile_(MESH_STRICT, WL_UNSET_PORTS)) == "<PeerAuthConfig foo STRICT [8080=DISABLE, 9090=STRICT]>"
    assert repr(compile_()) == "<PeerAuthConfig foo PERMISSIVE>"


# -- tasks/security/authentication/mtls-migration, as EXPECTED.md "Security" lists it --------
CLIENTS = {"foo": True, "bar": True, "legacy": False}  # namespace of curl -> has a sidecar (mTLS)


def reachable(applied_in: str | None) -> dict[tuple[str, str], bool]:
    """curl in each client namespace -> httpbin.{foo,bar}: does the server side accept it?"""
    resources = []
    if applied_in is not None:
        (sample,) = load_paths([SAMPLE]).resources
        resources = [dataclasses.replace(sample, metadata=dataclasses.replace(sample.metadata, namespace=applied_in))]
    out = {}
    for server in ("foo", "bar"):
        decision = PeerAuthConfig.compile(resources, namespace=server, labels={"app": "httpbin"}).mode_for(80)
        for client, mtls in CLIENTS.items():
            out[(client, server)] = decision.accepts_mtls if mtls else decision.accepts_plaintext
    return out


def test_mtls_migration_without_policy_all_six_pairs_succeed() -> None:
    assert all(reachable(None).values())


def test_mtls_migration_strict_in_foo_refuses_only_legacy_to_foo() -> None:
    refused = [pair for pair, ok in reachable("foo").items() if not ok]
    assert refused == [("legacy", "foo")]


def test_mtls_migration_strict_in_istio_system_refuses_legacy_to_both() -> None:
    refused = sorted(pair for pair, ok in reachable("istio-system").items() if not ok)
    assert refused == [("legacy", "bar"), ("legacy", "foo")]
