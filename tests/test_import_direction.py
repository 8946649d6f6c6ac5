"""The four packages import one way only: topology <- trustdomain <- gateway <- federation."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "topology": set(),
    "trustdomain": {"topology"},
    "gateway": {"topology", "trustdomain"},
    "federation": {"topology", "trustdomain", "gateway"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_packages_below_it(package: str) -> None:
    ours = set(ALLOWED)
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for mod in _imports(path) & ours - {package} - ALLOWED[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert bad == []
