"""`make bench`: what the suite costs, as ratios measured in one run (these machines are noisy,
so no figure is an absolute time on its own; each is a median of repeats or a ratio).

1. training: the adapter's ``train`` (with and without per-step watching) against the backend's
   hand-written loop on its natural fast path (``bench`` in its declaration), same run, taking
   turns, one backend at a time, on each model of BENCH_MODELS: the tied MLP and the BatchNorm
   model (a BatchNorm, a frozen Dense, a frozen BatchNorm). The two sides' first runs are checked
   against each other first: the same losses and running statistics, or the ratio means nothing;
2. suites: each suite's wall time against the bare import of its framework, and test-all's total
   against the summed floor;
3. scaling: per-layer cost of spec construction, list_params, backward and export/import at 10 to
   10,000 layers (log-log plot), to catch anything quadratic;
4. diff: ``make diff`` against the slowest bare import;
5. environments: the seconds each took to create, as recorded when it was created.

The per-backend parts run in the backend's environment (``--backend``); this module imports no
framework itself.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import children
from common.commands.fanout import (
    child_main,
    module_command,
    prepare_envs,
    run_parallel,
    shown,
    writable_folder,
    write_output,
)
from common.commands.textable import format_table
from common.config import add_backends_option, add_timeout_option, parse_backend_list
from common.core import oracle, portable
from common.core.expectations import STATE_ATOL, STATE_RTOL
from common.core.models import BATCHNORM, TIED
from common.core.oracle import Loss
from common.core.spec import Dense, ModelSpec, ReLU
from common.declarations import Declaration, declaration, envs
from common.envs import ROOT, VENVS, backend_env, venv_python

REPORTS = ROOT / "reports"
STEPS = 200
REPEATS = 5
TRAINING_REPEATS = 15  # 200 compiled steps take milliseconds: a median of 5 still moved by 0.1
LR = 0.05
BENCH_MODELS = (TIED, BATCHNORM)
# What a BatchNorm model needs a backend to declare; a backend without them is benched on the
# tied MLP alone, and its record says why.
NEEDS = {BATCHNORM.name: ("batchnorm", "freezing")}
# The hand-written loop and the adapter run one framework on one float32 input, so their losses
# and running statistics agree to rounding (measured after 200 steps: bit for bit in nine
# backends, within 4e-7 relative in MLX); they are held to the suite's tolerance for state after
# training. A loop that forgets the statistics, a freeze or a tie is off by orders more.
AGREEMENT_RTOL, AGREEMENT_ATOL = STATE_RTOL, STATE_ATOL


@dataclass(frozen=True)
class HandwrittenLoop:
    """What ``backends/<name>/bench.py: make_handwritten(spec, weights, x, y, lr)`` returns: the
    framework's fast-path training loop for ``spec`` as a practitioner writes it, set up (and
    compiled) once, from ``weights`` (canonical names and layout) and the framework's own initial
    running statistics, the net in training mode, frozen layers frozen with the framework's own
    idiom."""

    run: Callable[[int], np.ndarray]  # that many more plain-SGD steps of MSE; their losses
    # Canonical state name (spec.state: layers.1.running_mean) -> its value now, as the framework
    # stores it (the adapter's get_state reads the same); {} for a spec without BatchNorm.
    running_stats: Callable[[], dict[str, np.ndarray]]


SIZES = (10, 100, 1000, 10000)
BACKEND_SIZES = (10, 100, 1000)  # by default: 10,000 framework layers take ~5 min per backend here


def timed(run) -> float:
    """Seconds ``run`` takes, with the garbage collector off meanwhile, as timeit does: a
    collection that lands in one side's run is not that side's cost."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started
    finally:
        if enabled:
            gc.enable()


