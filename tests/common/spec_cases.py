"""Invalid specs and the message each must produce; shared by both suites."""

from __future__ import annotations

DENSE8 = {"kind": "dense", "units": 8}
RELU = {"kind": "relu"}

INVALID_SPECS: dict[str, tuple[dict, str]] = {
    "tie of incompatible shapes": (
        {
            "in_features": 4,
            "layers": [DENSE8, RELU, {"kind": "dense", "units": 16}, RELU, DENSE8],
            "ties": [[2, 4]],
        },
        r"cannot tie layers.4 \(in, out\)=\(16, 8\) to layers.2 \(in, out\)=\(8, 16\)",
    ),
    "tie to a missing layer": (
        {"in_features": 4, "layers": [DENSE8, RELU, DENSE8], "ties": [[0, 7]]},
        "tie to layers.7, which holds no parameters",
    ),
    "tie to a ReLU": (
        {"in_features": 4, "layers": [DENSE8, RELU, DENSE8], "ties": [[0, 1]]},
        "tie to layers.1, which holds no parameters",
    ),
    "zero width": (
        {"in_features": 4, "layers": [{"kind": "dense", "units": 0}]},
        "layers.0 Dense units=0, but should be a positive int",
    ),
    "negative width": ({"in_features": 4, "layers": [{"kind": "dense", "units": -3}]}, "units=-3"),
    "zero input width": ({"in_features": 0, "layers": [DENSE8]}, "in_features=0"),
    "unknown layer kind": (
        {"in_features": 4, "layers": [DENSE8, {"kind": "conv2d"}]},
        "unknown layer kind 'conv2d'; valid kinds: embedding, dense, relu, batchnorm, block",
    ),
    "no layers": ({"in_features": 4, "layers": []}, "has no layers"),
    "position in two ties": (
        {"in_features": 8, "layers": [DENSE8, DENSE8, DENSE8], "ties": [[0, 1], [1, 2]]},
        "appears in more than one tie",
    ),
}
