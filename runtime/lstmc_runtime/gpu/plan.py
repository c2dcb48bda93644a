"""The typed contract between the GPU kernel generator and GpuCell: the manifest of a
"cuda" or "opencl" cell and its launch plan, as dataclasses with a schema version,
`to_json` and `from_json`.

The plan says which device buffers each mode (infer, train, backward) needs, the launches
of one step in order (GEMMs and elementwise region kernels) or the one persistent kernel
that runs a whole forward sequence, and what runs around the loop: the input projections
before it (hoisted GEMMs), the weight gradients and parameter reductions after it. The
executor follows it and needs no compiler.

`from_json` trusts nothing: every field is type-checked, and every buffer and packed
weight a launch names must be one the plan declares, so a damaged plan is an
ArtifactError naming the field, never a KeyError halfway through a sequence. What cannot
be recomputed without the compiler (a kernel's body) is covered by the contract hash the
kernel source ends with (artifact.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ArtifactError
from ..manifest import SCHEMA, CellDescription, PackedSpec, _Reader, _segment, check_schema
from . import buffers as names

# The launch-plan layout this runtime reads. 1: the untyped plan of lstmc before the
# typed contract (keys "a", "sbk", "out" as lists); 2: before prologues (hoisted products
# of derived values); both refused, the artifact is recompiled.
PLAN_SCHEMA = 3
MODES = ("infer", "train", "backward")
# Rows of a buffer: "seq" T, "history" T + 1, "ring" 2, "step" 1; "param": no rows.
BUFFER_SLOTS = ("seq", "history", "ring", "step", "param")
# The slot a GEMM reads or writes at step t: "t", "0", "state" (the state at the start
# of step t: t & 1 in inference, t in training), "param" (a vector, no rows).
SLOT_KINDS = ("t", "0", "state", "param")
PARTITIONS = ("units", "columns")
GPU_TARGETS = ("cuda", "opencl")


def _choice(reader: _Reader, key: str, allowed: tuple[str, ...]) -> str:
    value = reader.string(key)
    if value not in allowed:
        reader.fail(key, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _list(reader: _Reader, key: str) -> list[tuple[_Reader, int]]:
    """(a reader of each object of list `key`, its index)."""
    return [(_Reader(item, f"{reader.where}: {key}[{i}]"), i)
            for i, item in enumerate(reader.get(key, list))]


@dataclass(frozen=True)
class DeviceBuffer:
    """A device array of (slots, B, width) floats (a "param" buffer: width floats)."""

    name: str
    width: int
    slots: str
    zero: bool = False   # cleared before the sequence runs (gradients accumulated into)
    const: bool = False  # read-only in every kernel (parameters)

    def elements(self, T, B):
        """Floats it holds for T steps of B rows (ints, or SymInts for torch.compile)."""
        if self.slots == "param":
            return self.width
        if self.slots in ("seq", "history"):
            return (T if self.slots == "seq" else T + 1) * B * self.width
        return (2 if self.slots == "ring" else 1) * B * self.width

    def to_json(self) -> dict:
        return {"name": self.name, "width": self.width, "slots": self.slots,
                "zero": self.zero, "const": self.const}

    @classmethod
    def from_json(cls, r: _Reader) -> DeviceBuffer:
        return cls(r.string("name"), r.size("width"), _choice(r, "slots", BUFFER_SLOTS),
                   r.get("zero", bool), r.get("const", bool))


@dataclass(frozen=True)
class SlotRef:
    """Rows of a buffer a GEMM reads or writes at step t: slot `slot` of `buffer`,
    `stride` floats per batch row."""

    buffer: str
    slot: str
    stride: int

    def to_json(self) -> dict:
        return {"buffer": self.buffer, "slot": self.slot, "stride": self.stride}

    @classmethod
    def from_json(cls, r: _Reader) -> SlotRef:
        return cls(r.string("buffer"), _choice(r, "slot", SLOT_KINDS), r.count("stride"))


@dataclass(frozen=True)
class GemmLaunch:
    """Recurrent product %node of one step: result[b, n] = sum_k operand[b, k] *
    W[k * stride_k + n * stride_n], W the packed weight `packed`."""

    node: int
    packed: str
    operand: SlotRef
    result: SlotRef
    n: int
    k: int
    stride_k: int
    stride_n: int

    def to_json(self) -> dict:
        return {"kind": "gemm", "node": self.node, "packed": self.packed,
                "operand": self.operand.to_json(), "result": self.result.to_json(),
                "n": self.n, "k": self.k, "stride_k": self.stride_k, "stride_n": self.stride_n}


@dataclass(frozen=True)
class RegionLaunch:
    """Elementwise region kernel `kernel`: one work-group per batch row."""

    kernel: str

    def to_json(self) -> dict:
        return {"kind": "region", "kernel": self.kernel}


Launch = GemmLaunch | RegionLaunch


def _launch(r: _Reader) -> Launch:
    kind = _choice(r, "kind", ("gemm", "region"))
    if kind == "region":
        return RegionLaunch(r.string("kernel"))
    return GemmLaunch(r.count("node"), r.string("packed"),
                      SlotRef.from_json(_Reader(r.get("operand", dict), f"{r.where}: operand")),
                      SlotRef.from_json(_Reader(r.get("result", dict), f"{r.where}: result")),
                      r.size("n"), r.size("k"), r.count("stride_k"), r.count("stride_n"))


@dataclass(frozen=True)
class PersistentKernel:
    """The whole forward sequence in one launch, each work-group keeping its share of
    the recurrent weights in local memory: by "units" (a group owns units u0..u1 of every
    product; `units` is U) or by "columns" (each product's columns split evenly)."""

    kernel: str
    weights: tuple[str, ...]  # packed weights, in the kernel's parameter order
    static_floats: int        # of the kernel's static local arrays
    partition: str
    units: int | None         # U for "units", None for "columns"
    products: tuple[tuple[int, int], ...]  # (rows, columns) of each product's weights

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "weights": list(self.weights),
                "static_floats": self.static_floats, "partition": self.partition,
                "units": self.units, "products": [list(p) for p in self.products]}

    @classmethod
    def from_json(cls, r: _Reader) -> PersistentKernel:
        partition = _choice(r, "partition", PARTITIONS)
        units = r.size("units") if partition == "units" else None
        if partition == "columns" and r.data.get("units") is not None:
            r.fail("units", f"must be null for partition 'columns', got {r.data['units']!r}")
        weights = tuple(r.get("weights", list))
        if not all(isinstance(w, str) for w in weights):
            r.fail("weights", f"must be a list of names, got {list(weights)!r}")
        products = []
        for item in r.get("products", list):
            if not (isinstance(item, list) and len(item) == 2
                    and all(type(v) is int and v > 0 for v in item)):
                r.fail("products", f"must be a list of [rows, columns], got {item!r}")
            products.append((item[0], item[1]))
        return cls(r.string("kernel"), weights, r.count("static_floats"), partition, units,
                   tuple(products))


