"""How environments are built (issues 9 and 23): pip's configuration carried over to uv, bytecode
compiled at install, every env installed exactly from its committed lock (hashes checked), and a
requirements file that changes only when the lock or the recipe does."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import envs
from common.declarations import envs as env_names
from common.errors import UsageError

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
    assert "--constraint" not in envs.uv_flags(PIP_CONFIG, constraints=False)


def requirements_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "env.requirements"
    path.write_text("\n".join([envs.INSTALL_RECIPE, *lines]) + "\n")
    return path


def test_uv_installs_exactly_the_lock_with_bytecode_and_pips_configuration(monkeypatch, tmp_path):
    monkeypatch.setattr(envs, "pip_config", lambda: PIP_CONFIG)
    requirements = requirements_file(tmp_path, "numpy==2.0.0 --hash=sha256:00")
    venv, install = envs.install_steps("/bin/uv", tmp_path / "env", requirements)
    assert venv[:2] == ["/bin/uv", "venv"]
    assert install[1:4] == ["pip", "sync", str(requirements)], f"{install}, but should sync to the lock"
    assert "--require-hashes" in install and "--compile-bytecode" in install
    assert install[install.index("--find-links") + 1] == "/wheels/torch-cpu"


def test_pip_is_the_fallback_installs_the_lock_and_keeps_its_default_compilation(tmp_path):
    venv, install = envs.install_steps(None, tmp_path / "env", requirements_file(tmp_path))
    assert venv[1:3] == ["-m", "venv"]
    assert install[1:3] == ["-m", "pip"] and "--no-compile" not in install
    assert "--require-hashes" in install and "--no-deps" in install


@pytest.mark.parametrize("uv", ["/bin/uv", None])
def test_without_a_local_cpu_torch_the_lock_installs_from_pytorchs_cpu_index(monkeypatch, tmp_path, uv):
    """A fresh machine: no find-links folder holds torch's CPU build, so PyTorch's own index
    serves the locked one (PyPI has only CUDA builds); with one, nothing is added."""
    torch_lock = requirements_file(tmp_path, "torch==2.13.0+cpu \\", "    --hash=sha256:00")
    local = tmp_path / "wheels"
    local.mkdir()
    monkeypatch.setattr(envs, "pip_config", lambda: {"find-links": [str(local)]})
    install = envs.install_steps(uv, tmp_path / "env", torch_lock)[1]
    assert install[install.index("--extra-index-url") + 1] == envs.TORCH_CPU_INDEX
    (local / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    assert envs.TORCH_CPU_INDEX not in envs.install_steps(uv, tmp_path / "env", torch_lock)[1]
    no_torch = requirements_file(tmp_path, "numpy==2.0.0 --hash=sha256:00")
    assert envs.TORCH_CPU_INDEX not in envs.install_steps(uv, tmp_path / "env", no_torch)[1]


@pytest.mark.parametrize("env", env_names())
def test_every_environment_has_a_lock_of_its_extra_as_it_is(env):
    """A changed extra without `make lock` fails here, not on a fresh machine."""
    text = envs.locked_requirements(env)
    pinned = [line.split(" ")[0] for line in text.splitlines() if line[:1].isalnum()]
    assert pinned and all("==" in pin for pin in pinned), pinned
    hashed = [line for line in text.splitlines() if line[:1].isalnum()]
    assert all(line.endswith("\\") for line in hashed), "every pin is followed by its hashes"


@pytest.fixture
def venvs_dir(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(envs, "VENVS", tmp_path)
    return tmp_path


def test_requirements_name_the_recipe_then_the_lock(venvs_dir):
    text = envs.write_requirements("base").read_text()
    assert text == f"{envs.INSTALL_RECIPE}\n{envs.lock_path('base').read_text()}"


def test_a_lock_of_another_extra_is_refused(venvs_dir, monkeypatch):
    monkeypatch.setattr(envs, "extra_requirements", lambda env: ["numpy>=1.23", "an-added-package"])
    refused = r"locks/base.txt was resolved from another \[base\] extra.*make lock-base"
    with pytest.raises(UsageError, match=refused):
        envs.write_requirements("base")
    assert not envs.requirements_path("base").exists()


def test_a_missing_lock_is_one_line(venvs_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(envs, "LOCKS", tmp_path / "locks")
    with pytest.raises(UsageError, match=r"^locks/base.txt is missing; make it with `make lock-base`$"):
        envs.write_requirements("base")


def test_requirements_are_left_alone_unless_the_recipe_or_lock_changes(venvs_dir, monkeypatch, tmp_path):
    path = envs.write_requirements("base")
    os.utime(path, (1, 1))  # make would rebuild on any newer mtime
    envs.write_requirements("base")
    assert path.stat().st_mtime == 1, "an unchanged requirements file was rewritten"
    monkeypatch.setattr(envs, "INSTALL_RECIPE", "# a new recipe")
    envs.write_requirements("base")
    assert path.stat().st_mtime > 1, "a new install recipe left the old requirements file"
    os.utime(path, (1, 1))
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "base.txt").write_text(envs.lock_path("base").read_text() + "# another resolution\n")
    monkeypatch.setattr(envs, "LOCKS", locks)
    envs.write_requirements("base")
    assert path.stat().st_mtime > 1, "a new lock left the old requirements file"


# -- creation under faults (issue 23) ----------------------------------------------------------------
BUILD = """\
import os, sys, time
target, log, go = sys.argv[1:4]
os.makedirs(os.path.join(target, "bin"))
os.symlink(sys.executable, os.path.join(target, "bin", "python"))  # as uv venv does, first
open(os.path.join(target, "half-made"), "w").close()
with open(log, "a") as file:
    file.write(f"building {os.getpid()}\\n")
