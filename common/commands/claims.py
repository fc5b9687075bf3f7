"""What D2L sections 6.2 to 6.6 (the parameters of a model, their initialisation, lazy
initialization, custom layers and file I/O) claim or print, as data.

Each claim names the book tab it comes from (a backend's declaration says which tab it answers
to, so every Keras backend is held to the TensorFlow tab's claims), quotes the book, and says
which measurement of a behaviour record decides it and what value the book expects. The outcome
is never written here: ``evaluate`` computes it from a real probe record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.core.initializers import FANS, ZEROS, Law, Scale
from common.core.spec import split_param_name

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Claim:
    tab: str | None  # the D2L tab ("PyTorch", "MXNet", "JAX", "TensorFlow"); None: every backend
    section: str
    quote: str
    measure: str  # a key of MEASURES
    expected: Any


def _tied(record: Record) -> Record:
    return record["models"]["tied"]


def _layers_in_listing(record: Record) -> int:
    """How many layers the framework's own listing holds parameters for (Flax: the entries of
    params['params']). Each listed native name is mapped to its canonical position through the
    record's parameter table, so no native name format is parsed; a listed name that is no unique
    parameter's (a tie listed twice) counts as a layer of its own."""
    tied = _tied(record)
    canonical = {p["native_name"]: p["name"] for p in tied["params"]}
    names = tied["facts"]["listing_names"]
    layers = {split_param_name(canonical[name])[0] for name in names if name in canonical}
    return len(layers) + sum(name not in canonical for name in names)


def _first_unbuilt_shape(record: Record) -> str:
    """How the first layer's weight looks before the first forward, under its native name."""
    mlp = record["models"]["mlp"]
    native = next(p["native_name"] for p in mlp["params"] if p["name"] == "layers.0.weight")
    return mlp["unbuilt"].get(native, "no parameters yet")


def _layer_2_native_weight_shape(record: Record) -> tuple[int, ...]:
    params = {p["name"]: p for p in record["models"]["mlp"]["params"]}
    return tuple(params["layers.2.weight"]["native_shape"])


def _layer_list(record: Record) -> str:
    facts = _tied(record)["facts"]
    return (
        f"len({facts['layer_list_call']}) = {facts['layer_list_length']}, "
        f"{facts['unique_layer_objects']} distinct objects"
    )


MEASURES: dict[str, Callable[[Record], Any]] = {
    "layer list length == unique layer objects (tied)": lambda r: (
        _tied(r)["facts"]["layer_list_length"] == _tied(r)["facts"]["unique_layer_objects"]
    ),
    "len(params['params']) (tied)": _layers_in_listing,
    "grad before backward": lambda r: r["models"]["mlp"]["grad_state_before_backward"],
    "write at one tied position is seen at the other": lambda r: _tied(r)["ties"][
        "write_seen_at_other_position"
    ],
    "tied gradient == sum over its uses": lambda r: _tied(r)["ties"]["tied_grad_is_sum_of_uses"],
    "layer 2 native weight shape (mlp)": _layer_2_native_weight_shape,
    "first parameter's shape before the first forward": _first_unbuilt_shape,
    "parameters exist before the first forward": lambda r: bool(r["models"]["mlp"]["unbuilt"]),
}


def _unbuilt_shape(record: Record, position: str) -> str:
    """How the parameter at ``position`` of the MLP looks before the first forward."""
    mlp = record["models"]["mlp"]
    native = next(p["native_name"] for p in mlp["params"] if p["name"] == position)
    return mlp["unbuilt"].get(native, "no parameters yet")


def _native_shape(record: Record, position: str) -> tuple[int, ...]:
    params = {p["name"]: p for p in record["models"]["mlp"]["params"]}
    return tuple(params[position]["native_shape"])


def _custom(record: Record) -> Record:
    return record["custom_layer"]


