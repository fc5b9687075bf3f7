"""JAX/Flax linen adapter: ``nn.Sequential`` of ``nn.Dense`` and ``nn.relu``; a tie is one
``nn.Dense`` instance placed at two positions.

Flax quirks this adapter is built around:
- a linen module holds no arrays; ``net.init(key, x)`` returns the variables as a nested dict, so
  they live in ``model.state["variables"]`` and every write replaces a leaf there;
- a submodule is named where its parent adopts it (``layers_<index>``). A shared instance is
  adopted once, by its first position, so ``layers_4`` never appears: position 4 reads
  ``params/layers_2``. Positions are mapped to parameter paths through the adopted (bound) module
  objects, so a tie is observed, never taken from ``spec.ties``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from common.core.interface import Backend, GradState, Model, ParamInfo, WeightLayout
from common.core.oracle import Loss
from common.core.spec import ROLES, Block, Dense, LayerPath, ModelSpec, param_name, split_param_name
from common.errors import ParamFileError

__all__ = ["FlaxBackend"]

_NATIVE_ROLE = {"weight": "kernel", "bias": "bias"}
_LISTING_CALL = "params['params'] (flax.traverse_util.flatten_dict)"
_FILE_CALL = "flax.serialization.to_bytes(variables)"

Tree = dict[str, Any]


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _get(tree: Tree, keys: tuple[str, ...]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


def _replace(tree: Tree, keys: tuple[str, ...], leaf: Any) -> Tree:
    # Variables are plain nested dicts of immutable jax arrays: rebuild the branch to the leaf,
    # keeping every other leaf (and the key order) as it was.
    if not keys:
        return leaf
    return {**tree, keys[0]: _replace(tree[keys[0]], keys[1:], leaf)}


def _flat_names(tree: Tree) -> list[str]:
    return ["/".join(keys) for keys in traverse_util.flatten_dict(tree)]


class FlaxBackend(Backend):
    name = "jax"
    weight_layout = WeightLayout.IN_OUT
    lazy_mechanism = "nn.Dense(features): no params until net.init(key, x) sees the input size"
    tie_mechanism = "the same nn.Dense instance at both positions (adopted once, by the first)"

    def framework_version(self) -> str:
        return f"flax {flax.__version__} (jax {jax.__version__})"

    # -- building ---------------------------------------------------------------------------------
    def build_mlp(self, spec: ModelSpec) -> Model:
        owners = {slot.path: slot.owner for slot in spec.dense_slots}
        instances: dict[LayerPath, nn.Dense] = {}

        def build(layers: tuple[Any, ...], prefix: LayerPath) -> list[Any]:
            native: list[Any] = []
            for index, layer in enumerate(layers):
                path = prefix + (index,)
                if isinstance(layer, Block):
                    native.append(nn.Sequential(build(layer.layers, path)))
                elif isinstance(layer, Dense):
                    # The owner comes first in walk order, so a tie finds its instance built.
                    owner = owners[path]
                    if owner not in instances:
                        instances[owner] = nn.Dense(layer.units)
                    native.append(instances[owner])
                else:
                    native.append(nn.relu)
            return native

        return self._wrap(spec, nn.Sequential(build(spec.layers, ())))

    @staticmethod
    def _wrap(spec: ModelSpec, net: nn.Sequential) -> Model:
        """The model plus two path tables read off the native tree by index: the layers as built,
        and the modules Flax adopts when the tree is bound. Binding (to no variables: naming needs
        none) runs Flax's adoption, which clones each outside instance once, so a shared nn.Dense
        is the very same bound module, with one scope path, at every position."""
        bound = net.bind({})
        return Model(
            spec,
            net,
            {
                "layers": {path: FlaxBackend._at(net, path) for path, _ in spec.walk()},
                "adopted": {path: FlaxBackend._at(bound, path) for path, _ in spec.walk()},
            },
        )

    @staticmethod
    def _at(net: nn.Sequential, path: LayerPath) -> Any:
        node: Any = net
        for index in path:
            node = node.layers[index]
        return node

    def _dense(self, model: Model, position: str) -> tuple[LayerPath, str, nn.Dense]:
        path, role = split_param_name(position)
        module = model.state["adopted"].get(path)
        if not isinstance(module, nn.Dense):
            raise KeyError(f"{position!r}: the layer at {path} is {module!r}, not an nn.Dense")
        return path, role, module

    def _keys(self, model: Model, position: str) -> tuple[str, ...]:
        """The leaf's path in the variables dict, e.g. ("params", "layers_2", "kernel")."""
        _, role, module = self._dense(model, position)
        return ("params", *module.path, _NATIVE_ROLE[role])

    def _groups(self, model: Model) -> list[list[LayerPath]]:
        """Dense positions grouped by the identity of their adopted module, in walk order; the
        first path of each group is the canonical owner."""
        groups: dict[int, list[LayerPath]] = {}
        for path, module in model.state["adopted"].items():
            if isinstance(module, nn.Dense):
                groups.setdefault(id(module), []).append(path)
        return list(groups.values())

    def _owner_names(self, model: Model) -> dict[tuple[str, ...], str]:
        """Variables-dict keys -> canonical owner name, for every unique parameter."""
        return {
            self._keys(model, param_name(group[0], role)): param_name(group[0], role)
            for group in self._groups(model)
            for role in ROLES
        }

    # -- lazy shapes and forward ------------------------------------------------------------------
    def unbuilt_params(self, model: Model) -> dict[str, str]:
        # Nothing to show before init: the module holds no arrays, not even shapeless ones.
        variables = model.state.get("variables", {})
        return {
            "/".join(keys): str(tuple(leaf.shape))
            for keys, leaf in traverse_util.flatten_dict(variables).items()
        }

    def materialize(self, model: Model) -> None:
        if "variables" not in model.state:
            x = jnp.zeros((1, model.spec.in_features), jnp.float32)
            model.state["variables"] = model.native.init(jax.random.PRNGKey(0), x)

    def forward(self, model: Model, x: np.ndarray) -> np.ndarray:
        self.materialize(model)
        y = model.native.apply(model.state["variables"], jnp.asarray(x, jnp.float32))
        return np.array(y, dtype=np.float32)

    # -- parameters by position -------------------------------------------------------------------
    def list_params(self, model: Model) -> tuple[ParamInfo, ...]:
        self.materialize(model)
        variables, infos = model.state["variables"], []
        for group in self._groups(model):
            for role in ROLES:
                keys = self._keys(model, param_name(group[0], role))
                leaf = _get(variables, keys)
                native_shape = tuple(leaf.shape)
                infos.append(
                    ParamInfo(
                        name=param_name(group[0], role),
                        native_name="/".join(keys),
                        native_shape=native_shape,
                        shape=native_shape[::-1] if role == "weight" else native_shape,
                        dtype=str(leaf.dtype),
                        native_class=_qualname(leaf),
                        positions=tuple(param_name(path, role) for path in group),
                    )
                )
        return tuple(infos)

    def read_native(self, model: Model, position: str) -> np.ndarray:
        self.materialize(model)
        leaf = _get(model.state["variables"], self._keys(model, position))
        return np.array(leaf, dtype=np.float32)

    def write_native(self, model: Model, position: str, value: np.ndarray) -> None:
        self.materialize(model)
        keys = self._keys(model, position)
        variables = model.state["variables"]
        old = _get(variables, keys)
        value = np.asarray(value, dtype=np.float32)
        if value.shape != old.shape:
            raise ValueError(
                f"{position}: shape={value.shape}, but should be {tuple(old.shape)} (native {'/'.join(keys)})"
            )
        model.state["variables"] = _replace(variables, keys, jnp.asarray(value, dtype=old.dtype))

    def read_by_native_name(self, model: Model, native_name: str) -> np.ndarray:
        self.materialize(model)
        try:
            leaf = _get(model.state["variables"], tuple(native_name.split("/")))
        except (KeyError, TypeError):
            raise KeyError(f"{native_name!r} is not a path in the variables dict") from None
        return np.array(leaf, dtype=np.float32)

    def native_type(self, model: Model, position: str) -> str:
        self.materialize(model)
        return _qualname(_get(model.state["variables"], self._keys(model, position)))

    # -- gradients and SGD ------------------------------------------------------------------------
    def grad_state_before_backward(self, model: Model) -> str:
        self.materialize(model)
        variables = model.state["variables"]
        # JAX computes gradients functionally (jax.grad returns them); look for any stored one.
        leaves = jax.tree_util.tree_leaves(variables)
        grads = [leaf.grad for leaf in leaves if hasattr(leaf, "grad")]
        if not grads and set(variables) == {"params"}:
            return GradState.NOT_STORED
        if grads and all(g is None for g in grads):
            return GradState.NONE
        if grads and all(g is not None and not np.any(np.asarray(g)) for g in grads):
            return GradState.ZEROS
        raise RuntimeError(
            f"unexpected gradient state: collections {sorted(variables)}, "
            f"grad attributes {sorted({_qualname(g) for g in grads})}"
        )

    def _loss_fn(self, model: Model, x: np.ndarray, loss: Loss) -> Callable[[Tree], jax.Array]:
        net, variables, x = model.native, model.state["variables"], jnp.asarray(x, jnp.float32)
        target = None if loss.target is None else jnp.asarray(loss.target, jnp.float32)

        def fn(params: Tree) -> jax.Array:
            y = net.apply({**variables, "params": params}, x)
            return jnp.sum(y) if loss.kind == "sum" else jnp.mean((y - target) ** 2)

        return fn

    def _by_owner(self, model: Model, grads: Tree) -> dict[str, np.ndarray]:
        # A shared leaf appears once in the params tree, so jax.grad already summed its positions.
        return {
            name: np.array(_get({"params": grads}, keys), dtype=np.float32)
            for keys, name in self._owner_names(model).items()
        }

    def native_grads(self, model: Model, x: np.ndarray, loss: Loss) -> dict[str, np.ndarray]:
        self.materialize(model)
        grads = jax.grad(self._loss_fn(model, x, loss))(model.state["variables"]["params"])
        return self._by_owner(model, grads)

    def native_sgd_step(
        self, model: Model, x: np.ndarray, loss: Loss, lr: float
    ) -> tuple[float, dict[str, np.ndarray]]:
        self.materialize(model)
        params = model.state["variables"]["params"]
        cached_lr, tx, opt_state = model.state.get("sgd", (None, None, None))
        if cached_lr != lr:
            tx = optax.sgd(lr)
            opt_state = tx.init(params)
        value, grads = jax.value_and_grad(self._loss_fn(model, x, loss))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        stepped = traverse_util.flatten_dict(optax.apply_updates(params, updates))
        # jax tree ops return dicts with sorted keys (bias before kernel); keep init's order so
        # the listing and the file do not change order after a step.
        order = traverse_util.flatten_dict(params)
        params = traverse_util.unflatten_dict({keys: stepped[keys] for keys in order})
        model.state["variables"] = {**model.state["variables"], "params": params}
        model.state["sgd"] = (lr, tx, opt_state)
        return float(value), self._by_owner(model, grads)

    # -- facts and files --------------------------------------------------------------------------
    def native_facts(self, model: Model) -> dict[str, Any]:
        self.materialize(model)
        spec, variables, layers = model.spec, model.state["variables"], list(model.native.layers)
        restored = serialization.msgpack_restore(serialization.to_bytes(variables))
        tie_identity: dict[str, bool] = {}
        if spec.ties:
            first, second = spec.ties[0][:2]
            table = model.state["layers"]
            leaves = [
                [_get(variables, self._keys(model, param_name(path, role))) for role in ROLES]
                for path in (first, second)
            ]
            tie_identity = {
                "same layer object": table[first] is table[second],
                "same parameter object": all(a is b for a, b in zip(*leaves, strict=True)),
            }
        return {
            "listing_call": _LISTING_CALL,
            "listing_names": ["params/" + name for name in _flat_names(variables["params"])],
            "layer_list_call": "net.layers",
            "layer_list_length": len(layers),
            # nn.relu is one function object, so every ReLU position counts as the same object.
            "unique_layer_objects": len({id(layer) for layer in layers}),
            "serializations": {
                "flax.serialization.to_state_dict(variables)": _flat_names(
                    serialization.to_state_dict(variables)
                ),
                f"{_FILE_CALL} (msgpack)": _flat_names(restored),
            },
            "tie_identity": tie_identity,
        }

    def save_native_file(self, model: Model, path: str) -> str:
        self.materialize(model)
        with open(path + ".msgpack", "wb") as file:
            file.write(serialization.to_bytes(model.state["variables"]))
        return _FILE_CALL

    def load_native_file(self, model: Model, path: str) -> tuple[list[str], dict[str, np.ndarray]]:
        with open(path + ".msgpack", "rb") as file:
            # msgpack_restore decodes plain data (dicts of numpy arrays); it never runs code.
            flat = traverse_util.flatten_dict(serialization.msgpack_restore(file.read()))
        owners = self._owner_names(model)  # naming needs no init, so the model is left as it was
        unknown = ["/".join(keys) for keys in flat if keys not in owners]
        missing = ["/".join(keys) for keys in owners if keys not in flat]
        if unknown or missing:
            expected = ", ".join("/".join(keys) for keys in owners)
            raise ParamFileError(
                f"{path}.msgpack: unexpected entries {unknown}, missing {missing}; expected: {expected}"
            )
        values = {owners[keys]: np.array(leaf, dtype=np.float32) for keys, leaf in flat.items()}
        return ["/".join(keys) for keys in flat], values
