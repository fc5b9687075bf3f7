"""The environments: one per pyproject extra, in ``.venvs/<env>``, installed exactly from the
extra's lock, ``locks/<env>.txt``: every package pinned, with its hashes, resolved by ``make lock``
for CPython 3.11 on x86_64 Linux. Built with uv when it can be had and with pip otherwise.
Standard library only: make runs it with the system Python.

    python3.11 -m common.envs names          every env, base first
    python3.11 -m common.envs requirements E write .venvs/E.requirements, only if it changed
    python3.11 -m common.envs create E       (re)create .venvs/E; log in .venvs/E.log
    python3.11 -m common.envs lock E...      resolve the extras anew into locks/E.txt (uv)

uv does not read pip's configuration, and this machine's pip configuration matters: its
find-links hold the CPU build of torch. So pip's configured find-links and indexes are passed to
uv as flags. Where no configured find-links folder holds a CPU build of torch,
PyTorch's own CPU wheel index is added, for locking and installing alike, so a fresh machine gets
the locked CPU build (PyPI has only the CUDA one). Each declaration's ``env_check`` runs in the
new environment (torch's insists on ``torch.version.cuda is None``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from common import children
from common.atomic import write_atomically
from common.declarations import ROOT, declaration, declarations, envs
from common.errors import USAGE_EXIT_CODE, UsageError, one_line

VENVS = ROOT / ".venvs"
REPORTS = ROOT / "reports"  # what commands write for people and machines to read
UV_HOME = VENVS / ".uv"  # uv bootstrapped from PyPI when it is not on PATH
# Bytecode is compiled at install: uv leaves it out by default, and where PYTHONDONTWRITEBYTECODE
# is set (as on this machine) every process would compile the frameworks from source again,
# 5 s of torch's first optimizer alone.
INSTALL_RECIPE = "# paramparity install recipe 3: the lock, hashes checked, bytecode compiled at install"
INSTALLER_VAR = "PARITY_INSTALLER"  # "uv" or "pip" forces one; unset: uv if it can be had
PYTHON_VAR = "PARITY_PYTHON"  # an existing interpreter to use instead of .venvs/<env>
LOCKS = ROOT / "locks"
LOCK_PYTHON, LOCK_PLATFORM = "3.11", "x86_64-manylinux_2_35"  # CPython 3.11, glibc >= 2.35 (MLX's floor)
EXTRA_LINE = "# extra: "  # the lock's record of the extra it was resolved from
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def venv_python(name: str) -> Path:
    override = os.environ.get(PYTHON_VAR)
    return Path(override) if override else VENVS / name / "bin" / "python"


def env_ready(name: str) -> bool:
    """Whether .venvs/<name> is whole: its stamp is written last, so a creation killed midway
    leaves none and the env is rebuilt, never used. With PARITY_PYTHON set, that interpreter."""
    return bool(os.environ.get(PYTHON_VAR)) or (VENVS / name / ".stamp").exists()


def requirements_path(env: str) -> Path:
    return VENVS / f"{env}.requirements"


def extra_requirements(env: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    if env not in extras:
        raise UsageError(f"pyproject.toml has no extra [{env}]; extras: {', '.join(extras)}")
    return list(extras[env])


def lock_path(env: str) -> Path:
    return LOCKS / f"{env}.txt"


def locked_requirements(env: str) -> str:
    """locks/<env>.txt, once it is known to be the lock of the extra as pyproject.toml has it now."""
    try:
        text = lock_path(env).read_text()
    except FileNotFoundError:
        raise UsageError(f"locks/{env}.txt is missing; make it with `make lock-{env}`") from None
    recorded = [line.removeprefix(EXTRA_LINE) for line in text.splitlines() if line.startswith(EXTRA_LINE)]
    if recorded != [json.dumps(extra_requirements(env))]:
        raise UsageError(
            f"locks/{env}.txt was resolved from another [{env}] extra than pyproject.toml's; "
            f"refresh it with `make lock-{env}`"
        )
    return text


def write_requirements(env: str) -> Path:
    """Write what .venvs/<env> is installed from: the install recipe, then the env's lock. The
    file (and its mtime) is left alone when unchanged, so a new lock rebuilds only its env, and a
    new recipe (how environments are built) rebuilds them all once."""
    path = requirements_path(env)
    text = f"{INSTALL_RECIPE}\n{locked_requirements(env)}"
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text)
    return path


def pip_config() -> dict[str, list[str]]:
    """pip's configured find-links, indexes and constraints, as pip itself reads them (files and
    PIP_* variables alike)."""
    result = children.run(
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


def uv_flags(config: dict[str, list[str]], constraints: bool = True) -> list[str]:
    """pip's configuration as uv's flags; ``constraints=False`` leaves out this machine's caps: a
    lock is resolved from the extras alone, so it does not depend on where it was made, and is
    installed as it is (uv refuses a range beside hashes)."""
    flags: list[str] = []
    for option, flag in (
        ("find-links", "--find-links"),
        ("index-url", "--index-url"),
        ("extra-index-url", "--extra-index-url"),
        ("constraint", "--constraint"),
    ):
        if option == "constraint" and not constraints:
            continue
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
        status = children.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(UV_HOME), "uv"],
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
        if status != 0 and choice == "uv":
            raise UsageError(f"{INSTALLER_VAR}=uv, but uv could not be installed (see the log)")
    return str(bootstrapped) if bootstrapped.exists() else None


def torch_cpu_index(config: dict[str, list[str]], requirements: str) -> list[str]:
    """PyTorch's CPU wheel index, for requirements that name torch, unless a configured find-links
    folder holds a CPU build of torch (this machine's does). PyPI has only CUDA builds."""
    if not any(line.startswith("torch==") for line in requirements.splitlines()):
        return []
    for folder in config.get("find-links", []):
        path = Path(folder.removeprefix("file://"))
        if path.is_dir() and any(path.glob("torch-*+cpu-*.whl")):
            return []
    return ["--extra-index-url", TORCH_CPU_INDEX]


def install_steps(uv: str | None, target: Path, requirements: Path) -> list[list[str]]:
    """The commands that make ``target`` exactly as ``requirements`` (a lock) says, every hash
    checked: with uv when given, else pip."""
    python = target / "bin" / "python"
    config = pip_config()
    index = torch_cpu_index(config, requirements.read_text() if requirements.exists() else "")
    if uv:
        return [
            [uv, "venv", "-q", "--python", sys.executable, str(target)],
            [uv, "pip", "sync", str(requirements), "--python", str(python), "--require-hashes",
             "--link-mode", "copy", "--compile-bytecode", *uv_flags(config, constraints=False), *index],
        ]  # fmt: skip
    return [  # pip compiles bytecode by default; a lock holds every dependency
        [sys.executable, "-m", "venv", str(target)],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--require-hashes", "--no-deps",
         "-r", str(requirements), *index],
    ]  # fmt: skip


