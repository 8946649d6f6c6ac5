"""gateway/__init__.py re-exports its names lazily: each resolves, and importing the
package alone loads none of the submodules (a sidecar's idle memory depends on it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gateway


@pytest.mark.parametrize("name", gateway.__all__)
def test_every_exported_name_resolves_to_the_object_of_its_submodule(name: str) -> None:
    value = getattr(gateway, name)
    module = gateway._WHERE.get(name)
    if module is not None:
        assert value is getattr(sys.modules[f"gateway.{module}"], name)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError) as e:
        gateway.NoSuchThing  # noqa: B018
    assert str(e.value) == "module 'gateway' has no attribute 'NoSuchThing'"


def test_importing_the_package_loads_no_submodule() -> None:
    code = ("import sys, gateway; "
            "print(sorted(m for m in sys.modules if m.startswith('gateway.') or m in ('cryptography', 'h2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