# D2L 6.4 to 6.6: lazy initialization, custom layers, file I/O.
MEASURES.update(
    {
        "every shape known after the first forward": lambda r: r["lazy"][
            "all_shapes_known_after_first_forward"
        ],
        "second layer's weight before the first forward": lambda r: _unbuilt_shape(r, "layers.2.weight"),
        "first layer's native weight shape after the first forward": lambda r: _native_shape(
            r, "layers.0.weight"
        ),
        "layer objects without weights before the first forward": lambda r: (
            r["lazy"]["layer_objects_before_forward"] > 0 and r["lazy"]["params_before_forward"] == 0
        ),
        "custom layer's parameters listed as the built-in's": lambda r: (
            _custom(r)["custom_params_listed"] and _custom(r)["parameter_class_as_built_in"]
        ),
        "write at one tied custom position is seen at the other": lambda r: _custom(r)[
            "write_seen_at_other_position"
        ],
        "custom layer computes, differentiates and trains as the oracle": lambda r: (
            _custom(r)["matches_oracle"] and _custom(r)["trains_as_oracle"]
        ),
        "clone of the custom model from its own file: Y_clone == Y": lambda r: r["file_io"][
            "clone_output_identical"
        ],
        "clone of the MLP from its own file: Y_clone == Y": lambda r: r["models"]["mlp"]["native_file"][
            "clone_output_identical"
        ],
        "the saved file names the user's layer class": lambda r: r["file_io"]["custom_class_named_in_file"],
    }
)


# How an observation reads, in the claim's own terms, so a verdict never reads like a
# contradiction ("observed: false (holds)"): each takes the observed value and the record.
def _yes_no(yes: str, no: str) -> Callable[[Any, Record], str]:
    return lambda observed, record: yes if observed else no


def _write_seen(observed: Any, record: Record) -> str:
    ties = _tied(record)["ties"]
    seen = "is seen" if observed else "is not seen"
    return f"a write at {ties['written']} {seen} at {ties['observed']}"


def _shape(observed: Any, record: Record) -> str:
    return f"({', '.join(str(n) for n in observed)}{',' if len(observed) == 1 else ''})"


DESCRIBE: dict[str, Callable[[Any, Record], str]] = {
    "layer list length == unique layer objects (tied)": lambda observed, record: _layer_list(record),
    "len(params['params']) (tied)": lambda observed, record: f"{observed} top-level entries",
    "grad before backward": lambda observed, record: f"grad before backward: {observed}",
    "write at one tied position is seen at the other": _write_seen,
    "tied gradient == sum over its uses": _yes_no(
        "the tied gradient is the sum over its uses", "the tied gradient is not the sum over its uses"
    ),
    "layer 2 native weight shape (mlp)": _shape,
    "first parameter's shape before the first forward": lambda observed, record: str(observed),
    "parameters exist before the first forward": _yes_no(
        "parameters exist before the first forward", "no parameters before the first forward"
    ),
}


def _lazy_layers(observed: Any, record: Record) -> str:
    lazy = record["lazy"]
    return (
        f"before the first forward: len({lazy['layer_list_call']}) = {lazy['layer_objects_before_forward']}, "
        f"{lazy['params_before_forward']} parameters"
    )


def _custom_listing(observed: Any, record: Record) -> str:
    custom = _custom(record)
    classes = {p["native_class"] for p in custom["params"]}
    listed = "all listed" if custom["custom_params_listed"] else "not all listed"
    where = f"{custom['custom_class']} beside {custom['built_in_class']}"
    return f"{where}: {listed} by {custom['listing']['call']}, as {', '.join(sorted(classes))}"


def _custom_numbers(observed: Any, record: Record) -> str:
    diffs = _custom(record)["max_abs_diff"]
    return (
        "matches the oracle" if observed else "differs from the oracle"
    ) + f": max |delta| {max(diffs.values()):.1e}"


def _file_names_class(observed: Any, record: Record) -> str:
    io = record["file_io"]
    named = "names" if observed else "does not name"
    return f"{io['call']}: {len(io['entries'])} entries; it {named} {io['custom_class']}"


DESCRIBE.update(
    {
        "every shape known after the first forward": _yes_no(
            "every shape is known after the first forward", "some shape is unknown after the first forward"
        ),
        "second layer's weight before the first forward": lambda observed, record: str(observed),
        "first layer's native weight shape after the first forward": _shape,
        "layer objects without weights before the first forward": _lazy_layers,
        "custom layer's parameters listed as the built-in's": _custom_listing,
        "write at one tied custom position is seen at the other": _yes_no(
            "a write at one tied custom position is seen at the other",
            "a write at one tied custom position is not seen at the other",
        ),
        "custom layer computes, differentiates and trains as the oracle": _custom_numbers,
        "clone of the custom model from its own file: Y_clone == Y": _yes_no(
            "Y_clone == Y, bit for bit", "Y_clone != Y"
        ),
        "clone of the MLP from its own file: Y_clone == Y": _yes_no(
            "Y_clone == Y, bit for bit", "Y_clone != Y"
        ),
        "the saved file names the user's layer class": _file_names_class,
    }
)