def lock(env: str) -> Path:
    """Resolve the [env] extra anew (the newest versions it allows) into locks/<env>.txt: every
    package pinned, with the hashes of its files, for CPython 3.11 on x86_64 Linux."""
    with open(os.devnull, "w") as quiet:
        uv = find_uv(quiet)
    if uv is None:
        raise UsageError("`make lock` needs uv (on PATH, or put into .venvs/.uv by pip); pip makes no lock")
    extra = extra_requirements(env)
    config = pip_config()
    with children.temporary_directory() as folder:
        (folder / f"{env}.in").write_text("\n".join(extra) + "\n")
        result = children.run(
            [uv, "pip", "compile", f"{env}.in", "-o", f"{env}.txt", "--generate-hashes", "--no-header",
             "--python-version", LOCK_PYTHON, "--python-platform", LOCK_PLATFORM,
             *uv_flags(config, constraints=False), *torch_cpu_index(config, "\n".join(extra))],
            cwd=folder, capture_output=True, text=True, env=dict(os.environ, UV_NO_PROGRESS="1"),
        )  # fmt: skip
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UsageError(f"cannot lock [{env}]: uv pip compile failed: {last}")
        resolved = (folder / f"{env}.txt").read_text()
    header = (
        f"# locks/{env}.txt: the [{env}] extra of pyproject.toml, resolved by `make lock-{env}` for\n"
        f"# CPython {LOCK_PYTHON} on {LOCK_PLATFORM}. .venvs/{env} installs exactly this, hashes checked.\n"
        f"{EXTRA_LINE}{json.dumps(extra)}\n"
    )
    write_atomically(lock_path(env), header + resolved)
    return lock_path(env)


