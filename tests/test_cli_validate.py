"""``fedctl validate`` called as users call it, through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.cli import main

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "istio"

WEIGHTS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 70
    - destination: {host: reviews, subset: v2}
      weight: 50
"""

TYPO = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
    retries:
      atempts: 3
    timeout: 5x
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_file_of_the_istio_corpus_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CORPUS)]) == 0
    out = capsys.readouterr().out
    assert "skipped IstioOperator eastwest" in out


def test_the_example_mesh_validates() -> None:
    assert main(["validate", str(ROOT / "examples" / "multi-cluster")]) == 0


def test_weights_summing_to_120_are_an_error_at_the_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "weights.yaml", WEIGHTS)

    assert main(["validate", path]) == 1

    out = capsys.readouterr().out
    assert f"{path}:8: spec.http[0].route: " in out
    assert "120" in out


def test_unknown_field_and_bad_duration_are_named_with_their_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "typo.yaml", TYPO)

    assert main(["validate", path]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert f"{path}:11: spec.http[0].retries.atempts: unknown field 'atempts' (did you mean 'attempts'?)" in lines
    assert any(l.startswith(f"{path}:12: spec.http[0].timeout: invalid duration '5x'") for l in lines)


def test_json_output_carries_the_same_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "typo.yaml", TYPO)

    assert main(["validate", "--output", "json", path]) == 1

    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False
    assert {(e["line"], e["path"]) for e in doc["errors"]} >= {
        (11, "spec.http[0].retries.atempts"), (12, "spec.http[0].timeout")}
    assert all(e["kind"] == "VirtualService" and e["name"] == "ratings" for e in doc["errors"])


def test_malformed_yaml_is_an_error_with_file_and_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "broken.yaml",
                  "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x\nspec: [\n")

    assert main(["validate", path]) == 1

    out = capsys.readouterr().out
    assert out.startswith(f"{path}:4: invalid YAML: ")


def test_a_missing_path_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")

    assert main(["validate", missing]) == 1

    assert f"{missing}: no such file or directory" in capsys.readouterr().out


def test_unused_kinds_are_skipped_not_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n")

    assert main(["validate", path]) == 0

    assert f"{path}:1: skipped ConfigMap settings (v1): not a kind meshfed uses" in capsys.readouterr().out


def test_an_unserved_api_version_of_a_known_kind_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "v2.yaml", WEIGHTS.replace("networking.istio.io/v1", "networking.istio.io/v2"))

    assert main(["validate", path]) == 1

    assert f"{path}:1: apiVersion: VirtualService is not served at 'networking.istio.io/v2'" in capsys.readouterr().out


def test_strict_turns_warnings_into_failure(tmp_path: Path) -> None:
    # A route to a subset that no DestinationRule defines is a warning, not an error.
    path = _write(tmp_path, "subset.yaml", WEIGHTS.replace("weight: 50", "weight: 30"))

    assert main(["validate", path]) == 0
    assert main(["validate", "--strict", path]) == 1
