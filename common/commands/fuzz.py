"""`paramparity fuzz`: a bounded, seeded differential campaign against the reference reader.

Each mutant starts as a valid file from ``portable.write_portable`` (the book models) and gets one
to four mutations: of the header's structure (dtypes, shapes, offsets, names, metadata, the spec
inside it), of its JSON text (duplicate keys, deep nesting, huge integers, lone surrogates,
splices), or of its bytes (bit flips, truncation, the length field). Every mutant goes to:

- the reference: ``safetensors.numpy.load_file``;
- ours, two ways: the inspect path (``inspect_lines`` without a spec, which reads every tensor)
  and the import path (``portable.read_params`` against the spec the file was made from).

All three run in isolated workers (``common.core.isolate``) under a memory cap and a time limit,
so a crash or a hang is counted, not suffered. An outcome is bad (exit 1) when ours raises
anything but ParamFileError (a traceback), crashes, hangs, prints a control character, accepts
a file the reference rejects, or reads other values than the reference. Bad outcomes and every
inspect-path disagreement are written to reports/fuzz/seed-S/ and printed as reproducers. The
import path refusing a file the reference accepts is expected: that is the semantic checks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import shutil
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import write_atomically
from common.commands.fuzz_specs import add_suite_timeout_option
from common.commands.textable import format_table
from common.config import add_backends_option, parse_backend_list, seconds_option
from common.core.isolate import Limits, Outcome, Worker
from common.core.models import BOOK_SPECS
from common.core.oracle import initial_weights
from common.core.portable import write_portable
from common.core.untrusted import printable, shown
from common.envs import ROOT
from common.errors import MAX_MESSAGE, UsageError

REPORTS = ROOT / "reports" / "fuzz"
PATHS = ("inspect", "import")
BOTH_ACCEPT = "both accept, identical"
DIFFER = "both accept, values differ"
BOTH_REJECT = "both reject"
OURS_REJECTS = "ours rejects, reference accepts"
OURS_ACCEPTS = "ours accepts, reference rejects"
TRACEBACK = "ours: traceback (not ParamFileError)"
CRASH = "ours: crashed or out of memory"
HANG = "ours: hang (timed out)"
UNSAFE = "ours: unescaped output"
OUTCOMES = (BOTH_ACCEPT, BOTH_REJECT, OURS_REJECTS, OURS_ACCEPTS, DIFFER, TRACEBACK, CRASH, HANG, UNSAFE)
BAD = {OURS_ACCEPTS, DIFFER, TRACEBACK, CRASH, HANG, UNSAFE}
REPRODUCED = {"inspect": BAD | {OURS_REJECTS}, "import": BAD}
MAX_PRINTED = 20  # reproducers printed per path and outcome; all are written


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "fuzz",
        help="differential fuzzing of the safetensors import against the reference reader",
        description="Mutate valid parameter files (seeded), read each with the reference reader and "
        "with paramparity's inspect and import paths, each isolated under limits; print a table of "
        "outcomes and a reproducer for each bad one. Exit 1 on a traceback, crash, hang, unescaped "
        "output, or a file ours accepts and the reference rejects.",
    )
    parser.add_argument("--mutants", type=int, default=5000, help="how many mutants (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument(
        "--timeout", type=seconds_option("--timeout"), default=10.0, help="seconds per read (default 10)"
    )
    parser.add_argument("--memory-mb", type=int, default=512, help="memory cap per reader (default 512)")
    parser.add_argument("--out", type=Path, default=None, help="reproducer folder (default reports/fuzz)")
    parser.add_argument(
        "--examples",
        type=int,
        default=500,
        help="examples per property per backend: random specs against the oracle, hostile native "
        "files (default 500; 0 skips)",
    )
    add_backends_option(parser)
    add_suite_timeout_option(parser, "--suite-timeout")
    parser.set_defaults(run=run_fuzz)


def run_fuzz(args: argparse.Namespace) -> int:
    for flag, value in (
        ("--mutants", args.mutants),
        ("--workers", args.workers),
        ("--memory-mb", args.memory_mb),
    ):
        if value < 1:
            raise UsageError(f"{flag}={value}, but should be a positive int")
    if not args.timeout > 0:
        raise UsageError(f"--timeout={args.timeout}, but should be a positive number of seconds")
    limits = Limits(memory_mb=args.memory_mb, timeout_s=args.timeout)
    out = (args.out or REPORTS) / f"seed-{args.seed}"
    started = time.monotonic()
    report = campaign(args.mutants, args.seed, args.workers, limits, out)
    elapsed = time.monotonic() - started
    print(
        f"fuzz: {args.mutants} mutants of {len(BOOK_SPECS)} valid files, seed {args.seed}, "
        f"{args.workers} workers, {elapsed:.1f} s"
    )
    print(render(report))
    for line in report.reproducer_lines():
        print(line)
    bad = report.bad_count()
    print(f"{bad} bad outcome(s)" + (f"; reproducers in {out}" if report.findings else ""))
    specs_failed = 0
    if args.examples:
        from common.commands import fuzz_specs

        print(f"\nfuzz: {args.examples} random specs per property in each backend, seed {args.seed}")
        specs_failed = fuzz_specs.run(
            parse_backend_list(args.backends), args.examples, args.seed, args.suite_timeout
        )
    return 1 if bad or specs_failed else 0


# == the campaign ====================================================================================
@dataclass
class Finding:
    index: int
    path_kind: str  # inspect or import
    outcome: str
    mutations: list[str]
    file: Path
    detail: str


@dataclass
class Report:
    counts: dict[str, Counter] = field(default_factory=lambda: {p: Counter() for p in PATHS})
    reference_failures: int = 0
    findings: list[Finding] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bad_count(self) -> int:
        return sum(self.counts[p][o] for p in PATHS for o in BAD)

    def reproducer_lines(self) -> list[str]:
        lines, printed = [], Counter()
        for finding in sorted(self.findings, key=lambda f: (f.path_kind, f.outcome, f.index)):
            key = (finding.path_kind, finding.outcome)
            printed[key] += 1
            if printed[key] > MAX_PRINTED:
                continue
            raw = finding.file.read_bytes()
            encoded = (
                base64.b64encode(raw).decode() if len(raw) <= 4096 else f"({len(raw)} bytes; see the file)"
            )
            lines.append(
                f"[{finding.path_kind}] {finding.outcome}: mutant {finding.index} "
                f"({', '.join(finding.mutations)}): {finding.detail}\n"
                f"  reproducer: {finding.file}\n  base64: {encoded}"
            )
        for (path_kind, outcome), count in sorted(printed.items()):
            if count > MAX_PRINTED:
                lines.append(f"[{path_kind}] {outcome}: {count - MAX_PRINTED} more, not printed")
        return lines


def campaign(mutants: int, seed: int, workers: int, limits: Limits, out: Path) -> Report:
    report = Report()
    bases = valid_files()
    shutil.rmtree(out, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="paramparity-fuzz-"))
    indices = iter(range(mutants))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def lane(number: int) -> None:
        try:
            serve(number)
        except BaseException as error:  # re-raised by the main thread: a broken lane is a bug
            failures.append(error)

    def serve(number: int) -> None:
        folder = scratch / str(number)
        folder.mkdir()
        with Worker(limits, _warm_up) as reference, Worker(limits, _warm_up) as ours:
            while True:
                with lock:
                    index = None if failures else next(indices, None)
                if index is None:
                    return
                spec_name, raw, mutations = mutant(bases, seed, index)
                path = folder / "mutant.safetensors"
                path.write_bytes(raw)
                judge(report, index, spec_name, path, raw, mutations, reference, ours, out)

    try:
        threads = [threading.Thread(target=lane, args=(n,)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        raise failures[0]
    return report


def judge(
    report: Report,
    index: int,
    spec_name: str,
    path: Path,
    raw: bytes,
    mutations: list[str],
    reference: Worker,
    ours: Worker,
    out: Path,
) -> None:
    ref = reference.call(reference_digest, str(path))
    results = {
        "inspect": ours.call(inspect_digest, str(path)),
        "import": ours.call(import_digest, str(path), spec_name),
    }
    verdicts = {kind: classify(ref, outcome) for kind, outcome in results.items()}
    with report.lock:
        if ref.kind not in ("ok", "refused", "error"):
            report.reference_failures += 1
        for kind, (verdict, detail) in verdicts.items():
            report.counts[kind][verdict] += 1
            if verdict in REPRODUCED[kind]:
                out.mkdir(parents=True, exist_ok=True)
                file = out / f"{index:06d}-{kind}.safetensors"
                write_atomically(file, raw)
                report.findings.append(Finding(index, kind, verdict, mutations, file, detail))


def classify(ref: Outcome, ours: Outcome) -> tuple[str, str]:
    """(outcome, a one-line detail) for one of our paths against the reference."""
    ref_accepts = ref.kind == "ok"
    if ours.kind == "timeout":
        return HANG, "timed out"
    if ours.kind in ("crash", "memory"):
        return CRASH, ours.message or "out of memory"
    if ours.kind == "error":
        return TRACEBACK, f"{ours.type_name}: {shown(ours.message, 300)}"
    if ours.kind == "refused":
        if not ours.message.isprintable() or len(ours.message) > MAX_MESSAGE:
            return UNSAFE, f"error message of {len(ours.message)} characters: {shown(ours.message, 300)}"
        return (OURS_REJECTS if ref_accepts else BOTH_REJECT), printable(ours.message, 300)
    digest, lines = ours.value
    unsafe = [line for line in lines if not line.isprintable()]
    if unsafe:
        return UNSAFE, f"printed {shown(unsafe[0], 300)}"
    if not ref_accepts:
        reason = f"{ref.type_name}: {ref.message}" if ref.kind in ("refused", "error") else ref.kind
        return OURS_ACCEPTS, f"reference: {printable(reason, 300)}"
    if digest != ref.value:
        return DIFFER, "tensors differ from the reference's"
    return BOTH_ACCEPT, ""


def render(report: Report) -> str:
    rows = [[outcome] + [str(report.counts[p][outcome]) for p in PATHS] for outcome in OUTCOMES]
    rows.append(["reference: crashed or hung", str(report.reference_failures), ""])
    marks = [
        "!" if outcome in BAD and any(report.counts[p][outcome] for p in PATHS) else ""
        for outcome in OUTCOMES
    ]
    return format_table(["outcome", "inspect (no spec)", "import (read_params)"], rows, marks)


# == what the workers run (module-level, so they pickle by name) =================================
def _warm_up() -> None:
    import safetensors.numpy  # noqa: F401 - imported before the memory cap applies

    import common.commands.inspect  # noqa: F401
    import common.core.portable  # noqa: F401


def _digest(tensors: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...], str]]:
    return sorted(
        (name, array.dtype.str, tuple(array.shape), hashlib.sha256(array.tobytes()).hexdigest())
        for name, array in tensors.items()
    )


def reference_digest(_state: None, path: str) -> list[tuple[str, str, tuple[int, ...], str]]:
    from safetensors.numpy import load_file

    return _digest(load_file(path))


def inspect_digest(_state: None, path: str) -> tuple[list, list[str]]:
    from common.commands.inspect import inspect_lines
    from common.core.safetensors_io import read

    lines = inspect_lines(path, list_all=True)
    return _digest(read(path)[0]), lines


def import_digest(_state: None, path: str, spec_name: str) -> tuple[list, list[str]]:
    from common.commands.inspect import inspect_lines
    from common.core.portable import read_params

    spec = BOOK_SPECS[spec_name]
    values, _ = read_params(path, spec)
    return _digest(values), inspect_lines(path, spec, label=spec_name)


# == mutants =========================================================================================
@dataclass(frozen=True)
class Base:
    spec_name: str
    header: dict[str, Any]
    data: bytes


def valid_files() -> list[Base]:
    bases = []
    with tempfile.TemporaryDirectory() as folder:
        for number, (name, spec) in enumerate(BOOK_SPECS.items()):
            path = write_portable(
                Path(folder) / f"{name}.safetensors", spec, initial_weights(spec, seed=number)
            )
            raw = path.read_bytes()
            (size,) = struct.unpack("<Q", raw[:8])
            bases.append(Base(name, json.loads(raw[8 : 8 + size]), raw[8 + size :]))
    return bases


def mutant(bases: list[Base], seed: int, index: int) -> tuple[str, bytes, list[str]]:
    """Mutant ``index`` of campaign ``seed``: the same bytes every time, whatever else runs."""
    rng = random.Random(f"paramparity-fuzz:{seed}:{index}")
    base = rng.choice(bases)
    header, data = json.loads(json.dumps(base.header)), base.data
    applied: list[str] = []
    for _ in range(rng.randint(1, 3)):
        name, mutate = rng.choice(STRUCTURE)
        header, data = mutate(rng, header, data)
        applied.append(name)
    if rng.random() < 0.5:
        header, data = relayout(rng, header, data)
        applied.append("relayout")
    text = json.dumps(header, separators=(",", ":"))
    if rng.random() < 0.3:
        name, edit = rng.choice(TEXT)
        text = edit(rng, text)
        applied.append(name)
    encoded = text.encode("utf-8", "surrogatepass")
    encoded += b" " * (-len(encoded) % 8)
    raw = struct.pack("<Q", len(encoded)) + encoded + data
    if rng.random() < 0.15:
        name, edit_bytes = rng.choice(BYTES)
        raw = edit_bytes(rng, raw)
        applied.append(name)
    return base.spec_name, raw, applied


HOSTILE_TEXT = [
    "line one\nline two",
    "\x1b[31mred\x1b[0m\x1b[2J",
    "\ud800",
    "\u202eevil",
    "\x00",
    "",
    "[" * 2000 + "]" * 2000,
    '{"a":' * 300 + "1" + "}" * 300,
    "9" * 5000,
    "1e999",
    "NaN",
    "x" * 20000,
    '"' + '\\"' * 40000,  # a string of escaped quotes that never closes (quadratic once: 30 s)
    '{"a": "' + "\\\\" * 40000,  # escaped backslashes, unclosed
    "n" * 1_000_000,  # an oversized name or value: errors stay one bounded line
]
DTYPE_VALUES = ["F64", "F16", "BF16", "F8_E4M3", "C64", "U16", "I64", "BOOL", "", "f32", ["F32"], 32, None]
SHAPE_VALUES = [
    [2**63],
    [2**64 - 1],
    [2**64],
    [2**32, 2**32],
    [2**32, 2**32, 0],
    [1] * 65,
    [1] * 64,
    [],
    [0],
    [-1],
    [1.5],
    ["8"],
    [True],
    None,
    "8",
]


def _tensor_names(header: dict[str, Any]) -> list[str]:
    return [name for name in header if name != "__metadata__"]


def _pick_entry(rng: random.Random, header: dict[str, Any]) -> tuple[str, Any]:
    names = _tensor_names(header)
    if not names:
        return "", None
    name = rng.choice(names)
    return name, header[name]


def _set_field(field_name: str, values: Callable[[random.Random, Any, int], Any]):
    def mutate(rng, header, data):
        _, entry = _pick_entry(rng, header)
        if isinstance(entry, dict):
            entry[field_name] = values(rng, entry, len(data))
        return header, data

    return mutate


def _offsets(rng: random.Random, entry: dict[str, Any], size: int) -> Any:
    offsets = entry.get("data_offsets")
    ints = [o for o in offsets if type(o) is int] if isinstance(offsets, list) else []
    begin, end = (ints + [0, 0])[:2]
    return rng.choice(
        [
            [end, begin],
            [begin, begin],
            [begin, end + 1],
            [False, True],
            [-1, end],
            [2**64, 0],
            [0, 2**63],
            [begin],
            [begin, end, end],
            None,
            [size, size],
            [rng.randrange(size + 1), rng.randrange(size + 1)],
        ]
    )


def _rename(rng, header, data):
    name, entry = _pick_entry(rng, header)
    if name:
        del header[name]
        header[rng.choice(HOSTILE_TEXT + ["layers.4.weight", "__metadata__", name + " "])] = entry
    return header, data


def _drop_tensor(rng, header, data):
    name, _ = _pick_entry(rng, header)
    header.pop(name, None)
    return header, data


def _copy_tensor(rng, header, data):
    name, entry = _pick_entry(rng, header)
    if name:
        header[rng.choice(["layers.4.weight", "layers.9.bias", name + ".copy"])] = json.loads(
            json.dumps(entry)
        )
    return header, data


def _drop_field(rng, header, data):
    _, entry = _pick_entry(rng, header)
    if isinstance(entry, dict) and entry:
        del entry[rng.choice(sorted(entry))]
    return header, data


def _extra_field(rng, header, data):
    _, entry = _pick_entry(rng, header)
    if isinstance(entry, dict):
        entry[rng.choice(["extra", "dtype2", "\x1b"])] = rng.choice([1, "x", None, [1]])
    return header, data


def _entry_value(rng, header, data):
    name, _ = _pick_entry(rng, header)
    if name:
        header[name] = rng.choice([None, [], "F32", 1, True, {}])
    return header, data


def _metadata_kind(rng, header, data):
    header["__metadata__"] = rng.choice([False, "", 0, [], None, {}, {"a": 1}, {"a": None}, [["a", "b"]]])
    return header, data


def _metadata_value(rng, header, data):
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict):
        key = rng.choice(["format", "spec", "ties", "aliases", "framework", rng.choice(HOSTILE_TEXT)])
        if rng.random() < 0.2:
            metadata.pop(key, None)
        else:
            metadata[key] = rng.choice(
                HOSTILE_TEXT + ["[]", "{}", '"x"', "paramparity/2", json.dumps(BOOK_SPECS["mlp"].to_dict())]
            )
    return header, data


def _spec_edit(rng, header, data):
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("spec"), str):
        return header, data
    try:
        spec = json.loads(metadata["spec"])
    except (ValueError, RecursionError):  # an earlier mutation made it hostile: leave it so
        return header, data
    if not isinstance(spec, dict):
        return header, data
    weird = rng.choice([0, -1, 10**19, 2**63, 1.5, "8", None, True, [], {}, "\x1b[2J", "\ud800", [[1, 2]]])
    target = rng.choice(["in_features", "name", "layers", "ties", "units", "kind", "label", "extra"])
    layers = spec.get("layers") if isinstance(spec.get("layers"), list) else []
    if target in ("units", "kind", "label") and layers:
        layer = rng.choice(layers)
        if isinstance(layer, dict):
            layer[target] = weird
    elif target == "layers" and rng.random() < 0.5:
        spec["layers"] = [{"kind": "block", "layers": layers}] if rng.random() < 0.5 else layers * 50
    else:
        spec[target] = weird
    metadata["spec"] = json.dumps(spec)
    return header, data


def _f64_overflow(rng, header, data):
    """A tensor as F64 holding values beyond float32's range (1e300 is inf once cast); its bytes
    appended, so its offsets and the data stay consistent."""
    name, entry = _pick_entry(rng, header)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 1024 for d in shape)):
        return header, data
    count = 1
    for dim in shape:
        count *= dim
    values = [rng.choice([1e300, -1e300, 3.5e38, 1.7e308, 0.5]) for _ in range(count)]
    blob = struct.pack(f"<{count}d", *values)
    entry.update(dtype="F64", data_offsets=[len(data), len(data) + len(blob)])
    return header, data + blob


def _data_values(rng, header, data):
    if not data:
        return header, data
    special = struct.pack("<f", rng.choice([float("nan"), float("inf"), -float("inf"), 1e38, 0.0]))
    at = rng.randrange(0, max(1, len(data) - 3))
    return header, data[:at] + special + data[at + 4 :]


STRUCTURE: list[tuple[str, Callable]] = [
    ("dtype", _set_field("dtype", lambda rng, entry, size: rng.choice(DTYPE_VALUES))),
    ("shape", _set_field("shape", lambda rng, entry, size: rng.choice(SHAPE_VALUES))),
    ("offsets", _set_field("data_offsets", _offsets)),
    ("rename", _rename),
    ("drop-tensor", _drop_tensor),
    ("copy-tensor", _copy_tensor),
    ("drop-field", _drop_field),
    ("extra-field", _extra_field),
    ("entry-value", _entry_value),
    ("metadata-kind", _metadata_kind),
    ("metadata-value", _metadata_value),
    ("metadata-value", _metadata_value),
    ("spec", _spec_edit),
    ("spec", _spec_edit),
    ("data-values", _data_values),
    ("f64-overflow", _f64_overflow),
]

ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "C64": 8,
}


def relayout(rng: random.Random, header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """Offsets recomputed from dtypes and shapes, and data of the size they need, so a mutant with
    consistent entries gets past the framing checks to the deeper ones."""
    offset, blobs = 0, []
    for name in _tensor_names(header):
        entry = header[name]
        if not isinstance(entry, dict):
            continue
        shape, dtype = entry.get("shape"), entry.get("dtype")
        if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**20 for d in shape)):
            continue
        size = ITEMSIZE.get(dtype, 0) if isinstance(dtype, str) else 0
        for dim in shape:
            size *= dim
        if not 0 < size <= 1 << 20:
            continue
        blob = (data[offset : offset + size] + rng.randbytes(8) * (size // 8 + 1))[:size]
        entry["data_offsets"] = [offset, offset + size]
        blobs.append(blob)
        offset += size
    return header, b"".join(blobs)


def _splice(rng: random.Random, text: str) -> str:
    tokens = [
        '"__metadata__":{},',
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"',
        "\\",
        "null",
        "true",
        "-1",
        "1e999",
        "9" * 30,
    ]
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(tokens) + text[at:]


def _duplicate_key(rng: random.Random, text: str) -> str:
    insert = rng.choice(['"__metadata__":{"a":"b"},', '"__metadata__":null,'])
    if rng.random() < 0.5:
        return "{" + insert + text[1:]
    first = text.find('"layers.0.weight":')
    end = text.find("}", first) + 1
    return text[:end] + "," + text[first:end] + text[end:] if first > 0 else text


def _deep(rng: random.Random, text: str) -> str:
    depth = rng.choice([128, 129, 1000, 5000])
    return '{"x":' + "[" * depth + "]" * depth + "," + text[1:]


def _big_int(rng: random.Random, text: str) -> str:
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    if not digits:
        return text
    at = rng.choice(digits)
    return text[:at] + "9" * rng.choice([20, 400, 4301, 6000]) + text[at:]


def _surrogate(rng: random.Random, text: str) -> str:
    quotes = [i for i, c in enumerate(text) if c == '"']
    at = rng.choice(quotes) + 1 if quotes else 1
    return (
        text[:at]
        + rng.choice(["\\ud800", "\\udfff", "\\u001b", "\\n", "\\u0000", "\\ud83d\\ude00"])
        + text[at:]
    )


def _delete_text(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text))
    return text[:at] + text[at + rng.randint(1, 16) :]


def _pad(rng: random.Random, text: str) -> str:
    return (
        rng.choice([" ", "\t", "\n", "\x00", "  x"]) + text
        if rng.random() < 0.3
        else text + rng.choice([" ", "\t", "\n", "\x00", "x"])
    )


TEXT: list[tuple[str, Callable]] = [
    ("splice", _splice),
    ("duplicate-key", _duplicate_key),
    ("deep-json", _deep),
    ("big-int", _big_int),
    ("escape", _surrogate),
    ("delete-text", _delete_text),
    ("pad", _pad),
]


def _flip(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(len(raw))]


def _append(rng: random.Random, raw: bytes) -> bytes:
    return raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _length_field(rng: random.Random, raw: bytes) -> bytes:
    (size,) = struct.unpack("<Q", raw[:8])
    value = rng.choice([0, 1, 2, size - 1, size + 1, len(raw) - 8, len(raw), 2**63, 2**64 - 1, 100_000_001])
    return struct.pack("<Q", value % 2**64) + raw[8:]


BYTES: list[tuple[str, Callable]] = [
    ("flip-bits", _flip),
    ("truncate", _truncate),
    ("append", _append),
    ("length-field", _length_field),
]