def create(env: str) -> float:
    """(Re)create .venvs/<env> from its extra; returns the seconds it took. One command builds an
    env at a time (a lock): one that waited finds it built and returns at once."""
    started = time.monotonic()
    with env_lock(env):
        requirements = write_requirements(env)
        if is_current(env):
            print(f"==> .venvs/{env} ready (built meanwhile by another command)", flush=True)
            return 0.0
        target = VENVS / env
        discard(target)  # a creation killed midway left it without a stamp: start over
        try:
            installer = build(env, target, requirements, VENVS / f"{env}.log")
        except BaseException:  # failed or interrupted: nothing half-made stays at .venvs/<env>
            discard(target)
            raise
        (target / ".stamp").touch()
    seconds = time.monotonic() - started
    record = {"seconds": round(seconds, 1), "installer": installer}
    write_atomically(VENVS / f"{env}.created.json", json.dumps(record) + "\n")  # read by make bench
    print(f"==> .venvs/{env} ready ({installer}, {seconds:.1f}s)", flush=True)
    return seconds


def build(env: str, target: Path, requirements: Path, log_path: Path) -> str:
    """Install ``requirements`` into ``target`` and run the declarations' checks; the installer."""
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
            if children.run(step, stdout=log, stderr=subprocess.STDOUT, env=environ).returncode != 0:
                _fail(env, log_path, f"{installer} failed")
        for entry in declarations():
            if entry.env == env and entry.env_check:
                check = children.run([str(python), "-c", entry.env_check], capture_output=True, text=True)
                log.write(check.stdout + check.stderr)
                if check.returncode != 0:
                    last = (check.stderr.strip().splitlines() or ["no output"])[-1]
                    _fail(env, log_path, f"the check of {entry.path} failed: {last}")
    return installer


def is_current(env: str) -> bool:
    """Whole and no older than its requirements: what make checks before it calls ``create``."""
    stamp = VENVS / env / ".stamp"
    try:
        return stamp.stat().st_mtime >= requirements_path(env).stat().st_mtime
    except OSError:
        return False


