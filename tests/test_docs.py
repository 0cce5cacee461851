"""Every docstring example in the package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import paramwise

MODULES = ["paramwise", *sorted(m.name for m in pkgutil.walk_packages(paramwise.__path__, "paramwise.")
                                if not m.name.endswith("__main__"))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_every_module_is_searched_for_examples():
    """``walk_packages`` reaches into every sub-package: one name per file under the package."""
    root = Path(paramwise.__file__).parent
    files = {".".join(("paramwise", *p.relative_to(root).with_suffix("").parts)).removesuffix(
        ".__init__") for p in root.rglob("*.py")}
    assert set(MODULES) == files - {"paramwise.__main__"}
