"""Generated models for the property tests: Hypothesis strategies, the example budget, and the
float32 error bound every backend is held to.

- ``valid_specs()``: 1 to 8 Dense layers of widths 1 to 64 on inputs of 1 to 32 features, ReLUs
  anywhere (leading, trailing, repeated), a BatchNorm right after any Dense (momentum and eps each
  unset, the framework's default, or set canonically), any Dense or BatchNorm frozen (at least
  one layer trains), blocks nested up to 3 deep, and 0 to 3 tie groups of 2 or 3 positions each,
  Dense with Dense or BatchNorm with BatchNorm, their shapes made equal by construction, free to
  cross block boundaries. In one spec of three, an Embedding(vocab, dim) first (vocab 1 to 32,
  the ids' range and in_features; dim the first Dense's input width), maybe frozen, and maybe
  read by one Dense (units == vocab, input width == dim) as its weight: the transposed tie.
  BatchNorm, freezing and embeddings are drawn only where the backend declares the capability
  (``batchnorm``, ``freezing``, ``embedding`` arguments). ``cases()`` adds a batch size (1 to 16,
  2 or more with a BatchNorm) and a loss; every draw shrinks towards one Dense layer of width 1,
  no ReLU, no BatchNorm, no Embedding, nothing frozen, no block, no tie, batch 1 and the sum
  loss. A case's input is floats, or for an Embedding ids drawn over the whole vocabulary (they
  repeat whenever the batch outnumbers it).
- ``invalid_specs()``: JSON-like dicts that ``spec_from_dict`` must refuse, each with the reason
  and a regular expression its SpecError message must match.
- ``native_changes()``: changes to a model's own native file that every backend's reader must
  refuse (``common.core.hostile_native``: other dtypes, float64 beyond float32's range, NaN and
  Inf, oversized names, a missing entry, a FIFO or a device in its place).
- ``budget()`` (from ``common.config``, the one reader of PARITY_EXAMPLES and PARITY_SEED):
  examples per property (default 10) and the seed (unset: derandomized, the same examples every
  run); ``configured`` applies them to a test.
- ``bounds()``: per-element tolerances for a float32 computation against the float64 oracle, in
  training or inference mode, for the output, the loss, the gradients (an embedding's table:
  its lookup's scatter-add plus the tied Dense's use) and the running statistics after the pass
  (the rule is written out in tests/conformance/test_properties.py).

Hypothesis is imported here and nowhere else in ``common/``; the base environment and every
backend's environment have it (pyproject's extras).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from common.config import DEFAULT_EXAMPLES, EXAMPLES_ENV, SEED_ENV, Budget, budget
from common.core import oracle
from common.core.hostile_native import KINDS, LONG_NAME, RETYPED, NativeChange
from common.core.oracle import Conventions, Loss
from common.core.spec import (
    LAYER_KINDS,
    MAX_LAYERS,
    MAX_NESTING,
    BatchNorm,
    Block,
    Dense,
    Embedding,
    Layer,
    LayerPath,
    ModelSpec,
    ReLU,
    layer_name,
    param_name,
    spec_from_dict,
)
from common.core.untrusted import shown

__all__ = [
    "DEFAULT_EXAMPLES",
    "EXAMPLES_ENV",
    "SEED_ENV",
    "Bounds",
    "Budget",
    "Case",
    "InvalidCase",
    "InvalidInput",
    "Materials",
    "bounds",
    "budget",
    "case_from_dict",
    "cases",
    "configured",
    "invalid_inputs",
    "invalid_specs",
    "native_changes",
    "valid_specs",
]


MAX_DENSE = 8
MAX_WIDTH = 64
MAX_INPUT = 32
MAX_BLOCK_DEPTH = 3
MAX_TIE_GROUPS = 3
MAX_BATCH = 16
MIN_BATCHNORM_BATCH = 3  # see cases
LOSS_KINDS = ("sum", "mse")
UNIT_ROUNDOFF = 2.0**-24  # float32
CASE_MARKER = "PARITY-CASE"  # prefix of the line a failing property prints; fuzz_specs greps it


# == budget: read in common.config, the one reader of PARITY_* ==================================
def configured(test: Callable) -> Callable:
    """Apply the budget to a ``@given`` test: a fixed number of examples, no deadline (a framework
    may compile on first use), no example database (runs do not depend on earlier runs), and
    derandomized unless PARITY_SEED names a seed."""
    chosen = budget()
    test = settings(
        max_examples=chosen.examples,
        derandomize=chosen.seed is None,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=False,
    )(test)
    return test if chosen.seed is None else fixed_seed(chosen.seed)(test)


# == valid specs ==================================================================================
class _Sets:
    """Union-find over width variables: variable k is the input width of Dense k (variable 0 is
    in_features), variable k + 1 its output width."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        self.parent[max(a, b)] = min(a, b)  # the root is the smallest variable: 0 if in_features


@dataclass(frozen=True)
class _Norm:
    """A BatchNorm in the execution order, right after Dense ``dense`` (it normalizes its output)."""

    dense: int


_EMBEDDING = "embedding"  # the Embedding among the items of valid_specs
MOMENTA = st.none() | st.floats(0.05, 1.0)  # canonical: the weight of the new batch
EPSILONS = st.none() | st.floats(1e-5, 0.1)


def _shuffled(draw, items: list) -> list:
    """``items`` in a drawn order: sorted by MAX_DENSE drawn keys, a fixed number of draws, so
    that deleting an item leaves the later draws their meaning; all keys 0 keep the order."""
    keys = draw(st.lists(st.integers(0, MAX_DENSE - 1), min_size=MAX_DENSE, max_size=MAX_DENSE))
    return [item for _, item in sorted(zip(keys[: len(items)], items, strict=True), key=lambda pair: pair[0])]


def _groups(draw, order: list, count: int, minimum: int) -> list[list]:
    """Up to ``count`` groups of 2 or 3 items taken from ``order`` in turn (at least ``minimum``);
    their sizes are one list, so that a shrink deletes a group with its own draw."""
    sizes = draw(st.lists(st.integers(2, 3), min_size=min(minimum, count), max_size=count))
    groups: list[list] = []
    used = 0
    for size in sizes:
        if len(order) - used < 2:
            break
        size = min(size, len(order) - used)
        groups.append(sorted(order[used : used + size]))
        used += size
    return groups