@contextlib.contextmanager
def env_lock(env: str) -> Iterator[None]:
    """Held while .venvs/<env> is made: a second command waits, then finds it built. The kernel
    drops the lock when its holder dies, however it dies."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f".{env}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"==> waiting for .venvs/{env}: another command is creating it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def discard(target: Path) -> None:
    """Remove an environment folder: renamed away first, so a kill during the removal never
    leaves half of one at ``target``; what earlier removals left goes too."""
    trashes = lambda: target.parent.glob(f".{target.name}.trash-*")  # noqa: E731
    for trash in trashes():
        shutil.rmtree(trash, ignore_errors=True)
    if target.exists() or target.is_symlink():
        os.replace(target, target.with_name(f".{target.name}.trash-{os.getpid()}"))
    for trash in trashes():
        shutil.rmtree(trash, ignore_errors=True)


def _fail(env: str, log_path: Path, cause: str) -> None:
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    sys.stderr.write("\n".join(tail) + "\n")
    raise UsageError(f"cannot create .venvs/{env}: {cause}; full log: {log_path.relative_to(ROOT)}")


def ensure_venv(name: str, *, quiet: bool = False) -> Path:
    """The interpreter of .venvs/<name>, created through make if needed (make decides whether the
    stamp is stale). With PARITY_PYTHON set, that interpreter, as it is."""
    if os.environ.get(PYTHON_VAR):
        return venv_python(name)
    result = children.run(
        ["make", "-s", f"venv-{name}"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE,
    )
    if result.returncode != 0 or not env_ready(name):
        lines = [line for line in (result.stderr or "").splitlines() if "cannot create" in line]
        cause = lines[-1].split("error: ", 1)[-1] if lines else f"`make venv-{name}` failed"
        raise UsageError(cause if "log:" in cause else f"{cause}; log: .venvs/{name}.log")
    if result.stderr and not quiet:
        sys.stderr.write(result.stderr)
    return venv_python(name)


def check_python(backends: Iterable[str]) -> None:
    """PARITY_PYTHON, if set, before anything runs: an interpreter that exists, is a Python and
    has the framework of every backend in ``backends``; else one line saying what is wrong."""
    value = os.environ.get(PYTHON_VAR, "")
    if not value:
        return
    path, where = Path(value), f"{PYTHON_VAR}={value}"
    fix = "set it to a Python interpreter, or unset it to use .venvs/<env>"
    if not path.exists():
        raise UsageError(f"{where}: no such file; {fix}")
    if path.is_dir():
        raise UsageError(f"{where} is a folder, not an interpreter; {fix}")
    if not os.access(path, os.X_OK):
        raise UsageError(f"{where} is not executable; {fix}")
    roots = {b: declaration(b).import_roots for b in backends}
    code = (
        "import importlib.util, json, sys; "
        "print('PARITY-PYTHON', json.dumps(sorted(r for r in json.loads(sys.argv[1]) "
        "if importlib.util.find_spec(r) is None)))"
    )
    wanted = sorted({root for found in roots.values() for root in found})
    try:
        result = children.run(
            [str(path), "-c", code, json.dumps(wanted)],
            cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise UsageError(f"{where} did not answer within 120 s; {fix}") from None
    answer = [line for line in result.stdout.splitlines() if line.startswith("PARITY-PYTHON ")]
    if result.returncode != 0 or not answer:
        said = (result.stderr.strip().splitlines() or ["nothing"])[-1][:200]
        raise UsageError(
            f"{where} is not a Python interpreter (`{value} -c ...` exited {result.returncode}, "
            f"saying {ascii(said)}); {fix}"
        )
    missing = set(json.loads(answer[-1].split(" ", 1)[1]))
    lacking = [f"{b} ({', '.join(r for r in found if r in missing)})" for b, found in roots.items()
               if missing & set(found)]  # fmt: skip
    if lacking:
        raise UsageError(
            f"{where} lacks the framework of {', '.join(lacking)}; choose backends it has "
            f"(--backends, PARITY_BACKEND), or unset it to use .venvs/<env>"
        )


def backend_env(backend: str) -> str:
    """The environment a backend runs in, as its declaration says."""
    return declaration(backend).env


def ensure_backend_env(backend: str, *, quiet: bool = False) -> Path:
    return ensure_venv(backend_env(backend), quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.envs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("names", "requirements", "create", "lock"))
    parser.add_argument("env", nargs="*")
    args = parser.parse_args(argv)
    with children.handling_signals():  # a stopped creation removes what it made, then exits
        try:
            if args.action == "names":
                print(" ".join(envs()))
                return 0
            if not args.env or (len(args.env) > 1 and args.action != "lock"):
                raise UsageError(f"`{args.action}` needs an environment name; one of: {', '.join(envs())}")
            for env in args.env:
                if env not in envs():
                    raise UsageError(f"unknown environment {env!r}; environments: {', '.join(envs())}")
            for env in args.env:
                if args.action == "requirements":
                    write_requirements(env)
                elif args.action == "create":
                    create(env)
                else:
                    print(f"==> locked [{env}] into {lock(env).relative_to(ROOT)}", flush=True)
            return 0
        except UsageError as error:
            print(one_line(f"paramparity: error: {error}"), file=sys.stderr)
            return USAGE_EXIT_CODE
        except OSError as error:  # a read-only checkout, a full disk
            where = f" {error.filename}" if error.filename else ""
            print(f"paramparity: error: cannot write{where}: {error.strerror or error}", file=sys.stderr)
            return USAGE_EXIT_CODE
        except KeyboardInterrupt as stop:
            children.interrupt(getattr(stop, "signum", signal.SIGINT))
            children.wait_all()
            print(f"paramparity: {args.action} {' '.join(args.env)}: interrupted", file=sys.stderr)
            return 128 + getattr(stop, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
