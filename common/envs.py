"""The environments: one per pyproject extra, in ``.venvs/<env>``, built with uv when it can be
had and with pip otherwise. Standard library only: make runs it with the system Python.

    python3.11 -m common.envs names          every env, base first
    python3.11 -m common.envs requirements E write .venvs/E.requirements, only if it changed
    python3.11 -m common.envs create E       (re)create .venvs/E; log in .venvs/E.log

uv does not read pip's configuration, and this machine's pip configuration matters: its
find-links hold the CPU build of torch, and its constraints keep pip from a CUDA build. So pip's
configured find-links, indexes and constraints are passed to uv as flags, and each declaration's
``env_check`` runs in the new environment (torch's insists on ``torch.version.cuda is None``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from common.atomic import write_atomically
from common.declarations import ROOT, declaration, declarations, envs
from common.errors import USAGE_EXIT_CODE, UsageError, one_line

VENVS = ROOT / ".venvs"
UV_HOME = VENVS / ".uv"  # uv bootstrapped from PyPI when it is not on PATH
# Bytecode is compiled at install: uv leaves it out by default, and where PYTHONDONTWRITEBYTECODE
# is set (as on this machine) every process would compile the frameworks from source again,
# 5 s of torch's first optimizer alone.
INSTALL_RECIPE = "# paramparity install recipe 2: bytecode compiled at install"
INSTALLER_VAR = "PARITY_INSTALLER"  # "uv" or "pip" forces one; unset: uv if it can be had
PYTHON_VAR = "PARITY_PYTHON"  # an existing interpreter to use instead of .venvs/<env>


def venv_python(name: str) -> Path:
    override = os.environ.get(PYTHON_VAR)
    return Path(override) if override else VENVS / name / "bin" / "python"


def requirements_path(env: str) -> Path:
    return VENVS / f"{env}.requirements"


def extra_requirements(env: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    if env not in extras:
        raise UsageError(f"pyproject.toml has no extra [{env}]; extras: {', '.join(extras)}")
    return list(extras[env])


def write_requirements(env: str) -> Path:
    """Write the extra's requirements, leaving the file (and its mtime) alone when unchanged, so
    editing one extra rebuilds only that environment. The first line names the install recipe:
    changing how environments are built rebuilds them all once."""
    path = requirements_path(env)
    text = "\n".join([INSTALL_RECIPE, *extra_requirements(env)]) + "\n"
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text)
    return path


def pip_config() -> dict[str, list[str]]:
    """pip's configured find-links, indexes and constraints, as pip itself reads them (files and
    PIP_* variables alike)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        option = key.rsplit(".", 1)[-1]
        values = value.strip().strip("'\"").split()
        found.setdefault(option, [])
        found[option] += [v for v in values if v not in found[option]]
    return found


def uv_flags(config: dict[str, list[str]]) -> list[str]:
    flags: list[str] = []
    for option, flag in (
        ("find-links", "--find-links"),
        ("index-url", "--index-url"),
        ("extra-index-url", "--extra-index-url"),
        ("constraint", "--constraint"),
    ):
        for value in config.get(option, []):
            flags += [flag, value]
    # pip takes the best version across all indexes; uv's default stops at the first that has one.
    return [*flags, "--index-strategy", "unsafe-best-match"]


def find_uv(log) -> str | None:
    choice = os.environ.get(INSTALLER_VAR, "").strip().lower()
    if choice == "pip":
        return None
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    bootstrapped = UV_HOME / "bin" / "uv"
    if not bootstrapped.exists():
        status = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(UV_HOME), "uv"],
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
        if status != 0 and choice == "uv":
            raise UsageError(f"{INSTALLER_VAR}=uv, but uv could not be installed (see the log)")
    return str(bootstrapped) if bootstrapped.exists() else None