@st.composite
def valid_specs(
    draw,
    min_dense: int = 1,
    min_ties: int = 0,
    batchnorm: bool = True,
    freezing: bool = True,
    embedding: bool = True,
) -> ModelSpec:
    """A valid spec; ``min_ties`` > 0 needs ``min_dense`` >= 2 per group. ``batchnorm``,
    ``freezing`` and ``embedding`` say whether the backend builds them (its declared
    capabilities): without one, no spec uses it."""
    flags = st.booleans() if freezing else st.just(False)
    # An Embedding first, in one spec of three: (frozen, whether a Dense reads its table). Drawn
    # first, and shrinking to none, so that a shrink drops it before anything else it touches.
    embed = None
    if embedding and draw(st.integers(0, 2)) == 2:
        embed = draw(st.tuples(flags, st.booleans()))
    # Per Dense, one element of one list (so that a shrink deletes a Dense with all its draws):
    # the ReLUs before it, whether it is frozen, the BatchNorm after it, if any, and where these
    # sit in blocks (``_nest``).
    norm = st.tuples(flags, MOMENTA, EPSILONS) if batchnorm else st.just(None)
    # The placement is one number (depth, closed): an element of five draws, which Hypothesis's
    # shrinker deletes in one step (it deletes at most five consecutive draws at a time).
    places = (MAX_BLOCK_DEPTH + 1) ** 2
    placement = st.integers(0, places - 1).map(lambda v: divmod(v, MAX_BLOCK_DEPTH + 1)[::-1])
    dense = draw(
        st.lists(
            st.tuples(st.integers(0, 2), flags, st.none() | norm, placement),
            min_size=min_dense,
            max_size=MAX_DENSE,
        )
    )
    count = len(dense)
    runs: list[tuple[list, int, int]] = []  # items in execution order, each run in one block
    for index, (relus, _, after, (depth_drawn, closed)) in enumerate(dense):
        run = [None] * relus + [index] + ([] if after is None else [_Norm(index)])
        runs.append((run, depth_drawn, closed))
    if embed is not None:  # it runs first, in the first Dense's block
        runs[0][0].insert(0, _EMBEDDING)
    runs.append(([None] * draw(st.integers(0, 2)), 0, 0))  # trailing ReLUs, at the top level
    items: list[int | _Norm | str | None] = [item for run, _, _ in runs for item in run]

    norms = [item.dense for item in items if isinstance(item, _Norm)]
    norm_groups = _groups(draw, _shuffled(draw, norms), MAX_TIE_GROUPS - min_ties, 0)
    order = _shuffled(draw, list(range(count)))
    groups = _groups(draw, order, MAX_TIE_GROUPS - len(norm_groups), min_ties)
    # The Dense that reads the table (a transposed tie): the first one no Dense tie took.
    untied = [k for k in order if not any(k in group for group in groups)]
    reader = untied[0] if embed is not None and embed[1] and untied else None

    # Width variables: k is the input width of Dense k (0: in_features, or the embedding's dim),
    # k + 1 its output width, count + 1 the vocabulary.
    vocab = count + 1
    sets = _Sets(count + 2)
    for group in groups:  # tied Dense layers: the same (in, out)
        for other in group[1:]:
            sets.union(group[0], other)
            sets.union(group[0] + 1, other + 1)
    for group in norm_groups:  # tied BatchNorms: the same features, the outputs of their Dense
        for other in group[1:]:
            sets.union(group[0] + 1, other + 1)
    if reader is not None:  # it takes dim features to vocab units
        sets.union(reader, 0)
        sets.union(reader + 1, vocab)
    inputs = {sets.find(0), sets.find(vocab)}  # the model's input width: at most MAX_INPUT
    # Ids behind a BatchNorm take two values at least: one id repeated is a constant feature.
    fewest = {sets.find(vocab): 2 if embed is not None and norms else 1}
    values: dict[int, int] = {}
    for variable in range(count + 2):
        root = sets.find(variable)
        if root not in values:
            high = MAX_INPUT if root in inputs else MAX_WIDTH
            values[root] = draw(st.integers(fewest.get(root, 1), high))
    widths = [values[sets.find(v)] for v in range(count + 2)]

    # One layer per tie group, so one setting: its first member's, shared by the others; the
    # table's reader takes the embedding's.
    dense_units, norm_units = _units(groups, range(count)), _units(norm_groups, norms)
    frozen = {("dense", k): dense[unit[0]][1] for unit in dense_units for k in unit}
    frozen |= {("batchnorm", k): dense[unit[0]][2][0] for unit in norm_units for k in unit}
    if embed is not None:
        frozen[("embedding", 0)] = embed[0]
    if reader is not None:
        frozen[("dense", reader)] = embed[0]
    if all(frozen.values()):  # something must train: the first Dense's layer does
        frozen.update({("dense", k): False for k in next(u for u in dense_units if 0 in u)})
        if reader == 0:
            frozen[("embedding", 0)] = False
    norm_layers = {}
    for unit in norm_units:
        _, momentum, eps = dense[unit[0]][2]
        layer = BatchNorm(momentum, eps, not frozen[("batchnorm", unit[0])])
        norm_layers.update({k: layer for k in unit})
    dense_layers = {k: Dense(widths[k + 1], not frozen[("dense", k)]) for k in range(count)}
    table = None
    if embed is not None:
        table = Embedding(widths[vocab], widths[0], not frozen[("embedding", 0)])

    tree = _nest(runs)
    paths: dict[int | _Norm | str, LayerPath] = {}
    layers = _layers(tree, (), dense_layers, norm_layers, table, paths)
    ties = tuple(tuple(paths[index] for index in group) for group in groups)
    ties += tuple(tuple(paths[_Norm(index)] for index in group) for group in norm_groups)
    if reader is not None:
        ties += ((paths[_EMBEDDING], paths[reader]),)
    in_features = widths[0] if table is None else table.vocab
    return ModelSpec("generated", in_features, layers, ties)


