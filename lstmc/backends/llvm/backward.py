"""The backward entry point (`lstmc_backward` and its threaded twin): the steps' adjoints
from the last step to the first, then the weight gradients as one GEMM over all T*B rows
after the loop."""
from __future__ import annotations

from typing import TYPE_CHECKING

from llvmlite import ir
from lstmc_runtime import buffers as names

from ...ir.graph import LEAVES, Node, Op
from ...ir.step_plan import StepPlan
from .irutil import PTR, element, for_range, i64
from .kernel import Kernel, SequenceEnv, derived_buffer
from .regions import Place, StepEnv
from .units import backward_units

if TYPE_CHECKING:
    from .codegen import ModuleBuilder


class BackwardKernel(Kernel):
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
                if route.node is None:  # a state nothing flows back into: zero-filled below
                    continue
                node = route.node
                n = mb.size(node)
                if route.kind == "carry":
                    target = Place(nxt[route.name], n)
                elif route.kind in ("product", "hoisted"):
                    if (node.id, n) in shared:
                        if node.id in stored:  # its buffer is shared and already written
                            continue
                        stored.add(node.id)
                    seq = (d_products[route.index] if route.kind == "product"
                           else d_hoisted[route.index])
                    target = Place(self.seq_row(seq, t, n), n)
                    self.route_to(node, target, env)
                    if env.places.get(node.id) is target:
                        per_step.add(node.id)
                    continue
                elif route.kind == "input":
                    target = Place(element(b, self.ftype, self.seq_row(dx, t, I),
                                           i64(columns[route.name][0])), I)
                else:  # a learned vector: summed over rows and steps
                    if route.alias_of is not None:  # PyTorch's twin biases: summed once
                        self.mb.gradient_aliases[route.name] = route.alias_of
                        continue
                    acc = self.buffer(f"dparam:{route.name}", [n], "out")
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
            kind, key = route.kind, route.key
            if route.node is None:
                continue
            node = route.node
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