def install_steps(uv: str | None, target: Path, requirements: Path) -> list[list[str]]:
    """The commands that make ``target`` from ``requirements``: with uv when given, else pip."""
    python = target / "bin" / "python"
    if uv:
        return [
            [uv, "venv", "-q", "--python", sys.executable, str(target)],
            [uv, "pip", "install", "--python", str(python), "--link-mode", "copy", "--compile-bytecode",
             "-r", str(requirements), *uv_flags(pip_config())],
        ]  # fmt: skip
    return [  # pip compiles bytecode by default
        [sys.executable, "-m", "venv", str(target)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)],
    ]


def create(env: str) -> float:
    """(Re)create .venvs/<env> from its extra; returns the seconds it took."""
    started = time.monotonic()
    requirements = write_requirements(env)
    target, log_path = VENVS / env, VENVS / f"{env}.log"
    shutil.rmtree(target, ignore_errors=True)
    with open(log_path, "w") as log:
        uv = find_uv(log)
        installer = "uv" if uv else "pip"
        print(f"==> creating .venvs/{env} with {installer} (log: .venvs/{env}.log)", flush=True)
        python = target / "bin" / "python"
        steps = install_steps(uv, target, requirements)
        environ = dict(os.environ, UV_NO_PROGRESS="1")
        for step in steps:
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=environ).returncode != 0:
                _fail(env, log_path, f"{installer} failed")
        for entry in declarations():
            if entry.env == env and entry.env_check:
                check = subprocess.run([str(python), "-c", entry.env_check], capture_output=True, text=True)
                log.write(check.stdout + check.stderr)
                if check.returncode != 0:
                    last = (check.stderr.strip().splitlines() or ["no output"])[-1]
                    _fail(env, log_path, f"the check of {entry.path} failed: {last}")
    (target / ".stamp").touch()
    seconds = time.monotonic() - started
    record = {"seconds": round(seconds, 1), "installer": installer}
    write_atomically(VENVS / f"{env}.created.json", json.dumps(record) + "\n")  # read by make bench
    print(f"==> .venvs/{env} ready ({installer}, {seconds:.1f}s)", flush=True)
    return seconds


def _fail(env: str, log_path: Path, cause: str) -> None:
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    sys.stderr.write("\n".join(tail) + "\n")
    shutil.rmtree(VENVS / env, ignore_errors=True)  # no stamp: the next run starts over
    raise UsageError(f"cannot create .venvs/{env}: {cause}; full log: {log_path.relative_to(ROOT)}")


def ensure_venv(name: str, *, quiet: bool = False) -> Path:
    """The interpreter of .venvs/<name>, created through make if needed (make decides whether the
    stamp is stale). With PARITY_PYTHON set, that interpreter, as it is."""
    if os.environ.get(PYTHON_VAR):
        return venv_python(name)
    result = subprocess.run(
        ["make", "-s", f"venv-{name}"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE,
    )
    if result.returncode != 0 or not venv_python(name).exists():
        lines = [line for line in (result.stderr or "").splitlines() if "cannot create" in line]
        cause = lines[-1].split("error: ", 1)[-1] if lines else f"`make venv-{name}` failed"
        raise UsageError(cause if "log:" in cause else f"{cause}; log: .venvs/{name}.log")
    if result.stderr and not quiet:
        sys.stderr.write(result.stderr)
    return venv_python(name)


def backend_env(backend: str) -> str:
    """The environment a backend runs in, as its declaration says."""
    return declaration(backend).env


def ensure_backend_env(backend: str, *, quiet: bool = False) -> Path:
    return ensure_venv(backend_env(backend), quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.envs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("names", "requirements", "create"))
    parser.add_argument("env", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.action == "names":
            print(" ".join(envs()))
            return 0
        if not args.env:
            raise UsageError(f"`{args.action}` needs an environment name; one of: {', '.join(envs())}")
        if args.env not in envs():
            raise UsageError(f"unknown environment {args.env!r}; environments: {', '.join(envs())}")
        if args.action == "requirements":
            write_requirements(args.env)
        else:
            create(args.env)
        return 0
    except UsageError as error:
        print(one_line(f"paramparity: error: {error}"), file=sys.stderr)
        return USAGE_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