def median_ratios(runs: dict[str, Any], baseline: str, repeats: int = REPEATS) -> dict[str, float]:
    """Each run against ``baseline``: after one warm-up each, the runs take turns in every repeat,
    and each ratio is the median of the per-repeat ratios, so a change in machine load hits both
    sides of a ratio alike."""
    for run in runs.values():
        run()  # warm-up: compilation and first-call costs are not the steady state
    ratios: dict[str, list[float]] = {name: [] for name in runs if name != baseline}
    for _ in range(repeats):
        seconds = {name: timed(run) for name, run in runs.items()}
        for name in ratios:
            ratios[name].append(seconds[name] / seconds[baseline])
    return {name: statistics.median(values) for name, values in ratios.items()}


def median_seconds(run, repeats: int = REPEATS) -> float:
    run()  # warm-up: compilation and first-call costs are not the steady state
    return statistics.median(timed(run) for _ in range(repeats))


def deep_spec(layers: int) -> ModelSpec:
    """``layers`` Dense layers of width 4 with a ReLU between each, no ties."""
    body: list[Any] = []
    for _ in range(layers):
        body += [Dense(4), ReLU()]
    return ModelSpec(f"deep{layers}", in_features=4, layers=tuple(body[:-1]))


# -- in the backend's environment ------------------------------------------------------------------
def bench_models(entry: Declaration) -> dict[str, ModelSpec | str]:
    """Each model of BENCH_MODELS by name: the spec, or why this backend cannot train it (a
    capability it declares false)."""
    chosen: dict[str, ModelSpec | str] = {}
    for spec in BENCH_MODELS:
        lacking = [c for c in NEEDS.get(spec.name, ()) if not entry.capability(c).value]
        chosen[spec.name] = (
            f"{lacking[0]} is declared false: {entry.capability(lacking[0]).reason}" if lacking else spec
        )
    return chosen


def disagreement(
    hand: tuple[np.ndarray, dict[str, np.ndarray]], adapter: tuple[np.ndarray, dict[str, np.ndarray]]
) -> str | None:
    """Where the hand-written loop's (losses, running statistics) and the adapter's differ beyond
    AGREEMENT_RTOL/ATOL, in one line; None where they agree."""
    pairs = [("losses", np.asarray(hand[0], np.float64), np.asarray(adapter[0], np.float64))]
    if sorted(hand[1]) != sorted(adapter[1]):
        return f"running statistics {sorted(hand[1])}, but should be {sorted(adapter[1])}"
    pairs += [
        (name, np.asarray(hand[1][name], np.float64), np.asarray(adapter[1][name], np.float64))
        for name in sorted(hand[1])
    ]
    for name, got, expected in pairs:
        if got.shape != expected.shape:
            return f"{name}: shape={got.shape}, but should be {expected.shape}"
        off = np.abs(got - expected) > AGREEMENT_ATOL + AGREEMENT_RTOL * np.abs(expected)
        if off.any():
            where = tuple(int(i) for i in np.argwhere(off)[0])
            return (
                f"{name}{list(where)}={got[where]:.7g}, but should be {expected[where]:.7g} (the adapter's; "
                f"{int(off.sum())} of {off.size} elements differ)"
            )
    return None


def checked_pair(backend, make_handwritten, spec: ModelSpec, steps: int) -> tuple[Any, Callable[..., Any]]:
    """The hand-written loop and the adapter's model, set up from the same weights and data, and
    their first runs of ``steps`` (which compile them) checked against each other: a
    RuntimeError names the difference. Returns the loop and ``train(steps, watch)``, more of the
    adapter's training of that model."""
    from common.commands.training import regression_data

    x, y = regression_data(spec)
    loss = Loss("mse", y)
    weights = oracle.initial_weights(spec)
    loop = make_handwritten(spec, weights, x, y, LR)
    model = backend.build_mlp(spec)
    backend.load_params(model, weights)
    # Each side's statistics are read right after its own run, as a user reads them.
    adapter_losses = backend.train(model, x, loss, LR, steps)[0]
    running = {p.name: backend.get_state(model, p.name) for p in spec.state}
    hand_losses = loop.run(steps)
    problem = disagreement((hand_losses, loop.running_stats()), (adapter_losses, running))
    if problem is not None:
        raise RuntimeError(
            f"{spec.name}: the hand-written loop does not compute what the adapter does after "
            f"{steps} steps, so no ratio is measured: {problem}"
        )
    return loop, lambda steps, watch: backend.train(model, x, loss, LR, steps, watch=watch)