# -- 6.3: default initialisation, checked as a distribution ------------------------------------------
# The probe samples a fresh Dense's default weight and bias at several (fan_in, fan_out) and records,
# per law, a goodness-of-fit test at each size (common/core/init_fit.py): the laws are the backend's
# declared ones and those below. A claim naming a formula holds where every size passes; a claim
# naming only a shape and the sizes its range follows is held to the law the samples follow.
BOOK_DEFAULT_LAWS: dict[tuple[str, str], Law] = {  # (tab, "weight" or "bias") -> the book's formula
    ("MXNet", "weight"): Law("uniform", Scale(value=0.07)),
    ("MXNet", "bias"): ZEROS,
    ("TensorFlow", "bias"): ZEROS,
    ("JAX", "weight"): Law("truncated_normal", Scale(numerator=1.0, fan="fan_in")),
    ("JAX", "bias"): ZEROS,
}
_FOLLOWS = {"fixed": "a fixed range", "no rule": "no size rule", "fan_in + fan_out": "fan_in and fan_out"}
BOTH_SIZES = f"uniform, from {_FOLLOWS[FANS[2]]}"


def _initialisation(record: Record, parameter: str) -> Record:
    return record["initialisation"][parameter]


def _law_fits(parameter: str, law: Law) -> Callable[[Record], bool]:
    def measure(record: Record) -> bool:
        return all(f["passes"] for f in _initialisation(record, parameter)["fits"][law.text])

    return measure


def describe_fits(fits: list[Record], alpha: float, law_kind: str) -> str:
    """The fitted parameter beside the formula's at each size, then the worst test; for a constant,
    how many values are not it."""
    if law_kind == "constant":
        wrong = [f for f in fits if f["outside_support"]]
        if not wrong:
            return (
                f"every value is {fits[0]['expected']:g} ({sum(f['n'] for f in fits)} at {len(fits)} sizes)"
            )
        f = wrong[0]
        where = f"({f['fan_in']}, {f['fan_out']})"
        return f"{f['outside_support']} of {f['n']} values are not {f['expected']:g} at {where}"
    name = {"uniform": "a", "zeroed_uniform": "max |w|"}.get(law_kind, "std")
    sizes = "; ".join(
        f"({f['fan_in']}, {f['fan_out']}) {f['fitted']:.4g} vs {f['expected']:.4g}" for f in fits
    )
    worst = min(fits, key=lambda f: (f["passes"], not f["outside_support"], f["p_value"], f["tail_p_value"]))
    where = f"({worst['fan_in']}, {worst['fan_out']})"
    test = f"KS p >= {worst['p_value']:.2g} at alpha {alpha:g}"
    if worst["outside_support"]:
        test = f"{worst['outside_support']} of {worst['n']} values outside its support at {where}"
    elif worst["p_value"] < alpha:
        test = f"rejected at {where}: KS p = {worst['p_value']:.2g} < alpha {alpha:g}"
    elif not worst["passes"]:
        test = f"rejected at {where}: too few values in its tails, p = {worst['tail_p_value']:.2g}"
    return f"fitted {name} {sizes}; {test}"


def _shape_and_fan(parameter: str) -> Callable[[Record], str]:
    def measure(record: Record) -> str:
        identified = _initialisation(record, parameter)["identified"]
        if identified["kind"] == "constant":
            return identified["law"]
        follows = _FOLLOWS.get(identified["follows"], identified["follows"])
        return f"{identified['kind'].replace('_', ' ')}, from {follows}"

    return measure


def default_init_laws(parameter: str) -> list[Law]:
    """The laws 6.3's claims test ``parameter`` ("weight", "bias") against, for the probe to record."""
    laws = {law for (_, p), law in BOOK_DEFAULT_LAWS.items() if p == parameter}
    return sorted(laws, key=lambda law: law.text)


for _parameter in ("weight", "bias"):
    for _law in default_init_laws(_parameter):
        _key = f"default {_parameter} ~ {_law.text}"
        MEASURES[_key] = _law_fits(_parameter, _law)
        DESCRIBE[_key] = lambda observed, record, p=_parameter, law=_law: describe_fits(
            _initialisation(record, p)["fits"][law.text], record["initialisation"]["alpha"], law.kind
        )
    _key = f"default {_parameter}: shape, and the sizes its range follows"
    MEASURES[_key] = _shape_and_fan(_parameter)
    DESCRIBE[_key] = lambda observed, record, p=_parameter: (
        f"{observed}: {_initialisation(record, p)['identified']['law']}"
    )