def _units(groups: list[list[int]], members) -> list[list[int]]:
    """The layers behind ``members``: each tie group is one, each untied member another."""
    tied = {k for group in groups for k in group}
    return [*groups, *([k] for k in members if k not in tied)]


def _nest(runs: list[tuple[list, int, int]]) -> list:
    """Wrap runs of items in blocks: each run sits ``depth`` blocks deep, and of the blocks the
    run before it was in, it leaves the ``closed`` innermost ones and opens new ones down to its
    depth. Both numbers are drawn with the run's Dense from fixed ranges and shrink to 0 (flat,
    one open block kept): a range that followed the items left would give later draws another
    meaning when a shrink deletes a Dense, and a block could not flatten without deleting one."""
    root: list = []
    stack = [root]  # the innermost open block at each level; level 0 is the model itself
    previous = 0
    for run, depth, closed in runs:
        shared = max(0, min(previous, depth) - closed)
        del stack[shared + 1 :]
        for _ in range(depth - shared):
            block: list = []
            stack[-1].append(block)
            stack.append(block)
        stack[-1].extend(run)
        previous = depth
    return root


def _layers(
    tree: list,
    prefix: LayerPath,
    dense: dict[int, Dense],
    norms: dict[int, BatchNorm],
    table: Embedding | None,
    paths: dict[int | _Norm | str, LayerPath],
) -> tuple:
    layers: list[Layer] = []
    for index, node in enumerate(tree):
        path = prefix + (index,)
        if isinstance(node, list):
            layers.append(Block(_layers(node, path, dense, norms, table, paths)))
        elif node is None:
            layers.append(ReLU())
        elif node == _EMBEDDING:
            paths[node] = path
            layers.append(table)
        elif isinstance(node, _Norm):
            paths[node] = path
            layers.append(norms[node.dense])
        else:
            paths[node] = path
            layers.append(dense[node])
    return tuple(layers)


INPUT_SEEDS = range(1, 17)  # input seeds tried, in order, for one whose ReLU inputs are clear of 0
DEFAULT_CONVENTIONS = Conventions()  # torch's, the oracle's default
STATE_SEED = 0  # a BatchNorm's running statistics start seeded (not 0 and 1), so inference means something


class Materials(NamedTuple):
    weights: dict[str, np.ndarray]
    state: dict[str, np.ndarray]  # running statistics, empty without a BatchNorm
    x: np.ndarray
    loss: Loss
    training: Bounds  # a training pass from ``state``: output, gradients, statistics after it
    inference: Bounds  # an inference pass on ``state``

    @property
    def risky(self) -> int:
        """ReLU inputs and BatchNorm variances float32 cannot pin down, in either pass."""
        return sum(b.risky_kinks + b.near_constant for b in (self.training, self.inference))


class Case(NamedTuple):
    """One generated example: a spec, a batch size and a loss kind. Weights, state, input and
    target follow from these deterministically (``materials``), so the JSON of ``to_dict``
    reproduces it: ``case_from_dict(json.loads(TEXT))``."""

    spec: ModelSpec
    batch: int
    loss: str = "sum"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "batch": self.batch, "loss": self.loss}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def materials(self, conventions: Conventions = DEFAULT_CONVENTIONS) -> Materials:
        """The oracle's seeded float32 weights (seed 0) and running statistics (STATE_SEED), a
        float32 input, the loss, and the bounds of a training and an inference pass under a
        backend's BatchNorm ``conventions``.

        The input is the first of INPUT_SEEDS whose ReLU inputs all sit farther from 0 than
        their own tolerance, in both passes, so float32 rounding cannot flip a ReLU (the gradient
        jumps there), and whose BatchNorm features all vary enough across the batch for float32
        to pin their variance down (``Bounds.near_constant``); the first seed almost always is.
        If none is, ``risky`` says so."""
        weights = oracle.initial_weights(self.spec, seed=0)
        state = oracle.initial_state(self.spec, seed=STATE_SEED)
        loss = Loss()
        if self.loss == "mse":
            target = np.random.default_rng(7).normal(size=(self.batch, self.spec.out_features))
            loss = Loss("mse", target.astype(np.float32))
        first = None
        for seed in INPUT_SEEDS:
            x = _input(self.spec, self.batch, seed)
            passes = {
                mode: bounds(self.spec, weights, x, loss, state=state, mode=mode, conventions=conventions)
                for mode in ("training", "inference")
            }
            found = Materials(weights, state, x, loss, **passes)
            if not found.risky:
                return found
            if first is None:
                first = found
        return first


def _input(spec: ModelSpec, batch: int, seed: int) -> np.ndarray:
    """The oracle's sample input; ids drawn from the whole vocabulary (the oracle's sample takes
    its first half, so that ids repeat: over a small vocabulary that is one id, and a BatchNorm
    behind it normalizes a constant). Ids still repeat whenever the batch outnumbers the vocab."""
    if spec.input_kind != "ids":
        return oracle.sample_input(spec, batch=batch, seed=seed)
    return np.random.default_rng(seed).integers(0, spec.embed_slot.vocab, size=batch).astype(np.int64)


def case_from_dict(data: Mapping[str, Any]) -> Case:
    return Case(spec_from_dict(data["spec"]), int(data["batch"]), str(data.get("loss", "sum")))


@st.composite
def cases(
    draw, min_ties: int = 0, batchnorm: bool = True, freezing: bool = True, embedding: bool = True
) -> Case:
    """A spec, a batch and a loss. A spec with a BatchNorm gets a batch of MIN_BATCHNORM_BATCH
    or more: one row has no variance to normalize by (torch refuses it in training mode), and two
    rows normalize to +-1, where the BatchNorm's Jacobian is eps-small (make fuzz, seed 0): the
    exact gradient behind it is ~0, and a float32 backward returns its own rounding, amplified
    by each BatchNorm before it (2e-14 against a bound of 3e-16 in Equinox, XLA at -O0), which
    this first-order bound does not model."""
    # Batch and loss first: the spec's width draws come last, and their count follows the ties,
    # so a shrink that deletes a Dense leaves no draw after them another meaning.
    batch, loss = draw(st.integers(1, MAX_BATCH)), draw(st.sampled_from(LOSS_KINDS))
    spec = draw(valid_specs(2 * min_ties or 1, min_ties, batchnorm, freezing, embedding))
    return Case(spec, max(batch, MIN_BATCHNORM_BATCH) if spec.has_batchnorm else batch, loss)


