"""common/ never imports a framework; a backend imports its own framework only, through its own
folder and the family modules (backends/_*.py) it uses; the model core never selects a backend."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import common
import common.core
from common.declarations import declarations
from common.errors import BackendUnavailable
from common.registry import load_backend

ROOT = Path(__file__).resolve().parents[2]
DECLARATIONS = {d.name: d for d in declarations()}
FRAMEWORKS = {root for d in declarations() for root in d.import_roots}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (imports inside functions too)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def imported_roots(path: Path) -> set[str]:
    return {module.split(".")[0] for module in imported_modules(path)}


def module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def backend_sources(entry) -> set[Path]:
    """The backend's own folder, the modules its declaration names (a family's hostile files,
    backends/_flax_hostile.py..., or initializers, backends/_keras3_initializers.py) and every
    module under backends/ that these import, transitively: family code
    (backends/_flax_common.py...) counts against each backend that uses it."""
    folder = ROOT / entry.adapter_module.rsplit(".", 1)[0].replace(".", "/")
    refs = (entry.hostile, entry.native_writer, entry.initializers)
    declared = [module_file(ref.partition(":")[0]) for ref in refs if ref]
    pending, found = [*folder.glob("*.py"), *(path for path in declared if path)], set()
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.add(path)
        for module in imported_modules(path):
            if module.startswith("backends."):
                target = module_file(module)
                if target is not None:
                    pending.append(target)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "common").rglob("*.py")), ids=lambda p: p.name)
def test_common_sources_import_no_framework(path):
    assert not imported_roots(path) & FRAMEWORKS, f"{path.name} imports {imported_roots(path) & FRAMEWORKS}"


@pytest.mark.parametrize("backend", sorted(DECLARATIONS))
def test_each_adapter_imports_only_its_own_framework(backend):
    entry = DECLARATIONS[backend]
    for path in sorted(backend_sources(entry)):
        roots = imported_roots(path)
        assert not (roots & FRAMEWORKS) - set(entry.import_roots), (
            f"{path.relative_to(ROOT)} imports {(roots & FRAMEWORKS) - set(entry.import_roots)}, "
            f"but {entry.path} declares import_roots={list(entry.import_roots)}"
        )


def test_every_framework_importing_module_belongs_to_a_backend():
    """A module under backends/ that imports a framework is checked above only if some backend
    reaches it: an orphan family module would escape the check."""
    reached = set().union(*(backend_sources(entry) for entry in DECLARATIONS.values()))
    for path in sorted((ROOT / "backends").rglob("*.py")):
        if imported_roots(path) & FRAMEWORKS:
            assert path in reached, f"{path.relative_to(ROOT)} imports a framework, but no backend imports it"


@pytest.mark.parametrize("path", sorted((ROOT / "common" / "core").rglob("*.py")), ids=lambda p: p.name)
def test_the_core_never_names_the_registry(path):
    """The model core sits below the registry: it never selects a backend by name."""
    named = {m for m in imported_modules(path) if m == "common.registry" or m.startswith("common.registry.")}
    assert not named, f"{path.relative_to(ROOT)} imports {sorted(named)}"


def test_importing_the_core_does_not_import_the_registry():
    names = [m.name for m in pkgutil.walk_packages(common.core.__path__, "common.core.")]
    code = f"import sys; {'; '.join(f'import {n}' for n in names)}; print('common.registry' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False", f"importing {names} imports common.registry"


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
