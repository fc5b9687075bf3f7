"""`paramparity import` and `paramparity export`, framework-free: export's files, one-line errors
with exit 2 before any backend starts, the verdict on each backend's record, the exit status,
and Ctrl-C. What each backend does with the file is the conformance suite's
(tests/conformance/test_torch_checkpoints.py)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from common.commands import checkpoints, fanout
from common.commands.cli import main
from common.core import portable
from common.core.models import TIED
from common.core.oracle import initial_weights
from common.core.torch_checkpoint import PORTABLE, SAVE_MODEL, read_checkpoint
from tests.common.processes import AFTER_S, gone
from tests.common.test_children import hanging, wait_for_lines  # noqa: F401 - a fixture, used by name
from tests.common.torch_checkpoint_cases import CONTRADICTIONS, TIED_FILE, contents, make
from tests.data.make_torch_checkpoints import fixture_values

FIRST, SECOND, THIRD = "torch", "jax", "mlx"


def one_error_line(capfd) -> str:
    __tracebackhide__ = True
    _, err = capfd.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, f"stderr={err!r}, but should be one line"
    assert err.startswith("paramparity: error: ")
    return err


@pytest.fixture
def no_backend_runs(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("a backend was started")

    monkeypatch.setattr(fanout, "run_parallel", started)
    monkeypatch.setattr(fanout, "prepare_envs", started)
    monkeypatch.delenv("PARITY_PYTHON", raising=False)


# -- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", [SAVE_MODEL, PORTABLE])
def test_export_writes_the_oracle_s_weights_in_either_convention(tmp_path, capsys, convention):
    out = tmp_path / "out.safetensors"
    assert main(["export", "--model", "tied", "--format", convention, str(out)]) == 0
    checkpoint = read_checkpoint(out, TIED)
    assert checkpoint.convention == convention
    for name, value in initial_weights(TIED).items():
        np.testing.assert_array_equal(checkpoint.values[name], value, err_msg=name)
    assert capsys.readouterr().out.startswith(f"wrote {out}: {convention} file of spec tied")


def test_export_converts_a_save_model_file_to_portable_and_back(tmp_path):
    portable_file, back = tmp_path / "p.safetensors", tmp_path / "back.safetensors"
    assert (
        main(
            ["export", "--model", "tied", "--format", PORTABLE, str(portable_file), "--from", str(TIED_FILE)]
        )
        == 0
    )
    assert (
        main(["export", "--model", "tied", "--format", SAVE_MODEL, str(back), "--from", str(portable_file)])
        == 0
    )
    values, _ = portable.read_params(portable_file, TIED)
    for name, value in fixture_values(TIED).items():
        np.testing.assert_array_equal(values[name], value, err_msg=name)
    assert contents(back) == contents(TIED_FILE), "the round trip should give save_model's file again"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "batchnorm"], "spec 'batchnorm' has BatchNorm state"),
        (["--model", "tied", "--from", "/nonexistent.safetensors"], "/nonexistent.safetensors: cannot read"),
        (["--model", "mlp", "--from", str(TIED_FILE)], "2.bias: shape=(8,), but should be (1,)"),
    ],
)
def test_export_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capfd, args, message):
    out = tmp_path / "out.safetensors"
    assert main(["export", "--format", SAVE_MODEL, str(out), *args]) == 2
    assert message in one_error_line(capfd)
    assert not out.exists()


def test_export_to_a_place_that_cannot_be_written_is_one_line(tmp_path, capfd):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", "--model", "tied", "--format", SAVE_MODEL, str(blocker / "out.safetensors")]) == 2
    assert f"cannot write {blocker}/out.safetensors" in one_error_line(capfd)


# -- import: the parent --------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_import_refuses_a_contradicting_file_before_any_backend(tmp_path, capfd, no_backend_runs, case):
    change, match = CONTRADICTIONS[case]
    path = make(tmp_path / "bad.safetensors", change)
    assert main(["import", str(path), "--model", "tied", "--backends", FIRST]) == 2
    assert match in one_error_line(capfd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(TIED_FILE), "--model", "nope"], "unknown model 'nope'"),
        (["/nonexistent.safetensors", "--model", "tied"], "/nonexistent.safetensors: cannot read"),
        ([str(TIED_FILE), "--model", "tied", "--backends", "caffe"], "unknown backend 'caffe'"),
        ([str(TIED_FILE), "--model", "tied", "--timeout", "0"], "--timeout=0, but should be a positive"),
    ],
)
def test_import_refuses_bad_input_in_one_line(capfd, no_backend_runs, args, message):
    assert main(["import", *args]) == 2
    assert message in one_error_line(capfd)


def ok_result(**changes) -> dict:
    result = {
        "convention": SAVE_MODEL,
        "values_differ": [],
        "forward": {"ok": True, "max_delta": 2e-8},
        "grads": {"layers.2.weight": {"ok": True, "max_delta": 1e-7}},
        "ties": {"layers.2.weight -> layers.4.weight": True, "layers.4.weight -> layers.2.weight": True},
    }
    return {"ok": True, "result": {**result, **changes}}


VERDICTS = {
    "ok": (ok_result(), "ok", "ok: values exact, 2 tie writes seen at the other use, forward and gradients"),
    "a tie broken": (
        ok_result(
            ties={"layers.2.weight -> layers.4.weight": False, "layers.4.weight -> layers.2.weight": True}
        ),
        "FAILED",
        "tie broken: a write does not show at layers.2.weight -> layers.4.weight",
    ),
    "values changed": (
        ok_result(values_differ=["layers.2.bias"]),
        "FAILED",
        "values differ from the file at layers.2.bias",
    ),
    "forward differs": (
        ok_result(forward={"ok": False, "max_delta": 0.5}),
        "FAILED",
        "forward differs from the oracle (max |delta| 0.5)",
    ),
    "a gradient differs": (
        ok_result(grads={"layers.2.weight": {"ok": False, "max_delta": 0.1}}),
        "FAILED",
        "gradients differ from the oracle at layers.2.weight",
    ),
    "the child failed": (
        {"ok": False, "error": "ParamFileError: boom"},
        "FAILED",
        "FAILED: ParamFileError: boom",
    ),
    "not built": (
        {"ok": True, "not_built": "mlx declares no embedding (why)"},
        "n/a",
        "n/a: mlx declares no embedding",
    ),
}


@pytest.mark.parametrize("case", list(VERDICTS))
def test_the_verdict_on_a_backend_record(case):
    record, status, text = VERDICTS[case]
    verdict = checkpoints.verdict(record)
    assert verdict[0] == status and text in verdict[1], verdict


EXITS = {
    "every backend ok": ({FIRST: "ok", SECOND: "ok", THIRD: "ok"}, 0),
    "one failed": ({FIRST: "ok", SECOND: "a tie broken", THIRD: "ok"}, 1),
    "one n/a": ({FIRST: "ok", SECOND: "not built", THIRD: "ok"}, 0),
    "none could build it": ({FIRST: "not built", SECOND: "not built", THIRD: "not built"}, 1),
}


@pytest.mark.parametrize("case", list(EXITS))
def test_import_reports_every_backend_then_fails_if_any_failed(monkeypatch, capsys, case):
    cases, status = EXITS[case]
    monkeypatch.setattr(fanout, "prepare_envs", lambda backends: None)
    monkeypatch.setattr(
        fanout, "run_parallel", lambda backends, *a, **k: {b: VERDICTS[cases[b]][0] for b in backends}
    )
    monkeypatch.delenv("PARITY_PYTHON", raising=False)
    assert main(["import", str(TIED_FILE), "--model", "tied", "--backends", ",".join(cases)]) == status
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{TIED_FILE}: save_model file of spec tied, ties recorded as dropped -> kept")
    for backend, kind in cases.items():
        assert sum(line.startswith(f"{backend}: {VERDICTS[kind][1]}") for line in lines) == 1, lines
    assert lines[-1].startswith("import: ok" if status == 0 else "import: FAILED")


def test_ctrl_c_stops_every_child_and_exits_130(hanging, tmp_path):  # noqa: F811 - the fixture
    start, ready, temp, mark = hanging
    process = start("import", str(TIED_FILE), "--model", "tied", "--backends", "torch,jax")
    wait_for_lines(ready, 2, process)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert not gone(mark), f"alive {AFTER_S} s after SIGINT"
    assert (
        stderr.splitlines()[-1]
        == "paramparity: interrupted by SIGINT: every child stopped, no report written"
    )
    assert list(temp.iterdir()) == [], "a temp folder outlived the command"
