"""Declarative model specs: Embedding, Dense, ReLU and BatchNorm layers, nested blocks and tie
groups.

An Embedding maps integer ids to rows of its table, of canonical shape ``(vocab, dim)`` and role
``weight``. It must be the first layer a model runs, and then the model's input kind is ``ids``:
a batch of integers in ``[0, vocab)``, shape ``(batch,)``, and ``in_features`` is the vocabulary
(the width of the ids' one-hot view). Otherwise the input kind is ``features``: floats of shape
``(batch, in_features)``. The input kind is checked before any framework sees the input.

A tie group that holds an Embedding is a *transposed tie*: each Dense in it has ``units == vocab``
and takes ``dim`` features, and reads the embedding's table as its weight. In the canonical
``(out, in)`` layout that is the table itself, ``(vocab, dim)``; frameworks that store a kernel
as ``(in, out)`` apply it transposed. Each such Dense keeps its own bias.

A BatchNorm normalizes the features flowing into it. Its parameters have the canonical roles
``weight`` (the scale) and ``bias`` (the shift), each of shape ``(features,)``; its non-trainable
state has the roles ``running_mean`` and ``running_var``. Its ``momentum``, when set, is the weight
of the new batch's statistic in the running average (torch's convention:
``running = (1 - momentum) * running + momentum * batch``); each adapter translates it into its
framework's own. Left unset (None), momentum and eps are the framework's defaults, which its
declaration states as facts. ``trainable=False`` freezes a layer with the framework's own idiom.

A spec is validated when it is constructed, so every backend sees the same SpecError before any
framework is touched. Positions are paths of indices (``(0, 1)`` is the second layer of the first
block); canonical names are derived from paths: ``layers.0.1.weight``.

Limits: at most MAX_LAYERS layer entries in all (Dense, ReLU and Block, at any depth) and at most
MAX_NESTING blocks around any layer. Both are far beyond any MLP this project compares; they keep
a hostile or mistaken spec a one-line SpecError rather than a RecursionError or a framework
building a million layers, and MAX_NESTING keeps every valid spec inside the JSON depth limit of
the spec stored in a parameter file (common.core.untrusted.MAX_JSON_DEPTH: a layer inside k
blocks sits 2k + 3 levels deep there).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from common.core.untrusted import printable, shown
from common.errors import SpecError

LayerPath = tuple[int, ...]
ROLES = ("weight", "bias")
STATE_ROLES = ("running_mean", "running_var")
MAX_LAYERS = 20_000  # make bench builds 10,000 Dense layers with a ReLU between each
MAX_NESTING = 16
MAX_LISTED = 10  # valid choices listed in one error; the rest are counted


@dataclass(frozen=True)
class Dense:
    units: int
    trainable: bool = True


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Embedding:
    """A lookup table of ``vocab`` rows of ``dim`` values (see the module docstring)."""

    vocab: int
    dim: int
    trainable: bool = True


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalization over the incoming features (see the module docstring)."""

    momentum: float | None = None  # weight of the new batch; None: the framework's default
    eps: float | None = None  # None: the framework's default
    trainable: bool = True


@dataclass(frozen=True)
class Block:
    """A nested sequential block; ``label`` is for humans only (e.g. "NestMLP")."""

    layers: tuple[Layer, ...]
    label: str = ""


Layer = Embedding | Dense | ReLU | BatchNorm | Block
ParamLayer = Embedding | Dense | BatchNorm  # the kinds that hold parameters
INPUT_KINDS = ("features", "ids")
# The roles each parameter-holding kind has; an Embedding's table is its only one.
KIND_ROLES = {"dense": ROLES, "batchnorm": ROLES, "embedding": ("weight",)}


def layer_name(path: LayerPath) -> str:
    return "layers." + ".".join(str(index) for index in path)


def param_name(path: LayerPath, role: str) -> str:
    return f"{layer_name(path)}.{role}"