while not os.path.exists(go):
    time.sleep(0.02)
os.remove(os.path.join(target, "half-made"))
"""

DRIVER = """\
import sys
from pathlib import Path
from common import envs

envs.VENVS = Path(sys.argv[1])
envs.find_uv = lambda log: None
envs.install_steps = lambda uv, target, requirements: [
    [sys.executable, "-c", {build!r}, str(target), sys.argv[2], sys.argv[3]]
]
sys.exit(envs.main(["create", "base"]))
"""


@pytest.fixture
def creation(tmp_path):
    """``python -m common.envs create base`` into a folder of its own, with an install step that
    says when it starts (a line in ``log``) and finishes only once ``go`` exists."""
    venvs, log, go = tmp_path / "venvs", tmp_path / "builds.log", tmp_path / "go"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(build=BUILD))
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(driver), str(venvs), str(log), str(go)],
            cwd=envs.ROOT,
            env={**os.environ, "PYTHONPATH": str(envs.ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start, venvs, log, go
    for process in started:
        if process.poll() is None:
            process.kill()


def builds(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Until ``condition()``; ``timeout`` only ends a broken test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited {process.returncode} before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def test_two_commands_needing_one_env_one_builds_and_the_other_waits(creation):
    start, venvs, log, go = creation
    first = start()
    wait_until(lambda: builds(log), first, "build")
    second = start()
    assert second.stdout.readline() == "==> waiting for .venvs/base: another command is creating it\n"
    go.touch()
    for process in (first, second):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert "ready (built meanwhile by another command)" in out
    assert len(builds(log)) == 1, builds(log)
    assert (venvs / "base" / ".stamp").exists() and not (venvs / "base" / "half-made").exists()


def test_a_creation_killed_midway_is_never_used_and_the_next_one_rebuilds(creation, monkeypatch):
    start, venvs, log, go = creation
    first = start()
    wait_until(lambda: builds(log), first, "build")
    first.kill()  # SIGKILL: nothing of it can clean up
    first.wait()
    monkeypatch.setattr(envs, "VENVS", venvs)
    assert not envs.env_ready("base"), "a half-made environment counts as ready"
    go.touch()
    second = start()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert len(builds(log)) == 2 and envs.env_ready("base")
    assert not (venvs / "base" / "half-made").exists(), "the rebuild kept a file of the killed one"


def test_a_stopped_creation_leaves_nothing_half_made(creation):
    start, venvs, log, go = creation
    first = start()
    wait_until(lambda: builds(log), first, "build")
    first.terminate()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143 and "Traceback" not in err, err
    assert sorted(p.name for p in venvs.iterdir()) == [".base.lock", "base.log", "base.requirements"]
