"""Render a Program as an LLVM module with three entry points, each running the time loop
of a whole sequence (for a slice of the batch) in one call:

    int32 lstmc_forward(int64 T, int64 B, void **buffers)
    int32 lstmc_forward_train(...)      # also saves what the backward pass reads
    int32 lstmc_backward(...)

`buffers` is an array of pointers whose order and shapes the ABI lists. Batch rows never
interact, so the runtime may run slices of one batch on several cores at once, one call
each. Every product is lstmc_small_gemm on weights packed into panels: the input
projections as one GEMM over all T*B rows before the loop, the recurrent products inside
it, and the weight gradients as one GEMM over all T*B rows after it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from llvmlite import ir
from lstmc_runtime import buffers as names
from lstmc_runtime import dtypes
from lstmc_runtime.manifest import BF16_DTYPES, PackedSpec

from ...ir import masks
from ...ir.graph import LEAVES, PRODUCTS, Node, Op
from ...ir.program import Program
from ...ir.step_plan import StepPlan
from .. import bind_packed, check_renderable
from . import packing, workers
from .irutil import I32, I64, PTR, element, float_type, for_range, i64, spin_until
from .mathlib import MathLib
from .philox import emit_mask_fill
from .regions import Place, RegionEmitter, StepEnv
from .smallgemm import I16, NV, emit_small_gemm, vector_width
from .units import backward_units, step_units, trains_by_units


@dataclass
class Buffer:
    name: str
    shape: list  # ints, "T" and "B"
    role: str  # "in" (caller fills); "out" (caller zero-fills, kernel adds, caller reads);
    #            "result" (kernel writes every element, caller reads); "work" (scratch)
    dtype: str = "float"  # "float" (the cell's dtype) or "int64"


@dataclass
class EntryAbi:
    symbol: str
    buffers: list[Buffer] = field(default_factory=list)
    arena_elements: int = 0  # threaded entries: per batch row, in elements

    def to_json(self) -> dict:
        return {"symbol": self.symbol, "arena_elements": self.arena_elements,
                "buffers": [{"name": b.name, "shape": b.shape, "role": b.role,
                             "dtype": b.dtype} for b in self.buffers]}


class ModuleBuilder:
    def __init__(self, program: Program, sizes: dict[str, int], dtype: str):
        check_renderable(program)
        self.program, self.sizes = program, sizes
        self.dtype = dtypes.dtype(dtype)
        self.ftype = float_type(self.dtype)
        self.module = ir.Module(name=f"lstmc_{program.info.name}")
        self.math = MathLib(self.module, self.dtype)
        self.regions = RegionEmitter(self.module, self.math, "lstmc")
        # The packed matrices, bound, by name ("0", "1", ...: the manifest's names).
        self.packed = {str(w.index): bind_packed(w, sizes, str(w.index))
                       for w in program.packed_weights}
        self.entries: dict[str, EntryAbi] = {}
        self.gradient_aliases: dict[str, str] = {}  # parameter -> one with the same gradient
        self.small_gemm = emit_small_gemm(self.module, self.ftype, accumulate=False)
        self.small_gemm_acc = emit_small_gemm(self.module, self.ftype, accumulate=True)
        # float32 cells also run inference on bfloat16 weights (lstmc_runtime.bfloat16)
        self.bf16 = self.dtype.name in BF16_DTYPES
        self.small_gemm_bf16 = (emit_small_gemm(self.module, self.ftype, accumulate=False,
                                                bf16=True) if self.bf16 else None)
        self.malloc = ir.Function(self.module, ir.FunctionType(PTR, [I64]), "malloc")
        self.free = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), "free")
        self.sched_yield = ir.Function(self.module, ir.FunctionType(I32, []), "sched_yield")
        self.panel = NV * vector_width(self.ftype)
        self.mask_fill = None  # emitted for cells with dropout or zoneout
        if any(n.op == Op.MASK for n in program.graph.nodes):
            self.mask_fill = emit_mask_fill(self.module, self.ftype)

    def size(self, node_or_size) -> int:
        size = node_or_size.size if isinstance(node_or_size, Node) else node_or_size
        return size.bind(self.sizes)

    def packed_weight(self, segments) -> PackedSpec:
        return self.packed[str(self.program.packed_weight(segments).index)]

    def build(self) -> ir.Module:
        for threaded in (False, True):  # each entry twice: alone, and run by a team
            _ForwardKernel(self, train=False, threaded=threaded).emit()
            _ForwardKernel(self, train=True, threaded=threaded).emit()
            _BackwardKernel(self, threaded=threaded).emit()
            if self.bf16:
                _ForwardKernel(self, train=False, threaded=threaded, bf16=True).emit()
        workers.emit(self.module)  # the parked threads that run the *_mt entries
        packing.emit(self.module, self.ftype)  # for the runtime to pack weights with
        return self.module


class _Kernel:
    """Shared machinery of one entry point: buffers, scratch, GEMM calls, copies."""

    def __init__(self, mb: ModuleBuilder, symbol: str, threaded: bool = False):
        self.mb, self.ftype, self.math = mb, mb.ftype, mb.math
        self.abi = EntryAbi(symbol)
        mb.entries[symbol] = self.abi
        # A threaded kernel is run by several threads at once on the same buffers: each
        # computes a share of every product's columns; thread 0 does everything else.
        self.threaded = threaded
        self.bf16 = False  # packed weights in bfloat16 (the inference forward's twin)
        extra = [I64, I64, PTR, PTR] if threaded else []  # tid, threads, sync, arena
        self.fn = ir.Function(mb.module, ir.FunctionType(I32, [I64, I64, PTR] + extra), symbol)
        self.T, self.B, self.bufs = self.fn.args[:3]
        self.entry = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.b = ir.IRBuilder(self.fn.append_basic_block("body"))
        if threaded:
            self.tid, self.threads, self.sync, self.arena_arg = self.fn.args[3:]
            self.leader = self.entry.icmp_signed("==", self.tid, i64(0))
            self.generation = self.entry.alloca(I64, name="generation")
            self.entry.store(i64(0), self.generation)
        self._buffers: dict[str, ir.Value] = {}
        self._arena = None

    def buffer(self, name: str, shape: list, role: str, dtype: str = "float") -> ir.Value:
        if role == "work" and shape[0] == "B" and len(shape) == 2:
            return self._arena_buffer(name, shape[1])
        if name not in self._buffers:
            index = len(self.abi.buffers)
            self.abi.buffers.append(Buffer(name, shape, role, dtype))
            slot = self.entry.gep(self.bufs, [i64(index)], source_etype=PTR)
            self._buffers[name] = self.entry.load(slot, typ=PTR, name=name.replace(":", "_"))
        return self._buffers[name]

    def _arena_buffer(self, name: str, n: int) -> ir.Value:
        """Per-step scratch (B, n) carved from one block the kernel allocates itself, so
        the caller passes only the buffers it fills or reads."""
        if name not in self._buffers:
            if self._arena is None and self.threaded:  # shared: the caller allocates it
                self._arena, self._arena_elements = self.arena_arg, 0
            if self._arena is None:
                self._arena_size = ir.GlobalVariable(self.mb.module, I64,
                                                     f"{self.abi.symbol}_arena_elements")
                self._arena_size.linkage = "internal"
                self._arena_size.global_constant = True
                size = self.entry.mul(self.B, self.entry.load(self._arena_size, typ=I64))
                bytes_ = self.entry.mul(size, i64(self.mb.dtype.itemsize))
                self._arena = self.entry.call(self.mb.malloc, [self.entry.add(bytes_, i64(64))])
                self._arena_elements = 0
            offset = self.entry.mul(self.B, i64(self._arena_elements))
            self._buffers[name] = self.entry.gep(self._arena, [offset], source_etype=self.ftype)
            self._arena_elements += -(-n // 16) * 16  # keeps every block 64-byte aligned
        return self._buffers[name]

    def alloca(self, name: str, typ=None) -> ir.Value:
        return self.entry.alloca(typ or self.ftype, name=name)

    def scratch(self, node: Node, n: int) -> Place:
        """A per-step (B, n) buffer for a value read outside the loop that computes it."""
        base = self.buffer(f"work:{node.id}", ["B", n], "work")
        return Place(base, n)

    def mask(self, node: Node, t: ir.Value, draw: bool) -> Place:
        """Where mask `node` lives this step. Drawn (training forward, backward): a (B, n)
        scratch filled now, row by row, from the `rng` buffer (seed, first batch row of
        this call): the backward draws what the forward drew instead of saving it. Not
        drawn (inference): one constant vector of the mask's expectation."""
        attr, n = node.attr, self.mb.size(node)
        if not draw:
            values = ir.Constant(ir.ArrayType(self.ftype, n), [attr.expectation] * n)
            table = ir.GlobalVariable(self.mb.module, values.type,
                                      f"{self.abi.symbol}_expectation{node.id}")
            table.linkage, table.global_constant, table.initializer = "internal", True, values
            return Place(self.entry.bitcast(table, PTR), 0)
        rng = self.buffer(names.RNG, [3], "in", "int64")
        word = lambda k: self.entry.load(self.entry.gep(rng, [i64(k)], source_etype=I64),
                                         typ=I64)
        seed, first_row = word(0), word(1)
        drawn = self.entry.icmp_signed("!=", word(2), i64(0))
        place = self.scratch(node, n)
        step = i64(masks.PER_SEQUENCE) if attr.per_sequence else t
        b = self.b
        # not drawn (a training pass without masks): never hit, and miss = the expectation
        threshold = b.select(drawn, i64(attr.threshold), i64(0))
        miss = b.select(drawn, self.math.const(attr.miss_value),
                        self.math.const(attr.expectation))
        with self.leader_only(), for_range(b, self.B, "mrow") as row:
            b.call(self.mb.mask_fill, [self.row(place.base, row, n), i64(n), seed, step,
                                       b.add(first_row, row), i64(attr.site), threshold,
                                       self.math.const(attr.hit_value), miss])
        return place

    def seq_row(self, base: ir.Value, t: ir.Value, n: int) -> ir.Value:
        """Pointer to step t of a (T, B, n) sequence buffer."""
        return element(self.b, self.ftype, base, self.b.mul(self.b.mul(t, self.B), i64(n)))

    def gemm(self, m, n: int, k, a, sam, sak, b_matrix, layout: str, c, ldc: int,
             accumulate: bool = False, columns: ir.Value | None = None,
             ldb: int | None = None) -> None:
        """C (m x n) (+)= A . B with B (k x n) either in panels ("panels", packed by the
        runtime) or plain row-major ("rows", rows ldb apart, default n). `columns`
        computes only that many of C's columns (b_matrix and c then point at the first
        one)."""
        as_i64 = lambda v: v if isinstance(v, ir.Value) else i64(v)
        nr = self.mb.panel
        if layout == "panels":
            bk, bp, bt = i64(nr), self.b.mul(as_i64(k), i64(nr)), i64(n % nr)
        else:
            bk, bp, bt = i64(ldb or n), i64(nr), i64(ldb or n)
        fn = self.mb.small_gemm_acc if accumulate else self.mb.small_gemm
        if self.bf16 and layout == "panels":  # every panels operand is a packed weight
            fn = self.mb.small_gemm_bf16
        self.b.call(fn, [as_i64(m), columns or i64(n), as_i64(k), a, as_i64(sam), as_i64(sak),
                         b_matrix, bk, bp, bt, c, i64(ldc)])

    def copy(self, src: ir.Value, dst: ir.Value, count: ir.Value) -> None:
        b = self.b
        with for_range(b, count, "copy") as i:
            value = b.load(element(b, self.ftype, src, i), typ=self.ftype)
            b.store(value, element(b, self.ftype, dst, i))

    def ping_pong(self, name: str, n: int, parity: ir.Value) -> ir.Value:
        """One of two (B, n) buffers, alternating with the step."""
        even = self.b.icmp_signed("==", self.b.and_(parity, i64(1)), i64(0))
        return self.b.select(even, self.buffer(f"ping:{name}", ["B", n], "work"),
                             self.buffer(f"pong:{name}", ["B", n], "work"))

    def rows_by_length(self, t: ir.Value, active, inactive) -> None:
        """Per batch row: `active(row)` while t < lengths[row], else `inactive(row)`."""
        b = self.b
        lengths = self.buffer("lengths", ["B"], "in", "int64")
        with for_range(b, self.B, "mrow") as row:
            length = b.load(b.gep(lengths, [row], source_etype=I64), typ=I64)
            with b.if_else(b.icmp_signed("<", t, length)) as (then, otherwise):
                with then:
                    active(row)
                with otherwise:
                    inactive(row)

    @contextmanager
    def rows(self, count: ir.Value):
        """Code emitted inside runs over `count` rows instead of the batch's B (a
        prologue: one step over all T*B rows)."""
        batch, self.B = self.B, count
        try:
            yield
        finally:
            self.B = batch

    def row(self, base: ir.Value, row: ir.Value, n: int) -> ir.Value:
        return element(self.b, self.ftype, base, self.b.mul(row, i64(n)))

    def units_of_row(self, base: ir.Value, row: ir.Value, n: int, first: ir.Value
                     ) -> ir.Value:
        """Unit `first` of row `row` of a (B, n) buffer (a thread's units start there)."""
        return element(self.b, self.ftype, self.row(base, row, n), first)

    def fill(self, dst: ir.Value, count: ir.Value, value: float) -> None:
        b = self.b
        with for_range(b, count, "fill") as i:
            b.store(self.math.const(value), element(b, self.ftype, dst, i))

    @contextmanager
    def leader_only(self, alone: bool = True):
        """Code only thread 0 runs in a threaded kernel (all of it, otherwise); with
        `alone` false, code every thread runs (on its own units)."""
        if not self.threaded or not alone:
            yield
            return
        with self.b.if_then(self.leader):
            yield

    def barrier(self) -> None:
        """All threads of a threaded kernel meet here (a spinning, sense-counting barrier;
        it yields the core while it waits long)."""
        if not self.threaded:
            return
        b = self.b
        counter, generation = self.sync, b.gep(self.sync, [i64(1)], source_etype=I64)
        mine = b.load(self.generation, typ=I64)
        arrived = b.atomic_rmw("add", counter, i64(1), "seq_cst")
        with b.if_else(b.icmp_signed("==", arrived, b.sub(self.threads, i64(1)))) as (
                last, wait):
            with last:
                # (atomic exchanges: llvmlite's store_atomic needs typed pointers)
                b.atomic_rmw("xchg", counter, i64(0), "seq_cst")
                b.atomic_rmw("xchg", generation, b.add(mine, i64(1)), "seq_cst")
            with wait:
                spin_until(b, lambda b: b.icmp_signed(
                    "!=", b.load_atomic(generation, "acquire", 8, typ=I64), mine),
                    self.mb.sched_yield, 1024)
        b.store(b.add(mine, i64(1)), self.generation)

    def finish(self) -> None:
        if self.threaded:
            self.abi.arena_elements = self._arena_elements if self._arena is not None else 0
            self._arena = None  # the caller's: nothing to free
        if self._arena is not None:
            self._arena_size.initializer = i64(self._arena_elements)
            self.b.call(self.mb.free, [self._arena])
        self.b.ret(ir.Constant(I32, 0))
        body = self.b.function.blocks[1]
        if self._arena is not None:  # out of memory: status 1, nothing touched
            ok = self.entry.icmp_unsigned("!=", self._arena, ir.Constant(PTR, None))
            fail = self.fn.append_basic_block("no_memory")
            ir.IRBuilder(fail).ret(ir.Constant(I32, 1))
            self.entry.cbranch(ok, body, fail)
        else:
            self.entry.branch(body)

    def run_stages(self, stages, plan: StepPlan, env: StepEnv) -> None:
        """The stages of one step. Threaded: every thread computes its share of each
        product stage, then thread 0 alone runs what follows up to the next product
        stage; the caller ends the step with a barrier."""
        for index, stage in enumerate(stages):
            if stage.kind == "product":
                if index:
                    self.barrier()  # the previous region's results are visible
                for node in stage.nodes:
                    self.product(node, env)
                self.barrier()  # every share of the products is done
                with self.leader_only():
                    for node in stage.nodes:
                        self.role_copies(node, env)
            else:
                with self.leader_only():
                    self.mb.regions.emit(self.b, plan.regions[index], env, self.B, self.alloca)

    def gemm_share(self, m, n: int, k, a, sam, sak, b_matrix, c, ldc: int,
                   layout: str = "panels", accumulate: bool = False,
                   ldb: int | None = None) -> None:
        """This thread's share of a GEMM's columns, whole panels of them (all of them,
        unthreaded); as `gemm` otherwise."""
        if not self.threaded:
            self.gemm(m, n, k, a, sam, sak, b_matrix, layout, c, ldc, accumulate, ldb=ldb)
            return
        b, nr = self.b, self.mb.panel
        first, end = self.panel_share(n // nr)
        last = b.icmp_signed("==", self.tid, b.sub(self.threads, i64(1)))
        width = b.add(b.mul(b.sub(end, first), i64(nr)), b.select(last, i64(n % nr), i64(0)))
        self.gemm_columns(m, n, k, a, sam, sak, b_matrix, c, ldc, b.mul(first, i64(nr)),
                          width, layout, accumulate, ldb)

    def panel_share(self, panels: int) -> tuple[ir.Value, ir.Value]:
        """[first, end) of `panels` that are this thread's: contiguous, disjoint."""
        b, count = self.b, i64(panels)
        first = b.sdiv(b.mul(count, self.tid), self.threads)
        return first, b.sdiv(b.mul(count, b.add(self.tid, i64(1))), self.threads)

    def gemm_columns(self, m, n: int, k, a, sam, sak, b_matrix, c, ldc: int,
                     column: ir.Value, width: ir.Value, layout: str = "panels",
                     accumulate: bool = False, ldb: int | None = None) -> None:
        """Columns [column, column + width) of a GEMM (`column` on a panel boundary)."""
        b = self.b
        k_value = k if isinstance(k, ir.Value) else i64(k)
        # panels: each panel is k x nr contiguous; rows: the first column is `column` on
        b_start = b.mul(column, k_value) if layout == "panels" else column
        etype = self.weight_type if layout == "panels" else self.ftype
        self.gemm(m, n, k, a, sam, sak, element(b, etype, b_matrix, b_start), layout,
                  element(b, self.ftype, c, column), ldc, accumulate, columns=width, ldb=ldb)

    @property
    def weight_type(self) -> ir.Type:
        """Of a packed weight's elements."""
        return I16 if self.bf16 else self.ftype

    def forward_weights(self, weight: PackedSpec) -> ir.Value:
        """The packed weight as the forward reads it: W^T in column panels (float, or
        bfloat16 in the bf16 forward)."""
        if self.bf16:
            return self.buffer(names.panels_t_bf16(weight.name),
                               [weight.rows * weight.columns], "in", "uint16")
        return self.buffer(names.panels_t(weight.name), [weight.rows * weight.columns], "in")

    def product(self, node: Node, env: StepEnv) -> None:
        """One recurrent product for all rows: out (B, rows) = v (B, in) @ W^T, or its
        transpose in the backward pass, out (B, in) = g (B, rows) @ W. The runtime packs
        W^T (forward) and W (backward) into panels."""
        weight = self.mb.packed_weight(node.attr.segments)
        operand = env.places[node.inputs[0].id]
        if operand.stride == 0:  # a learned vector as operand: give every row a copy
            vector, n = operand.base, self.mb.size(node.inputs[0])
            operand = self.scratch(node.inputs[0], n)
            with self.leader_only(), for_range(self.b, self.B, "bcast") as row:
                self.copy(vector, element(self.b, self.ftype, operand.base,
                                          self.b.mul(row, i64(n))), i64(n))
            self.barrier()
        out = env.place(node)
        if node.op == Op.MATMUL:
            n_out, k = weight.rows, weight.columns
            packed = self.forward_weights(weight)
        else:
            n_out, k = weight.columns, weight.rows
            packed = self.buffer(f"panels:{weight.name}", [k * n_out], "in")
        self.gemm_share(self.B, n_out, k, operand.base, operand.stride, 1, packed, out.base,
                        out.stride)

    def route_to(self, node: Node, target: Place, env: StepEnv) -> None:
        """A value the step hands out: computed straight into `target` when nothing has
        given it a home yet, else copied there."""
        if node.op not in LEAVES and node.op not in PRODUCTS and node.id not in env.places:
            env.pin(node, target)
        else:
            env.role(node).stores.append((target, 0))

    def role_copies(self, node: Node, env: StepEnv,
                    units: tuple[ir.Value, ir.Value] | None = None) -> None:
        """Stores and accumulations of a value that no elementwise loop computes (a
        product's result, a leaf): a copy loop per row; with `units` (first, count),
        only those units of a value of U units."""
        roles = env.roles.get(node.id)
        if not roles:
            return
        b, src = self.b, env.places[node.id]
        first, n = units if units is not None else (i64(0), i64(self.mb.size(node)))
        with for_range(b, self.B, "rrow") as row:
            src_row = element(b, self.ftype, src.base,
                              b.add(b.mul(row, i64(src.stride)), first))
            for place, offset in roles.stores:
                dst = element(b, self.ftype, place.base, b.add(
                    b.add(b.mul(row, i64(place.stride)), i64(offset)), first))
                self.copy(src_row, dst, n)
            for place in roles.accumulate:
                place_row = element(b, self.ftype, place.base, first)
                with for_range(b, n, "acc") as j:
                    ptr = element(b, self.ftype, place_row, j)
                    value = b.load(element(b, self.ftype, src_row, j), typ=self.ftype)
                    b.store(b.fadd(b.load(ptr, typ=self.ftype), value), ptr)

    def leaf_copies(self, nodes: list[Node], env: StepEnv,
                    split: tuple[int, tuple[ir.Value, ir.Value]] | None = None) -> None:
        """The stores of leaves handed out as they are (saved, or a state's output):
        by thread 0; with `split` (U, this thread's units), a leaf of U units by every
        thread, its own units."""
        leaves = [n for n in nodes
                  if n.op in LEAVES and n.op != Op.CONST and env.roles.get(n.id)]
        shared = {n.id for n in leaves if split is not None and self.mb.size(n) == split[0]}
        for node in leaves:
            if node.id in shared:
                self.role_copies(node, env, split[1])
        with self.leader_only():
            for node in leaves:
                if node.id not in shared:
                    self.role_copies(node, env)

    def unit_share(self, units: int) -> tuple[ir.Value, ir.Value]:
        """(first unit, unit count) of this thread's share of `units` (whole GEMM
        panels, see units.py): the threads' shares are disjoint, and a thread's units
        are the columns gemm_share gives it of a product with `units` columns."""
        b, nr = self.b, self.mb.panel
        first, end = self.panel_share(units // nr)
        return b.mul(first, i64(nr)), b.mul(b.sub(end, first), i64(nr))


def derived_buffer(program: Program, name: str, train: bool) -> str:
    """The buffer of derived value `name`: scratch at inference; in training, saved for
    the backward's weight gradient, in the prologue's own saved buffer of the value when
    its backward keeps it anyway."""
    if not train:
        return names.derived(name)
    for level, prologue in enumerate(program.prologues, 1):
        node = prologue.graph.outputs.get(name)
        if node is not None and any(n is node for n in prologue.saved):
            return names.prologue_saved(level, node.id)
    return names.saved(name)


class SequenceEnv(StepEnv):
    """The env of a prologue: its scratch holds all T*B rows, in sequence buffers of the
    entry (the per-step arena holds B rows)."""

    def __init__(self, kernel: _Kernel, sizes: dict[str, int], level: int):
        super().__init__(kernel, sizes)
        self.level = level

    def place(self, node: Node) -> Place:
        if node.id not in self.places:
            n = self.size(node)
            base = self.kernel.buffer(names.prologue_work(self.level, node.id),
                                      ["T", "B", n], "work")
            self.places[node.id] = Place(base, n)
        return self.places[node.id]


class _ForwardKernel(_Kernel):
    def __init__(self, mb: ModuleBuilder, train: bool, threaded: bool = False,
                 bf16: bool = False):
        symbol = ("lstmc_forward_train" if train else "lstmc_forward") + (
            "_bf16" if bf16 else "")
        super().__init__(mb, symbol + ("_mt" if threaded else ""), threaded)
        self.train, self.bf16 = train, bf16

    def emit(self) -> None:
        mb, b, program = self.mb, self.b, self.mb.program
        info = program.info
        nodes = program.graph.live_nodes()
        plan = program.forward_plan
        # Every input, packed: input `name` is units offset..offset+width of each row.
        I, columns = info.packed_input_size(mb.sizes), info.input_columns(mb.sizes)
        x = self.buffer("x", ["T", "B", I], "in")
        state_sizes = {s: mb.size(n) for s, n in info.states.items()}
        y = self.buffer("y", ["T", "B", state_sizes[info.output]], "result")

        # Input projections: one GEMM over all T*B rows each, before the loop; level by
        # level, each level's operands made by its prologue (over all T*B rows too).
        hoisted: dict[int, tuple[ir.Value, int]] = {}
        derived: dict[str, tuple[ir.Value, int]] = {}
        for level in range(len(program.prologues) + 1):
            if level:
                self._prologue(level, x, I, columns, hoisted, derived)
            for h in program.hoisted_at(level):
                weight = mb.packed_weight(h.segments)
                if level:
                    operand, width = derived[h.operand]
                    stride = width
                else:
                    offset, width = columns[h.operand]
                    operand, stride = element(b, self.ftype, x, i64(offset)), I
                out = self.buffer(names.hoisted(h.index), ["T", "B", weight.rows], "work")
                panels = self.forward_weights(weight)
                self.gemm_share(b.mul(self.T, self.B), weight.rows, width, operand, stride, 1,
                                panels, out, weight.rows)
                hoisted[h.index] = (out, weight.rows)
            self.barrier()

        # Threaded inference of a cell whose step is unit by unit: each thread computes
        # its own units of everything, products included, and threads meet once a step.
        split = step_units(program, mb.sizes, state_sizes, mb.panel) if self.threaded else None
        if split is not None and self.train and not trains_by_units(program):
            split = None
        units = None if split is None else self.unit_share(split[0])
        current = {}
        for s, n in state_sizes.items():
            current[s] = self.alloca(f"cur_{s}", PTR)
            b.store(self.buffer(f"state_in:{s}", ["B", n], "in"), current[s])

        with for_range(b, self.T, "t") as t:
            env = StepEnv(self, mb.sizes)
            cur = {s: b.load(current[s], typ=PTR) for s in state_sizes}
            nxt = {s: self.ping_pong(s, n, t) for s, n in state_sizes.items()}
            for node in nodes:
                if node.op == Op.INPUT:
                    base = element(b, self.ftype, self.seq_row(x, t, I),
                                   i64(columns[node.attr][0]))
                    env.places[node.id] = Place(base, I)
                elif node.op == Op.STATE:
                    env.places[node.id] = Place(cur[node.attr], state_sizes[node.attr])
                elif node.op == Op.HOISTED:
                    base, rows = hoisted[node.attr]
                    env.places[node.id] = Place(self.seq_row(base, t, rows), rows)
                elif node.op == Op.PARAM:
                    shape = [mb.size(node)]
                    env.places[node.id] = Place(self.buffer(f"param:{node.attr}", shape, "in"), 0)
                elif node.op == Op.MASK:
                    env.places[node.id] = self.mask(node, t, draw=self.train)
            for route in plan.routes_of("saved") if self.train else ():
                node, n = route.node, mb.size(route.width)
                seq = self.buffer(f"saved:{node.id}", ["T", "B", n], "result")
                home = Place(self.seq_row(seq, t, n), n)
                if node.op in LEAVES:
                    env.role(node).stores.append((home, 0))
                else:
                    env.pin(node, home)
            for route in plan.routes_of("state"):  # the output is y[t] = h', below
                self.route_to(route.node, Place(nxt[route.key], state_sizes[route.key]), env)
            self.leaf_copies(nodes, env, None if split is None else (split[0], units))
            out_n, y_t = state_sizes[info.output], self.seq_row(y, t, state_sizes[info.output])
            if units is None:
                self.run_stages(program.forward, plan, env)
                first, count = i64(0), None  # every unit, by thread 0
            else:
                self._units_step(units, split[1], env)
                first, count = units

            def part(base, row, n):  # this thread's units of a row
                return self.units_of_row(base, row, n, first)

            def active(row):  # y[t] = h'; the row goes on
                self.copy(part(nxt[info.output], row, out_n), part(y_t, row, out_n),
                          count or i64(out_n))

            def finished(row):  # past its length: y[t] = 0, state kept
                self.fill(part(y_t, row, out_n), count or i64(out_n), 0.0)
                for s, n in state_sizes.items():
                    self.copy(part(cur[s], row, n), part(nxt[s], row, n), count or i64(n))

            with self.leader_only(alone=units is None):
                self.rows_by_length(t, active, finished)
            self.barrier()  # the new states are complete before the next step reads them
            for s in state_sizes:
                b.store(nxt[s], current[s])

        with self.leader_only():
            for s, n in state_sizes.items():
                out = self.buffer(f"state_out:{s}", ["B", n], "result")
                self.copy(b.load(current[s], typ=PTR), out, b.mul(self.B, i64(n)))
        self.finish()

    def _units_step(self, units, offsets: dict[int, list[int]], env: StepEnv) -> None:
        """One step on this thread's units: of each product, the columns its units'
        slices read (one GEMM share per slice offset in `offsets`), then the
        elementwise region."""
        first, count = units
        program, b = self.mb.program, self.b
        for node in program.forward[0].nodes:  # the product stage
            weight = self.mb.packed_weight(node.attr.segments)
            operand, out = env.places[node.inputs[0].id], env.place(node)
            packed = self.forward_weights(weight)
            for offset in offsets[node.id]:
                self.gemm_columns(self.B, weight.rows, weight.columns, operand.base,
                                  operand.stride, 1, packed, out.base, out.stride,
                                  b.add(i64(offset), first), count)
        self.mb.regions.emit(b, program.forward_plan.regions[1], env, self.B, self.alloca,
                             units=units)

    def _prologue(self, level: int, x, I: int, columns, hoisted, derived) -> None:
        """Prologue `level`: its derived values for all T*B rows, as one step over T*B
        rows (the training forward saves them, and what its backward reads)."""
        mb, b = self.mb, self.b
        prologue = mb.program.prologues[level - 1]
        env = SequenceEnv(self, mb.sizes, level)
        for node in prologue.graph.live_nodes():
            if node.op == Op.INPUT:
                env.places[node.id] = Place(element(b, self.ftype, x,
                                                    i64(columns[node.attr][0])), I)
            elif node.op == Op.HOISTED:
                base, rows = hoisted[node.attr]
                env.places[node.id] = Place(base, rows)
            elif node.op == Op.PARAM:
                shape = [mb.size(node)]
                env.places[node.id] = Place(self.buffer(f"param:{node.attr}", shape, "in"), 0)
        for route in prologue.forward_plan.routes_of("saved") if self.train else ():
            node, n = route.node, mb.size(route.width)
            home = Place(self.buffer(names.prologue_saved(level, node.id), ["T", "B", n],
                                     "result"), n)
            if node.op in LEAVES:
                env.role(node).stores.append((home, 0))
            else:
                env.pin(node, home)
        for route in prologue.forward_plan.routes_of("state"):
            n = mb.size(route.width)
            name = derived_buffer(mb.program, route.key, self.train)
            home = Place(self.buffer(name, ["T", "B", n], "result" if self.train else "work"), n)
            if name != names.prologue_saved(level, route.node.id):  # else: saved there
                self.route_to(route.node, home, env)
            derived[route.key] = (home.base, n)
        with self.leader_only(), self.rows(b.mul(self.T, self.B)):
            for node in prologue.graph.live_nodes():
                if node.op in LEAVES and node.op != Op.CONST and env.roles.get(node.id):
                    self.role_copies(node, env)
            self.run_stages(prologue.forward, prologue.forward_plan, env)
        self.barrier()


class _BackwardKernel(_Kernel):
    def __init__(self, mb: ModuleBuilder, threaded: bool = False):
        super().__init__(mb, "lstmc_backward" + ("_mt" if threaded else ""), threaded)

    def emit(self) -> None:
        mb, b, program = self.mb, self.b, self.mb.program
        info = program.info
        grads = program.gradients
        plan = program.backward_plan
        forward_ids = {n.id for n in program.graph.live_nodes()}
        nodes = [n for n in program.graph.live_nodes(grads.values()) if n.id not in forward_ids]
        reads = sorted({u.id: u for n in nodes for u in (n, *n.inputs)}.values(), key=lambda u: u.id)
        saved = program.saved
        I, columns = info.packed_input_size(mb.sizes), info.input_columns(mb.sizes)
        state_sizes = {s: mb.size(n) for s, n in info.states.items()}
        out_size = state_sizes[info.output]
        dy = self.buffer("dy", ["T", "B", out_size], "in")
        dx = self.buffer("dx", ["T", "B", I], "out")
        has_grad = {r.key for r in plan.routes_of("carry") if r.node is not None}

        carry = {}
        for s, n in state_sizes.items():
            carry[s] = self.alloca(f"carry_{s}", PTR)
            b.store(self.buffer(f"dstate_in:{s}", ["B", n], "in"), carry[s])
        # Gradients of every product's output, for the runtime's weight-gradient GEMMs.
        # Products whose output gradient is one and the same node (W@x + U@h summed before
        # the activation: the hoisted and the recurrent product share it) share one
        # buffer: it is stored once and the GEMMs after the loop all read it.
        shared: dict[tuple[int, int], ir.Value] = {}

        # A hoisted product's gradient that a prologue adds to is never shared.
        topped_up = {key for p in program.prologues for kind, key in p.gradients
                     if kind == "hoisted"}

        def d_buffer(kind: str, key: int, name: str, n: int) -> ir.Value:
            node = grads.get((kind, key))
            if node is None or mb.size(node) != n or (kind == "hoisted" and key in topped_up):
                return self.buffer(name, ["T", "B", n], "work")
            if (node.id, n) not in shared:
                shared[(node.id, n)] = self.buffer(name, ["T", "B", n], "work")
            return shared[(node.id, n)]

        d_products = {p.id: d_buffer("product", p.id, f"dproduct:{p.id}", mb.size(p))
                      for p in program.recurrent_products}
        d_hoisted = {h.index: d_buffer("hoisted", h.index, f"dhoisted:{h.index}",
                                       mb.size(h.rows)) for h in program.hoisted}
        with self.leader_only():
            for h in program.hoisted:  # read by a prologue only: its gradient starts at zero
                if ("hoisted", h.index) not in grads:
                    self.fill(d_hoisted[h.index],
                              b.mul(b.mul(self.T, self.B), i64(mb.size(h.rows))), 0.0)

        # Threaded, a step split by units (units.py): every thread makes its units of
        # the step's gradients; threads meet before each product stage only (when the
        # products' operands are per-step rows, which the next step never overwrites).
        split = (backward_units(program, mb.sizes, state_sizes, mb.panel)
                 if self.threaded else None)
        units = None if split is None else self.unit_share(split)
        meets_after_step = True
        with for_range(b, self.T, "i") as i:
            t = b.sub(b.sub(self.T, i64(1)), i)
            env = StepEnv(self, mb.sizes)
            cur = {s: b.load(carry[s], typ=PTR) for s in state_sizes}
            nxt = {s: self.ping_pong(s, n, i) for s, n in state_sizes.items()}
            for node in saved:
                n = mb.size(node)
                seq = self.buffer(f"saved:{node.id}", ["T", "B", n], "in")
                env.places[node.id] = Place(self.seq_row(seq, t, n), n)
            for node in reads:
                if node.op == Op.PARAM:
                    shape = [mb.size(node)]
                    env.places[node.id] = Place(self.buffer(f"param:{node.attr}", shape, "in"), 0)
                elif node.op == Op.ADJOINT:
                    with self.leader_only(alone=units is None):
                        self._adjoint(node, env, cur, dy, t, info.output, units)
                elif node.op == Op.MASK:  # drawn again, as the forward drew it
                    env.places[node.id] = self.mask(node, t, draw=True)
            stored: set[int] = set()  # shared gradients already given their store
            per_step: set[int] = set()  # nodes that live in this step's row of a sequence
            for route in plan.routes:
                node, key = route.node, route.key
                if node is None:  # a state nothing flows back into: zero-filled below
                    continue
                n = mb.size(node)
                if route.kind == "carry":
                    target = Place(nxt[key], n)
                elif route.kind in ("product", "hoisted"):
                    if (node.id, n) in shared:
                        if node.id in stored:  # its buffer is shared and already written
                            continue
                        stored.add(node.id)
                    seq = d_products[key] if route.kind == "product" else d_hoisted[key]
                    target = Place(self.seq_row(seq, t, n), n)
                    self.route_to(node, target, env)
                    if env.places.get(node.id) is target:
                        per_step.add(node.id)
                    continue
                elif route.kind == "input":
                    target = Place(element(b, self.ftype, self.seq_row(dx, t, I),
                                           i64(columns[key][0])), I)
                else:  # a learned vector: summed over rows and steps
                    if route.alias_of is not None:  # PyTorch's twin biases: summed once
                        self.mb.gradient_aliases[key] = route.alias_of
                        continue
                    acc = self.buffer(f"dparam:{key}", [n], "out")
                    env.role(node).accumulate.append(Place(acc, 0))
                    continue
                self.route_to(node, target, env)
            with self.leader_only():
                for node in reads:
                    if node.op in LEAVES and node.op != Op.CONST and env.roles.get(node.id):
                        self.role_copies(node, env)
                for node in saved:  # gradients that are saved forward values, as they are
                    if env.roles.get(node.id):
                        self.role_copies(node, env)
            if units is not None:
                self._units_step(units, plan, env)
                first, count = units
                meets_after_step = not all(
                    node.inputs[0].id in per_step
                    for stage in program.backward if stage.kind == "product"
                    for node in stage.nodes)
            else:
                if program.backward and program.backward[0].kind == "product":
                    self.barrier()  # the products read what thread 0 has just written
                self.run_stages(program.backward, plan, env)
                first, count = i64(0), None  # every unit, by thread 0

            def part(base, row, n):  # this thread's units of a row
                return self.units_of_row(base, row, n, first)

            def active(row):  # states nothing flows back into get a zero gradient
                for s, n in state_sizes.items():
                    if s not in has_grad:
                        self.fill(part(nxt[s], row, n), count or i64(n), 0.0)

            def finished(row):  # past its length: the gradient passes through
                for s, n in state_sizes.items():
                    self.copy(part(cur[s], row, n), part(nxt[s], row, n), count or i64(n))

            with self.leader_only(alone=units is None):
                self.rows_by_length(t, active, finished)
            if meets_after_step:
                self.barrier()  # the carried gradients are complete before the next step
            for s in state_sizes:
                b.store(nxt[s], carry[s])
        if not meets_after_step:
            self.barrier()  # every thread's last step is done (the copies and GEMMs below)

        with self.leader_only():
            for s, n in state_sizes.items():
                out = self.buffer(f"dstate_out:{s}", ["B", n], "result")
                self.copy(b.load(carry[s], typ=PTR), out, b.mul(self.B, i64(n)))
        self._weight_gradients(I, columns, dx, d_products, d_hoisted)
        self.finish()

    def _units_step(self, units, plan: StepPlan, env: StepEnv) -> None:
        """One backward step on this thread's units (backward_units): each region on
        them; each product stage after a meeting (it reads every unit of its operand),
        its products' columns of these units and their stores."""
        for index, stage in enumerate(self.mb.program.backward):
            if stage.kind == "product":
                self.barrier()
                for node in stage.nodes:
                    self.product(node, env)
                    self.role_copies(node, env, units)
            else:
                self.mb.regions.emit(self.b, plan.regions[index], env, self.B, self.alloca,
                                     units=units)

    def _prologue_backward(self, level: int, I: int, columns, dx, d_hoisted) -> None:
        """Prologue `level` backward over all T*B rows: its derived values' gradients in;
        out, gradients added to dx, to the hoisted products it read and to the learned
        vectors it read."""
        mb, b = self.mb, self.b
        prologue = mb.program.prologues[level - 1]
        rows = b.mul(self.T, self.B)
        env = SequenceEnv(self, mb.sizes, level)
        nodes = prologue.graph.live_nodes(prologue.gradients.values())
        for node in prologue.saved:
            n = mb.size(node)
            seq = self.buffer(names.prologue_saved(level, node.id), ["T", "B", n], "in")
            env.places[node.id] = Place(seq, n)
        for node in nodes:
            if node.op == Op.PARAM and node.id not in env.places:
                shape = [mb.size(node)]
                env.places[node.id] = Place(self.buffer(f"param:{node.attr}", shape, "in"), 0)
            elif node.op == Op.ADJOINT:
                n = mb.size(node)
                env.places[node.id] = Place(
                    self.buffer(names.dderived(node.attr), ["T", "B", n], "work"), n)
        additions = []  # (gradient, its width, where it is added, that place's row stride)
        for route in prologue.backward_plan.routes:
            node, kind, key = route.node, route.kind, route.key
            if node is None:
                continue
            n = mb.size(route.width)
            if kind == "param":  # summed over all rows (twin biases each get theirs)
                acc = self.buffer(f"dparam:{key}", [n], "out")
                env.role(node).accumulate.append(Place(acc, 0))
                continue
            if kind == "input":
                target, stride = element(b, self.ftype, dx, i64(columns[key][0])), I
            elif kind == "hoisted":
                target, stride = d_hoisted[int(key)], n
            else:
                raise AssertionError(f"a prologue has no {kind} gradient")
            grad = self.buffer(names.prologue_grad(level, kind, key), ["T", "B", n], "work")
            self.route_to(node, Place(grad, n), env)
            additions.append((grad, n, target, stride))
        with self.rows(rows):
            for node in nodes:
                if node.op in LEAVES and node.op != Op.CONST and env.roles.get(node.id):
                    self.role_copies(node, env)
            for node in prologue.saved:
                if env.roles.get(node.id):
                    self.role_copies(node, env)
            self.run_stages(prologue.backward, prologue.backward_plan, env)
        for grad, n, target, stride in additions:
            with for_range(b, rows, "prow") as row:
                src, dst = self.row(grad, row, n), self.row(target, row, stride)
                with for_range(b, i64(n), "padd") as j:
                    ptr = element(b, self.ftype, dst, j)
                    value = b.load(element(b, self.ftype, src, j), typ=self.ftype)
                    b.store(b.fadd(b.load(ptr, typ=self.ftype), value), ptr)

    def _adjoint(self, node: Node, env: StepEnv, cur, dy, t, output: str,
                 units: tuple[ir.Value, ir.Value] | None = None) -> None:
        """The incoming gradient of a new state: the carried one, plus dy for the output;
        zero for rows past their length (the backward step is linear in it, so all they
        would contribute is zero). With `units` (first, count): only those units."""
        b, n, s = self.b, self.mb.size(node), node.attr
        place = env.place(node)
        dy_t = self.seq_row(dy, t, n)
        first, count = units if units is not None else (i64(0), i64(n))

        def active(row):
            with for_range(b, count, "adj") as j:
                k = b.add(b.add(b.mul(row, i64(n)), first), j)
                value = b.load(element(b, self.ftype, cur[s], k), typ=self.ftype)
                if s == output:
                    value = b.fadd(value, b.load(element(b, self.ftype, dy_t, k), typ=self.ftype))
                b.store(value, element(b, self.ftype, place.base, k))

        self.rows_by_length(t, active, lambda row: self.fill(
            self.units_of_row(place.base, row, n, first), count, 0.0))

    def _weight_gradients(self, I, columns, dx, d_products, d_hoisted) -> None:
        """Deferred to after the loop: one GEMM over all T*B rows per product; the
        hoisted products level by level from the last, each level's prologue backward
        after its products' GEMMs (it needs their operands' gradients and adds to the
        gradients of the levels below)."""
        mb, b, program = self.mb, self.b, self.mb.program
        rows_total = b.mul(self.T, self.B)
        x = self.buffer("x", ["T", "B", I], "in")
        for level in reversed(range(len(program.prologues) + 1)):
            for h in program.hoisted_at(level):
                w = mb.packed_weight(h.segments)
                dpacked = self.buffer(f"dpacked:{w.name}", [w.rows, w.columns], "out")
                panels = self.buffer(f"panels:{w.name}", [w.rows * w.columns], "in")
                dh = d_hoisted[h.index]
                if level:  # dW += dG^T v ; dv = dG W
                    width = w.columns
                    v = self.buffer(derived_buffer(program, h.operand, True), ["T", "B", width],
                                    "in")
                    dv = self.buffer(names.dderived(h.operand), ["T", "B", width], "work")
                    self.gemm_share(w.rows, width, rows_total, dh, 1, w.rows, v, dpacked,
                                    width, "rows", True)
                    self.gemm_share(rows_total, width, w.rows, dh, w.rows, 1, panels, dv,
                                    width)
                    continue
                offset, width = columns[h.operand]  # this input's units of the packed rows
                x_h, dx_h = (element(b, self.ftype, v, i64(offset)) for v in (x, dx))
                # dW += dG^T x ; dx += dG W
                self.gemm_share(w.rows, width, rows_total, dh, 1, w.rows, x_h, dpacked, width,
                                "rows", True, ldb=I)
                self.gemm_share(rows_total, width, w.rows, dh, w.rows, 1, panels, dx_h, I,
                                "panels", True)
            if level:  # threaded: after every share of dv, before the next level's GEMMs
                self.barrier()
                with self.leader_only():
                    self._prologue_backward(level, I, columns, dx, d_hoisted)
                self.barrier()
        for p in program.recurrent_products:
            w = mb.packed_weight(p.segments)
            dpacked = self.buffer(f"dpacked:{w.name}", [w.rows, w.columns], "out")
            operand = self.buffer(f"saved:{p.inputs[0].id}", ["T", "B", w.columns], "in")
            # dU += dP^T v
            self.gemm_share(w.rows, w.columns, rows_total, d_products[p.id], 1, w.rows,
                            operand, dpacked, w.columns, "rows", True)