@dataclass(frozen=True)
class ModePlan:
    """One mode's buffers (in kernel parameter order), its step's launches in order, and
    its persistent kernel (None: the backward, which has none)."""

    buffers: tuple[DeviceBuffer, ...]
    steps: tuple[Launch, ...]
    persistent: PersistentKernel | None = None

    @property
    def buffer_names(self) -> list[str]:
        return [b.name for b in self.buffers]

    def to_json(self) -> dict:
        return {"buffers": [b.to_json() for b in self.buffers],
                "steps": [s.to_json() for s in self.steps],
                "persistent": None if self.persistent is None else self.persistent.to_json()}

    @classmethod
    def from_json(cls, r: _Reader) -> ModePlan:
        persistent = r.data.get("persistent")
        return cls(tuple(DeviceBuffer.from_json(b) for b, _ in _list(r, "buffers")),
                   tuple(_launch(s) for s, _ in _list(r, "steps")),
                   None if persistent is None else
                   PersistentKernel.from_json(_Reader(persistent, f"{r.where}: persistent")))


@dataclass(frozen=True)
class Threads:
    """Work-items per work-group of each kind of kernel, and the GEMM's tile edge."""

    gemm: int
    gemm_tile: int
    region: int
    persistent: int

    def to_json(self) -> dict:
        return {"gemm": self.gemm, "gemm_tile": self.gemm_tile, "region": self.region,
                "persistent": self.persistent}

    @classmethod
    def from_json(cls, r: _Reader) -> Threads:
        return cls(r.size("gemm"), r.size("gemm_tile"), r.size("region"), r.size("persistent"))


