"""Named specs: the book's three models (D2L section 6.2 and the NestMLP of 6.3), the state
models (BatchNorm and freezing) and the embedding tied to the output projection."""

from __future__ import annotations

import os

from common.core.spec import BatchNorm, Block, Dense, Embedding, ModelSpec, ReLU, spec_from_dict
from common.core.untrusted import printable, read_json_file
from common.errors import SpecError

MAX_SPEC_FILE = 16 * 1024 * 1024

# net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1)); X = torch.rand(2, 4)
MLP = ModelSpec("mlp", in_features=4, layers=(Dense(8), ReLU(), Dense(1)))

# shared = nn.LazyLinear(8)
# net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.LazyLinear(1))
TIED = ModelSpec(
    "tied",
    in_features=4,
    layers=(Dense(8), ReLU(), Dense(8), ReLU(), Dense(8), ReLU(), Dense(1)),
    ties=((2, 4),),
)

# NestMLP: net = Sequential(Dense 64, ReLU, Dense 32, ReLU); linear = Dense 16.
# chimera = Sequential(NestMLP(), Dense 20); X = torch.rand(2, 20)
NEST_MLP = Block((Block((Dense(64), ReLU(), Dense(32), ReLU()), "net"), Dense(16)), "NestMLP")
NEST = ModelSpec("nest", in_features=20, layers=(NEST_MLP, Dense(20)))

BOOK_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (MLP, TIED, NEST)}

# Non-trainable state and freezing: a BatchNorm at the framework's defaults, a frozen Dense, and a
# frozen BatchNorm with its momentum set canonically (what freezing does to its statistics is
# each framework's convention).
BATCHNORM = ModelSpec(
    "batchnorm",
    in_features=4,
    layers=(
        Dense(8),
        BatchNorm(),
        ReLU(),
        Dense(8, trainable=False),
        BatchNorm(momentum=0.2, trainable=False),
        ReLU(),
        Dense(1),
    ),
)
# One BatchNorm used at two positions: its statistics are updated at each use, in order.
TIED_BATCHNORM = ModelSpec(
    "tied_batchnorm",
    in_features=4,
    layers=(Dense(8), BatchNorm(), ReLU(), Dense(8), BatchNorm(), ReLU(), Dense(1)),
    ties=((1, 4),),
)
STATE_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (BATCHNORM, TIED_BATCHNORM)}

# The tie language models use: the input embedding's table is the output projection's weight (a
# transposed tie; the projection keeps its own bias). Book-sized: 16 ids, 8 dimensions.
EMBED_TIED = ModelSpec(
    "embed_tied",
    in_features=16,
    layers=(Embedding(16, 8), Dense(8), ReLU(), Dense(16)),
    ties=((0, 3),),
)
EMBED_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (EMBED_TIED,)}
NAMED_SPECS: dict[str, ModelSpec] = {**BOOK_SPECS, **STATE_SPECS, **EMBED_SPECS}


def load_spec(name_or_path: str) -> ModelSpec:
    """A named book or state spec, or a JSON spec file read with limits: a regular file (no FIFO, no
    device) of at most MAX_SPEC_FILE bytes, parsed by ``untrusted.load_json`` (bounded nesting and
    integers, linear time). Anything wrong is one SpecError line."""
    if name_or_path in NAMED_SPECS:
        return NAMED_SPECS[name_or_path]
    if not os.path.lexists(name_or_path):
        raise SpecError(
            f"unknown model '{printable(name_or_path)}': not a named model ({', '.join(NAMED_SPECS)}) "
            "and not a JSON file"
        )
    data = read_json_file(name_or_path, max_bytes=MAX_SPEC_FILE, error=SpecError, what="spec file")
    return spec_from_dict(data)
