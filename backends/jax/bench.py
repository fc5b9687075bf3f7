"""The hand-written Flax linen training loop ``make bench`` holds the adapter against: what a
practitioner writes, on JAX's natural fast path (one jax.jit step with optax SGD, no sync per
step). A BatchNorm is ``nn.BatchNorm(use_running_average=False)`` (Flax's momentum is the weight
of the old value: 1 - the canonical one), applied with ``mutable=["batch_stats"]`` and the new
statistics threaded through the step, as Flax's BatchNorm guide does; a frozen layer's parameters
are labelled for ``optax.set_to_zero()`` in an ``optax.partition`` of SGD, the idiom of Flax's
transfer-learning guide."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from common.commands.bench import HandwrittenLoop
from common.core.spec import BatchNorm, Dense, param_name

# linen's names for a layer's two parameters, and for the canonical state roles
_ROLES = {Dense: ("kernel", "bias"), BatchNorm: ("scale", "bias")}
_STATS = {"running_mean": "mean", "running_var": "var"}


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Dense, BatchNorm and ReLU, ties and frozen layers included, set up (and
    compiled) once; ``run(steps)`` trains it further with plain SGD and returns the losses."""
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    made, roles, layers = {}, {}, []  # owner -> the one module; owner -> its parameters' names
    for path, layer in spec.walk():
        owner = owners.get(path)
        if owner not in made and isinstance(layer, Dense):
            made[owner] = nn.Dense(layer.units)
        elif owner not in made and isinstance(layer, BatchNorm):
            settings = {
                "momentum": None if layer.momentum is None else 1 - layer.momentum,
                "epsilon": layer.eps,
            }
            chosen = {k: v for k, v in settings.items() if v is not None}
            made[owner] = nn.BatchNorm(use_running_average=False, **chosen)
        roles.setdefault(owner, _ROLES.get(type(layer)))
        layers.append(nn.relu if owner is None else made[owner])
    net = nn.Sequential(layers)
    # init gives the framework's own initial statistics; the parameters are then the given ones.
    # linen names a submodule where it is first adopted (layers_<first index>); a kernel is (in, out).
    variables = net.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))
    params = dict(variables["params"])
    for owner in made:
        weight, bias = weights[param_name(owner, "weight")], weights[param_name(owner, "bias")]
        scale, shift = roles[owner]
        params[f"layers_{owner[0]}"] = {
            scale: jnp.asarray(weight.T if scale == "kernel" else weight),
            shift: jnp.asarray(bias),
        }
    stats = {name: tree for name, tree in variables.items() if name != "params"}  # batch_stats, if any
    frozen = {f"layers_{owner[0]}" for owner in made if not spec.trainable_at(owner)}
    if frozen:
        labels = traverse_util.path_aware_map(
            lambda keys, _: "frozen" if keys[0] in frozen else "trainable", params
        )
        optimizer = optax.partition({"trainable": optax.sgd(lr), "frozen": optax.set_to_zero()}, labels)
    else:
        optimizer = optax.sgd(lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, stats, opt_state, x, y):
        def loss_fn(params):
            prediction, stats_after = net.apply({"params": params, **stats}, x, mutable=list(stats))
            return jnp.mean((prediction - y) ** 2), stats_after

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    inputs, targets = jnp.asarray(x), jnp.asarray(y)
    carry = {"params": params, "stats": stats, "opt_state": opt_state}

    def run(steps: int) -> np.ndarray:
        params, stats, opt_state = carry["params"], carry["stats"], carry["opt_state"]
        losses = []
        for _ in range(steps):
            params, stats, opt_state, loss = train_step(params, stats, opt_state, inputs, targets)
            losses.append(loss)
        carry.update(params=params, stats=stats, opt_state=opt_state)
        return np.asarray(jnp.stack(losses))

    def running_stats() -> dict[str, np.ndarray]:
        batch_stats = carry["stats"].get("batch_stats", {})
        return {p.name: np.asarray(batch_stats[f"layers_{p.owner[0]}"][_STATS[p.role]]) for p in spec.state}

    return HandwrittenLoop(run, running_stats)