INIT_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "MXNet",
        "6.3",
        "by default, MXNet draws weights from a uniform distribution U(-0.07, 0.07)",
        "default weight ~ U(-0.07, 0.07)",
        True,
    ),
    Claim(
        "MXNet", "6.3", "by default, MXNet clears bias parameters to zero", "default bias ~ constant 0", True
    ),
    Claim(
        "PyTorch",
        "6.3",
        "by default, PyTorch draws weight matrices uniformly from a range computed from the input "
        "and output dimension",
        "default weight: shape, and the sizes its range follows",
        BOTH_SIZES,
    ),
    Claim(
        "PyTorch",
        "6.3",
        "by default, PyTorch draws bias parameters uniformly from a range computed from the input "
        "and output dimension",
        "default bias: shape, and the sizes its range follows",
        BOTH_SIZES,
    ),
    Claim(
        "TensorFlow",
        "6.3",
        "by default, Keras draws weight matrices uniformly from a range computed from the input and "
        "output dimension",
        "default weight: shape, and the sizes its range follows",
        BOTH_SIZES,
    ),
    Claim(
        "TensorFlow",
        "6.3",
        "by default, Keras sets the bias parameters all to zero",
        "default bias ~ constant 0",
        True,
    ),
    Claim(
        "JAX",
        "6.3",
        "by default, Flax draws weights with lecun_normal: a truncated normal centred on 0 with std "
        "sqrt(1 / fan_in)",
        "default weight ~ normal truncated at ±2 sigma, std sqrt(1 / fan_in)",
        True,
    ),
    Claim(
        "JAX",
        "6.3",
        "by default, Flax sets the bias parameters all to zero",
        "default bias ~ constant 0",
        True,
    ),
)

