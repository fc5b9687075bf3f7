"""common/ never imports a framework; only backends/<name> imports its own."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import common
from common.errors import BackendUnavailable
from common.registry import ADAPTERS, load_backend

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"torch", "mxnet", "jax", "jaxlib", "flax", "optax", "tensorflow", "keras"}


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


@pytest.mark.parametrize("backend", sorted(ADAPTERS))
def test_each_adapter_imports_only_its_own_framework(backend):
    module = ADAPTERS[backend][0]
    own = {
        "torch": {"torch"},
        "mxnet": {"mxnet"},
        "jax": {"jax", "jaxlib", "flax", "optax"},
        "tensorflow": {"tensorflow", "keras", "h5py"},
    }[backend]
    roots = imported_roots(ROOT / (module.replace(".", "/") + ".py"))
    assert not (roots & FRAMEWORKS) - own, f"{module} imports {(roots & FRAMEWORKS) - own}"


def test_importing_all_of_common_loads_no_framework():
    names = [f"common.{m.name}" for m in pkgutil.iter_modules(common.__path__)]
    code = f"import sys; {'; '.join(f'import {n}' for n in names)}; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = {name.split(".")[0] for name in eval(loaded.stdout)}
    assert not modules & FRAMEWORKS, f"importing common loads {modules & FRAMEWORKS}"


@pytest.mark.parametrize("backend", sorted(ADAPTERS))
def test_missing_framework_names_the_make_target(backend):
    try:
        importlib.import_module(ADAPTERS[backend][2])
    except ImportError:
        pass
    else:
        pytest.skip(f"{ADAPTERS[backend][2]} is installed here; this checks the framework-free env")
    try:
        load_backend(backend)
    except BackendUnavailable as error:
        assert f"make venv-{backend}" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError(f"load_backend({backend!r}) worked without its framework")
