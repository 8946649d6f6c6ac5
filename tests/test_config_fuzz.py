"""Property tests: mutated valid resources yield a typed object or a located error.

Every mutation of a real Istio/Kubernetes document must end in exactly one of: the
resource loads (typed, no error), it is skipped as a kind meshfed does not use, or at
least one error names the file, a line and a field path. Never another exception, never
a hang (hypothesis' deadline bounds each example).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topology import load_text

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "istio"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multi-cluster"


def _documents() -> list[Any]:
    docs = []
    for path in sorted(list(CORPUS.rglob("*.yaml")) + list(EXAMPLE.rglob("*.yaml"))):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") != "IstioOperator":
                docs.append(doc)
    return docs


DOCS = _documents()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["5x", "-1s", "0s", "1h", "(", "[a-", "ROUND_ROBIN", "v1", "*", "", "101"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _mutate(doc: Any, path: tuple, action: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add-key" and isinstance(parent[last], dict):
        parent[last]["unknownFieldX"] = value
    elif action == "stringify":
        parent[last] = str(parent[last])
    return doc


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_resource_loads_or_fails_with_file_line_and_path(data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(DOCS))
    path = data.draw(st.sampled_from(_paths(doc)))
    action = data.draw(st.sampled_from(["replace", "delete", "add-key", "stringify"]))
    value = data.draw(values)
    mutated = _mutate(doc, path, action, value)
    text = yaml.safe_dump(mutated, sort_keys=False)

    result = load_text(text, "mutated.yaml")

    errors = result.errors
    assert len(result.resources) + len(result.skipped) <= 1
    if result.resources or result.skipped:
        assert errors == [], [str(e) for e in errors]
    elif mutated is not None:
        assert errors, "a document that did not load must say why"
        for e in errors:
            assert e.file == "mutated.yaml"
            assert e.line >= 1, str(e)
            if isinstance(mutated, dict):
                assert e.path, str(e)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_yaml_text_never_raises(data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(DOCS))
    text = yaml.safe_dump(doc, sort_keys=False)
    pos = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(alphabet=":-[]{}#&*!|>'\"%@` \n\t\\", min_size=1, max_size=6))
    corrupted = text[:pos] + junk + text[pos:]

    result = load_text(corrupted, "corrupted.yaml")

    for d in result.diagnostics:
        assert d.file == "corrupted.yaml"
        assert d.line >= 0


def test_alias_bomb_is_refused_not_expanded() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n" + "\n".join("  " + l for l in lines) + "\n"

    result = load_text(text, "bomb.yaml")

    assert [str(d) for d in result.errors] == [
        "bomb.yaml:1: document too large: more than 2000000 values after alias expansion"]
