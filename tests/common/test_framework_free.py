"""common/ never imports a framework; only backends/<name> imports its own."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import common
from common.declarations import declarations
from common.errors import BackendUnavailable
from common.registry import load_backend

ROOT = Path(__file__).resolve().parents[2]
DECLARATIONS = {d.name: d for d in declarations()}
FRAMEWORKS = {root for d in declarations() for root in d.import_roots}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "common").rglob("*.py")), ids=lambda p: p.name)
def test_common_sources_import_no_framework(path):
    assert not imported_roots(path) & FRAMEWORKS, f"{path.name} imports {imported_roots(path) & FRAMEWORKS}"


@pytest.mark.parametrize("backend", sorted(DECLARATIONS))
def test_each_adapter_imports_only_its_own_framework(backend):
    entry = DECLARATIONS[backend]
    package = ROOT / entry.adapter_module.rsplit(".", 1)[0].replace(".", "/")
    for path in sorted(package.glob("*.py")):
        roots = imported_roots(path)
        assert not (roots & FRAMEWORKS) - set(entry.import_roots), (
            f"{path.relative_to(ROOT)} imports {(roots & FRAMEWORKS) - set(entry.import_roots)}, "
            f"but {entry.path} declares import_roots={list(entry.import_roots)}"
        )


def test_importing_all_of_common_loads_no_framework():
    names = [m.name for m in pkgutil.walk_packages(common.__path__, "common.") if m.name != "common.__main__"]
    code = f"import sys; {'; '.join(f'import {n}' for n in names)}; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = {name.split(".")[0] for name in eval(loaded.stdout)}
    assert not modules & FRAMEWORKS, f"importing common loads {modules & FRAMEWORKS}"


@pytest.mark.parametrize("backend", sorted(DECLARATIONS))
def test_missing_framework_names_the_make_target(backend):
    entry = DECLARATIONS[backend]
    installed = [root for root in entry.import_roots if importlib.util.find_spec(root) is not None]
    if installed:
        pytest.skip(f"{installed} is installed here; this checks the framework-free env")
    try:
        load_backend(backend)
    except BackendUnavailable as error:
        assert f"make venv-{entry.env}" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError(f"load_backend({backend!r}) worked without its framework")
