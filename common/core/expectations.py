"""What every backend is held to, written once as data.

Shapes and tie positions of the book's models are spelled out by hand here (not derived from
common.core.spec), so the spec machinery is itself checked against them in tests/common.
Facts about one framework (its weight layout, its grad state before backward) live in that
backend's declaration, backends/<name>/backend.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.core.oracle import Conventions

# float32 forward/backward of these small MLPs against the float64 oracle, same weights.
RTOL = 1e-5
ATOL = 1e-6

BOOK_PARAM_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "mlp": {
        "layers.0.weight": (8, 4),
        "layers.0.bias": (8,),
        "layers.2.weight": (1, 8),
        "layers.2.bias": (1,),
    },
    "tied": {
        "layers.0.weight": (8, 4),
        "layers.0.bias": (8,),
        "layers.2.weight": (8, 8),
        "layers.2.bias": (8,),
        "layers.6.weight": (1, 8),
        "layers.6.bias": (1,),
    },
    "nest": {
        "layers.0.0.0.weight": (64, 20),
        "layers.0.0.0.bias": (64,),
        "layers.0.0.2.weight": (32, 64),
        "layers.0.0.2.bias": (32,),
        "layers.0.1.weight": (16, 32),
        "layers.0.1.bias": (16,),
        "layers.1.weight": (20, 16),
        "layers.1.bias": (20,),
    },
}

# Output shape of the book's ``net(X)`` with X of batch 2.
BOOK_OUTPUT_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (2, 1), "tied": (2, 1), "nest": (2, 20)}

# Tied model: unique parameter -> every position using it.
TIED_POSITIONS: dict[str, tuple[str, ...]] = {
    "layers.2.weight": ("layers.2.weight", "layers.4.weight"),
    "layers.2.bias": ("layers.2.bias", "layers.4.bias"),
}

# NestMLP level by level: the canonical layer names under each block.
NEST_LEVELS: dict[str, tuple[str, ...]] = {
    "layers": ("layers.0", "layers.1"),
    "layers.0": ("layers.0.0", "layers.0.1"),
    "layers.0.0": ("layers.0.0.0", "layers.0.0.2"),
}


# BatchNorm divides by a batch's standard deviation, which amplifies float32 rounding where a
# feature varies little across the batch: measured within ~3e-6 relative on these models; 1e-4
# still catches a wrong convention (momentum, biased variance, eps), which moves values by >1e-2.
STATE_RTOL = 1e-4
STATE_ATOL = 1e-5


def conventions_of(facts: Mapping[str, Any]) -> Conventions:
    """A backend's declared BatchNorm facts as the oracle's Conventions."""
    return Conventions(
        momentum=facts["batchnorm_momentum"],
        eps=facts["batchnorm_eps"],
        unbiased_running_var=facts["batchnorm_running_var"] == "unbiased",
        frozen_batchnorm=facts["frozen_batchnorm"],
        statistics_update=facts["batchnorm_statistics_update"],
        inference_debias=facts["batchnorm_inference_debias"],
    )


# embed_tied (common.core.models.EMBED_TIED): the table is used by the lookup and, as its weight,
# by the output projection; the projection's bias is its own.
EMBED_TIED_POSITIONS = {"layers.0.weight": ("layers.0.weight", "layers.3.weight")}
EMBED_TIED_OWN = ("layers.1.weight", "layers.1.bias", "layers.3.bias")