# == invalid specs ================================================================================
# Each starts from a spec of feature inputs (no Embedding): the messages are derived for those.
class InvalidCase(NamedTuple):
    """A dict ``spec_from_dict`` must refuse, why, and what its SpecError message must match."""

    reason: str
    data: dict[str, Any]
    message: str  # a regular expression, searched for

    def to_json(self) -> str:
        return json.dumps(self.data, sort_keys=True)


def _dense_slots(spec: ModelSpec) -> list[tuple[LayerPath, tuple[int, int]]]:
    return [(s.path, (s.in_features, s.units)) for s in spec.dense_slots]


def _free(spec: ModelSpec) -> list[LayerPath]:
    tied = {path for group in spec.ties for path in group}
    return [s.path for s in spec.dense_slots if s.path not in tied]


def _with_layer(data: dict[str, Any], layer: dict[str, Any]) -> tuple[dict[str, Any], LayerPath]:
    data = json.loads(json.dumps(data))
    data["layers"].append(layer)
    return data, (len(data["layers"]) - 1,)


def _replace(data: dict[str, Any], path: LayerPath, layer: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    node = data
    for index in path[:-1]:
        node = node["layers"][index]
    node["layers"][path[-1]] = layer
    return data


def _quoted(text: str) -> str:
    return re.escape(text)


@st.composite
def _incompatible_tie(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    slots = dict(_dense_slots(spec))
    out = spec.out_features
    units = max(max(w) for w in slots.values()) + 1  # an out width no other Dense has
    data, new = _with_layer(spec.to_dict(), {"kind": "dense", "units": units})
    partner = draw(st.sampled_from(sorted(slots)))
    group = next((g for g in spec.ties if partner in g), None)
    if group is None:
        data["ties"].append([list(partner), list(new)])
    else:
        data["ties"][spec.ties.index(group)].append(list(new))
    owner = group[0] if group else partner
    message = (
        f"cannot tie {layer_name(new)} (in, out)={(out, units)} to "
        f"{layer_name(owner)} (in, out)={slots[owner]}: shapes differ"
    )
    return InvalidCase("tie of incompatible shapes", data, _quoted(message))


def _missing_paths(spec: ModelSpec) -> st.SearchStrategy[LayerPath]:
    """Positions holding no layer: past the end of a list, or below a Dense or a ReLU."""
    walked = [path for path, _ in spec.walk()]
    below = st.sampled_from(walked).flatmap(lambda p: st.integers(0, 3).map(lambda i: p + (i,)))
    past = st.integers(len(spec.layers), len(spec.layers) + 5).map(lambda i: (i,))
    return st.one_of(past, below)


@st.composite
def _tie_to_nothing(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    free = _free(spec)
    data = spec.to_dict()
    if not free:  # every Dense is tied already: drop the ties, the point is the missing position
        data["ties"], free = [], [s.path for s in spec.dense_slots]
    partner = draw(st.sampled_from(free))
    kind = draw(st.sampled_from(["missing", "relu", "block"]))
    if kind == "missing":
        target = draw(_missing_paths(spec))
    elif kind == "relu":
        relus = [path for path, layer in spec.walk() if isinstance(layer, ReLU)]
        if relus:
            target = draw(st.sampled_from(relus))
        else:
            data, target = _with_layer(data, {"kind": "relu"})
    else:
        blocks = [path for path in _block_paths(spec.layers, ())]
        if blocks:
            target = draw(st.sampled_from(blocks))
        else:
            data, target = _with_layer(data, {"kind": "block", "label": "", "layers": [{"kind": "relu"}]})
    data["ties"].append([list(partner), list(target)])
    message = f"tie to {layer_name(target)}, which holds no parameters"
    return InvalidCase(f"tie to a {kind} position", data, _quoted(message))


def _block_paths(layers: tuple[Layer, ...], prefix: LayerPath) -> list[LayerPath]:
    result = []
    for index, layer in enumerate(layers):
        if isinstance(layer, Block):
            result.append(prefix + (index,))
            result += _block_paths(layer.layers, prefix + (index,))
    return result


@st.composite
def _position_in_two_ties(draw) -> InvalidCase:
    spec = draw(valid_specs(min_dense=2, min_ties=1, embedding=False))
    group = draw(st.sampled_from(spec.ties))
    first = group[0]
    others = [s.path for s in spec.dense_slots if s.path != first]
    other = draw(st.sampled_from(others))
    data = spec.to_dict()
    data["ties"].append([list(first), list(other)])
    # The new group is checked last: its first position in sorted order that is already tied is
    # named (``other`` may be tied too, and come first).
    tied = {path for g in spec.ties for path in g}
    named = min(p for p in (first, other) if p in tied)
    message = f"{layer_name(named)} appears in more than one tie"
    return InvalidCase("a position in two ties", data, _quoted(message))


@st.composite
def _repeated_in_one_tie(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    data = spec.to_dict()
    free = _free(spec)
    if not free:
        data["ties"], free = [], [s.path for s in spec.dense_slots]
    path = draw(st.sampled_from(free))
    data["ties"].append([list(path), list(path)])
    return InvalidCase("a position twice in one tie", data, _quoted(f"lists {layer_name(path)} twice"))


BAD_WIDTHS = st.one_of(st.integers(-5, 0), st.sampled_from([2.5, "8", True, None, [8]]))


@st.composite
def _bad_width(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    width = draw(BAD_WIDTHS)
    data = spec.to_dict()
    if draw(st.booleans()):
        data["in_features"] = width
        message = f"in_features={width!r}, but should be a positive int"
        return InvalidCase("bad input width", data, _quoted(message))
    path, _ = draw(st.sampled_from(_dense_slots(spec)))
    data = _replace(data, path, {"kind": "dense", "units": width})
    message = f"{layer_name(path)} Dense units={width!r}, but should be a positive int"
    # Units are checked in walk order after in_features; the replaced Dense is the only bad one.
    return InvalidCase("bad Dense width", data, _quoted(message))


@st.composite
def _unknown_kind(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    path = draw(st.sampled_from([p for p, _ in spec.walk()] + _block_paths(spec.layers, ())))
    kind = draw(st.sampled_from(["conv2d", "Dense", "RELU", "", "dropout", 3, None]))
    data = _replace(spec.to_dict(), path, {"kind": kind, "units": 4})
    message = f"layer {layer_name(path)}: unknown layer kind {kind!r}; valid kinds: " + ", ".join(LAYER_KINDS)
    return InvalidCase("unknown layer kind", data, _quoted(message))


@st.composite
def _too_deep(draw) -> InvalidCase:
    depth = draw(st.integers(MAX_NESTING + 1, MAX_NESTING + 40))
    layer: dict[str, Any] = {"kind": "dense", "units": draw(st.integers(1, MAX_WIDTH))}
    for _ in range(depth):
        layer = {"kind": "block", "label": "", "layers": [layer]}
    data = {"name": "deep", "in_features": 4, "layers": [layer], "ties": []}
    message = f"nested inside {MAX_NESTING + 1} blocks, but at most {MAX_NESTING} are allowed"
    return InvalidCase("nesting past the limit", data, _quoted(message))


@st.composite
def _too_many(draw) -> InvalidCase:
    count = draw(st.integers(MAX_LAYERS + 1, MAX_LAYERS + 50))
    layers = [{"kind": "dense", "units": 2}, {"kind": "relu"}] * (count // 2 + 1)
    data = {"name": "long", "in_features": 2, "layers": layers[:count], "ties": []}
    message = f"layer layers.{MAX_LAYERS}: more than {MAX_LAYERS} layers"
    return InvalidCase("more layers than the limit", data, _quoted(message))


@st.composite
def _empty(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    kind = draw(st.sampled_from(["no layers", "empty block", "no Dense"]))
    data = spec.to_dict()
    if kind == "no layers":
        data.update(layers=[], ties=[])
        return InvalidCase(kind, data, "has no layers")
    if kind == "no Dense":
        data.update(layers=[{"kind": "relu"}] * draw(st.integers(1, 3)), ties=[])
        return InvalidCase(kind, data, "has no Dense layer")
    data, path = _with_layer(data, {"kind": "block", "label": "", "layers": []})
    return InvalidCase(kind, data, _quoted(f"block {layer_name(path)} is empty"))


@st.composite
def _malformed_layer(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    path = draw(st.sampled_from([p for p, _ in spec.walk()]))
    layer = draw(st.sampled_from([{"units": 4}, 5, "dense", None, []]))
    data = _replace(spec.to_dict(), path, layer)
    message = f"layer {layer_name(path)}: expected an object with a 'kind', got {layer!r}"
    return InvalidCase("a layer that is not an object with a kind", data, _quoted(message))


@st.composite
def _malformed_ties(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    data = spec.to_dict()
    kind = draw(st.sampled_from(["one position", "not a path", "too long", "not a list"]))
    if kind == "one position":
        path = draw(st.sampled_from(_free(spec) or [s.path for s in spec.dense_slots]))
        data["ties"] = [] if not _free(spec) else data["ties"]
        data["ties"].append([list(path)])
        return InvalidCase(kind, data, _quoted(f"tie group {[list(path)]} needs at least two positions"))
    if kind == "not a path":
        position = draw(st.sampled_from(["a", [], [1, "2"], True, [0.5], {"0": 1}]))
        data["ties"].append([0, position])
        return InvalidCase(kind, data, _quoted(f"tie position {position!r} is not an int or a path of ints"))
    if kind == "too long":
        length = draw(st.integers(MAX_NESTING + 2, MAX_NESTING + 50))
        data["ties"].append([[0], [0] * length])
        return InvalidCase(kind, data, _quoted(f"tie position of {length} indices"))
    data["ties"] = draw(st.sampled_from([[5], 5, [[0, 1], 2]]))
    return InvalidCase(kind, data, "malformed spec: 'int' object is not iterable")


@st.composite
def _malformed_top(draw) -> InvalidCase:
    spec = draw(valid_specs(embedding=False))
    if draw(st.booleans()):
        data: Any = draw(st.sampled_from([[spec.to_dict()], "spec", 3, None]))
        message = f"a model spec must be a JSON object, got {type(data).__name__}"
        return InvalidCase("not an object", data, _quoted(message))
    field = draw(st.sampled_from(["layrs", "tie", "input", "weights"]))
    data = dict(spec.to_dict(), **{field: []})
    return InvalidCase("unknown field", data, _quoted(f"unknown spec field(s) [{field!r}]"))


def invalid_specs() -> st.SearchStrategy[InvalidCase]:
    return st.one_of(
        _malformed_top(),
        _malformed_layer(),
        _malformed_ties(),
        _incompatible_tie(),
        _tie_to_nothing(),
        _position_in_two_ties(),
        _repeated_in_one_tie(),
        _bad_width(),
        _unknown_kind(),
        _too_deep(),
        _too_many(),
        _empty(),
    )


# == hostile native files ===========================================================================
FLOAT32_MAX = float(np.finfo(np.float32).max)


@st.composite
def native_changes(draw) -> NativeChange:
    """One change of ``common.core.hostile_native.KINDS`` at a drawn entry; each shrinks towards
    the first entry and the plainest value of its kind."""
    kind = draw(st.sampled_from(KINDS))
    index = draw(st.integers(0, 64))
    if kind == "retype":
        return NativeChange(kind, index, dtype=draw(st.sampled_from(sorted(RETYPED))))
    if kind == "overflow":
        beyond = st.floats(FLOAT32_MAX * 2, np.finfo(np.float64).max)
        return NativeChange(kind, index, value=draw(st.one_of(beyond, beyond.map(lambda v: -v))))
    if kind == "nonfinite":
        return NativeChange(
            kind, index, value=draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        )
    if kind == "long name":
        return NativeChange(kind, index, length=draw(st.integers(1, 10 * LONG_NAME)))
    return NativeChange(kind, index)


# == invalid inputs ===============================================================================
class InvalidInput(NamedTuple):
    """A valid spec with an input ``forward``, ``backward`` and ``train`` must refuse (ValueError),
    why, and what the message must match."""

    reason: str
    spec: ModelSpec
    x: np.ndarray
    message: str  # a regular expression, searched for

    def to_json(self) -> str:
        x = {"shape": list(self.x.shape), "dtype": str(self.x.dtype)}
        return json.dumps({"spec": self.spec.to_dict(), "x": x, "reason": self.reason}, sort_keys=True)


@st.composite
def invalid_inputs(
    draw, batchnorm: bool = True, freezing: bool = True, embedding: bool = True
) -> InvalidInput:
    """A wrong input for a valid spec (one the backend can build: ``batchnorm``, ``freezing``,
    ``embedding``): wrong features, or wrong ids for a spec that takes ids."""
    spec = draw(valid_specs(batchnorm=batchnorm, freezing=freezing, embedding=embedding))
    if spec.input_kind == "ids":
        return _invalid_ids(draw, spec)
    width, batch = spec.in_features, draw(st.integers(1, MAX_BATCH))
    wrong_width = draw(st.integers(1, MAX_INPUT + 1).filter(lambda w: w != width))
    reason, shape, dtype = draw(
        st.sampled_from(
            [
                ("wrong width", (batch, wrong_width), np.float32),
                ("a vector, not a batch", (width,), np.float32),
                ("one axis too many", (batch, width, 1), np.float32),
                ("an empty batch", (0, width), np.float32),
                ("complex numbers", (batch, width), np.complex64),
                ("strings", (batch, width), np.str_),
                ("booleans", (batch, width), np.bool_),
            ]
        )
    )
    x = np.zeros(shape, dtype)
    if x.ndim == 2 and x.shape[1] == width and x.shape[0] >= 1:
        message = f"input x.dtype={x.dtype}, but should be a real number type"
    else:
        message = (
            f"input x.shape={shape}, but should be (batch >= 1, {width}): "
            f"spec {shown(spec.name)} takes in_features={width}"
        )
    return InvalidInput(reason, spec, x, _quoted(message))


def _invalid_ids(draw, spec: ModelSpec) -> InvalidInput:
    vocab, batch = spec.embed_slot.vocab, draw(st.integers(1, MAX_BATCH))
    reason, x = draw(
        st.sampled_from(
            [
                ("features, not ids", np.zeros((batch, vocab), np.float32)),
                ("one axis too many", np.zeros((batch, 1), np.int64)),
                ("an empty batch", np.zeros((0,), np.int64)),
                ("float ids", np.zeros((batch,), np.float32)),
                ("booleans", np.zeros((batch,), np.bool_)),
                ("an id past the vocabulary", np.append(np.zeros(batch - 1, np.int64), vocab)),
                ("a negative id", np.append(np.zeros(batch - 1, np.int64), -1)),
            ]
        )
    )
    name = shown(spec.name)
    if x.ndim != 1 or len(x) == 0:
        message = (
            f"input x.shape={x.shape}, but should be (batch >= 1,): spec {name} takes ids, one per sample"
        )
    elif x.dtype.kind not in "iu":
        message = f"input x.dtype={x.dtype}, but spec {name} takes integer ids in [0, {vocab})"
    else:
        message = f"input ids span [{x.min()}, {x.max()}], but spec {name} takes ids in [0, {vocab})"
    return InvalidInput(reason, spec, x, _quoted(message))


# == the error bound ==============================================================================
SIGMAS = 16.0  # tolerance = SIGMAS * sigma; see tests/conformance/test_properties.py
# A training-mode BatchNorm feature whose normalized values (of order 1) float32 pins down only
# to within this is near-constant across the batch, its statistics ill-conditioned: next input seed.
NEAR_CONSTANT = 0.5


@dataclass(frozen=True)
class Bounds:
    """How far a float32 computation may be from the float64 oracle, element by element: SIGMAS
    times the error scale sigma that float32 rounding gives each value (``bounds``)."""

    output: np.ndarray
    loss: float
    grads: dict[str, np.ndarray]  # per unique parameter, the summed gradient
    risky_kinks: int  # nonzero ReLU inputs within their own tolerance of 0
    near_constant: int = 0  # training-mode BatchNorm features float32 cannot normalize to NEAR_CONSTANT
    state: dict[str, np.ndarray] = field(default_factory=dict)  # running statistics after the pass

    def step(self, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float):
        """Tolerances of ``w - lr * g`` per unique parameter, for one framework-SGD step."""
        return {
            name: lr * self.grads[name]
            + SIGMAS * UNIT_ROUNDOFF * (np.abs(weights[name]) + 2 * lr * np.abs(grads[name]))
            for name in self.grads
        }


class _Norm64(NamedTuple):
    """What the backward pass needs of one BatchNorm use's forward errors."""

    var_normalized: np.ndarray  # per element, of (h - mean) / sqrt(var + eps)
    inv_std_error: np.ndarray  # per feature, relative


def bounds(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    loss: Loss,
    *,
    state: Mapping[str, np.ndarray] | None = None,
    mode: str = "training",
    conventions: Conventions = DEFAULT_CONVENTIONS,
    uses: Mapping[str, int] | None = None,
) -> Bounds:
    """Propagate the float32 error scale sigma through the oracle's own pass in ``mode`` (float64,
    its activations, its BatchNorm statistics and updates); the rule is written out in
    tests/conformance/test_properties.py.

    A sum of n terms p_i rounds with an error of at most u (n + 1) sum|p_i| (u = 2**-24): that is
    each value's own sigma. An error already in an input leaves a linear map W with the variance
    (W * W) @ var: rounding errors have independent signs, so they add like a random walk, not
    through |W| (which would grow like (sqrt(n) / 2) ** depth and make the bound vacuous). A
    BatchNorm in training mode is a linear map too, to first order, but one that mixes the
    batch: its Jacobian per feature, (inv_std / n) (n I - 1 - z z^T) with z the normalized
    values, is (n, n), and batches are small."""
    u = UNIT_ROUNDOFF
    x = np.asarray(x) if spec.input_kind == "ids" else np.asarray(x, np.float64)
    done = oracle.run(spec, weights, x, state, mode, conventions, uses)

    def param(path: LayerPath, role: str) -> np.ndarray:
        return np.asarray(weights[spec.owner_of(param_name(path, role))], np.float64)

    var_h, risky, near_constant = np.zeros(x.shape), 0, 0
    tape, errors, batch_errors = [], {}, {}
    for path, layer, h, saved in done.tape:
        tape.append((path, layer, h, var_h))
        if isinstance(layer, Embedding):  # a lookup copies the table's rows: exact
            var_h = np.zeros((len(h), layer.dim))
        elif isinstance(layer, Dense):
            w, b = param(path, "weight"), param(path, "bias")
            local = u * (w.shape[1] + 1) * (np.abs(h) @ np.abs(w).T + np.abs(b))
            var_h = var_h @ (w * w).T + local**2
        elif isinstance(layer, BatchNorm):
            gamma, beta = param(path, "weight"), param(path, "bias")
            eps = conventions.settings(layer)[1]
            var_h, errors[path], batch_errors[path] = _batchnorm_forward(h, var_h, saved, gamma, beta, eps)
            if saved.batch_stats:
                sigma_normalized = np.sqrt(errors[path].var_normalized)
                near_constant += int(
                    np.count_nonzero((SIGMAS * sigma_normalized > NEAR_CONSTANT).any(axis=0))
                )
        else:
            risky += int(np.count_nonzero((h != 0) & (np.abs(h) <= SIGMAS * np.sqrt(var_h))))
            var_h = var_h * (h > 0)
    y, var_y = done.output, var_h

    if loss.kind == "sum":
        g, var_g = np.ones_like(y), np.zeros_like(y)
        var_loss = var_y.sum() + (u * y.size * np.abs(y).sum()) ** 2
    else:
        residual = y - loss.target
        g = 2.0 * residual / y.size
        var_g = (2.0 / y.size) ** 2 * (var_y + (u * (np.abs(y) + np.abs(loss.target))) ** 2)
        var_loss = np.sum(g**2 * var_y) + (u * (y.size + 1) * np.mean(residual**2)) ** 2

    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    saved_by_path = {path: saved for path, _, _, saved in done.tape}
    for path, layer, h_in, var_in in reversed(tape):
        batch = len(h_in)
        if isinstance(layer, Embedding):
            # A scatter-add: each row of the table sums the gradients of the rows that read it.
            table = spec.owner_of(param_name(path, "weight"))
            grad, var, size = (np.zeros((layer.vocab, layer.dim)) for _ in range(3))
            np.add.at(grad, h_in, g)
            np.add.at(var, h_in, var_g)
            np.add.at(size, h_in, np.abs(g))
            reads = np.bincount(h_in, minlength=layer.vocab)[:, None]
            parts.setdefault(table, []).append((grad, var + (u * (reads + 1) * size) ** 2))
            continue
        if isinstance(layer, Dense | BatchNorm):
            weight, bias = (spec.owner_of(param_name(path, role)) for role in ("weight", "bias"))
        if isinstance(layer, Dense):
            w = param(path, "weight")
            grad_w = g.T @ h_in
            rounding = u * (batch + 1) * (np.abs(g).T @ np.abs(h_in))
            # The last term is second order, the product of the two errors: it is what is left
            # where both factors are zero plus rounding (a BatchNorm of a constant feature).
            var_w = var_g.T @ h_in**2 + (g**2).T @ var_in + var_g.T @ var_in + rounding**2
            grad_b = g.sum(axis=0)
            var_b = var_g.sum(axis=0) + (u * (batch + 1) * np.abs(g).sum(axis=0)) ** 2
            parts.setdefault(weight, []).append((grad_w, var_w))  # a table read: its second use
            parts.setdefault(bias, []).append((grad_b, var_b))
            local = u * (w.shape[0] + 1) * (np.abs(g) @ np.abs(w))
            g, var_g = g @ w, var_g @ (w * w) + local**2
        elif isinstance(layer, BatchNorm):
            saved, error = saved_by_path[path], errors[path]
            z = saved.normalized
            grad_gamma, grad_beta = (g * z).sum(axis=0), g.sum(axis=0)
            var_gamma = (var_g * z**2 + (g**2 + var_g) * error.var_normalized).sum(axis=0)
            var_gamma += (u * (batch + 1) * np.abs(g * z).sum(axis=0)) ** 2
            var_beta = var_g.sum(axis=0) + (u * (batch + 1) * np.abs(g).sum(axis=0)) ** 2
            parts.setdefault(weight, []).append((grad_gamma, var_gamma))
            parts.setdefault(bias, []).append((grad_beta, var_beta))
            g, var_g = _batchnorm_backward(g, var_g, saved, error, param(path, "weight"))
        else:
            mask = h_in > 0
            g, var_g = g * mask, var_g * mask

    grads = {}
    for name, contributions in parts.items():
        total = sum(var for _, var in contributions)
        summed = u * len(contributions) * sum(np.abs(value) for value, _ in contributions)
        grads[name] = SIGMAS * np.sqrt(total + summed**2)
    return Bounds(
        output=SIGMAS * np.sqrt(var_y),
        loss=float(SIGMAS * np.sqrt(var_loss)),
        grads=grads,
        risky_kinks=risky,
        near_constant=near_constant,
        state=_state_bounds(spec, done, state, conventions, batch_errors),
    )


def _jacobian(saved) -> np.ndarray:
    """d normalized / d h of a training-mode BatchNorm: (features, batch, batch), symmetric."""
    z, n = saved.normalized, saved.normalized.shape[0]
    eye = np.eye(n)[None]
    return (saved.inv_std[:, None, None] / n) * (n * eye - 1.0 - z.T[:, :, None] * z.T[:, None, :])


def _batchnorm_forward(h, var_h, saved, gamma, beta, eps):
    """A BatchNorm use's output variance, what its backward needs, and (training mode) the sigma
    of the batch mean and variance it hands to the running statistics.

    Local roundings, per feature: the batch mean u (n + 1) mean|h|; the batch variance
    u (n + 3) (mean(h**2) + eps), which covers the one-pass E[h**2] - mean**2 (Flax's fast
    variance) and a variance rebuilt from 1 / sqrt(var + eps) (MXNet's backward); each moves the
    normalized value by inv_std sigma_mean and |z| sigma_var / (2 (var + eps)). The output, as
    h * scale + shift or any other order, rounds by u 4 (|gamma| inv_std (|h| + |mean|) + |beta|).
    Debiased running statistics (use_count) carry the relative error of 1 - (1 - m) ** uses."""
    u = UNIT_ROUNDOFF
    z, inv, mean, var, n = saved.normalized, saved.inv_std, saved.mean, saved.var, h.shape[0]
    if saved.batch_stats:
        jacobian = _jacobian(saved)
        propagated = np.einsum("fij,jf->if", jacobian**2, var_h)
        sigma_mean = u * (n + 1) * np.abs(h).mean(axis=0)
        sigma_var = u * (n + 3) * ((h**2).mean(axis=0) + eps)
        relative_var = sigma_var / (var + eps)
        # The statistics' rounding moves every row of a feature alike, so a later sum over the
        # batch adds it coherently (n times, not sqrt(n)): counted sqrt(n) times here.
        shared = np.sqrt(n * ((inv * sigma_mean) ** 2 + (0.5 * z * relative_var) ** 2))
        local = shared + 3 * u * np.abs(z)
        centered = h - mean
        batch_error = (
            np.sqrt(var_h.sum(axis=0) / n**2 + sigma_mean**2),
            np.sqrt(((2.0 / n * centered) ** 2 * var_h).sum(axis=0) + sigma_var**2),
        )
    else:
        propagated = inv**2 * var_h
        relative_var = np.zeros_like(inv)
        if saved.uses:
            kept = 1.0 - saved.debias  # (1 - m) ** uses
            relative_var = relative_var + u * (saved.uses + 3) * kept / saved.debias + 2 * u
        shifted = np.sqrt((inv * mean) ** 2 + (0.5 * z * var / (var + eps)) ** 2)
        local = relative_var * shifted + 3 * u * np.abs(z)
        batch_error = None
    var_normalized = propagated + local**2
    rounding = 4 * u * (np.abs(gamma) * inv * (np.abs(h) + np.abs(mean)) + np.abs(beta))
    if saved.batch_stats:  # the variance's whole sigma, propagated and local
        inv_std_error = 0.5 * batch_error[1] / (var + eps) + 2 * u
    else:
        inv_std_error = 0.5 * relative_var * var / (var + eps) + 2 * u
    return gamma**2 * var_normalized + rounding**2, _Norm64(var_normalized, inv_std_error), batch_error


def _batchnorm_backward(g, var_g, saved, error: _Norm64, gamma):
    """The upstream gradient through one BatchNorm use and its variance: the Jacobian's (the
    same map, transposed, and it is symmetric), the forward errors of z and inv_std it reads,
    and the rounding of its three sums."""
    u = UNIT_ROUNDOFF
    z, inv, n = saved.normalized, saved.inv_std, g.shape[0]
    d, var_d = g * gamma, var_g * gamma**2 + (u * g * gamma) ** 2
    if not saved.batch_stats:
        out = d * inv
        return out, inv**2 * var_d + (np.abs(out) * (error.inv_std_error + u)) ** 2
    out = np.einsum("fij,jf->if", _jacobian(saved), d)
    propagated = np.einsum("fij,jf->if", _jacobian(saved) ** 2, var_d)
    projection = (d * z).sum(axis=0)
    sigma_z = np.sqrt(error.var_normalized)  # z's errors share their cause: summed, not walked
    sigma_d = np.abs(d) + np.sqrt(var_d)  # second order: d's own error times z's
    through_z = (inv / n) * (
        (np.abs(projection) + (sigma_d * np.abs(z)).sum(axis=0)) * sigma_z
        + (np.abs(z) + sigma_z) * (sigma_d * sigma_z).sum(axis=0)
    )
    terms = n * np.abs(d) + np.abs(d).sum(axis=0) + np.abs(z) * np.abs(d * z).sum(axis=0)
    rounding = u * (n + 2) * (inv / n) * terms
    var_out = propagated + through_z**2 + (np.abs(out) * error.inv_std_error) ** 2 + rounding**2
    return out, var_out


def _state_bounds(spec, done, state, conventions, batch_errors) -> dict[str, np.ndarray]:
    """Running statistics after the pass: each update r <- (1 - m) r + m s, in the order the
    oracle applied them, carries (1 - m) of r's sigma, m of the batch statistic's, and its own
    rounding u 4 (|r| + |s|): not ((1 - m)|r| + m|s|), since a framework that keeps the old
    value's weight 1 - m rounds it to float32, which moves r' by u |r - s| whatever m is. A
    statistic no update touched must come back exactly."""
    u = UNIT_ROUNDOFF
    running = {
        name: np.asarray(value, np.float64)
        for name, value in (oracle.initial_state(spec) if state is None else state).items()
    }
    sigma = {name: np.zeros_like(value) for name, value in running.items()}
    for update in done.updates:
        mean_error, var_error = batch_errors[update.path]
        n = update.batch
        unbiased = n / (n - 1) if conventions.unbiased_running_var and n > 1 else 1.0
        for role, value, error in (
            ("running_mean", update.mean, mean_error),
            ("running_var", update.stored_var, unbiased * var_error + u * np.abs(update.stored_var)),
        ):
            name, m = f"{update.owner}.{role}", update.momentum
            rounding = 4 * u * (np.abs(running[name]) + np.abs(value))
            sigma[name] = np.sqrt(((1 - m) * sigma[name]) ** 2 + (m * error) ** 2 + rounding**2)
            running[name] = (1 - m) * running[name] + m * value
    return {name: SIGMAS * value for name, value in sigma.items()}
