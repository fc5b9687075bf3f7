"""Declarative model specs: Dense/ReLU layers, nested blocks and tie groups.

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
MAX_LAYERS = 20_000  # make bench builds 10,000 Dense layers with a ReLU between each
MAX_NESTING = 16
MAX_LISTED = 10  # valid choices listed in one error; the rest are counted


@dataclass(frozen=True)
class Dense:
    units: int


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Block:
    """A nested sequential block; ``label`` is for humans only (e.g. "NestMLP")."""

    layers: tuple[Layer, ...]
    label: str = ""


Layer = Dense | ReLU | Block


def layer_name(path: LayerPath) -> str:
    return "layers." + ".".join(str(index) for index in path)


def param_name(path: LayerPath, role: str) -> str:
    return f"{layer_name(path)}.{role}"


def split_param_name(name: str) -> tuple[LayerPath, str]:
    """Inverse of param_name; raises KeyError for anything that is not one."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "layers" or parts[-1] not in ROLES:
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

    @property
    def tied(self) -> bool:
        return self.owner != self.path


@dataclass(frozen=True)
class ParamSlot:
    """One unique parameter: named after its owner position, used at ``positions``."""

    name: str
    role: str
    owner: LayerPath
    shape: tuple[int, ...]  # canonical: weight (out, in), bias (out,)
    positions: tuple[str, ...]


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
        """Every Dense and ReLU position in execution order (blocks are flattened)."""
        yield from _walk(self.layers, ())

    @cached_property
    def dense_slots(self) -> tuple[DenseSlot, ...]:
        owners = {path: group[0] for group in self.ties for path in group}
        slots, width = [], self.in_features
        for path, layer in self.walk():
            if isinstance(layer, Dense):
                slots.append(DenseSlot(path, width, layer.units, owners.get(path, path)))
                width = layer.units
        return tuple(slots)

    @cached_property
    def _slot_by_path(self) -> dict[LayerPath, DenseSlot]:
        return {slot.path: slot for slot in self.dense_slots}

    @property
    def out_features(self) -> int:
        return self.dense_slots[-1].units if self.dense_slots else self.in_features

    @cached_property
    def params(self) -> tuple[ParamSlot, ...]:
        """Unique parameters in traversal order of their owners."""
        users: dict[LayerPath, list[LayerPath]] = {}
        for slot in self.dense_slots:  # one pass, so a spec of N layers costs O(N)
            users.setdefault(slot.owner, []).append(slot.path)
        result = []
        for slot in self.dense_slots:
            if slot.tied:
                continue
            for role in ROLES:
                shape = (slot.units, slot.in_features) if role == "weight" else (slot.units,)
                positions = tuple(param_name(path, role) for path in users[slot.path])
                result.append(ParamSlot(param_name(slot.path, role), role, slot.path, shape, positions))
        return tuple(result)

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
        if slot is not None:
            return param_name(slot.owner, role)
        raise KeyError(
            f"{shown(name)} names no Dense layer of {shown(self.name)}; Dense layers: "
            + _listed([layer_name(s.path) for s in self.dense_slots])
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


# -- construction from data ---------------------------------------------------------------------
LAYER_KINDS = ("dense", "relu", "block")


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
        return Dense(item.get("units"))
    if kind == "relu":
        return ReLU()
    if kind == "block":
        children = item.get("layers", [])
        return Block(
            tuple(_layer_from_dict(c, path + (i,), counter) for i, c in enumerate(children)),
            str(item.get("label", "")),
        )
    raise SpecError(
        f"layer {layer_name(path)}: unknown layer kind {shown(kind)}; valid kinds: " + ", ".join(LAYER_KINDS)
    )


def _layer_to_dict(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, Dense):
        return {"kind": "dense", "units": layer.units}
    if isinstance(layer, ReLU):
        return {"kind": "relu"}
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
    widths, width = {}, spec.in_features
    for path, layer in spec.walk():
        if isinstance(layer, Dense):
            widths[path] = (width, layer.units)
            width = layer.units
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
            if path not in widths:
                valid = _listed([str(list(p)) for p in widths])
                raise SpecError(
                    f"{where}: tie to {layer_name(path)}, which is not a Dense layer; "
                    f"Dense positions: {valid}"
                )
            if path in seen:
                raise SpecError(f"{where}: {layer_name(path)} appears in more than one tie")
            seen.add(path)
        owner = group[0]
        for path in group[1:]:
            if widths[path] != widths[owner]:
                raise SpecError(
                    f"{where}: cannot tie {layer_name(path)} (in, out)={widths[path]} to "
                    f"{layer_name(owner)} (in, out)={widths[owner]}: shapes differ"
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
        elif isinstance(layer, Block):
            if not layer.layers:
                raise SpecError(f"{where}: block {layer_name(path)} is empty")
            _validate_layers(where, tuple(layer.layers), path, counter)
        elif not isinstance(layer, ReLU):
            raise SpecError(
                f"{where}: {layer_name(path)} has unknown layer kind "
                f"{type(layer).__name__!r}; valid kinds: Dense, ReLU, Block"
            )


def _listed(choices: list[str]) -> str:
    """The first MAX_LISTED choices, and how many more: a 20,000-layer spec's positions are not
    all worth a line."""
    shown_here = ", ".join(printable(choice, 100) for choice in choices[:MAX_LISTED])
    more = len(choices) - MAX_LISTED
    return f"{shown_here} and {more} more" if more > 0 else shown_here
