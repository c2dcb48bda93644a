"""What every kernel of a cell shares: the entry point's ABI (its buffers, in order), and
`Kernel`, the machinery of one entry point: buffers and scratch, GEMM calls and this
thread's share of them, copies, barriers and the split of a step's units among threads.
`forward.py` and `backward.py` build the entry points on it."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llvmlite import ir
from lstmc_runtime import buffers as names
from lstmc_runtime.manifest import PackedSpec

from ...ir import masks
from ...ir.graph import LEAVES, PRODUCTS, Node, Op
from ...ir.program import Program
from ...ir.step_plan import StepPlan
from .irutil import I32, I64, PTR, element, for_range, i64, spin_until
from .regions import Place, StepEnv
from .smallgemm import I16

if TYPE_CHECKING:
    from .codegen import ModuleBuilder


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


class Kernel:
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
        # panels: each panel is k x nr contiguous, so panel p starts at p*nr*k elements
        # (column*k); rows (a row-major matrix): its first column starts at `column`
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
        shared: set[int] = set()
        if split is not None:
            units, share = split
            shared = {n.id for n in leaves if self.mb.size(n) == units}
            for node in leaves:
                if node.id in shared:
                    self.role_copies(node, env, share)
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

    def __init__(self, kernel: Kernel, sizes: dict[str, int], level: int):
        super().__init__(kernel, sizes)
        self.level = level

    def place(self, node: Node) -> Place:
        if node.id not in self.places:
            n = self.size(node)
            base = self.kernel.buffer(names.prologue_work(self.level, node.id),
                                      ["T", "B", n], "work")
            self.places[node.id] = Place(base, n)
        return self.places[node.id]