def measure_training(backend, make_handwritten, spec: ModelSpec) -> dict[str, float]:
    """The adapter's train against the hand-written loop on ``spec``, once checked_pair agrees."""
    loop, train = checked_pair(backend, make_handwritten, spec, STEPS)
    return median_ratios(
        {
            "hand": lambda: loop.run(STEPS),
            "unwatched": lambda: train(STEPS, watch=False),
            "watched": lambda: train(STEPS, watch=True),
        },
        baseline="hand",
        repeats=TRAINING_REPEATS,
    )


def measure_backend(name: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    from common.commands.fanout import report_progress
    from common.registry import load_backend

    backend = load_backend(name)
    entry = declaration(name)
    result: dict[str, Any] = {"steps": STEPS, "repeats": TRAINING_REPEATS}
    if entry.bench:
        module, _, function = entry.bench.partition(":")
        make_handwritten = getattr(importlib.import_module(module), function)
        training: dict[str, Any] = {}
        for model_name, spec in bench_models(entry).items():
            if isinstance(spec, str):
                training[model_name] = {"skipped": spec}
                continue
            report_progress(f"training {model_name}: {STEPS} steps x {TRAINING_REPEATS} repeats")
            training[model_name] = measure_training(backend, make_handwritten, spec)
        result["training"] = training
    scaling: dict[str, dict[str, float]] = {}
    for size in sizes:
        report_progress(f"scaling at {size} layers")
        try:
            scaling[str(size)] = scaling_per_layer(backend, size)
        except Exception as error:  # a framework that cannot hold this depth: say so, keep the rest
            result["scaling_stopped"] = f"at {size} layers: {type(error).__name__}: {str(error)[:200]}"
            break
    result["scaling_per_layer"] = scaling
    return result


def scaling_per_layer(backend, size: int) -> dict[str, float]:
    spec = deep_spec(size)
    model = backend.build_mlp(spec)
    backend.materialize(model)
    inputs = oracle.sample_input(spec)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "p.safetensors")
        costs = {
            "list_params": median_seconds(lambda: backend.list_params(model), 3),
            "backward": median_seconds(lambda: backend.backward(model, inputs, Loss()), 3),
            "export+import": median_seconds(
                lambda: (
                    portable.export_params(backend, model, path),
                    portable.import_params(backend, model, path),
                ),
                3,
            ),
        }
    return {key: seconds / size for key, seconds in costs.items()}


