"""The forward entry points (`lstmc_forward`, `lstmc_forward_train`, their threaded and
bfloat16 twins): the input projections as one GEMM before the loop, then each step's
products, gate math and state updates, rows past their length kept."""
from __future__ import annotations

from typing import TYPE_CHECKING

from llvmlite import ir
from lstmc_runtime import buffers as names

from ...ir.graph import LEAVES, Op
from .irutil import PTR, element, for_range, i64
from .kernel import Kernel, SequenceEnv, derived_buffer
from .regions import Place, StepEnv
from .units import step_units, trains_by_units

if TYPE_CHECKING:
    from .codegen import ModuleBuilder


class ForwardKernel(Kernel):
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
        units: tuple[ir.Value, ir.Value] | None = None
        leaf_split: tuple[int, tuple[ir.Value, ir.Value]] | None = None  # for leaf_copies
        if split is not None:
            units = self.unit_share(split[0])
            leaf_split = (split[0], units)
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
                node, n = route.source, mb.size(route.width)
                seq = self.buffer(f"saved:{node.id}", ["T", "B", n], "result")
                home = Place(self.seq_row(seq, t, n), n)
                if node.op in LEAVES:
                    env.role(node).stores.append((home, 0))
                else:
                    env.pin(node, home)
            for route in plan.routes_of("state"):  # the output is y[t] = h', below
                self.route_to(route.source, Place(nxt[route.name], state_sizes[route.name]),
                              env)
            self.leaf_copies(nodes, env, leaf_split)
            out_n, y_t = state_sizes[info.output], self.seq_row(y, t, state_sizes[info.output])
            if units is None:
                self.run_stages(program.forward, plan, env)
                first, count = i64(0), None  # every unit, by thread 0
            else:
                assert split is not None  # units are this thread's share of split's
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
            node, n = route.source, mb.size(route.width)
            home = Place(self.buffer(names.prologue_saved(level, node.id), ["T", "B", n],
                                     "result"), n)
            if node.op in LEAVES:
                env.role(node).stores.append((home, 0))
            else:
                env.pin(node, home)
        for route in prologue.forward_plan.routes_of("state"):
            n = mb.size(route.width)
            name = derived_buffer(mb.program, route.name, self.train)
            home = Place(self.buffer(name, ["T", "B", n], "result" if self.train else "work"), n)
            if name != names.prologue_saved(level, route.source.id):  # else: saved there
                self.route_to(route.source, home, env)
            derived[route.name] = (home.base, n)
        with self.leader_only(), self.rows(b.mul(self.T, self.B)):
            for node in prologue.graph.live_nodes():
                if node.op in LEAVES and node.op != Op.CONST and env.roles.get(node.id):
                    self.role_copies(node, env)
            self.run_stages(prologue.forward, prologue.forward_plan, env)
        self.barrier()
