"""Fused elementwise regions, rendered from the step plan (ir.step_plan).

A region runs once per batch row; the plan splits its work into loops over units. Each
loop is emitted as a small function whose pointer arguments are `noalias`, so LLVM's loop
vectorizer vectorizes it without runtime alias checks; values stay in registers inside a
loop and are written to memory only when something outside the loop reads them. Row-level
loops (scalars) are straight-line code in the row loop, their values passed to the loop
functions as arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llvmlite import ir

from ...ir.graph import REDUCTIONS, IRError, Node, Op, is_elementwise
from ...ir.size import SCALAR, Size
from ...ir.step_plan import Assemble, Compute, Finish, Reduce, Region
from .irutil import I64, PTR, element, for_range, i64
from .mathlib import MathLib


@dataclass(frozen=True)
class Place:
    """Where a value lives during one step: row b starts at base + b * stride elements
    (stride 0: one vector shared by every row, such as a learned bias)."""

    base: ir.Value
    stride: int


@dataclass
class Roles:
    """What must happen to a node's value besides feeding its consumers."""

    stores: list[tuple[Place, int]] = field(default_factory=list)  # (place, element offset)
    accumulate: list[Place] = field(default_factory=list)  # vec[j] += value (sum over rows)

    def __bool__(self) -> bool:
        return bool(self.stores or self.accumulate)


class StepEnv:
    """The kernel-level facts a region needs: where leaves and earlier values live,
    what each node must be stored to, and scratch space for values read across loops."""

    def __init__(self, kernel, sizes: dict[str, int]):
        self.kernel = kernel
        self.sizes = sizes
        self.places: dict[int, Place] = {}  # node id -> where its value is (or goes)
        self.roles: dict[int, Roles] = {}
        self.pinned: set[int] = set()  # nodes whose home the kernel chose: always stored

    def size(self, node: Node) -> int:
        return node.size.bind(self.sizes)

    def size_of(self, size: Size) -> int:
        return size.bind(self.sizes)

    def role(self, node: Node) -> Roles:
        return self.roles.setdefault(node.id, Roles())

    def pin(self, node: Node, place: Place) -> None:
        self.places[node.id] = place
        self.pinned.add(node.id)

    def place(self, node: Node) -> Place:
        """The node's home, allocating a per-step scratch buffer the first time."""
        if node.id not in self.places:
            self.places[node.id] = self.kernel.scratch(node, self.size(node))
        return self.places[node.id]


@dataclass
class _Group:
    phase: int
    size: int
    tasks: list = field(default_factory=list)  # ("compute", n) ("store", n, place, offset)
    computed: set = field(default_factory=set)  # ("accum", n, place, offset) ("reduce", r, n)