def bare_import_seconds(backend: str) -> float:
    """Median wall time of a fresh interpreter importing the backend's adapter (its framework)."""
    python = str(venv_python(backend_env(backend)))
    code = f"from common.registry import load_backend; load_backend({backend!r})"
    times = []
    for _ in range(3):
        started = time.perf_counter()
        children.run([python, "-c", code], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def spec_scaling(sizes: tuple[int, ...]) -> dict[str, float]:
    """Per-layer cost of building a spec and its parameter table, each sample covering the same
    number of layers (10 layers are built 1,000 times), so small sizes are not timer noise."""
    per_layer = {}
    largest = max(sizes)
    for size in sizes:
        copies = max(1, largest // size)
        seconds = median_seconds(lambda s=size, n=copies: [deep_spec(s).params for _ in range(n)], 5)
        per_layer[str(size)] = seconds / (size * copies)
    return per_layer


# -- the command -----------------------------------------------------------------------------------
def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="ratios: adapter vs hand-written training, suites vs bare imports, per-layer scaling",
        description=__doc__.split("\n\n")[0],
    )
    add_backends_option(parser)
    add_timeout_option(parser)
    parser.add_argument("--no-suites", action="store_true", help="skip the test-all and diff timings")
    parser.add_argument("--out-dir", type=Path, default=REPORTS, help="where reports go (default: reports/)")
    parser.add_argument(
        "--max-layers",
        type=int,
        choices=SIZES,
        default=BACKEND_SIZES[-1],
        help=f"largest model of the per-backend scaling (default {BACKEND_SIZES[-1]})",
    )
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    backends = parse_backend_list(args.backends)
    out = writable_folder(args.out_dir, "--out-dir")  # before the benchmarks, not after
    prepare_envs(backends)
    sizes = ",".join(str(size) for size in SIZES if size <= args.max_layers)
    records = run_parallel(
        backends,
        module_command("common.commands.bench", "--sizes", sizes),
        what="benchmarking",
        timeout=args.timeout,
        at_once=1,  # each backend alone on the machine: its ratios are not the others' noise
    )
    print("measuring bare imports ...", file=sys.stderr, flush=True)
    imports = {b: bare_import_seconds(b) for b in backends if records[b].get("ok")}
    report: dict[str, Any] = {
        "backends": {b: {**records[b], "bare_import_s": imports.get(b)} for b in backends},
        "spec_per_layer_s": spec_scaling(SIZES),
        "env_create_s": env_creation_seconds(),
    }
    if not args.no_suites:
        report["suites"] = time_suites(backends, imports, args.timeout)
        report["diff"] = time_diff(backends, imports, args.timeout)
    write_output(out / "bench.json", json.dumps(report, indent=1, sort_keys=True) + "\n")
    plot_scaling(report, out / "bench_scaling.png")
    print(render(report))
    print(f"\nwrote {shown(out / 'bench.json')} and {shown(out / 'bench_scaling.png')}")
    return 0 if all(r.get("ok") for r in records.values()) else 1


def env_creation_seconds() -> dict[str, float | None]:
    found = {}
    for env in envs():
        record = VENVS / f"{env}.created.json"
        found[env] = json.loads(record.read_text())["seconds"] if record.exists() else None
    return found


def time_suites(backends: tuple[str, ...], imports: dict[str, float], timeout: float) -> dict[str, Any]:
    """Run test-all once and read each suite's wall time from its summary."""
    print("running test-all for the suite timings ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    completed = children.run(
        [sys.executable, "-m", "common", "test-all", "--backends", ",".join(backends),
         "--timeout", str(timeout), "-q"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    total = time.perf_counter() - started
    seconds = {}
    for line in completed.stdout.splitlines():
        parts = line.lstrip("! ").split()  # a failed row may carry a "!" mark
        if parts and parts[0] in backends and parts[-2].endswith("s"):
            seconds[parts[0]] = float(parts[-2].rstrip("s"))
    floor = sum(imports.values())
    return {
        "per_suite": {b: {"seconds": s, "ratio": s / imports[b]} for b, s in seconds.items() if b in imports},
        "total_s": total,
        "summed_import_floor_s": floor,
        "total_ratio": total / floor if floor else None,
        "exit_status": completed.returncode,
    }


def time_diff(backends: tuple[str, ...], imports: dict[str, float], timeout: float) -> dict[str, Any]:
    print("running diff ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    children.run(
        [sys.executable, "-m", "common", "diff", "--backends", ",".join(backends), "--timeout", str(timeout)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    slowest = max(imports.values(), default=0.0)
    return {"seconds": seconds, "slowest_import_s": slowest, "ratio": seconds / slowest if slowest else None}


def _fmt(value: float | None, unit: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def render(report: dict[str, Any]) -> str:
    rows, skipped = [], []
    for name, record in report["backends"].items():
        if not record.get("ok"):
            rows.append([name, "", f"FAILED: {record.get('error')}", "", "", ""])
            continue
        suite = report.get("suites", {}).get("per_suite", {}).get(name, {})
        backend_columns = [name, _fmt(suite.get("ratio")), _fmt(record.get("bare_import_s"), "s")]
        training = record.get("training") or {"-": {}}
        known = [spec.name for spec in BENCH_MODELS]  # in this order: the record's JSON sorted them
        for model in [m for m in known if m in training] + sorted(set(training) - set(known)):
            ratios = training[model]
            if "skipped" in ratios:
                skipped.append(f"{name}: {model} not benched: {ratios['skipped']}")
            shown_ratios = [_fmt(ratios.get("unwatched")), _fmt(ratios.get("watched"))]
            rows.append([backend_columns[0], model, *shown_ratios, *backend_columns[1:]])
            backend_columns = ["", "", ""]  # once, on the backend's first row
    lines = [
        "paramparity bench (ratios from one run; medians of repeats)",
        "",
        format_table(
            ["backend", "model", "train vs hand", "watched vs hand", "suite vs import", "bare import"], rows
        ),
        *skipped,
    ]
    if "suites" in report:
        suites = report["suites"]
        lines.append(
            f"\ntest-all: {suites['total_s']:.0f}s = {_fmt(suites['total_ratio'])} the summed bare "
            f"imports ({suites['summed_import_floor_s']:.1f}s)"
        )
        diff = report["diff"]
        lines.append(f"diff: {diff['seconds']:.1f}s = {_fmt(diff['ratio'])} the slowest bare import")
    spec = report["spec_per_layer_s"]
    lines.append(
        "\nspec construction per layer: "
        + ", ".join(f"{n} layers {v * 1e6:.1f}us" for n, v in spec.items())
        + f" (10,000 vs 10: {_fmt(spec[str(SIZES[-1])] / spec[str(SIZES[0])])})"
    )
    for name, record in report["backends"].items():
        scaling = record.get("scaling_per_layer", {})
        if scaling:
            sizes = list(scaling)
            growth = {k: scaling[sizes[-1]][k] / scaling[sizes[0]][k] for k in scaling[sizes[0]]}
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in growth.items())
            lines.append(f"{name}: per-layer cost at {sizes[-1]} vs {sizes[0]} layers: {text}")
        if record.get("scaling_stopped"):
            lines.append(f"{name}: scaling stopped {record['scaling_stopped']}")
    created = ", ".join(f"{env} {_fmt(s, 's')}" for env, s in report["env_create_s"].items())
    lines.append(f"\nenvironment creation (as recorded when made): {created}")
    return "\n".join(lines)


def plot_scaling(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    spec = report["spec_per_layer_s"]
    axes.plot([int(n) for n in spec], list(spec.values()), "k-o", label="spec construction")
    for name, record in report["backends"].items():
        scaling = record.get("scaling_per_layer", {})
        for key, style in (("list_params", "-"), ("backward", "--"), ("export+import", ":")):
            if scaling:
                axes.plot(
                    [int(n) for n in scaling],
                    [v[key] for v in scaling.values()],
                    style,
                    marker=".",
                    label=f"{name} {key}",
                )
    axes.set(xscale="log", yscale="log", xlabel="layers", ylabel="seconds per layer")
    axes.set_title("Per-layer cost (flat = linear)")
    axes.legend(fontsize=6, ncol=2)
    buffer = tempfile.SpooledTemporaryFile()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    buffer.seek(0)
    write_output(path, buffer.read())
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> int:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sizes", default=",".join(map(str, BACKEND_SIZES)))

    def produce(args: argparse.Namespace) -> dict[str, Any]:
        sizes = tuple(int(size) for size in args.sizes.split(","))
        return measure_backend(args.backend, sizes)

    return child_main("paramparity bench child", produce, arguments, argv)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