@dataclass(frozen=True)
class HoistedGemm:
    """Hoisted product `index`: its projection over all steps before the loop (into
    buffer names.hoisted(index)), its gradients after it (from names.dhoisted). Level 0
    reads the packed input rows from unit `offset` on; level L > 0 reads derived value
    `operand` ($k, buffer names.derived), made by prologue L just before."""

    index: int
    packed: str
    offset: int
    level: int = 0
    operand: str = ""

    @property
    def buffer(self) -> str:
        return names.hoisted(self.index)

    @property
    def grad(self) -> str:
        return names.dhoisted(self.index)

    def to_json(self) -> dict:
        return {"index": self.index, "packed": self.packed, "offset": self.offset,
                "level": self.level, "operand": self.operand}

    @classmethod
    def from_json(cls, r: _Reader) -> HoistedGemm:
        level = r.count("level")
        operand = r.string("operand", optional=True, default="")
        if (level > 0) != bool(operand):
            r.fail("operand", f"must name a derived value exactly when level > 0, got "
                              f"{operand!r} at level {level}")
        if operand and not (operand.startswith("$") and operand[1:].isdigit()):
            r.fail("operand", f"must be a derived value $k, got {operand!r}")
        return cls(r.count("index"), r.string("packed"), r.count("offset"), level, operand)


@dataclass(frozen=True)
class PrologueLaunch:
    """Prologue `level`: its region kernels per mode (launched once, t = 0, over all T*B
    rows: infer and train before the hoisted products of its level, backward after their
    gradients), and its vector parameters' per-row gradients (names.prologue_acc)."""

    level: int
    kernels: dict[str, tuple[str, ...]]
    param_grads: tuple[ParamReduction, ...]

    def acc(self, g: ParamReduction) -> str:
        return names.prologue_acc(self.level, g.param)

    def to_json(self) -> dict:
        return {"level": self.level, "kernels": {m: list(k) for m, k in self.kernels.items()},
                "param_grads": [g.to_json() for g in self.param_grads]}

    @classmethod
    def from_json(cls, r: _Reader) -> PrologueLaunch:
        kernels = r.get("kernels", dict)
        if list(kernels) != list(MODES) or not all(
                isinstance(k, list) and all(isinstance(n, str) for n in k)
                for k in kernels.values()):
            r.fail("kernels", f"must list kernel names for {', '.join(MODES)}, got {kernels!r}")
        return cls(r.size("level"), {m: tuple(k) for m, k in kernels.items()},
                   tuple(ParamReduction.from_json(g) for g, _ in _list(r, "param_grads")))


@dataclass(frozen=True)
class WeightGradient:
    """dW of recurrent product %product = dP^T @ operand over all T*B rows; the operand as
    the training forward kept it (`operand`, `stride` floats per row)."""

    product: int
    packed: str
    operand: str
    stride: int

    @property
    def grad(self) -> str:
        return names.dproduct(self.product)

    def to_json(self) -> dict:
        return {"product": self.product, "packed": self.packed, "operand": self.operand,
                "stride": self.stride}

    @classmethod
    def from_json(cls, r: _Reader) -> WeightGradient:
        return cls(r.count("product"), r.string("packed"), r.string("operand"),
                   r.count("stride"))


