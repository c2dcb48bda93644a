"""The typed contract between the compiler and the runtime: what an artifact's manifest.json
says, as dataclasses with a schema version, `to_json` and `from_json`.

`from_json` trusts nothing: every field is type-checked, and for a CPU artifact every
buffer whose size follows from the cell's description (inputs, outputs, states,
parameters, packed weights, projections) is recomputed and compared, the entry points
must be the fixed set with their fixed symbols, and the values the training forward saves
must agree between the entries that write and read them. What cannot be recomputed
without the compiler (the size of a saved intermediate, a threaded kernel's scratch) is
covered by the contract hash: `contract_hash` of the manifest is embedded in the shared
library when it is built, and the loader refuses a library whose hash differs. A manifest
also carries a checksum of itself, so accidental damage is named as such.

A shared library that matches a valid manifest is trusted native code: lstmc cannot check
what a deliberately rebuilt library does."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from . import buffers as names
from .dtypes import DTYPES
from .errors import ArtifactError

SCHEMA = 4  # the manifest layout this runtime reads; older or newer ones are refused
# Each entry has a threaded twin ("_mt"): the same buffers, run by several threads at
# once on one batch, sharing every step (the caller gives it barrier words and scratch).
THREADED = "_mt"
ENTRY_SYMBOLS = {name + suffix: "lstmc_" + name + suffix
                 for suffix in ("", THREADED)
                 for name in ("forward", "forward_train", "backward")}
# float32 cells also have the inference forward on bfloat16 weights (and its twin).
BF16 = "forward_bf16"
BF16_DTYPES = ("float32",)
CONTRACT_SYMBOL = "lstmc_contract_sha256"  # 64 hex characters in the library
MAX_SIZE = 1 << 31  # any one dimension; far above any real cell, far below overflow
ROLES = ("in", "out", "result", "work")
# Fields outside what the library was built against: the checksums are computed after it.
_UNHASHED = ("checksums", "manifest_sha256")


def entry_symbols(dtype: str) -> dict[str, str]:
    """The entry points of a CPU artifact of this dtype, by name, and their symbols."""
    extra = {BF16 + s: "lstmc_" + BF16 + s for s in ("", THREADED)}
    return ENTRY_SYMBOLS | (extra if dtype in BF16_DTYPES else {})


def single_threaded(entry: str) -> str:
    """The entry a threaded twin runs alike ("backward" for "backward_mt")."""
    return entry.removesuffix(THREADED)


def canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def contract_hash(data: dict) -> str:
    """SHA-256 of a manifest's JSON, less its checksums: what the library embeds."""
    return hashlib.sha256(canonical({k: v for k, v in data.items()
                                     if k not in _UNHASHED})).hexdigest()


GPU_CONTRACT_PREFIX = "/* lstmc contract sha256: "  # the line a GPU kernel source ends with


def gpu_contract_hash(data: dict) -> str:
    """What a GPU artifact's kernel source embeds: the hash of its manifest, less the
    checksums and the binaries (compiled from that source, so they come after it)."""
    return contract_hash({k: v for k, v in data.items() if k != "binaries"})


def self_checksum(data: dict) -> str:
    """SHA-256 of a manifest's JSON less its own checksum field."""
    return hashlib.sha256(canonical({k: v for k, v in data.items()
                                     if k != "manifest_sha256"})).hexdigest()


