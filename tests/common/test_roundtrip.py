"""The round-trip matrix, on framework-free records."""

from __future__ import annotations

from common.commands.roundtrip import MODELS, compare, matrices


def outputs(shift: float = 0.0, ties: bool | None = True) -> dict:
    return {"forward": [[1.0 + shift]], "grads": {"layers.0.weight": [[0.5]]}, "ties_hold": ties}


def export_record() -> dict:
    return {"ok": True, "models": {name: outputs() for name in MODELS}}


def import_record(sources, **overrides) -> dict:
    results = {f"{s}/{name}": outputs() for s in sources for name in MODELS}
    results.update(overrides)
    return {"ok": True, "results": results}


def test_compare_names_what_differs():
    assert compare(outputs(), outputs()) == {"forward": "ok", "grads": "ok", "ties": "ok"}
    assert compare(outputs(), outputs(shift=1e-3))["forward"] == "DIFFERS"
    assert compare(outputs(), outputs(ties=False))["ties"] == "BROKEN"
    assert compare(outputs(), outputs(ties=None))["ties"] == "n/a"
    assert compare(outputs(), {"error": "ParamFileError: boom"}) == {"error": "ParamFileError: boom"}


def test_matrix_marks_failing_rows_and_keeps_every_cell():
    sources = ["torch", "jax"]
    exports = {"torch": export_record(), "jax": {"ok": False, "error": "jax exploded"}}
    imports = {
        "torch": import_record(sources, **{"torch/tied": outputs(ties=False)}),
        "jax": import_record(sources),
    }
    tables = matrices(exports, imports)
    torch_row, torch_ok = tables["tied"][0]
    jax_row, jax_ok = tables["tied"][1]
    assert torch_row == ["torch", "fwd ok  grad ok  ties BROKEN", "fwd ok  grad ok  ties ok"] and not torch_ok
    assert "export failed: jax exploded" in jax_row[1] and not jax_ok
    mlp_row, mlp_ok = tables["mlp"][0]
    assert mlp_ok and mlp_row[1] == "fwd ok  grad ok  ties ok"


def test_a_model_a_backend_cannot_build_is_an_explained_na_cell_that_passes():
    sources = ["torch", "jax"]
    why = "jax declares no batchnorm"
    exports = {"torch": export_record(), "jax": export_record()}
    exports["jax"]["models"]["batchnorm"] = {"not_built": why}
    imports = {
        "torch": import_record(sources, **{"jax/batchnorm": {"not_built": why}}),
        "jax": import_record(
            sources, **{"torch/batchnorm": {"not_built": why}, "jax/batchnorm": {"not_built": why}}
        ),
    }
    rows = matrices(exports, imports)["batchnorm"]
    assert rows[0][0][2] == f"n/a: {why}" and rows[0][1]
    assert rows[1][0][1] == f"n/a: {why}" and rows[1][1]