@dataclass(frozen=True)
class ParamReduction:
    """Vector parameter `param`'s gradient: its per-row accumulator summed over rows."""

    param: str
    width: int

    @property
    def acc(self) -> str:
        return names.param_acc(self.param)

    def to_json(self) -> dict:
        return {"param": self.param, "width": self.width}

    @classmethod
    def from_json(cls, r: _Reader) -> ParamReduction:
        return cls(r.string("param"), r.size("width"))


def _packed_to_json(p: PackedSpec) -> dict:
    return {"name": p.name, "segments": [list(s) for s in p.segments], "columns": p.columns}


def _packed_from_json(r: _Reader) -> PackedSpec:
    segments = tuple(_segment(s, f"{r.where}: segments") for s in r.get("segments", list))
    if not segments:
        r.fail("segments", "must name at least one matrix")
    return PackedSpec(r.string("name"), segments, r.size("columns"))


@dataclass(frozen=True)
class LaunchPlan:
    """Everything GpuCell launches, and in which buffers."""

    threads: Threads
    modes: dict[str, ModePlan]
    input_width: int  # units per row of the packed inputs (buffer x)
    hoisted: tuple[HoistedGemm, ...]
    products: tuple[WeightGradient, ...]
    param_grads: tuple[ParamReduction, ...]
    packed: tuple[PackedSpec, ...]
    prologues: tuple[PrologueLaunch, ...] = ()

    def packed_by_name(self) -> dict[str, PackedSpec]:
        return {p.name: p for p in self.packed}

    def hoisted_at(self, level: int) -> tuple[HoistedGemm, ...]:
        return tuple(h for h in self.hoisted if h.level == level)

    def to_json(self) -> dict:
        return {"format": PLAN_SCHEMA, "threads": self.threads.to_json(),
                "modes": {m: p.to_json() for m, p in self.modes.items()},
                "input_width": self.input_width,
                "hoisted": [h.to_json() for h in self.hoisted],
                "products": [p.to_json() for p in self.products],
                "param_grads": [g.to_json() for g in self.param_grads],
                "packed": [_packed_to_json(p) for p in self.packed],
                "prologues": [p.to_json() for p in self.prologues]}

    @classmethod
    def from_json(cls, data, where: str = "plan") -> LaunchPlan:
        check_plan_schema(data, where)
        r = _Reader(data, where)
        modes_data = r.get("modes", dict)
        if list(modes_data) != list(MODES):
            r.fail("modes", f"must be exactly {', '.join(MODES)} in this order, got "
                            f"{', '.join(modes_data) or 'none'}")
        plan = cls(Threads.from_json(_Reader(r.get("threads", dict), f"{where}: threads")),
                   {m: ModePlan.from_json(_Reader(v, f"{where}: modes['{m}']"))
                    for m, v in modes_data.items()},
                   r.size("input_width"),
                   tuple(HoistedGemm.from_json(h) for h, _ in _list(r, "hoisted")),
                   tuple(WeightGradient.from_json(p) for p, _ in _list(r, "products")),
                   tuple(ParamReduction.from_json(g) for g, _ in _list(r, "param_grads")),
                   tuple(_packed_from_json(p) for p, _ in _list(r, "packed")),
                   tuple(PrologueLaunch.from_json(p) for p, _ in _list(r, "prologues")))
        plan.check(where)
        return plan

    def check(self, where: str = "plan") -> None:
        """Every buffer and packed weight a launch names is one the plan declares."""
        def fail(message: str):
            raise ArtifactError(f"{where}: {message}")

        packed = self.packed_by_name()
        if len(packed) != len(self.packed):
            fail("a packed weight is listed twice")
        declared = {}
        for mode, entry in self.modes.items():
            have = declared[mode] = set(entry.buffer_names)
            if len(have) != len(entry.buffers):
                fail(f"mode '{mode}' lists a buffer twice")
            for step in entry.steps:
                if isinstance(step, RegionLaunch):
                    continue
                for ref in (step.operand, step.result):
                    if ref.buffer not in have:
                        fail(f"mode '{mode}': product %{step.node} names no buffer of the "
                             f"mode: {ref.buffer!r}")
                if step.packed not in packed:
                    fail(f"mode '{mode}': product %{step.node} names no packed weight: "
                         f"{step.packed!r}")
            if (entry.persistent is None) != (mode == "backward"):
                fail(f"mode '{mode}' {'has' if mode == 'backward' else 'lacks'} a "
                     "persistent kernel")
            for name in entry.persistent.weights if entry.persistent else ():
                if name not in packed:
                    fail(f"mode '{mode}': the persistent kernel names no packed weight: "
                         f"{name!r}")
        forward, backward = declared["train"], declared["backward"]
        for h in self.hoisted:
            if h.packed not in packed or h.buffer not in forward or h.grad not in backward:
                fail(f"hoisted product {h.index} names a packed weight or buffer the plan "
                     "lacks")
        for p in self.products:
            if p.packed not in packed or p.grad not in backward or p.operand not in backward:
                fail(f"the weight gradient of product %{p.product} names a packed weight or "
                     "buffer the plan lacks")
        for g in self.param_grads:
            if g.acc not in backward:
                fail(f"the gradient of {g.param} has no accumulator buffer {g.acc}")
        if [p.level for p in self.prologues] != list(range(1, len(self.prologues) + 1)):
            fail("prologues must be levels 1, 2, ... in order")
        for h in self.hoisted:
            if h.level > len(self.prologues):
                fail(f"hoisted product {h.index} is of level {h.level}, but the plan has "
                     f"{len(self.prologues)} prologue(s)")
            if h.level and not (names.derived(h.operand) in forward
                                and names.derived(h.operand) in declared["infer"]
                                and names.dderived(h.operand) in backward):
                fail(f"hoisted product {h.index} reads {h.operand}, whose buffers the plan "
                     "lacks")
        for prologue in self.prologues:
            for g in prologue.param_grads:
                if prologue.acc(g) not in backward:
                    fail(f"prologue {prologue.level}: the gradient of {g.param} has no "
                         f"accumulator buffer {prologue.acc(g)}")


