"""One step of a Program as kernel code: where every value lives, and each elementwise
region as per-row C code, rendered from the step plan (ir.step_plan).

A region runs one batch row per work-group. Each of the plan's loops over units becomes
`for (j = LID; j < size; j += LSZ)` (row-level loops: size 1); a value read only inside
its own loop stays in a register, anything read elsewhere is stored to a global buffer
and read back after a barrier. Reductions are tree reductions in local memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lstmc_runtime.gpu import buffers as names
from lstmc_runtime.gpu.plan import DeviceBuffer

from ...ir import masks
from ...ir.graph import (
    LEAVES,
    PRODUCTS,
    REDUCTIONS,
    IRError,
    Node,
    Op,
    is_elementwise,
)
from ...ir.program import Program, Stage
from ...ir.step_plan import Assemble, Region

MODES = ("infer", "train", "backward")


def literal(value: float) -> str:
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        raise IRError(f"constant {text} cannot be written as a kernel literal")
    return text + "f"


@dataclass
class Store:
    """A value one step hands out: a new state, an output row, a gradient."""

    kind: str  # state | output | carry | input | hoisted | product | param
    name: str  # state / parameter name, or buffer name
    width: int
    node: Node | None  # None: zero


@dataclass
class Loop:
    """One of the plan's loops, with its size bound and the stores placed in it."""

    size: int
    nodes: list[Node] = field(default_factory=list)
    reductions: list[Node] = field(default_factory=list)
    assembled: list[Assemble] = field(default_factory=list)
    stores: list[tuple[Store, Node | None]] = field(default_factory=list)  # None: zero


