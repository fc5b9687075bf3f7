"""Files written by ``safetensors.torch.save_model`` (a tie stored once, its dropped names in the
metadata) in this backend: the committed files of the tied book model and of embed_tied import
with every tie intact and agree with the oracle; a file whose ties contradict the spec is
refused and changes nothing.

Where torch is installed (the torch environment's suites), three more checks keep the convention
honest against the reference library itself: the committed files are still exactly what
save_model writes, our export is what save_model writes, and the reference ``load_model`` reads
our export back into a torch model with the tie intact. Elsewhere they skip, saying why.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.commands.checkpoints import import_and_check, not_built, verdict
from common.core import oracle
from common.core.models import NEST
from common.core.oracle import Loss
from common.core.torch_checkpoint import (
    SAVE_MODEL,
    import_checkpoint,
    import_torch_checkpoint,
    torch_key,
    write_torch_checkpoint,
)
from common.errors import ParamFileError
from tests.common.torch_checkpoint_cases import CONTRADICTIONS, contents, make
from tests.conformance.fixtures import book_input, loaded_model
from tests.data import make_torch_checkpoints as made
from tests.data.make_torch_checkpoints import FIXTURES, STRING_ORDER, fixture_values
from tests.helpers import assert_close, assert_equal

TORCH_SPECS = {spec.name: spec for spec in (*(spec for spec, _ in FIXTURES.values()), NEST, STRING_ORDER)}


def _buildable(backend, spec):
    why = not_built(backend.name, spec)
    if why:
        pytest.skip(why)


def assert_ties_hold(backend, model, spec, context: str) -> None:
    """A write through any use of a tied parameter shows at every other use."""
    __tracebackhide__ = True
    for p in spec.params:
        for written in p.positions[1:] + p.positions[:1]:
            value = backend.get_param(model, written)
            probe = value.copy()
            probe.flat[0] += 1.0
            backend.set_param(model, written, probe)
            for observed in p.positions:
                np.testing.assert_array_equal(
                    backend.get_param(model, observed),
                    probe,
                    err_msg=f"{observed} after a write through {written} [{context}]",
                )
            backend.set_param(model, written, value)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_a_save_model_file_imports_with_every_tie_intact(backend, name):
    spec, path = FIXTURES[name]
    _buildable(backend, spec)
    model, _ = loaded_model(backend, spec)  # the suites' own weights, which the file replaces
    metadata = import_torch_checkpoint(backend, model, path)
    assert metadata, f"{path.name} records no dropped name: not a tied save_model file"
    values = fixture_values(spec)
    for param, value in values.items():
        np.testing.assert_array_equal(backend.get_param(model, param), value, err_msg=f"{param} after import")
    for dropped, kept in metadata.items():  # each dropped key reads the kept key's value
        np.testing.assert_array_equal(
            backend.get_param(model, f"layers.{dropped}"),
            backend.get_param(model, f"layers.{kept}"),
            err_msg=dropped,
        )
    x = book_input(spec)
    assert_close("net(x)", backend.forward(model, x), oracle.forward(spec, values, x), f"{path.name}")
    grads = backend.backward(model, x, Loss())
    for param, grad in oracle.backward(spec, values, x, Loss()).grads.items():
        assert_close(f"grad {param}", grads[param], grad, "a tied gradient sums every use")
    assert_ties_hold(backend, model, spec, f"after importing {path.name}")


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_import_command_passes_in_this_backend(backend, name):
    """What `paramparity import` runs in each backend's child, and its verdict."""
    spec, path = FIXTURES[name]
    _buildable(backend, spec)
    result = import_and_check(backend, spec, str(path))
    assert result["convention"] == SAVE_MODEL and result["ties"], result
    status, text = verdict({"ok": True, "result": result})
    assert_equal("verdict", status, "ok", text)


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_a_file_whose_ties_contradict_the_spec_is_refused_and_changes_nothing(backend, tmp_path, case):
    spec, _ = FIXTURES["tied"]
    change, match = CONTRADICTIONS[case]
    path = make(tmp_path / "bad.safetensors", change)
    model, _ = loaded_model(backend, spec)
    before = backend.snapshot(model)
    with pytest.raises(ParamFileError, match=match) as info:
        import_checkpoint(backend, model, path)
    assert "\n" not in str(info.value)
    for param, value in backend.snapshot(model).items():
        np.testing.assert_array_equal(value, before[param], err_msg=f"{param} changed by a refused file")
    assert_ties_hold(backend, model, spec, "after a refused file")


# -- against the reference library, where torch is installed ---------------------------------------
@pytest.fixture
def reference_torch():
    """The reference library's torch half (``safetensors.torch``), or a skip saying why."""
    pytest.importorskip(
        "torch",
        reason="torch is not installed in this backend's environment; the torch env's suites run this",
    )
    import safetensors.torch

    return safetensors.torch


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_committed_files_are_what_save_model_writes(reference_torch, tmp_path, name):
    """`.venvs/torch/bin/python -m tests.data.make_torch_checkpoints` would write them again."""
    spec, committed = FIXTURES[name]
    fresh = tmp_path / committed.name
    made.write(spec, fixture_values(spec), fresh)
    assert contents(fresh) == contents(committed), f"{committed.name} is not what save_model writes now"


@pytest.mark.parametrize("name", list(TORCH_SPECS))
def test_our_export_is_what_save_model_writes(reference_torch, tmp_path, name):
    spec = TORCH_SPECS[name]
    values = oracle.initial_weights(spec, seed=7)
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_torch_checkpoint(ours, spec, values)
    made.write(spec, values, theirs)
    assert contents(ours) == contents(theirs)


@pytest.mark.parametrize("name", list(TORCH_SPECS))
def test_load_model_reads_our_export_with_the_tie_intact(reference_torch, tmp_path, name):
    import torch

    spec = TORCH_SPECS[name]
    values = oracle.initial_weights(spec, seed=8)
    path = tmp_path / "ours.safetensors"
    write_torch_checkpoint(path, spec, values)
    net = made.torch_model(spec)  # torch's own initial values, which the file replaces
    missing, unexpected = reference_torch.load_model(net, str(path))  # strict: it raises on any other key
    assert (sorted(missing), unexpected) == ([], []), (missing, unexpected)
    for p in spec.params:
        params = [net.get_parameter(torch_key(position)) for position in p.positions]
        assert all(param is params[0] for param in params), (
            f"{p.positions}: no longer one Parameter after load_model"
        )
        np.testing.assert_array_equal(params[0].detach().numpy(), values[p.name], err_msg=p.name)
    x = book_input(spec)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    assert_close("torch net(x) after load_model", y, oracle.forward(spec, values, x))