def split_param_name(name: str, roles: tuple[str, ...] = ROLES) -> tuple[LayerPath, str]:
    """Inverse of param_name; raises KeyError for anything that is not one (of ``roles``)."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "layers" or parts[-1] not in roles:
        raise KeyError(name)
    try:
        return tuple(int(part) for part in parts[1:-1]), parts[-1]
    except ValueError:
        raise KeyError(name) from None


@dataclass(frozen=True)
class DenseSlot:
    """One Dense position, with the widths that flow into and out of it."""

    path: LayerPath
    in_features: int
    units: int
    owner: LayerPath  # the position whose parameters this one uses (itself if untied)
    table: LayerPath | None = None  # an Embedding whose table is this layer's weight (a transposed tie)

    @property
    def tied(self) -> bool:
        return self.owner != self.path


@dataclass(frozen=True)
class EmbedSlot:
    """The Embedding position: its table's shape, and the Dense positions that read the table."""

    path: LayerPath
    vocab: int
    dim: int
    readers: tuple[LayerPath, ...]  # Dense positions tied to the table (transposed ties)
    trainable: bool = True

    @property
    def owner(self) -> LayerPath:
        return self.path

    @property
    def tied(self) -> bool:
        return False


@dataclass(frozen=True)
class NormSlot:
    """One BatchNorm position: the features it normalizes and its settings."""

    path: LayerPath
    features: int
    layer: BatchNorm
    owner: LayerPath  # the position whose parameters and state this one uses

    @property
    def tied(self) -> bool:
        return self.owner != self.path