class _Reader:
    """Typed access to one JSON object; every failure names the field."""

    def __init__(self, data, where: str):
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected an object, got {type(data).__name__}")
        self.data, self.where = data, where

    def fail(self, key: str, message: str):
        raise ArtifactError(f"{self.where}: field '{key}' {message}")

    def get(self, key: str, kind, optional=False, default=None):
        if key not in self.data:
            if optional:
                return default
            self.fail(key, "is missing")
        value = self.data[key]
        if isinstance(value, bool) and kind is not bool:
            self.fail(key, f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            self.fail(key, f"must be {_kind_name(kind)}, got {type(value).__name__}")
        return value

    # Not named `str`: in this class body that name would shadow the type.
    def string(self, key: str, optional=False, default=None) -> str:
        return self.get(key, str, optional, default)

    def size(self, key: str) -> int:
        value = self.get(key, int)
        if not 0 < value < MAX_SIZE:
            self.fail(key, f"must be a size in 1..{MAX_SIZE - 1}, got {value}")
        return value

    def count(self, key: str, optional=False) -> int:
        value = self.get(key, int, optional, 0)
        if not 0 <= value < 1 << 40:
            self.fail(key, f"must be a count in 0..2**40, got {value}")
        return value


def _kind_name(kind) -> str:
    return {str: "a string", int: "an integer", dict: "an object", list: "a list",
            bool: "true or false"}.get(kind, getattr(kind, "__name__", str(kind)))


def _size(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_SIZE:
        raise ArtifactError(f"{where}: expected a size in 1..{MAX_SIZE - 1}, got {value!r}")
    return value


@dataclass(frozen=True)
class DerivedTerm:
    """One term of a derived matrix: coef * param (transposed) or coef * identity."""

    coef: float
    param: str | None  # None: the identity
    transposed: bool = False
    block: int | None = None  # of a multi-head parameter (heads, rows, cols): param[block]

    def to_json(self) -> list:
        term = [self.coef, self.param, self.transposed]
        return term if self.block is None else term + [self.block]

    def source_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape this term gives a matrix read from a parameter of `shape`."""
        if self.block is not None:
            shape = shape[1:] if len(shape) == 3 and self.block < shape[0] else ()
        return shape[::-1] if self.transposed else shape


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    init: float | str | None = None  # a constant, "eye" (identity), or PyTorch's uniform
    # A matrix the cell computes from its parameters once per call (`(W - W.T) @ h`):
    # the sum of these terms. The caller never passes it; its gradient flows back.
    derived: tuple[DerivedTerm, ...] | None = None

    def to_json(self) -> dict:
        data: dict = {"shape": list(self.shape), "init": self.init}
        if self.derived is not None:
            data["derived"] = [t.to_json() for t in self.derived]
        return data


@dataclass(frozen=True)
class CellDescription:
    """What a compiled cell is, whatever runs it: every target describes itself so."""

    name: str
    target: str
    dtype: str
    sizes: dict[str, int]
    input_size: int
    output: str  # the state that is also the output
    states: dict[str, int]
    params: dict[str, ParamSpec]
    batch_first: bool = False
    # Inputs after the first, by name (`cell c(x: I, dt: 1)`), in declared order. The
    # kernels read all inputs as one sequence of packed_input_size units per row: the
    # first input's units, then each of these in this order.
    extra_inputs: dict[str, int] = field(default_factory=dict)

    @property
    def packed_input_size(self) -> int:
        return self.input_size + sum(self.extra_inputs.values())

    def to_json(self) -> dict:
        data = {"cell": self.name, "target": self.target, "dtype": self.dtype,
                "sizes": dict(self.sizes), "input_size": self.input_size,
                "output": self.output, "states": dict(self.states),
                "params": {n: p.to_json() for n, p in self.params.items()},
                "batch_first": self.batch_first}
        if self.extra_inputs:  # absent for one input: manifests of such cells as before
            data["extra_inputs"] = dict(self.extra_inputs)
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "manifest") -> CellDescription:
        r = _Reader(data, where)
        dtype = r.string("dtype")
        if dtype not in DTYPES:
            r.fail("dtype", f"names no supported dtype: {dtype!r} "
                            f"(supported: {', '.join(DTYPES)})")
        sizes = {k: _size(v, f"{where}: sizes['{k}']") for k, v in r.get("sizes", dict).items()}
        states = {k: _size(v, f"{where}: states['{k}']")
                  for k, v in r.get("states", dict).items()}
        output = r.string("output")
        if output not in states:
            r.fail("output", f"names no state: {output!r}")
        extra_inputs = {k: _size(v, f"{where}: extra_inputs['{k}']") for k, v in
                        r.get("extra_inputs", dict, optional=True, default={}).items()}
        params = {}
        for name, spec in r.get("params", dict).items():
            p = _Reader(spec, f"{where}: params['{name}']")
            shape = p.get("shape", list)
            if not 1 <= len(shape) <= 3:  # 3: the blocks of a multi-head matrix
                p.fail("shape", f"must have 1 to 3 dimensions, got {shape!r}")
            init = p.data.get("init")
            if init is not None and init != "eye" and (isinstance(init, bool)
                                                       or not isinstance(init, (int, float))):
                p.fail("init", f"must be a number, \"eye\" or null, got {init!r}")
            dims = tuple(_size(d, f"{p.where}: shape") for d in shape)
            derived = p.data.get("derived")
            if derived is not None:
                derived = _derived_terms(derived, dims, p)
            params[name] = ParamSpec(dims, init, derived)
        for name, spec in params.items():  # derived from the others, with their shapes
            for term in spec.derived or ():
                source = params.get(term.param) if term.param is not None else None
                if term.param is not None and (source is None or source.derived is not None):
                    r.fail("params", f"derived matrix {name!r} reads {term.param!r}, which "
                                     "is no parameter the caller passes")
                shape = spec.shape if source is None else term.source_shape(source.shape)
                if shape != spec.shape or (term.param is None and shape[0] != shape[1]):
                    r.fail("params", f"derived matrix {name!r} ({spec.shape}) has a term of "
                                     f"shape {shape}")
        return cls(name=r.string("cell"), target=r.string("target"), dtype=dtype, sizes=sizes,
                   input_size=r.size("input_size"), output=output, states=states,
                   params=params,
                   batch_first=r.get("batch_first", bool, optional=True, default=False),
                   extra_inputs=extra_inputs)


def _derived_terms(data, shape: tuple, reader) -> tuple[DerivedTerm, ...]:
    if len(shape) != 2 or not isinstance(data, list) or not data:
        reader.fail("derived", f"must be a non-empty list of terms of a matrix, got {data!r}")
    terms = []
    for item in data:
        if not (isinstance(item, list) and len(item) in (3, 4)
                and isinstance(item[0], (int, float)) and not isinstance(item[0], bool)
                and (item[1] is None or isinstance(item[1], str))
                and isinstance(item[2], bool)
                and (len(item) == 3 or (type(item[3]) is int and item[3] >= 0))):
            reader.fail("derived", f"a term is [coefficient, parameter or null, transposed"
                                   f"(, block)], got {item!r}")
        terms.append(DerivedTerm(float(item[0]), item[1], item[2],
                                 item[3] if len(item) == 4 else None))
    return tuple(terms)


@dataclass(frozen=True)
class BufferSpec:
    """One pointer an entry point takes: dims are integers, "T" (steps) or "B" (rows)."""

    name: str
    shape: tuple
    role: str   # "in": caller fills; "out": caller zero-fills, kernel adds; "result":
    #             kernel writes every element; "work": scratch the caller allocates
    dtype: str  # "float" (the cell's dtype), "int64", or "uint16" (bfloat16 bits)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "role": self.role,
                "dtype": self.dtype}


@dataclass(frozen=True)
class EntryPoint:
    symbol: str
    buffers: tuple[BufferSpec, ...]
    arena_elements: int = 0  # threaded entries: shared scratch per batch row, elements

    def to_json(self) -> dict:
        return {"symbol": self.symbol, "arena_elements": self.arena_elements,
                "buffers": [b.to_json() for b in self.buffers]}

    def buffer(self, name: str) -> BufferSpec | None:
        return next((b for b in self.buffers if b.name == name), None)


@dataclass(frozen=True)
class PackedSpec:
    """Matrices stacked by rows in the order a product reads them."""

    name: str
    segments: tuple[tuple[str, int], ...]  # (parameter, rows)
    columns: int

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.segments)


@dataclass(frozen=True)
class CpuManifest:
    """A CPU artifact: the cell, how its weights are packed, and the entry points' ABI."""

    cell: CellDescription
    packed: dict[str, PackedSpec]
    panel_width: int
    gradient_aliases: dict[str, str]
    step_weight_elements: int
    hoisted: dict[int, str]    # hoisted product index -> packed weight
    products: dict[int, dict]  # recurrent product id -> {"packed", "operand"}
    entries: dict[str, EntryPoint]
    cpu: dict = field(default_factory=dict)  # {"name", "features": [/proc/cpuinfo flags]}
    library: str | None = None  # None: code compiled in process (JIT)
    checksums: dict[str, str] = field(default_factory=dict)

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        data = {"format": SCHEMA, **self.cell.to_json(),
                "packed": [{"name": p.name, "segments": [list(s) for s in p.segments],
                            "columns": p.columns} for p in self.packed.values()],
                "panel_width": self.panel_width,
                "gradient_aliases": dict(self.gradient_aliases),
                "step_weight_elements": self.step_weight_elements,
                "hoisted": [{"index": i, "packed": k} for i, k in self.hoisted.items()],
                "products": [{"id": i, **p} for i, p in self.products.items()],
                "entries": {n: e.to_json() for n, e in self.entries.items()},
                "cpu": dict(self.cpu)}
        if self.library is not None:
            data["library"] = self.library
            data["checksums"] = dict(self.checksums)
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "manifest") -> CpuManifest:
        """The manifest, checked field by field and against itself; ArtifactError says
        which field disagrees with what."""
        r = _Reader(data, where)
        check_schema(data, where)
        cell = CellDescription.from_json(data, where)
        if cell.target != "cpu":
            r.fail("target", f"must be 'cpu' for a CPU artifact, got {cell.target!r}")
        packed = {}
        for i, spec in enumerate(r.get("packed", list)):
            p = _Reader(spec, f"{where}: packed[{i}]")
            segments = tuple(_segment(s, f"{p.where}: segments") for s in p.get("segments",
                                                                                 list))
            packed[p.string("name")] = PackedSpec(p.string("name"), segments, p.size("columns"))
        panel_width = r.size("panel_width")
        if panel_width > 1024:
            r.fail("panel_width", f"must be at most 1024, got {panel_width}")
        hoisted, products = {}, {}
        for i, spec in enumerate(r.get("hoisted", list)):
            h = _Reader(spec, f"{where}: hoisted[{i}]")
            hoisted[h.count("index")] = h.string("packed")
        for i, spec in enumerate(r.get("products", list)):
            p = _Reader(spec, f"{where}: products[{i}]")
            products[p.count("id")] = {"packed": p.string("packed"), "operand": p.string("operand")}
        entries = {}
        for name, spec in r.get("entries", dict).items():
            e = _Reader(spec, f"{where}: entries['{name}']")
            entries[name] = EntryPoint(
                e.string("symbol"),
                tuple(_buffer(b, f"{e.where}: buffers[{k}]")
                      for k, b in enumerate(e.get("buffers", list))),
                e.count("arena_elements", optional=True))
        cpu = r.get("cpu", dict, optional=True, default={})
        library = r.string("library", optional=True)
        checksums = r.get("checksums", dict, optional=True, default={})
        manifest = cls(cell, packed, panel_width,
                       dict(r.get("gradient_aliases", dict, optional=True, default={})),
                       r.count("step_weight_elements", optional=True), hoisted, products,
                       entries, dict(cpu), library, dict(checksums))
        manifest.check(where)
        return manifest

    # -- consistency --------------------------------------------------------------------

    def check(self, where: str = "manifest") -> None:
        """Every recomputable fact recomputed and compared; ArtifactError on the first
        disagreement."""
        def fail(message: str):
            raise ArtifactError(f"{where}: {message}")

        cell = self.cell
        symbols = entry_symbols(cell.dtype)
        if set(self.entries) != set(symbols):
            fail(f"entry points must be exactly {', '.join(symbols)}; got "
                 f"{', '.join(self.entries) or 'none'}")
        for name, entry in self.entries.items():
            if entry.symbol != symbols[name]:
                fail(f"entry '{name}' must be symbol {symbols[name]}, got {entry.symbol!r}")
        for packed in self.packed.values():
            for param, rows in packed.segments:
                shape = cell.params.get(param, ParamSpec(())).shape
                if shape != (rows, packed.columns):
                    fail(f"packed weight {packed.name} stacks {param} as {rows} x "
                         f"{packed.columns}, but {param} has shape {shape or 'none'}")
        for index, key in self.hoisted.items():
            if key not in self.packed:
                fail(f"hoisted product {index} names no packed weight: {key!r}")
        for pid, product in self.products.items():
            if product["packed"] not in self.packed:
                fail(f"product {pid} names no packed weight: {product['packed']!r}")
        recurrent = {p["packed"] for p in self.products.values()}
        weights = sum(self.packed[k].rows * self.packed[k].columns for k in recurrent)
        if self.step_weight_elements != weights:
            fail(f"step_weight_elements is {self.step_weight_elements}, but the recurrent "
                 f"products hold {weights} weights")
        for alias, same in self.gradient_aliases.items():
            if (not isinstance(same, str)  # JSON: any value; unhashable ones break `in`
                    or alias not in cell.params or same not in cell.params
                    or cell.params[alias].shape != cell.params[same].shape):
                fail(f"gradient alias {alias} -> {same} does not join two parameters of "
                     "one shape")
        saved: dict[str, tuple] = {}
        for name in symbols:  # the training forward first: it defines the saved
            self._check_entry(name, self.entries[name], saved, fail)
            twin = single_threaded(name)
            if twin != name and self.entries[name].buffers != self.entries[twin].buffers:
                fail(f"entry '{name}' must take the buffers of '{twin}', in its order")
        for pid, product in self.products.items():
            columns = self.packed[product["packed"]].columns
            if saved.get(product["operand"]) != ("T", "B", columns):
                fail(f"product {pid} reads {product['operand']!r}, which the training "
                     f"forward does not save as (T, B, {columns})")
        features = self.cpu.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            fail(f"cpu features must be a list of strings, got {features!r}")
        if self.library is not None:
            if self.library in ("", ".", "..") or "/" in self.library or "\\" in self.library:
                fail(f"library must be a file name in the artifact, got {self.library!r}")
            if self.library not in self.checksums:
                fail(f"no checksum for the library {self.library}")
            for file, digest in self.checksums.items():
                if not (isinstance(digest, str) and len(digest) == 64
                        and all(c in "0123456789abcdef" for c in digest)):
                    fail(f"checksum of {file} is not a SHA-256: {digest!r}")

    def expected_shape(self, entry: str, name: str) -> tuple[tuple | None, str, str]:
        """(shape, role, dtype) a buffer must have, recomputed; shape None: not
        recomputable here (a saved value: checked between entries and by the hash)."""
        cell = self.cell
        out, I = cell.states[cell.output], cell.packed_input_size
        kind, key = names.parse(name)
        entry = single_threaded(entry)
        fixed = {"x": ((("T", "B", I)), "in"), "y": (("T", "B", out), "result"),
                 "dy": (("T", "B", out), "in"), "dx": (("T", "B", I), "out")}
        if kind in fixed and not key:
            shape, role = fixed[kind]
            return shape, role, "float"
        if kind == "lengths" and not key:
            return ("B",), "in", "int64"
        if kind == names.RNG and not key and entry in ("forward_train", "backward"):
            return (3,), "in", "int64"
        if kind in ("param", "dparam") and key in cell.params:
            return cell.params[key].shape, "in" if kind == "param" else "out", "float"
        if kind in ("state_in", "state_out", "dstate_in", "dstate_out") and key in cell.states:
            role = "in" if kind.endswith("_in") else "result"
            return ("B", cell.states[key]), role, "float"
        bf16 = entry == BF16
        if kind in ("panels", "panelsT", "dpacked", "panelsT16") and key in self.packed:
            p = self.packed[key]
            if kind == "dpacked":
                return (p.rows, p.columns), "out", "float"
            if (kind == "panelsT16") != bf16 or (bf16 and kind == "panels"):
                raise ArtifactError(f"entry '{entry}' takes a buffer of other weights: "
                                    f"{name!r}")
            return (p.rows * p.columns,), "in", "uint16" if bf16 else "float"
        if kind in ("hoisted", "dhoisted") and key.isdigit() and int(key) in self.hoisted:
            rows = self.packed[self.hoisted[int(key)]].rows
            return ("T", "B", rows), "work", "float"
        if kind == "dproduct" and key.isdigit() and int(key) in self.products:
            rows = self.packed[self.products[int(key)]["packed"]].rows
            return ("T", "B", rows), "work", "float"
        if kind == "saved" and _saved_key(key):
            return None, "result" if entry == "forward_train" else "in", "float"
        if kind in names.SEQUENCE_WORK and key:  # a prologue's: (T, B, n), the hash covers n
            return None, "work", "float"
        raise ArtifactError(f"entry '{entry}' takes a buffer lstmc does not make: {name!r}")

    def _check_entry(self, name: str, entry: EntryPoint, saved: dict, fail) -> None:
        seen, kind = set(), single_threaded(name)
        for buffer in entry.buffers:
            where = f"entry '{name}', buffer {buffer.name}"
            if buffer.name in seen:
                fail(f"{where} is listed twice")
            seen.add(buffer.name)
            shape, role, dtype = self.expected_shape(name, buffer.name)
            if buffer.role != role:
                fail(f"{where} has role {buffer.role!r}, expected {role!r}")
            if buffer.dtype != dtype:
                fail(f"{where} has dtype {buffer.dtype!r}, expected {dtype!r}")
            if shape is None and role == "work":  # prologue scratch: (T, B, n)
                if (len(buffer.shape) != 3 or buffer.shape[:2] != ("T", "B")
                        or not isinstance(buffer.shape[2], int)):
                    fail(f"{where} has shape {list(buffer.shape)}, expected [T, B, n]")
            elif shape is None:  # a saved value: (T, B, n), the same in every entry
                if (len(buffer.shape) != 3 or buffer.shape[:2] != ("T", "B")
                        or not isinstance(buffer.shape[2], int)):
                    fail(f"{where} has shape {list(buffer.shape)}, expected [T, B, n]")
                if kind in ("forward_train", "backward"):
                    first = saved.setdefault(buffer.name, buffer.shape)
                    if first != buffer.shape:
                        fail(f"{where} has shape {list(buffer.shape)}, but another entry "
                             f"gives it {list(first)}")
                if kind not in ("forward_train", "backward"):
                    fail(f"{where}: only the training forward and the backward pass "
                         "take saved values")
            elif tuple(buffer.shape) != tuple(shape):
                fail(f"{where} has shape {list(buffer.shape)}, expected {list(shape)}")
        cell = self.cell
        required = {"forward": ["x", "y", "lengths"]
                    + [names.state_in(s) for s in cell.states]
                    + [names.state_out(s) for s in cell.states],
                    "backward": ["dy", "dx", "lengths"]
                    + [names.dstate_in(s) for s in cell.states]
                    + [names.dstate_out(s) for s in cell.states]}
        required["forward_train"] = required[BF16] = required["forward"]
        missing = [b for b in required[kind] if b not in seen]
        if missing:
            fail(f"entry '{name}' lacks the buffer{'s' if len(missing) > 1 else ''} "
                 f"{', '.join(missing)}")
        if kind == "backward":
            unsaved = [b for b in saved if b not in seen]
            if unsaved:
                fail(f"entry 'backward' does not read the saved {', '.join(unsaved)}")
        if name != kind and entry.arena_elements > 1 << 32:
            fail(f"entry '{name}' asks for {entry.arena_elements} scratch elements per row")


def _saved_key(key: str) -> bool:
    """A step value's node id ("12"), a derived value ("$0"), a prologue's ("1.12")."""
    if key.startswith("$"):
        return key[1:].isdigit()
    level, _, node = key.partition(".")
    return level.isdigit() and (node.isdigit() if node else True)


def _segment(value, where: str) -> tuple[str, int]:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)):
        raise ArtifactError(f"{where}: expected [parameter, rows], got {value!r}")
    return value[0], _size(value[1], where)


