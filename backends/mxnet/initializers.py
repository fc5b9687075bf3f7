"""D2L 6.3 in MXNet Gluon: a fresh nn.Dense, initialized by net.initialize() (the global default,
init.Uniform(0.07); a Dense's bias has its own 'zeros') or by the book's schemes through mx.init,
custom ones as an init.Initializer subclass, as the book's MXNet tab does."""

from __future__ import annotations

import warnings
from typing import Any

from common.core.initializers import Initializers, Scheme


class MXNetInitializers(Initializers):
    def __init__(self) -> None:
        with warnings.catch_warnings():  # numpy aliases MXNet 1.9.1 touches at import
            warnings.simplefilter("ignore", DeprecationWarning)
            import mxnet as mx
            from mxnet import npx
        npx.set_np()  # the book's numpy mode, as the adapter runs it
        self.mx = mx

    def _initializer(self, scheme: Scheme) -> Any:
        mx, law = self.mx, scheme.weight
        if law.kind == "constant":
            return mx.init.Constant(law.scale.value)
        if law.kind == "normal":
            return mx.init.Normal(sigma=law.scale.value)
        if law.kind == "uniform":  # the book's Xavier: uniform, (fan_in + fan_out) / 2, magnitude 3
            return mx.init.Xavier()
        if law.kind == "zeroed_uniform":

            class MyInit(mx.init.Initializer):  # the book's MyInit
                def _init_weight(self, name: str, data: Any) -> None:
                    data[:] = mx.np.random.uniform(-law.scale.value, law.scale.value, data.shape)
                    data *= mx.np.abs(data) >= law.cut

            return MyInit()
        raise NotImplementedError(f"no MXNet initializer for {law.text}")

    def dense(self, fan_in: int, fan_out: int, seed: int, scheme: Scheme | None = None) -> tuple[Any, Any]:
        mx = self.mx
        mx.random.seed(seed)
        layer = mx.gluon.nn.Dense(fan_out, in_units=fan_in)
        if scheme is None:
            layer.initialize()
        else:
            layer.initialize(init=self._initializer(scheme))
            layer.bias.set_data(mx.np.full((fan_out,), scheme.bias.scale.value))
        return layer.weight.data().asnumpy().copy(), layer.bias.data().asnumpy().copy()
