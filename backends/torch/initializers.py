"""D2L 6.3 in PyTorch: a fresh nn.Linear, its default init (reset_parameters: kaiming_uniform_ with
a = sqrt(5) for the weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias) or the book's
schemes through nn.init, as the book's PyTorch tab applies them."""

from __future__ import annotations

from typing import Any

from common.core.initializers import Initializers, Scheme


class TorchInitializers(Initializers):
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        torch, init = self.torch, self.torch.nn.init
        torch.manual_seed(seed)
        layer = torch.nn.Linear(fan_in, fan_out)
        if scheme is not None:
            with torch.no_grad():
                weight, law = layer.weight, scheme.weight
                if law.kind == "constant":
                    init.constant_(weight, law.scale.value)
                elif law.kind == "normal":
                    init.normal_(weight, mean=0.0, std=law.scale.value)
                elif law.kind == "uniform":  # the book's Xavier
                    init.xavier_uniform_(weight)
                elif law.kind == "zeroed_uniform":  # the book's my_init
                    init.uniform_(weight, -law.scale.value, law.scale.value)
                    weight *= weight.abs() >= law.cut
                else:
                    raise NotImplementedError(f"no torch initializer for {law.text}")
                init.constant_(layer.bias, scheme.bias.scale.value)
        return layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()
