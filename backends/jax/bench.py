"""The hand-written Flax linen training loop ``make bench`` holds the adapter against: what a
practitioner writes, on JAX's natural fast path (one jax.jit step with optax SGD, no sync per
step). A BatchNorm is ``nn.BatchNorm(use_running_average=False)`` (Flax's momentum is the weight
of the old value: 1 - the canonical one), applied with ``mutable=["batch_stats"]`` and the new
statistics threaded through the step, as Flax's BatchNorm guide does; a frozen layer's parameters
are labelled for ``optax.set_to_zero()`` in an ``optax.partition`` of SGD, the idiom of Flax's
transfer-learning guide. An Embedding is ``nn.Embed``, and the output tied to it applies that very
Embed's ``attend`` plus a bias of its own, as Flax's lm1b and wmt examples tie their logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from backends._flax_common import ROLE_NAMES
from common.commands.bench import HandwrittenLoop
from common.core.spec import Dense, Embedding


class TiedOutput(nn.Module):
    """The output Dense tied to ``embedding``: its table applied transposed (``attend``) plus a
    bias of its own."""

    embedding: nn.Embed
    units: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.embedding.attend(x) + self.param("bias", nn.initializers.zeros_init(), (self.units,))


def make_handwritten(
    spec, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> HandwrittenLoop:
    """Any flat spec of Embedding, Dense, BatchNorm and ReLU, ties (the transposed one too) and
    frozen layers included, set up (and compiled) once; ``run(steps)`` trains it further with
    plain SGD and returns the losses."""
    owners = {slot.path: slot.owner for slot in spec.layer_slots}
    tables = {slot.path: slot.table for slot in spec.dense_slots if slot.table is not None}
    made, layers = {}, []  # owner -> the one module
    for path, layer in spec.walk():
        owner = owners.get(path)
        if owner is None:
            layers.append(nn.relu)
            continue
        if owner not in made and isinstance(layer, Embedding):
            made[owner] = nn.Embed(num_embeddings=layer.vocab, features=layer.dim)
        elif owner not in made and path in tables:
            made[owner] = TiedOutput(made[tables[path]], layer.units)
        elif owner not in made and isinstance(layer, Dense):
            made[owner] = nn.Dense(layer.units)
        elif owner not in made:
            settings = {
                "momentum": None if layer.momentum is None else 1 - layer.momentum,
                "epsilon": layer.eps,
            }
            chosen = {k: v for k, v in settings.items() if v is not None}
            made[owner] = nn.BatchNorm(use_running_average=False, **chosen)
        layers.append(made[owner])
    net = nn.Sequential(layers)
    # init gives the framework's own initial statistics; the parameters are then the given ones.
    # linen names a submodule where it is first adopted (layers_<first index>), so a tied output's
    # table is its Embed's, layers_0/embedding; a kernel is (in, out).
    variables = net.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))
    params = {name: dict(leaves) for name, leaves in variables["params"].items()}
    for p in spec.params:
        value = weights[p.name]
        native = ROLE_NAMES[p.kind][p.role]
        params[f"layers_{p.owner[0]}"][native] = jnp.asarray(value.T if native == "kernel" else value)
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
        return {
            p.name: np.asarray(batch_stats[f"layers_{p.owner[0]}"][ROLE_NAMES[p.kind][p.role]])
            for p in spec.state
        }

    return HandwrittenLoop(run, running_stats)