class StepLayout:
    """Where each value of one step (forward for inference or training, or backward)
    lives, and the code that reads and writes it. `t`, `B`, `row` and `active` are C
    variables of the kernels that include this code."""

    def __init__(self, program: Program, sizes: dict[str, int], mode: str):
        if mode not in MODES:
            raise IRError(f"unknown step mode {mode!r}")
        self.program, self.sizes, self.mode = program, sizes, mode
        info = program.info
        # Every input packed in one sequence buffer `x` (its gradient `dx`) of this many
        # units per row; input `name` is units offset..offset+width (input_columns).
        self.input_size = info.packed_input_size(sizes)
        self.input_columns = info.input_columns(sizes)
        self.state_sizes = {n: s.bind(sizes) for n, s in info.states.items()}
        self.output = info.output
        self.saved_ids = {n.id for n in program.saved}
        self.plan = program.backward_plan if mode == "backward" else program.forward_plan
        self.stages = self._stages()
        self.step_nodes = [n for s in self.stages for n in s.nodes]
        self.in_step = {n.id for n in self.step_nodes}
        self.stores = self._stores()
        # Region structure: the plan's loops per elementwise stage, and which values
        # need memory.
        self.loop_of: dict[int, tuple[int, int]] = {}  # node id -> (stage index, loop index)
        self.reduction_slot: dict[int, tuple[int, int]] = {}  # reduction id -> (stage, k)
        self.regions: dict[int, list[Loop]] = {
            index: [] for index, stage in enumerate(self.stages) if stage.kind == "elementwise"}
        for index, region in self.plan.regions.items():
            self._loops(index + self.stage_offset, region)
        self._place_stores()
        self.materialized = self._materialized()
        self.buffers = self._buffers()

    # -- the step's stages and what it hands out ------------------------------------------

    def _stages(self) -> list[Stage]:
        program = self.program
        stages = list(program.backward if self.mode == "backward" else program.forward)
        if not stages or stages[-1].kind != "elementwise":
            stages.append(Stage("elementwise", []))  # stores of values no region computes
        # Products read operands from memory: leaves that are expressions (adjoints,
        # constants) are written out by a region of their own at the start of the step.
        self.leaf_copies = list({n.id: n for s in stages if s.kind == "product"
                                 for p in s.nodes for n in p.inputs[:1]
                                 if n.op in (Op.ADJOINT, Op.CONST)}.values())
        self.stage_offset = 0  # stage k of the program is stage k + offset here
        if self.leaf_copies:
            stages.insert(0, Stage("elementwise", []))
            self.stage_offset = 1
        return stages

    def _stores(self) -> list[Store]:
        """The plan's routes as stores (saved values are materialized, not stored)."""
        stores = []
        for route in self.plan.routes:
            width, node = route.width.bind(self.sizes), route.node
            if route.kind in ("state", "output", "carry", "input", "param"):
                stores.append(Store(route.kind, str(route.key), width, node))
            elif route.kind == "hoisted":
                stores.append(Store("hoisted", names.dhoisted(int(route.key)), width, node))
            elif route.kind == "product":
                stores.append(Store("product", names.dproduct(int(route.key)), width, node))
        return stores

    # -- loops ----------------------------------------------------------------------------

    def size(self, node: Node) -> int:
        return node.size.bind(self.sizes)

    def _loops(self, stage_index: int, region: Region) -> None:
        loops = self.regions[stage_index]
        for planned in region.loops:
            loop = Loop(planned.size.bind(self.sizes), planned.computed, planned.reductions,
                        planned.assembled)
            if not (loop.nodes or loop.reductions or loop.assembled):
                continue  # a row-level loop that only finishes reductions: _reduce does
            for node in loop.nodes + loop.reductions:
                self.loop_of[node.id] = (stage_index, len(loops))
            first = sum(len(l.reductions) for l in loops)  # red_out slots, in loop order
            for k, node in enumerate(loop.reductions):
                self.reduction_slot[node.id] = (stage_index, first + k)
            loops.append(loop)

    def _place_stores(self) -> None:
        """Each store goes in the loop that computes its value, when the sizes agree;
        the rest in loops of their own at the end of the last region."""
        last = max(self.regions)
        self.epilogue: list[Store] = []
        for store in self.stores:
            node = store.node
            where = self.loop_of.get(node.id) if node is not None else None
            if (node is not None and where is not None and node.op not in REDUCTIONS
                    and self.size(node) == store.width):
                self.regions[where[0]][where[1]].stores.append((store, node))
            else:
                self.epilogue.append(store)
        for store in self.epilogue:
            loop = Loop(store.width)
            loop.stores.append((store, store.node))
            self.regions[last].append(loop)
        for leaf in self.leaf_copies:
            loop = Loop(self.size(leaf))
            loop.stores.append((Store("node", self.node_name(leaf.id), self.size(leaf), leaf), leaf))
            self.regions[0].append(loop)

    def _materialized(self) -> set[int]:
        """Values that must be in memory: product results, concats, values read outside
        their own loop (reductions: outside their own region), the epilogue's values,
        and in training the values the backward pass reads."""
        keep: set[int] = set()
        for region in self.plan.regions.values():
            for node in region.nodes:
                if node.op == Op.CONCAT:
                    keep.add(node.id)
                elif node.op in REDUCTIONS:
                    if region.read_outside_region(node):
                        keep.add(node.id)
                elif region.read_outside_loop(node):
                    keep.add(node.id)
        keep |= {n.id for n in self.step_nodes if n.op in PRODUCTS}
        for store in self.epilogue:
            if store.node is not None and store.node.id in self.in_step:
                keep.add(store.node.id)
        if self.mode == "train":
            keep |= {i for i in self.saved_ids if i in self.in_step}
        return keep

    # -- buffers --------------------------------------------------------------------------

    def _buffers(self) -> list[DeviceBuffer]:
        program, sizes, mode = self.program, self.sizes, self.mode
        buffers = [DeviceBuffer(names.X, self.input_size, "seq")]
        for h in program.hoisted:
            buffers.append(DeviceBuffer(names.hoisted(h.index), h.rows.bind(sizes), "seq"))
        history = mode in ("train", "backward")
        for name, size in self.state_sizes.items():
            buffers.append(DeviceBuffer(names.state(name), size, "history" if history else "ring"))
        for name in program.info.params:
            shape = program.info.param_shape(name)
            if len(shape) == 1:
                buffers.append(DeviceBuffer(names.param(name), shape[0].bind(sizes), "param", const=True))
        if mode == "backward":
            for node in program.saved:
                if node.op not in LEAVES:
                    buffers.append(DeviceBuffer(self.node_name(node.id), self.size(node), "seq"))
        for leaf in self.leaf_copies:
            buffers.append(DeviceBuffer(self.node_name(leaf.id), self.size(leaf), "step"))
        for node in self.step_nodes:
            if node.id in self.materialized:
                seq = mode == "train" and node.id in self.saved_ids
                buffers.append(DeviceBuffer(self.node_name(node.id), self.size(node), "seq" if seq else "step"))
        if mode == "backward":
            buffers.append(DeviceBuffer(names.DY, self.state_sizes[self.output], "seq"))
            for name, size in self.state_sizes.items():
                buffers.append(DeviceBuffer(names.carry(name), size, "ring"))
            for store in self.stores:
                if store.kind == "input":  # every input's gradient goes to the one dx
                    if not any(b.name == names.DX for b in buffers):
                        buffers.append(DeviceBuffer(names.DX, self.input_size, "seq", zero=True))
                elif store.kind in ("hoisted", "product"):
                    buffers.append(DeviceBuffer(store.name, store.width, "seq", zero=True))
                elif store.kind == "param":
                    buffers.append(DeviceBuffer(names.param_acc(store.name), store.width, "step", zero=True))
            if not any(b.name == names.DX for b in buffers):
                buffers.append(DeviceBuffer(names.DX, self.input_size, "seq", zero=True))
        else:
            buffers.append(DeviceBuffer(names.Y, self.state_sizes[self.output], "seq"))
        return buffers

    def slot(self, node: Node) -> str:
        """The C expression of the slot of a materialized node's buffer at step t."""
        if node.id in self.saved_ids and (self.mode == "train" or
                                          (self.mode == "backward" and node.id not in self.in_step)):
            return "t"
        return "0"

    def state_read_slot(self) -> str:
        return "(t & 1)" if self.mode == "infer" else "t"

    def state_write_slot(self) -> str:
        return "((t + 1) & 1)" if self.mode == "infer" else "(t + 1)"

    def node_name(self, node_id: int) -> str:
        """The buffer of materialized value %node_id."""
        return names.node(node_id)

    # -- reading values -------------------------------------------------------------------

    def at(self, buffer: str, slot: str, width: int, j: str) -> str:
        return f"{buffer}[(({slot}) * B + row) * {width} + {j}]"

    def read(self, node: Node, j: str, stage_index: int | None, loop_index: int | None) -> str:
        """The C expression of `node` at unit `j` of this row, seen from a loop."""
        if self.size(node) == 1:
            j = "0"
        op = node.op
        if op == Op.CONST:
            return literal(node.attr)
        if op == Op.PARAM:
            return f"{names.param(node.attr)}[{j}]"
        if op == Op.INPUT:
            offset = self.input_columns[node.attr][0]
            return f"LD(&{self.at(names.X, 't', self.input_size, f'{offset} + {j}' if offset else j)})"
        if op == Op.HOISTED:
            rows = self.program.hoisted[node.attr].rows.bind(self.sizes)
            return f"LD(&{self.at(names.hoisted(node.attr), 't', rows, j)})"
        if op == Op.STATE:
            return f"LD(&{self.at(names.state(node.attr), self.state_read_slot(), self.size(node), j)})"
        if op == Op.MASK:  # drawn in training (forward and backward alike), else expected
            attr = node.attr
            if self.mode == "infer":
                return literal(attr.expectation)
            step = f"{masks.PER_SEQUENCE}u" if attr.per_sequence else "(u32)t"
            return (f"lstmc_mask(rng, {step}, (u32)row, (u32)({j}), {attr.site}u, "
                    f"{attr.threshold}u, {literal(attr.hit_value)}, "
                    f"{literal(attr.miss_value)}, {literal(attr.expectation)})")
        if op == Op.ADJOINT:
            name, n = node.attr, self.state_sizes[node.attr]
            value = f"LD(&{self.at(names.carry(name), '((t + 1) & 1)', n, j)})"
            if name == self.output:
                value += f" + LD(&{self.at(names.DY, 't', n, j)})"
            return f"(active ? ({value}) : 0.0f)"
        where = self.loop_of.get(node.id)
        if where is not None and where == (stage_index, loop_index) and op not in REDUCTIONS:
            return f"v{node.id}"
        if op in REDUCTIONS and node.id in self.reduction_slot \
                and self.reduction_slot[node.id][0] == stage_index:
            return f"red_out[{self.reduction_slot[node.id][1]}]"
        if node.id not in self.materialized and node.id in self.in_step:
            raise IRError(f"value %{node.id} is read from memory but never stored")
        return f"LD(&{self.at(self.node_name(node.id), self.slot(node), self.size(node), j)})"

    def operand(self, node: Node) -> tuple[str, str, int]:
        """(buffer, slot kind, row stride) of a product's operand, for GEMM launches:
        slot kinds "t", "0", "state" (the state at the start of step t), "param"."""
        op = node.op
        if op == Op.PARAM:
            return names.param(node.attr), "param", 0
        if op == Op.INPUT:  # only the first input's: products of the others are hoisted
            if self.input_columns[node.attr][0]:
                raise IRError(f"a step product reads input {node.attr}: it must be hoisted")
            return names.X, "t", self.input_size
        if op == Op.HOISTED:
            return names.hoisted(node.attr), "t", self.program.hoisted[node.attr].rows.bind(self.sizes)
        if op == Op.STATE:
            return names.state(node.attr), "state", self.size(node)
        if any(leaf is node for leaf in self.leaf_copies):
            return self.node_name(node.id), "0", self.size(node)
        if op in LEAVES:
            raise IRError(f"a product cannot read a {op.value} leaf directly")
        return self.node_name(node.id), self.slot(node), self.size(node)

    # -- region code ----------------------------------------------------------------------

    def reductions_in(self, stage_index: int) -> int:
        return sum(len(l.reductions) for l in self.regions[stage_index])

    def unit_local(self) -> int | None:
        """U, when the forward step can run with each work-group owning a slice of the U
        units: one product stage, then one region whose loops all run over U units with
        no reductions, reading product columns only at k * U + j for its own unit j.
        The persistent kernel then needs one grid-wide barrier per step, not two."""
        if self.mode == "backward" or [s.kind for s in self.stages] != ["product",
                                                                        "elementwise"]:
            return None
        loops = self.regions[1]
        sizes = {loop.size for loop in loops}
        if len(sizes) != 1 or any(loop.reductions for loop in loops):
            return None
        units = sizes.pop()
        products = {p.id: p for p in self.stages[0].nodes}
        if any(self.size(p) % units for p in products.values()):
            return None
        for node in self.stages[1].nodes:
            if node.op in (Op.CONCAT, Op.BROADCAST):
                return None
            for inp in node.inputs:
                if inp.id not in products:
                    continue
                if node.op == Op.SLICE:
                    if node.attr.offset.bind(self.sizes) % units or self.size(node) != units:
                        return None
                elif self.size(inp) != units:
                    return None
        if any(s.node is not None and s.node.id in products and self.size(s.node) != units
               for s in self.stores):
            return None
        return units

    def region_body(self, stage_index: int, units: tuple[str, str] | None = None) -> list[str]:
        """C statements for one row of the region; needs `red_scratch` (LSZ *
        max_reductions(stage) floats) and `red_out` (reductions_in(stage) floats) in
        local memory. `units` (C expressions lo, hi): only units lo <= j < hi."""
        lines: list[str] = []
        for loop_index, loop in enumerate(self.regions[stage_index]):
            for r in loop.reductions:
                lines.append(f"float acc{r.id} = 0.0f;")
            lo, hi = units or ("0", str(loop.size))
            lines.append(f"for (int j = {lo} + LID; j < {hi}; j += LSZ) {{")
            for node in loop.nodes:
                expr = self._expression(node, stage_index, loop_index)
                lines.append(f"  const float v{node.id} = {expr};")
                if node.id in self.materialized:
                    lines.append(f"  {self.at(self.node_name(node.id), self.slot(node), loop.size, 'j')}"
                                 f" = v{node.id};")
            for r in loop.reductions:
                lines.append(f"  acc{r.id} += {self.read(r.inputs[0], 'j', stage_index, loop_index)};")
            for a in loop.assembled:  # this loop's part of a concat, at its units
                concat, offset = a.concat, a.offset.bind(self.sizes)
                j = f"{offset} + j" if offset else "j"
                lines.append(f"  {self.at(self.node_name(concat.id), self.slot(concat), self.size(concat), j)}"
                             f" = {self.read(a.part, 'j', stage_index, loop_index)};")
            for store, stored in loop.stores:
                value = ("0.0f" if stored is None
                         else self.read(stored, "j", stage_index, loop_index))
                lines.extend("  " + s for s in self._store(store, value))
            lines.append("}")
            if loop.reductions:
                lines += self._reduce(loop)
            lines.append("BARRIER();")
        return lines

    def max_reductions(self, stage_index: int) -> int:
        """Reductions finished after one loop, at most: rows of `red_scratch`."""
        return max([1] + [len(l.reductions) for l in self.regions[stage_index]])

    def _reduce(self, loop: Loop) -> list[str]:
        """Tree reductions of all the loop's partial sums at once: row k of
        `red_scratch` holds reduction k's partials, one per work-item."""
        count = len(loop.reductions)
        rows = range(count)
        lines = [f"red_scratch[{k} * LSZ + LID] = acc{r.id};"
                 for k, r in zip(rows, loop.reductions)]
        lines += ["BARRIER();", "for (int s = LSZ / 2; s > 0; s >>= 1) {", "  if (LID < s) {"]
        lines += [f"    red_scratch[{k} * LSZ + LID] += red_scratch[{k} * LSZ + LID + s];"
                  for k in rows]
        lines += ["  }", "  BARRIER();", "}", "if (LID == 0) {"]
        for k, r in zip(rows, loop.reductions):
            slot = self.reduction_slot[r.id][1]
            scale = f" * {literal(1.0 / loop.size)}" if r.op == Op.MEAN else ""
            lines.append(f"  red_out[{slot}] = red_scratch[{k} * LSZ]{scale};")
            if r.id in self.materialized:
                lines.append(f"  {self.at(self.node_name(r.id), self.slot(r), 1, '0')} = red_out[{slot}];")
        lines += ["}", "BARRIER();"]
        return lines

    def _expression(self, node: Node, stage_index: int, loop_index: int) -> str:
        op = node.op
        read = lambda n, j="j": self.read(n, j, stage_index, loop_index)
        if is_elementwise(op):  # the registry entry's C expression
            return op.c.format(*(read(i) for i in node.inputs))
        if op == Op.BROADCAST:
            return read(node.inputs[0], "0")
        if op == Op.SLICE:
            offset = node.attr.offset.bind(self.sizes)
            return read(node.inputs[0], f"({offset} + j)")
        raise IRError(f"the GPU backend has no rule for op '{op.value}' in a region")

    def _store(self, store: Store, value: str) -> list[str]:
        name, n = store.name, store.width
        kind = store.kind
        if kind == "state":
            old = f"LD(&{self.at(names.state(name), self.state_read_slot(), n, 'j')})"
            return [(f"{self.at(names.state(name), self.state_write_slot(), n, 'j')} = "
                     f"active ? {value} : {old};")]
        if kind == "output":
            return [f"{self.at(names.Y, 't', n, 'j')} = active ? {value} : 0.0f;"]
        if kind == "carry":
            old = f"LD(&{self.at(names.carry(name), '((t + 1) & 1)', n, 'j')})"
            return [f"{self.at(names.carry(name), '(t & 1)', n, 'j')} = active ? {value} : {old};"]
        if kind == "input":
            offset = self.input_columns[name][0]
            j = f"{offset} + j" if offset else "j"
            return [f"{self.at(names.DX, 't', self.input_size, j)} = {value};"]
        if kind in ("hoisted", "product"):
            return [f"{self.at(name, 't', n, 'j')} = {value};"]
        if kind == "param":
            return [f"{self.at(names.param_acc(name), '0', n, 'j')} += {value};"]
        if kind == "node":
            return [f"{self.at(name, '0', n, 'j')} = {value};"]
        raise IRError(f"unknown store kind {kind!r}")