def check_plan_schema(data, where: str) -> None:
    """Refuse a launch plan of another schema, saying which and what to do."""
    version = data.get("format") if isinstance(data, dict) else None
    if version == PLAN_SCHEMA:
        return
    if isinstance(version, int) and not isinstance(version, bool) and version < PLAN_SCHEMA:
        raise ArtifactError(f"{where}: launch plan schema {version} was written by an older "
                            f"lstmc; this runtime reads launch plan schema {PLAN_SCHEMA}: "
                            "recompile it")
    raise ArtifactError(f"{where}: unsupported launch plan schema {version!r} (this runtime "
                        f"reads launch plan schema {PLAN_SCHEMA})")


@dataclass(frozen=True)
class GpuBinary:
    """The kernels compiled by NVRTC for one architecture (files of the artifact), and
    what ptxas reported for each kernel."""

    cubin: str
    ptx: str
    registers: dict[str, int] = field(default_factory=dict)
    spill_bytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"cubin": self.cubin, "ptx": self.ptx, "registers": dict(self.registers),
                "spill_bytes": dict(self.spill_bytes)}

    @classmethod
    def from_json(cls, r: _Reader) -> GpuBinary:
        reports = {}
        for key in ("registers", "spill_bytes"):
            report = r.get(key, dict, optional=True, default={})
            if not all(type(v) is int for v in report.values()):
                r.fail(key, f"must map kernels to integers, got {report!r}")
            reports[key] = dict(report)
        return cls(r.string("cubin"), r.string("ptx"), reports["registers"],
                   reports["spill_bytes"])


