"""`pip install .`: one top-level package, paramparity, that runs from any folder and writes
nothing under site-packages.

The installed layout is rebuilt here from pyproject.toml's own package table (its package-dir
and packages), so the test reads the same mapping setuptools does; building a real wheel needs
setuptools and an index, which the base environment does not have.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common.commands import diff
from common.config import backend_names
from common.declarations import PACKAGE_ROOT
from common.errors import USAGE_EXIT_CODE
from tests.common.records import make_record

PYPROJECT = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
DISTRIBUTION = "paramparity"


def _source_folder(package: str) -> Path:
    """Where setuptools reads ``package`` from: its longest package-dir prefix, then the rest."""
    mapping = SETUPTOOLS["package-dir"]
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return PACKAGE_ROOT.joinpath(mapping[prefix], *parts[cut:])
    return PACKAGE_ROOT.joinpath(*parts)


def _packages_in_the_tree() -> set[str]:
    found = set()
    for top in ("common", "backends"):
        for init in (PACKAGE_ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(PACKAGE_ROOT)
            if relative.parts[:2] != ("common", "installed"):  # the launcher, installed as paramparity
                found.add(".".join((DISTRIBUTION, *relative.parts)))
    return found


def test_every_package_installs_under_paramparity_alone():
    listed = set(SETUPTOOLS["packages"])
    assert {name.split(".")[0] for name in listed} == {DISTRIBUTION}, "a generic top-level name installed"
    missing = _packages_in_the_tree() - listed
    assert not missing, f"add to pyproject.toml's [tool.setuptools] packages: {sorted(missing)}"
    for package in listed:
        assert (_source_folder(package) / "__init__.py").is_file(), package
    assert PYPROJECT["project"]["scripts"] == {DISTRIBUTION: f"{DISTRIBUTION}:main"}


def _install(site: Path) -> None:
    """What pip puts in site-packages: every listed package's modules and package data, plus
    the metadata importlib reads the version from."""
    data = SETUPTOOLS["package-data"]
    for package in SETUPTOOLS["packages"]:
        source, target = _source_folder(package), site.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, target / module.name)
        for pattern in data.get(package, ()):
            for path in source.glob(pattern):
                (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.relative_to(source))
    version = PYPROJECT["project"]["version"]
    info = site / f"{DISTRIBUTION}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {version}\n")
    # pip compiles the modules as it installs them; so does this
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def installed(tmp_path):
    site, elsewhere = tmp_path / "site-packages", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    _install(site)
    before = _files(site)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # the console script pip writes: import the package, call main
        script = (
            f"import sys; sys.path.insert(0, {str(site)!r}); "
            f"import {DISTRIBUTION}; sys.exit({DISTRIBUTION}.main())"
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "100"}
        return subprocess.run(
            [sys.executable, "-c", script, *args], cwd=elsewhere, capture_output=True, text=True, env=env
        )

    yield run, site, elsewhere
    assert _files(site) == before, "something was written under site-packages"


def test_the_installed_command_says_its_version_from_any_folder(installed):
    run, _, _ = installed
    completed = run("--version")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"paramparity {PYPROJECT['project']['version']}"


def test_the_installed_command_renders_saved_records_into_the_working_folder(installed):
    run, site, elsewhere = installed
    first, second = backend_names()[:2]
    records = elsewhere / "records.json"
    records.write_text(diff.render_json(diff.merge({b: make_record(b) for b in (first, second)})))
    completed = run("diff", "--from", str(records))
    assert completed.returncode == 0, completed.stderr
    assert first in completed.stdout and second in completed.stdout
    completed = run("diff", "--from", str(records), "--format", "html")
    assert completed.returncode == 0, completed.stderr
    assert (elsewhere / "reports" / "diff.html").is_file()
    assert not (site / "reports").exists()


def test_the_installed_command_refuses_framework_runs_outside_a_checkout_in_one_line(installed):
    run, _, _ = installed
    completed = run("diff", "--backends", backend_names()[0])
    assert completed.returncode == USAGE_EXIT_CODE
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "PARITY_ROOT" in lines[0] and "Traceback" not in completed.stderr