def _buffer(value, where: str) -> BufferSpec:
    b = _Reader(value, where)
    shape = b.get("shape", list)
    if not 1 <= len(shape) <= 4:
        b.fail("shape", f"must have 1 to 4 dimensions, got {shape!r}")
    dims = tuple(d if d in ("T", "B") else _size(d, f"{where}: shape") for d in shape)
    role = b.string("role")
    if role not in ROLES:
        b.fail("role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    return BufferSpec(b.string("name"), dims, role, b.string("dtype", optional=True,
                                                       default="float"))


def is_file_name(name) -> bool:
    """Whether a manifest's `name` is one entry of the artifact's own directory: a
    string, not empty, `.` or `..`, with no path separator or NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(c in name for c in "/\\\0"))


# A stack artifact's cells, by what `lstmc compile` names them: the first layer's, and
# (for two layers or more) the one every upper layer runs.
STACK_CELLS = ("layer0", "upper")
MAX_LAYERS = 1 << 12  # far above any real stack; a loader builds one entry per layer


@dataclass(frozen=True)
class StackManifest:
    """The top-level manifest of a stack artifact (`lstmc compile --num-layers L` or
    `--bidirectional`): the layout, and the directory of each cell's own artifact. What
    it says of the cells (cell, target, dtype) is compared with the cells once loaded
    (stack.py `load_stack`)."""

    cell: str
    target: str
    dtype: str
    num_layers: int
    bidirectional: bool
    batch_first: bool
    cells: dict[str, str]  # "layer0" (and "upper") -> its subdirectory

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @classmethod
    def from_json(cls, data, where: str = "manifest") -> StackManifest:
        """The manifest, every field typed and in range; ArtifactError names the field."""
        check_schema(data, where)
        r = _Reader(data, where)
        dtype = r.string("dtype")
        if dtype not in DTYPES:
            r.fail("dtype", f"names no supported dtype: {dtype!r} "
                            f"(supported: {', '.join(DTYPES)})")
        layers = _Reader(r.get("layers", dict), f"{where}: layers")
        unknown = sorted(set(layers.data) - {"num_layers", "bidirectional", "batch_first"})
        if unknown:
            r.fail("layers", f"has unknown field(s) {', '.join(map(repr, unknown))}")
        num_layers = layers.get("num_layers", int)
        if not 1 <= num_layers <= MAX_LAYERS:
            layers.fail("num_layers", f"must be in 1..{MAX_LAYERS}, got {num_layers}")
        expected = STACK_CELLS if num_layers > 1 else STACK_CELLS[:1]
        cells = r.get("cells", dict)
        if sorted(cells) != sorted(expected):
            r.fail("cells", f"must name the cells {', '.join(expected)} of a stack of "
                            f"{num_layers} layer(s), got {sorted(cells)!r}")
        checksums = r.get("checksums", dict)
        for name, sub in cells.items():
            if not is_file_name(sub):
                r.fail("cells", f"must give each cell a directory in the artifact, got "
                                f"{name}: {sub!r}")
            if f"{sub}/manifest.json" not in checksums:
                r.fail("checksums", f"has no checksum for {sub}/manifest.json (cell {name})")
        return cls(r.string("cell"), r.string("target"), dtype, num_layers,
                   layers.get("bidirectional", bool), layers.get("batch_first", bool),
                   dict(cells))


def check_schema(data: dict, where: str) -> None:
    """Refuse a manifest of another schema, saying which and what to do."""
    version = data.get("format") if isinstance(data, dict) else None
    if version == SCHEMA:
        return
    if isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA:
        raise ArtifactError(f"{where}: artifact schema {version} was written by an older "
                            f"lstmc; this runtime reads schema {SCHEMA}: recompile it")
    raise ArtifactError(f"{where}: unsupported artifact format {version!r} (this runtime "
                        f"reads format {SCHEMA})")