@dataclass(frozen=True)
class GpuManifest:
    """A GPU cell: what it is, and the plan its kernels are launched by. `source`,
    `binaries` and `checksums` are set for an artifact on disk (the kernel source file,
    NVRTC's output per architecture, the SHA-256 of each file)."""

    cell: CellDescription
    plan: LaunchPlan
    source: str | None = None
    binaries: dict[str, GpuBinary] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"format": SCHEMA, **self.cell.to_json(), "plan": self.plan.to_json()}
        if self.source is not None:
            data["source"] = self.source
        if self.binaries:
            data["binaries"] = {a: b.to_json() for a, b in self.binaries.items()}
        if self.checksums:
            data["checksums"] = dict(self.checksums)
        return data

    @classmethod
    def from_json(cls, data, where: str = "manifest") -> GpuManifest:
        """The manifest, checked field by field and against the cell it describes;
        ArtifactError says which field is wrong."""
        check_schema(data, where)
        r = _Reader(data, where)
        cell = CellDescription.from_json(data, where)
        if cell.target not in GPU_TARGETS:
            r.fail("target", f"must be one of {', '.join(GPU_TARGETS)} for a GPU artifact, "
                             f"got {cell.target!r}")
        if cell.dtype != "float32":
            r.fail("dtype", f"must be float32 for a GPU artifact, got {cell.dtype!r}")
        binaries = {arch: GpuBinary.from_json(_Reader(b, f"{where}: binaries['{arch}']"))
                    for arch, b in r.get("binaries", dict, optional=True, default={}).items()}
        checksums = r.get("checksums", dict, optional=True, default={})
        manifest = cls(cell, LaunchPlan.from_json(r.get("plan", dict), f"{where}: plan"),
                       r.string("source", optional=True), binaries, dict(checksums))
        manifest.check(where)
        return manifest

    def check(self, where: str = "manifest") -> None:
        """The buffers the executor fills and reads by name are declared with the widths
        the cell gives them; packed weights stack parameters of their shapes."""
        def fail(message: str):
            raise ArtifactError(f"{where}: plan: {message}")

        cell, plan = self.cell, self.plan
        if plan.input_width != cell.packed_input_size:
            fail(f"input_width is {plan.input_width}, but the cell's inputs are "
                 f"{cell.packed_input_size} units")
        out = cell.states[cell.output]
        vectors = {n: p.shape[0] for n, p in cell.params.items() if len(p.shape) == 1}
        expected = {names.X: plan.input_width,
                    **{names.state(n): w for n, w in cell.states.items()},
                    **{names.param(n): w for n, w in vectors.items()}}
        for mode, entry in plan.modes.items():
            need = dict(expected)
            if mode == "backward":
                need.update({names.DY: out, names.DX: plan.input_width},
                            **{names.carry(n): w for n, w in cell.states.items()})
            else:
                need[names.Y] = out
            widths = {b.name: b.width for b in entry.buffers}
            for name, width in need.items():
                if widths.get(name) != width:
                    fail(f"mode '{mode}' must have buffer {name} of width {width}, got "
                         f"{widths.get(name, 'none')}")
        for packed in plan.packed:
            for param, rows in packed.segments:
                shape = cell.params[param].shape if param in cell.params else ()
                if shape != (rows, packed.columns):
                    fail(f"packed weight {packed.name} stacks {param} as {rows} x "
                         f"{packed.columns}, but {param} has shape {shape or 'none'}")
        for g in plan.param_grads:
            if vectors.get(g.param) != g.width:
                fail(f"the gradient of {g.param} has width {g.width}, but the parameter "
                     f"has {vectors.get(g.param, 'none')}")
