"""Keras 3 on JAX adapter: keras.Sequential of Dense / ReLU; a tie reuses one layer object.

Everything Keras shares lives in backends._keras_common; here is JAX's part. Gradients and
training go through ``net.stateless_call`` (variables in, values out), as Keras' guide to a custom
JAX training loop writes it: one jax.jit step over it and ``optimizer.stateless_apply``, built once
per model; the state stays on JAX's side between steps and is assigned back to the variables once.
With ``training=True``, stateless_call returns the non-trainable variables as a training forward
leaves them (a BatchNormalization's moving statistics; a frozen layer's variables, which are
non-trainable too, unchanged): the step threads them, and every call writes them back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from backends._jax_common import device_array, fresh_copies, stacked
from backends._keras_common import KerasBackendBase
from common.core.interface import Model
from common.core.oracle import Loss


class KerasJaxBackend(KerasBackendBase):
    name = "keras_jax"

    def __init__(self) -> None:
        super().__init__(keras, jax)

    def param_location(self, model: Model, position: str) -> tuple[str, int]:
        array = self.param_object(model, position).value  # a tie: one variable, one jax.Array
        platform = next(iter(array.devices())).platform
        return ("cuda" if platform == "gpu" else platform), array.unsafe_buffer_pointer()

    # -- gradients and training ------------------------------------------------------------------
    def _value_and_grad(self, model: Model, kind: str) -> Any:
        """(trainable, non_trainable, x, target) -> ((loss, non_trainable), grads of trainable)."""
        net = model.native

        def compute(trainable: Any, non_trainable: Any, x: Any, target: Any) -> Any:
            y, non_trainable = net.stateless_call(trainable, non_trainable, x, training=True)
            return self.loss_value(y, kind, target), non_trainable

        return jax.value_and_grad(compute, has_aux=True)

    def _indices(self, model: Model) -> list[tuple[str, int]]:
        """Canonical owner -> its index in net.trainable_variables (which lists a tie once, and
        no frozen variable)."""
        index = {id(v): i for i, v in enumerate(model.native.trainable_variables)}
        return [(name, index[id(v)]) for name, v in self.unique_variables(model)]

    @staticmethod
    def _target(loss: Loss) -> Any:
        return device_array("target", 0.0 if loss.target is None else loss.target, np.float32)

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        net = model.native
        state = [v.value for v in net.trainable_variables], [v.value for v in net.non_trainable_variables]
        # One variable used at two positions is one input of stateless_call: jax.grad sums both uses.
        value_and_grad = self.compiled(
            model, ("grad", loss.kind), lambda: jax.jit(self._value_and_grad(model, loss.kind))
        )
        (_, non_trainable), grads = value_and_grad(
            *state, device_array("input", x, x.dtype), self._target(loss)
        )
        for variable, value in zip(net.non_trainable_variables, non_trainable, strict=True):
            variable.assign(value)  # the moving statistics, as the training forward left them
        return {name: self.to_numpy(grads[i]) for name, i in self._indices(model)}

    def _train_step(self, model: Model, optimizer: Any, kind: str, watch: bool) -> Any:
        value_and_grad = self._value_and_grad(model, kind)
        order = [i for _, i in self._indices(model)]  # watched: one flat row, in unique order

        # The state is donated (native_train passes copies), so XLA writes the new values into
        # its buffers rather than allocating (train vs hand, tied MLP: 0.95 before, 0.80 after).
        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def step(trainable: Any, non_trainable: Any, slots: Any, x: Any, target: Any) -> Any:
            self.note_trace(model)
            (value, non_trainable), grads = value_and_grad(trainable, non_trainable, x, target)
            trainable, slots = optimizer.stateless_apply(slots, grads, trainable)
            watched = jnp.concatenate([grads[i].ravel() for i in order]) if watch else ()
            return value, watched, trainable, non_trainable, slots

        return step

    def native_train(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float, steps: int, watch: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        net = model.native
        # stateless_apply takes values in the order the optimizer was built with: net's own.
        optimizer = self.sgd(model, lr, net.trainable_variables)
        step = self.compiled(
            model, ("step", loss.kind, watch), lambda: self._train_step(model, optimizer, loss.kind, watch)
        )
        trainable, non_trainable, slots = fresh_copies(  # the step donates them
            (
                [v.value for v in net.trainable_variables],
                [v.value for v in net.non_trainable_variables],
                [v.value for v in optimizer.variables],
            )
        )
        inputs, target = device_array("input", x, x.dtype), self._target(loss)
        losses, grads = [], []
        for _ in range(steps):
            value, applied, trainable, non_trainable, slots = step(
                trainable, non_trainable, slots, inputs, target
            )
            losses.append(value)
            if watch:
                grads.append(applied)
        for variables, values in (
            (net.trainable_variables, trainable),
            (net.non_trainable_variables, non_trainable),
            (optimizer.variables, slots),
        ):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
        watched = self.split_watched(stacked(grads), self.unique_variables(model)) if watch else {}
        return stacked(losses).astype(np.float64), watched