@dataclass(frozen=True)
class ParamSlot:
    """One unique parameter: named after its owner position, used at ``positions``."""

    name: str
    role: str
    owner: LayerPath
    shape: tuple[
        int, ...
    ]  # canonical: Dense weight (out, in), bias (out,); BatchNorm (features,); Embedding (vocab, dim)
    positions: tuple[str, ...]
    kind: str = "dense"  # "dense", "batchnorm" or "embedding": what layer owns it
    trainable: bool = True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_features: int
    layers: tuple[Layer, ...]
    # Each group lists positions that share one Dense layer's parameters; the first one in
    # traversal order owns them. Top-level positions may be written as plain ints.
    ties: tuple[tuple[LayerPath, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "ties", _normalize_ties(self.ties))
        _validate(self)

    # -- derived views -------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[LayerPath, Layer]]:
        """Every layer position in execution order (blocks are flattened)."""
        yield from _walk(self.layers, ())

    @cached_property
    def _tie_owners(self) -> dict[LayerPath, LayerPath]:
        return {path: group[0] for group in self.ties for path in group}

    @cached_property
    def embed_slot(self) -> EmbedSlot | None:
        """The Embedding that takes the ids, if the model has one (always its first layer)."""
        first_path, first = next(self.walk())
        if not isinstance(first, Embedding):
            return None
        readers = tuple(p for p, owner in self._tie_owners.items() if owner == first_path and p != first_path)
        return EmbedSlot(first_path, first.vocab, first.dim, tuple(sorted(readers)), first.trainable)

    @property
    def input_kind(self) -> str:
        """``ids`` when the first layer is an Embedding, else ``features``."""
        return "features" if self.embed_slot is None else "ids"

    @cached_property
    def dense_slots(self) -> tuple[DenseSlot, ...]:
        owners, embed = self._tie_owners, self.embed_slot
        table_path = None if embed is None else embed.path
        slots, width = [], self.in_features
        for path, layer in self.walk():
            if isinstance(layer, Embedding):
                width = layer.dim
            elif isinstance(layer, Dense):
                owner = owners.get(path, path)
                if owner == table_path:  # a transposed tie: the table is the weight, the bias is its own
                    slots.append(DenseSlot(path, width, layer.units, path, table_path))
                else:
                    slots.append(DenseSlot(path, width, layer.units, owner))
                width = layer.units
        return tuple(slots)

    @cached_property
    def norm_slots(self) -> tuple[NormSlot, ...]:
        owners = self._tie_owners
        slots, width = [], self.in_features
        for path, layer in self.walk():
            if isinstance(layer, Dense):
                width = layer.units
            elif isinstance(layer, Embedding):
                width = layer.dim
            elif isinstance(layer, BatchNorm):
                slots.append(NormSlot(path, width, layer, owners.get(path, path)))
        return tuple(slots)

    @cached_property
    def layer_slots(self) -> tuple[EmbedSlot | DenseSlot | NormSlot, ...]:
        """Every position that holds parameters, Embedding, Dense and BatchNorm, in execution order."""
        order = {path: k for k, (path, _) in enumerate(self.walk())}
        embed = () if self.embed_slot is None else (self.embed_slot,)
        slots = (*embed, *self.dense_slots, *self.norm_slots)
        return tuple(sorted(slots, key=lambda slot: order[slot.path]))

    @cached_property
    def _slot_by_path(self) -> dict[LayerPath, EmbedSlot | DenseSlot | NormSlot]:
        return {slot.path: slot for slot in self.layer_slots}

    @cached_property
    def state(self) -> tuple[ParamSlot, ...]:
        """Unique non-trainable state (BatchNorm running statistics), owners in execution order."""
        users: dict[LayerPath, list[LayerPath]] = {}
        for slot in self.norm_slots:
            users.setdefault(slot.owner, []).append(slot.path)
        return tuple(
            ParamSlot(
                param_name(slot.path, role),
                role,
                slot.path,
                (slot.features,),
                tuple(param_name(path, role) for path in users[slot.path]),
                "batchnorm",
                False,
            )
            for slot in self.norm_slots
            if not slot.tied
            for role in STATE_ROLES
        )

    @cached_property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.state}

    def state_owner_of(self, name: str) -> str:
        """The unique state behind a position name: ``layers.3.running_mean``."""
        try:
            path, role = split_param_name(name, STATE_ROLES)
        except KeyError:
            raise KeyError(f"{shown(name)} is not a state name of {shown(self.name)}") from None
        slot = self._slot_by_path.get(path)
        if isinstance(slot, NormSlot):
            return param_name(slot.owner, role)
        raise KeyError(
            f"{shown(name)} names no BatchNorm layer of {shown(self.name)}; BatchNorm layers: "
            + (_listed([layer_name(s.path) for s in self.norm_slots]) or "none")
        )

    def roles_at(self, path: LayerPath) -> tuple[str, ...]:
        """The parameter roles of the layer at ``path``: an Embedding has its table only."""
        return KIND_ROLES[_slot_kind(self._slot_by_path[path])]

    def trainable_at(self, path: LayerPath) -> bool:
        slot = self._slot_by_path[path]
        if isinstance(slot, NormSlot):
            return slot.layer.trainable
        if isinstance(slot, EmbedSlot):
            return slot.trainable
        return self._dense_trainable[path]

    @cached_property
    def _dense_trainable(self) -> dict[LayerPath, bool]:
        return {path: layer.trainable for path, layer in self.walk() if isinstance(layer, Dense)}

    @property
    def needs(self) -> tuple[str, ...]:
        """The backend capabilities (common.declarations.CAPABILITIES) building this spec takes."""
        wanted = {
            "batchnorm": self.has_batchnorm,
            "freezing": self.has_frozen,
            "embedding": self.embed_slot is not None,
        }
        return tuple(capability for capability, needed in wanted.items() if needed)

    @property
    def has_batchnorm(self) -> bool:
        return bool(self.norm_slots)

    @property
    def has_frozen(self) -> bool:
        return any(not p.trainable for p in self.params)

    @property
    def out_features(self) -> int:
        return self.dense_slots[-1].units if self.dense_slots else self.in_features

    @cached_property
    def params(self) -> tuple[ParamSlot, ...]:
        """Unique parameters in traversal order of their owners."""
        users: dict[LayerPath, list[LayerPath]] = {}
        for slot in self.layer_slots:  # one pass, so a spec of N layers costs O(N)
            users.setdefault(slot.owner, []).append(slot.path)
        result = []
        for slot in self.layer_slots:
            if slot.tied:
                continue
            trainable = self.trainable_at(slot.path)
            kind = _slot_kind(slot)
            for role in KIND_ROLES[kind]:
                if isinstance(slot, EmbedSlot):
                    shape: tuple[int, ...] = (slot.vocab, slot.dim)
                    paths = [slot.path, *slot.readers]
                elif isinstance(slot, DenseSlot):
                    shape = (slot.units, slot.in_features) if role == "weight" else (slot.units,)
                    if role == "weight" and slot.table is not None:
                        continue  # the table's, listed with the Embedding
                    paths = users[slot.path]
                else:
                    shape, paths = (slot.features,), users[slot.path]
                positions = tuple(param_name(path, role) for path in paths)
                result.append(
                    ParamSlot(param_name(slot.path, role), role, slot.path, shape, positions, kind, trainable)
                )
        return tuple(result)

    @cached_property
    def _param_by_position(self) -> dict[str, str]:
        return {position: p.name for p in self.params for position in p.positions}

    def param_kind(self, name: str) -> str:
        """The kind of layer that owns the parameter at position ``name``: what its layout is."""
        return self._param_kind[self.owner_of(name)]

    @cached_property
    def _param_kind(self) -> dict[str, str]:
        return {p.name: p.kind for p in self.params}

    @cached_property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.params}

    def owner_of(self, name: str) -> str:
        """The unique parameter behind a position name: ``layers.4.weight`` -> ``layers.2.weight``."""
        try:
            path, role = split_param_name(name)
        except KeyError:
            raise KeyError(f"{shown(name)} is not a parameter name of {shown(self.name)}") from None
        slot = self._slot_by_path.get(path)
        if slot is not None and role in KIND_ROLES[_slot_kind(slot)]:
            return self._param_by_position[name]
        if slot is not None:
            raise KeyError(
                f"{shown(name)}: an Embedding has one parameter, its table ({param_name(path, 'weight')})"
            )
        raise KeyError(
            f"{shown(name)} names no Embedding, Dense or BatchNorm layer of {shown(self.name)}; such layers: "
            + _listed([layer_name(s.path) for s in self.layer_slots])
        )

    def untied(self) -> ModelSpec:
        """The same architecture with every position owning its own parameters."""
        return ModelSpec(f"{self.name}-untied", self.in_features, self.layers, ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_features": self.in_features,
            "layers": [_layer_to_dict(layer) for layer in self.layers],
            "ties": [[list(path) for path in group] for group in self.ties],
        }