class RegionEmitter:
    def __init__(self, module: ir.Module, math: MathLib, name_prefix: str):
        self.module, self.math, self.ftype = module, math, math.ftype
        self.prefix = name_prefix
        self.count = 0
        self.units: tuple[ir.Value, ir.Value] | None = None  # of the region being emitted

    # -- the plan's loops as tasks --------------------------------------------------------

    def _groups(self, region: Region, env: StepEnv) -> dict[int, _Group]:
        """The loops over units of the region (by index in region.loops) as lists of
        tasks: the plan's work, then the stores of values read outside their loop and of
        the values the step hands out (env.roles)."""
        for n in region.nodes:  # concats live in memory: their parts' loops write them
            if n.op == Op.CONCAT:
                env.place(n)
        groups: dict[int, _Group] = {}
        for index, loop in enumerate(region.loops):
            if loop.row_level:
                continue
            g = groups[index] = _Group(loop.phase, env.size_of(loop.size))
            for w in loop.work:
                if isinstance(w, Compute):
                    g.tasks.append(("compute", w.node))
                    g.computed.add(w.node.id)
                elif isinstance(w, Reduce):
                    g.tasks.append(("reduce", w.node, w.node.inputs[0]))
                elif isinstance(w, Assemble):
                    roles = env.roles.get(w.concat.id) or Roles()
                    offset = env.size_of(w.offset)
                    for place, start in [(env.place(w.concat), 0)] + roles.stores:
                        g.tasks.append(("store", w.part, place, start + offset))
                    for place in roles.accumulate:
                        g.tasks.append(("accum", w.part, place, offset))
        # Values read outside their own loop go to memory; so do values with roles.
        for n in region.nodes:
            where = region.loop_of.get(n.id)
            if where is None or where not in groups or n.op in REDUCTIONS:
                continue
            g = groups[where]
            if region.read_outside_loop(n) or n.id in env.pinned:
                g.tasks.append(("store", n, env.place(n), 0))
            n_roles = env.roles.get(n.id)
            if n_roles:
                for place, offset in n_roles.stores:
                    g.tasks.append(("store", n, place, offset))
                for place in n_roles.accumulate:
                    g.tasks.append(("accum", n, place, 0))
        return groups

    # -- emission -----------------------------------------------------------------------

    def emit(self, b: ir.IRBuilder, region: Region, env: StepEnv, batch: ir.Value,
             entry_alloca, units: tuple[ir.Value, ir.Value] | None = None) -> None:
        """The region for every batch row; `units` (first, count): only those units of
        each loop (a region of unit loops split among threads, see units.py)."""
        groups = self._groups(region, env)
        self.units = units
        accumulators = {w.node.id: entry_alloca(f"acc{w.node.id}") for loop in region.loops
                        if loop.row_level for w in loop.work if isinstance(w, Finish)}
        with for_range(b, batch, "row") as row:
            values: dict[int, ir.Value] = {}  # row-level scalars
            for index, loop in enumerate(region.loops):
                if loop.row_level:
                    for w in loop.work:
                        # plan_step assembles concats in loops over units only
                        assert not isinstance(w, Assemble)
                        values[w.node.id] = self._scalar(b, w.node, env, row, values,
                                                         accumulators, region)
                else:
                    self._call_group(b, groups[index], env, row, values, accumulators)

    def _row_ptr(self, b, place: Place, row, offset: int = 0) -> ir.Value:
        index = b.add(b.mul(row, i64(place.stride)), i64(offset)) if place.stride else i64(offset)
        return element(b, self.ftype, place.base, index)

    def _load_scalar(self, b, u: Node, env: StepEnv, row, values) -> ir.Value:
        if u.id in values:
            return values[u.id]
        if u.op == Op.CONST:
            return self.math.const(u.attr)
        value = b.load(self._row_ptr(b, env.places[u.id], row), typ=self.ftype)
        values[u.id] = value
        return value

    def _scalar(self, b, n: Node, env, row, values, accumulators, region: Region) -> ir.Value:
        if n.op in REDUCTIONS:
            value = b.load(accumulators[n.id], typ=self.ftype)
            if n.op == Op.MEAN:
                value = b.fdiv(value, self.math.const(float(env.size(n.inputs[0]))))
        elif n.op == Op.SLICE:  # one unit of a vector in memory (`p[0:1]`)
            offset = n.attr.offset.bind(env.sizes)
            value = b.load(self._row_ptr(b, env.places[n.inputs[0].id], row, offset),
                           typ=self.ftype)
        else:
            args = [self._load_scalar(b, u, env, row, values) for u in n.inputs]
            value = self._apply(b, n, args)
        roles = env.roles.get(n.id)
        if n.id in env.pinned or region.read_outside_region(n):
            b.store(value, self._row_ptr(b, env.place(n), row))
        if roles:
            for place, offset in roles.stores:
                b.store(value, self._row_ptr(b, place, row, offset))
            for place in roles.accumulate:
                ptr = self._row_ptr(b, place, row)
                b.store(b.fadd(b.load(ptr, typ=self.ftype), value), ptr)
        return value

    def _call_group(self, b, g: _Group, env: StepEnv, row, values, accumulators) -> None:
        # Arguments: distinct memory streams (pointers) and row-level scalars.
        pointers: dict[tuple, tuple[int, Place, int]] = {}
        floats: dict[int, int] = {}  # node id -> argument index
        scalar_nodes: list[Node] = []  # in argument order
        reduce_out: dict[int, int] = {}

        def stream(place: Place, offset: int) -> int:
            key = (id(place.base), place.stride, offset)
            if key not in pointers:
                pointers[key] = (len(pointers), place, offset)
            return pointers[key][0]

        def need(u: Node) -> None:
            if u.id in g.computed or u.op == Op.CONST:
                return
            if u.size == SCALAR:
                if u.id not in floats:
                    floats[u.id] = len(floats)
                    scalar_nodes.append(u)
                return
            stream(env.places[u.id], 0)

        for task in g.tasks:
            kind, n = task[0], task[1]
            if kind == "compute":
                if n.op == Op.SLICE:
                    offset = n.attr.offset.bind(env.sizes)
                    stream(env.places[n.inputs[0].id], offset)
                else:
                    for u in n.inputs:
                        need(u)
            elif kind == "store" or kind == "accum":
                need(n)
                stream(task[2], task[3])
            elif kind == "reduce":
                need(task[2])
                reduce_out[n.id] = len(reduce_out)

        n_ptr = len(pointers) + len(reduce_out)
        fn_type = ir.FunctionType(ir.VoidType(), [PTR] * n_ptr + [self.ftype] * len(floats) + [I64])
        self.count += 1
        fn = ir.Function(self.module, fn_type, f"{self.prefix}_loop{self.count}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg in fn.args[:n_ptr]:
            arg.add_attribute("noalias")
        self._emit_group_body(fn, g, env, pointers, floats, reduce_out)

        # The call, with row pointers computed in the caller.
        args = [None] * len(pointers)
        for index, place, offset in pointers.values():
            args[index] = self._row_ptr(b, place, row, offset)
            if self.units is not None:
                args[index] = element(b, self.ftype, args[index], self.units[0])
        for node_id in sorted(reduce_out, key=reduce_out.__getitem__):
            args.append(accumulators[node_id])
        scalar_args = [self._load_scalar(b, u, env, row, values) for u in scalar_nodes]
        count = i64(g.size) if self.units is None else self.units[1]
        b.call(fn, args + scalar_args + [count])

    def _emit_group_body(self, fn, g, env, pointers, floats, reduce_out) -> None:
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        n_ptr = len(pointers)
        ptr_arg = {key: fn.args[index] for key, (index, _, _) in pointers.items()}
        float_arg = {node_id: fn.args[n_ptr + len(reduce_out) + i] for node_id, i in floats.items()}
        sums = {}
        for node_id in reduce_out:
            sums[node_id] = b.alloca(self.ftype, name=f"sum{node_id}")
            b.store(self.math.const(0.0), sums[node_id])
        count = fn.args[-1]

        def pointer(place: Place, offset: int, j) -> ir.Value:
            return element(b, self.ftype, ptr_arg[(id(place.base), place.stride, offset)], j)

        with for_range(b, count, "j") as j:
            regs: dict[int, ir.Value] = {}

            def value(u: Node) -> ir.Value:
                if u.id in regs:
                    return regs[u.id]
                if u.op == Op.CONST:
                    return self.math.const(u.attr)
                if u.size == SCALAR:
                    return float_arg[u.id]
                regs[u.id] = b.load(pointer(env.places[u.id], 0, j), typ=self.ftype)
                return regs[u.id]

            for task in g.tasks:
                kind, n = task[0], task[1]
                if kind == "compute":
                    if n.op == Op.SLICE:
                        src = env.places[n.inputs[0].id]
                        regs[n.id] = b.load(pointer(src, n.attr.offset.bind(env.sizes), j),
                                            typ=self.ftype)
                    else:
                        regs[n.id] = self._apply(b, n, [value(u) for u in n.inputs])
                elif kind == "store":
                    b.store(value(n), pointer(task[2], task[3], j))
                elif kind == "accum":
                    ptr = pointer(task[2], task[3], j)
                    b.store(b.fadd(b.load(ptr, typ=self.ftype), value(n)), ptr)
                elif kind == "reduce":
                    acc = sums[n.id]
                    b.store(b.fadd(b.load(acc, typ=self.ftype), value(task[2]),
                                   flags=("reassoc", "contract")), acc)
        for node_id, index in reduce_out.items():
            b.store(b.load(sums[node_id], typ=self.ftype), fn.args[len(pointers) + index])
        b.ret_void()

    # -- one op -------------------------------------------------------------------------

    def _apply(self, b: ir.IRBuilder, n: Node, args: list[ir.Value]) -> ir.Value:
        if n.op == Op.BROADCAST:
            return args[0]
        if is_elementwise(n.op):  # the registry entry's LLVM emission
            return n.op.llvm(self.math, b, *args)
        raise IRError(f"the LLVM backend has no rendering for op '{n.op.value}'")