BOOK_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "TensorFlow",
        "6.2.3",
        "len(net.layers) == 3: tf.keras removes the duplicate layer automatically",
        "layer list length == unique layer objects (tied)",
        True,
    ),
    Claim(
        "JAX",
        "6.2.3",
        "len(params['params']) == 3: the shared Dense has one entry",
        "len(params['params']) (tied)",
        3,
    ),
    Claim("PyTorch", "6.2.1.3", "net[2].weight.grad == None before backward", "grad before backward", "none"),
    Claim(
        "MXNet",
        "6.2.1.3",
        "net[1].weight.grad() is all zeros before backward",
        "grad before backward",
        "zeros",
    ),
    Claim(
        "JAX", "6.2.1.3", "gradients are not stored with the parameters", "grad before backward", "not stored"
    ),
    Claim(
        "TensorFlow",
        "6.2.1.3",
        "gradients are not stored with the variables",
        "grad before backward",
        "not stored",
    ),
    Claim(
        "PyTorch",
        "6.2.1.1",
        "net[2].state_dict(): weight torch.Size([1, 8])",
        "layer 2 native weight shape (mlp)",
        (1, 8),
    ),
    Claim(
        "MXNet",
        "6.2.1.1",
        "net[1].params: weight shape (1, 8) in (out, in) layout",
        "layer 2 native weight shape (mlp)",
        (1, 8),
    ),
    Claim(
        "JAX",
        "6.2.1.1",
        "params['params']['layers_2']['kernel'] is (in, out)",
        "layer 2 native weight shape (mlp)",
        (8, 1),
    ),
    Claim(
        "TensorFlow",
        "6.2.1.1",
        "net.layers[2].weights[0] is the kernel, (in, out)",
        "layer 2 native weight shape (mlp)",
        (8, 1),
    ),
    *INIT_CLAIMS,
    Claim(
        "MXNet",
        "6.4",
        "before the first forward: Parameter dense0_weight (shape=(8, -1))",
        "first parameter's shape before the first forward",
        "(8, -1)",
    ),
    Claim(
        "PyTorch",
        "6.4",
        "before the first forward: net[0].weight is <UninitializedParameter>",
        "first parameter's shape before the first forward",
        "<UninitializedParameter>",
    ),
    Claim(
        "JAX",
        "6.4",
        "params do not exist until net.init(key, X)",
        "parameters exist before the first forward",
        False,
    ),
    Claim(
        "TensorFlow",
        "6.4",
        "[l.get_weights() for l in net.layers] is all [] before the first call",
        "parameters exist before the first forward",
        False,
    ),
    Claim(
        None,
        "6.2.3",
        "tied parameters: changing net[2] changes net[4]; they are the same object",
        "write at one tied position is seen at the other",
        True,
    ),
    Claim(
        None,
        "6.2.3",
        "the gradients of the shared layer are added together during backpropagation",
        "tied gradient == sum over its uses",
        True,
    ),
    # -- 6.4 to 6.6: lazy initialization, custom layers, file I/O --------------------------------------
    Claim(
        None,
        "6.4",
        "as soon as the input dimensionality is known, the framework identifies every layer's shape",
        "every shape known after the first forward",
        True,
    ),
    Claim(
        "MXNet",
        "6.4",
        "net.initialize() does not truly initialize: dense1_weight stays (1, -1) until data passes",
        "second layer's weight before the first forward",
        "(1, -1)",
    ),
    Claim(
        "PyTorch",
        "6.4",
        "each nn.LazyLinear waits for data: net[2].weight is <UninitializedParameter> before net(X)",
        "second layer's weight before the first forward",
        "<UninitializedParameter>",
    ),
    Claim(
        "MXNet",
        "6.4",
        "after net(X), collect_params() shows dense0_weight as (units, in) = (8, 4)",
        "first layer's native weight shape after the first forward",
        (8, 4),
    ),
    Claim(
        "PyTorch",
        "6.4",
        "after net(X), net[0].weight.shape is (out, in) = torch.Size([8, 4])",
        "first layer's native weight shape after the first forward",
        (8, 4),
    ),
    Claim(
        "TensorFlow",
        "6.4",
        "after net(X), [w.shape for w in net.get_weights()] starts with the kernel (in, out) = (4, 8)",
        "first layer's native weight shape after the first forward",
        (4, 8),
    ),
    Claim(
        "TensorFlow",
        "6.4",
        "each layer object exists but the weights are empty before the first call",
        "layer objects without weights before the first forward",
        True,
    ),
    Claim(
        None,
        "6.5",
        "parameters a custom layer creates with the framework's functions are listed like a built-in layer's",
        "custom layer's parameters listed as the built-in's",
        True,
    ),
    Claim(
        None,
        "6.5",
        "those functions govern sharing: a custom layer is tied like a built-in one",
        "write at one tied custom position is seen at the other",
        True,
    ),
    Claim(
        None,
        "6.5",
        "a model of custom layers is used just like the built-in fully connected layer",
        "custom layer computes, differentiates and trains as the oracle",
        True,
    ),
    Claim(
        None,
        "6.5",
        "no custom serialization routine is needed for a custom layer: its clone loads the saved file",
        "clone of the custom model from its own file: Y_clone == Y",
        True,
    ),
    Claim(
        None,
        "6.6",
        "Y_clone == Y: a clone built in code that reads the saved parameters gives the same output",
        "clone of the MLP from its own file: Y_clone == Y",
        True,
    ),
    Claim(
        None,
        "6.6",
        "this saves model parameters and not the entire model: the architecture is generated in code",
        "the saved file names the user's layer class",
        False,
    ),
)


HOLDS, DOES_NOT_HOLD, NOT_EVALUATED = "holds", "does not hold", "not evaluated"
NOT_APPLICABLE = "n/a"  # the claim is about another book tab
STATUSES = (HOLDS, DOES_NOT_HOLD, NOT_EVALUATED, NOT_APPLICABLE)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    status: str  # HOLDS, DOES_NOT_HOLD or NOT_EVALUATED
    observed: Any
    detail: str = ""  # the observation in words, or why the claim was not evaluated


def applies_to(claim: Claim, book_tab: str) -> bool:
    """Whether a backend answering to ``book_tab`` (its declaration's) is held to ``claim``."""
    return claim.tab is None or claim.tab == book_tab


def evaluate(claim: Claim, record: Record | None) -> Verdict:
    if not record or not record.get("ok"):
        return Verdict(claim, NOT_EVALUATED, (record or {}).get("error", "no record"), "the backend failed")
    try:
        observed = MEASURES[claim.measure](record)
        observed = tuple(observed) if isinstance(observed, list) else observed
        detail = DESCRIBE[claim.measure](observed, record)
    except KeyError as error:
        return Verdict(claim, NOT_EVALUATED, None, f"the record lacks {error}")
    except (TypeError, IndexError, ValueError, StopIteration) as error:
        return Verdict(claim, NOT_EVALUATED, None, f"unreadable record: {type(error).__name__}: {error}")
    expected = tuple(claim.expected) if isinstance(claim.expected, list) else claim.expected
    return Verdict(claim, HOLDS if observed == expected else DOES_NOT_HOLD, observed, detail)