def _slot_kind(slot: EmbedSlot | DenseSlot | NormSlot) -> str:
    if isinstance(slot, EmbedSlot):
        return "embedding"
    return "dense" if isinstance(slot, DenseSlot) else "batchnorm"


# -- construction from data ---------------------------------------------------------------------
LAYER_KINDS = ("embedding", "dense", "relu", "batchnorm", "block")


def spec_from_dict(data: Mapping[str, Any]) -> ModelSpec:
    """Build a spec from JSON-like data: {"name", "in_features", "layers": [...], "ties": [...]}."""
    if not isinstance(data, Mapping):
        raise SpecError(f"a model spec must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"name", "in_features", "layers", "ties"}
    if unknown:
        raise SpecError(f"unknown spec field(s) {sorted(unknown)}; valid: name, in_features, layers, ties")
    try:
        ties = [tuple(_as_path(p) for p in group) for group in data.get("ties", [])]
        counter = itertools.count(1)
        return ModelSpec(
            name=str(data.get("name", "custom")),
            in_features=data.get("in_features", 0),
            layers=tuple(
                _layer_from_dict(item, (i,), counter) for i, item in enumerate(data.get("layers", []))
            ),
            ties=tuple(ties),
        )
    except TypeError as error:
        raise SpecError(f"malformed spec: {error}") from None


def _layer_from_dict(item: Any, path: LayerPath, counter: Iterator[int]) -> Layer:
    _check_limits(f"layer {layer_name(path)}", path, next(counter))  # before recursing any deeper
    if not isinstance(item, Mapping) or "kind" not in item:
        raise SpecError(f"layer {layer_name(path)}: expected an object with a 'kind', got {shown(item)}")
    kind = item["kind"]
    if kind == "dense":
        _check_fields(path, item, {"kind", "units", "trainable"})
        return Dense(item.get("units"), item.get("trainable", True))
    if kind == "relu":
        return ReLU()
    if kind == "embedding":
        _check_fields(path, item, {"kind", "vocab", "dim", "trainable"})
        return Embedding(item.get("vocab"), item.get("dim"), item.get("trainable", True))
    if kind == "batchnorm":
        _check_fields(path, item, {"kind", "momentum", "eps", "trainable"})
        return BatchNorm(item.get("momentum"), item.get("eps"), item.get("trainable", True))
    if kind == "block":
        children = item.get("layers", [])
        return Block(
            tuple(_layer_from_dict(c, path + (i,), counter) for i, c in enumerate(children)),
            str(item.get("label", "")),
        )
    raise SpecError(
        f"layer {layer_name(path)}: unknown layer kind {shown(kind)}; valid kinds: " + ", ".join(LAYER_KINDS)
    )


def _check_fields(path: LayerPath, item: Mapping[str, Any], valid: set[str]) -> None:
    unknown = sorted(str(key) for key in set(item) - valid)
    if unknown:
        raise SpecError(
            f"layer {layer_name(path)}: unknown field(s) {unknown}; valid: {', '.join(sorted(valid))}"
        )


def _layer_to_dict(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, Dense):
        return {"kind": "dense", "units": layer.units, **({} if layer.trainable else {"trainable": False})}
    if isinstance(layer, ReLU):
        return {"kind": "relu"}
    if isinstance(layer, Embedding):
        fields = {"kind": "embedding", "vocab": layer.vocab, "dim": layer.dim}
        return {**fields, **({} if layer.trainable else {"trainable": False})}
    if isinstance(layer, BatchNorm):
        fields = {"momentum": layer.momentum, "eps": layer.eps}
        return {
            "kind": "batchnorm",
            **{k: v for k, v in fields.items() if v is not None},
            **({} if layer.trainable else {"trainable": False}),
        }
    return {"kind": "block", "label": layer.label, "layers": [_layer_to_dict(c) for c in layer.layers]}


def _as_path(position: Any) -> LayerPath:
    if isinstance(position, bool):
        raise SpecError(f"tie position {shown(position)} is not an int or a path of ints")
    if isinstance(position, int):
        return (position,)
    if (
        isinstance(position, Sequence)
        and not isinstance(position, str)
        and 0 < len(position) <= MAX_NESTING + 1
        and all(isinstance(i, int) and not isinstance(i, bool) for i in position)
    ):
        return tuple(position)
    if isinstance(position, Sequence) and not isinstance(position, str) and len(position) > MAX_NESTING + 1:
        raise SpecError(
            f"tie position of {len(position)} indices: no layer can be there, since at most "
            f"{MAX_NESTING} blocks may be nested"
        )
    raise SpecError(f"tie position {shown(position)} is not an int or a path of ints")


def _normalize_ties(ties: Any) -> tuple[tuple[LayerPath, ...], ...]:
    if not isinstance(ties, Sequence):
        raise SpecError(f"ties must be a sequence of groups, got {shown(ties)}")
    groups = []
    for group in ties:
        if not isinstance(group, Sequence) or isinstance(group, str):
            raise SpecError(f"tie group {shown(group)} is not a sequence of positions")
        groups.append(tuple(sorted(_as_path(p) for p in group)))
    return tuple(groups)


def _walk(layers: tuple[Layer, ...], prefix: LayerPath) -> Iterator[tuple[LayerPath, Layer]]:
    for index, layer in enumerate(layers):
        path = prefix + (index,)
        if isinstance(layer, Block):
            yield from _walk(layer.layers, path)
        else:
            yield path, layer


def _validate(spec: ModelSpec) -> None:
    where = f"spec {shown(spec.name, 100)}"
    if isinstance(spec.in_features, bool) or not isinstance(spec.in_features, int) or spec.in_features <= 0:
        raise SpecError(f"{where}: in_features={shown(spec.in_features)}, but should be a positive int")
    if not spec.layers:
        raise SpecError(f"{where}: has no layers")
    _validate_layers(where, spec.layers, (), itertools.count(1))
    if not any(isinstance(layer, Dense) for _, layer in spec.walk()):
        raise SpecError(f"{where}: has no Dense layer")
    _validate_embedding(where, spec)
    shapes, width = {}, spec.in_features  # position -> what a tie must agree on
    for path, layer in spec.walk():
        if isinstance(layer, Embedding):
            # Its table is the weight of a Dense taking dim features to vocab units: (in, out) = (dim, vocab).
            shapes[path] = ("Embedding", (layer.dim, layer.vocab), layer.trainable)
            width = layer.dim
        elif isinstance(layer, Dense):
            shapes[path] = ("Dense", (width, layer.units), layer.trainable)
            width = layer.units
        elif isinstance(layer, BatchNorm):
            shapes[path] = ("BatchNorm", (width,), (layer.momentum, layer.eps, layer.trainable))
    seen: set[LayerPath] = set()
    for group in spec.ties:
        if len(group) < 2:
            raise SpecError(
                f"{where}: tie group {shown([list(p) for p in group])} needs at least two positions"
            )
        repeated = next((a for a, b in zip(group, group[1:], strict=False) if a == b), None)
        if repeated is not None:  # groups are sorted, so a repeat is adjacent
            raise SpecError(
                f"{where}: tie group {shown([list(p) for p in group])} lists {layer_name(repeated)} twice"
            )
        for path in group:
            if path not in shapes:
                valid = _listed([str(list(p)) for p in shapes])
                raise SpecError(
                    f"{where}: tie to {layer_name(path)}, which holds no parameters; "
                    f"Embedding, Dense and BatchNorm positions: {valid}"
                )
            if path in seen:
                raise SpecError(f"{where}: {layer_name(path)} appears in more than one tie")
            seen.add(path)
        owner = group[0]
        kind, shape, settings = shapes[owner]
        for path in group[1:]:
            other_kind, other_shape, other_settings = shapes[path]
            if other_kind == "Embedding":
                raise SpecError(
                    f"{where}: a model has one Embedding, its first layer; {layer_name(path)} is another"
                )
            if kind == "Embedding":
                _check_transposed_tie(where, owner, shape, settings, path, shapes[path])
                continue
            if other_kind != kind:
                raise SpecError(
                    f"{where}: cannot tie {layer_name(path)} ({other_kind}) to {layer_name(owner)} ({kind})"
                )
            if other_shape != shape:
                dense = kind == "Dense"
                label = "(in, out)" if dense else "features"
                theirs, ours = (other_shape, shape) if dense else (other_shape[0], shape[0])
                raise SpecError(
                    f"{where}: cannot tie {layer_name(path)} {label}={theirs} to "
                    f"{layer_name(owner)} {label}={ours}: shapes differ"
                )
            if other_settings != settings:
                raise SpecError(
                    f"{where}: cannot tie {layer_name(path)} to {layer_name(owner)}: one layer has one "
                    f"setting, but they differ ({other_settings} against {settings})"
                )


def _validate_embedding(where: str, spec: ModelSpec) -> None:
    """An Embedding takes the model's ids, so it runs first; in_features is then its vocabulary."""
    embeddings = [path for path, layer in spec.walk() if isinstance(layer, Embedding)]
    if not embeddings:
        return
    first_path, first = next(spec.walk())
    if embeddings[0] != first_path:
        raise SpecError(
            f"{where}: the Embedding at {layer_name(embeddings[0])} must be the first layer the model "
            f"runs (it takes the input ids), but {layer_name(first_path)} runs first"
        )
    if len(embeddings) > 1:
        raise SpecError(
            f"{where}: a model has one Embedding, its first layer; {layer_name(embeddings[1])} is another"
        )
    if spec.in_features != first.vocab:
        raise SpecError(
            f"{where}: in_features={spec.in_features}, but its Embedding takes ids below "
            f"vocab={first.vocab}, so in_features (the ids' one-hot width) should be {first.vocab}"
        )


def _check_transposed_tie(where: str, owner: LayerPath, shape, settings, path: LayerPath, other) -> None:
    other_kind, other_shape, other_settings = other
    dim, vocab = shape
    if other_kind != "Dense":
        raise SpecError(
            f"{where}: cannot tie {layer_name(path)} ({other_kind}) to the Embedding at {layer_name(owner)}: "
            "only a Dense can read an embedding's table"
        )
    if other_shape != shape:
        raise SpecError(
            f"{where}: cannot tie {layer_name(path)} (in, out)={other_shape} to the Embedding at "
            f"{layer_name(owner)}: a Dense reading its table takes dim={dim} features to vocab={vocab} units"
        )
    if other_settings != settings:
        raise SpecError(
            f"{where}: cannot tie {layer_name(path)} to the Embedding at {layer_name(owner)}: one is frozen "
            "and the other is not, but they share one table"
        )


def _check_limits(where: str, path: LayerPath, count: int) -> None:
    if count > MAX_LAYERS:
        raise SpecError(f"{where}: more than {MAX_LAYERS} layers (Dense, ReLU and Block entries in all)")
    if len(path) > MAX_NESTING + 1:
        raise SpecError(
            f"{where}: nested inside {len(path) - 1} blocks, but at most {MAX_NESTING} are allowed"
        )


def _validate_layers(where: str, layers: tuple[Any, ...], prefix: LayerPath, counter: Iterator[int]) -> None:
    for index, layer in enumerate(layers):
        path = prefix + (index,)
        _check_limits(f"{where}: {layer_name(path)}", path, next(counter))
        if isinstance(layer, Dense):
            if isinstance(layer.units, bool) or not isinstance(layer.units, int) or layer.units <= 0:
                raise SpecError(
                    f"{where}: {layer_name(path)} Dense units={shown(layer.units)}, "
                    "but should be a positive int"
                )
            _check_trainable(where, path, layer.trainable)
        elif isinstance(layer, Embedding):
            for field_name in ("vocab", "dim"):
                value = getattr(layer, field_name)
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise SpecError(
                        f"{where}: {layer_name(path)} Embedding {field_name}={shown(value)}, "
                        "but should be a positive int"
                    )
            _check_trainable(where, path, layer.trainable)
        elif isinstance(layer, BatchNorm):
            _check_batchnorm(where, path, layer)
        elif isinstance(layer, Block):
            if not layer.layers:
                raise SpecError(f"{where}: block {layer_name(path)} is empty")
            _validate_layers(where, tuple(layer.layers), path, counter)
        elif not isinstance(layer, ReLU):
            raise SpecError(
                f"{where}: {layer_name(path)} has unknown layer kind "
                f"{type(layer).__name__!r}; valid kinds: Embedding, Dense, ReLU, BatchNorm, Block"
            )


def _check_trainable(where: str, path: LayerPath, trainable: Any) -> None:
    if not isinstance(trainable, bool):
        raise SpecError(f"{where}: {layer_name(path)} trainable={trainable!r}, but should be true or false")


def _check_batchnorm(where: str, path: LayerPath, layer: BatchNorm) -> None:
    _check_trainable(where, path, layer.trainable)
    for field_name, low, high in (("momentum", 0.0, 1.0), ("eps", 0.0, 1.0)):
        value = getattr(layer, field_name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        bounded = number and (low <= value <= high if field_name == "momentum" else low < value <= high)
        if not bounded:
            span = "0 <= momentum <= 1" if field_name == "momentum" else "0 < eps <= 1"
            raise SpecError(
                f"{where}: {layer_name(path)} BatchNorm {field_name}={value!r}, but should be unset or {span}"
            )


def _listed(choices: list[str]) -> str:
    """The first MAX_LISTED choices, and how many more: a 20,000-layer spec's positions are not
    all worth a line."""
    shown_here = ", ".join(printable(choice, 100) for choice in choices[:MAX_LISTED])
    more = len(choices) - MAX_LISTED
    return f"{shown_here} and {more} more" if more > 0 else shown_here
