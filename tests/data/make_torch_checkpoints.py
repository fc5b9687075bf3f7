"""Write the committed save_model files: `.venvs/torch/bin/python -m tests.data.make_torch_checkpoints`.

Each is a torch model of a named spec, built as a torch user writes it (a tied Dense is one
``nn.Linear`` at both positions, the book's idiom; the output projection tied to the embedding is
``head.weight = emb.weight``), holding ``fixture_values(spec)`` and saved by the reference
``safetensors.torch.save_model``, which drops the duplicate of each tie and records it in the
metadata. paramparity's own code plays no part in writing them; the torch suites check that the
committed files are still exactly what save_model writes (tests/conformance/test_torch_checkpoints.py).

torch is imported inside the functions that need it, so the framework-free tests can read
``FIXTURES`` and ``fixture_values`` in an environment without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.core.models import EMBED_TIED, TIED
from common.core.oracle import initial_weights
from common.core.spec import Block, Dense, Embedding, ModelSpec, ReLU
from common.core.torch_checkpoint import torch_key

HERE = Path(__file__).resolve().parent
# spec name -> (spec, committed file). Seeded apart from the suites' own weights (seed 0), so
# that a model holding those is never mistaken for one that read the file.
FIXTURES: dict[str, tuple[ModelSpec, Path]] = {
    spec.name: (spec, HERE / f"save_model_{spec.name}.safetensors") for spec in (TIED, EMBED_TIED)
}
FIXTURE_SEED = 20
# A tie between positions 2 and 10: save_model keeps "10.weight", first in string order.
STRING_ORDER = ModelSpec(
    "string_order",
    in_features=3,
    layers=(Dense(3), *(layer for _ in range(5) for layer in (ReLU(), Dense(3)))),
    ties=((2, 10),),
)


def fixture_values(spec: ModelSpec) -> dict[str, np.ndarray]:
    return initial_weights(spec, seed=FIXTURE_SEED)


def torch_model(spec: ModelSpec):
    """``spec`` as torch modules: nested ``nn.Sequential``; a Dense tied to another is that very
    module; a Dense tied to the embedding is its own ``nn.Linear`` whose weight is the table."""
    from torch import nn

    owners = {path: group[0] for group in spec.ties for path in group}
    made: dict = {}

    def build(layers, prefix, width):
        modules = []
        for index, layer in enumerate(layers):
            path = prefix + (index,)
            owner = made.get(owners.get(path, path))
            if isinstance(layer, Block):
                module, width = build(layer.layers, path, width)
            elif isinstance(layer, Embedding):
                module, width = nn.Embedding(layer.vocab, layer.dim), layer.dim
            elif isinstance(layer, Dense) and isinstance(owner, nn.Embedding):
                module, width = nn.Linear(width, layer.units), layer.units
                module.weight = owner.weight
            elif isinstance(layer, Dense):
                module, width = owner or nn.Linear(width, layer.units), layer.units
            elif isinstance(layer, ReLU):
                module = nn.ReLU()
            else:
                raise ValueError(f"{type(layer).__name__}: not built here")
            made[path] = module
            modules.append(module)
        return nn.Sequential(*modules), width

    return build(spec.layers, (), spec.in_features)[0]


def load_values(net, spec: ModelSpec, values: dict[str, np.ndarray]) -> None:
    """Canonical unique values into ``net``, at every position (strict: every key, none extra)."""
    import torch

    net.load_state_dict(
        {
            torch_key(position): torch.from_numpy(values[p.name])
            for p in spec.params
            for position in p.positions
        }
    )


def write(spec: ModelSpec, values: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.torch import save_model

    net = torch_model(spec)
    load_values(net, spec, values)
    save_model(net, str(path))


def main() -> int:
    for spec, path in FIXTURES.values():
        write(spec, fixture_values(spec), path)
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
