"""How environments are built (issue 9): pip's configuration carried over to uv, bytecode compiled
at install, and a requirements file that changes only when the extra or the recipe does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import envs

PIP_CONFIG = {
    "find-links": ["/wheels/torch-cpu", "/wheels/extra"],
    "extra-index-url": ["https://mirror.example/simple"],
    "constraint": ["/etc/pip-constraints.txt"],
}


def test_pip_configuration_becomes_uv_flags():
    assert envs.uv_flags(PIP_CONFIG) == [
        "--find-links", "/wheels/torch-cpu",
        "--find-links", "/wheels/extra",
        "--extra-index-url", "https://mirror.example/simple",
        "--constraint", "/etc/pip-constraints.txt",
        "--index-strategy", "unsafe-best-match",
    ]  # fmt: skip


def test_uv_installs_with_bytecode_and_pips_configuration(monkeypatch, tmp_path):
    monkeypatch.setattr(envs, "pip_config", lambda: PIP_CONFIG)
    venv, install = envs.install_steps("/bin/uv", tmp_path / "env", tmp_path / "env.requirements")
    assert venv[:2] == ["/bin/uv", "venv"]
    assert "--compile-bytecode" in install, f"{install}, but should compile bytecode at install"
    assert install[install.index("--constraint") + 1] == "/etc/pip-constraints.txt"


def test_pip_is_the_fallback_and_keeps_its_default_compilation(tmp_path):
    venv, install = envs.install_steps(None, tmp_path / "env", tmp_path / "env.requirements")
    assert venv[1:3] == ["-m", "venv"]
    assert install[1:3] == ["-m", "pip"] and "--no-compile" not in install


@pytest.fixture
def venvs_dir(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(envs, "VENVS", tmp_path)
    return tmp_path


def test_requirements_name_the_recipe_then_the_extra(venvs_dir):
    lines = envs.write_requirements("base").read_text().splitlines()
    assert lines == [envs.INSTALL_RECIPE, *envs.extra_requirements("base")]


def test_requirements_are_left_alone_unless_the_recipe_or_extra_changes(venvs_dir, monkeypatch):
    path = envs.write_requirements("base")
    os.utime(path, (1, 1))  # make would rebuild on any newer mtime
    envs.write_requirements("base")
    assert path.stat().st_mtime == 1, "an unchanged requirements file was rewritten"
    monkeypatch.setattr(envs, "INSTALL_RECIPE", "# a new recipe")
    envs.write_requirements("base")
    assert path.stat().st_mtime > 1, "a new install recipe left the old requirements file"
