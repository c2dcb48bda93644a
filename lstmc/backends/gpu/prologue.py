"""A prologue (passes/hoist_chains.py) as GPU region kernels: one "step" over all T*B
rows, launched once before the hoisted products of its level (t = 0, batch T*B); its
backward once after their gradients. Every value it keeps holds all T*B rows (sequence
buffers); every row is active (lengths do not apply before the loop); its gradients are
added to the ones the time loop left in dx and in the hoisted products' gradients."""
from __future__ import annotations

from lstmc_runtime.gpu import buffers as names
from lstmc_runtime.gpu.plan import DeviceBuffer

from ...ir.graph import LEAVES, Node, Op
from ...ir.program import Program
from .regions import StepLayout, Store


class PrologueLayout(StepLayout):
    def __init__(self, main: Program, level: int, sizes: dict[str, int], mode: str):
        self.main, self.level = main, level
        super().__init__(main.prologues[level - 1], sizes, mode)

    def node_name(self, node_id: int) -> str:
        return names.prologue_node(self.level, node_id)

    def slot(self, node: Node) -> str:
        return "t"  # row `row` of all T*B: t is 0 at launch

    def read(self, node: Node, j: str, stage_index: int | None, loop_index: int | None) -> str:
        if node.op == Op.ADJOINT:  # the derived value's gradient, from its GEMM
            n = self.size(node)
            return f"LD(&{self.at(names.dderived(node.attr), 't', n, '0' if n == 1 else j)})"
        return super().read(node, j, stage_index, loop_index)

    def _store(self, store: Store, value: str) -> list[str]:
        n, kind = store.width, store.kind
        if kind == "state":  # a derived value
            return [f"{self.at(names.derived(store.name), 't', n, 'j')} = {value};"]
        if kind in ("output", "carry"):  # never read: the loop has its own
            return []
        if kind == "input":
            offset = self.input_columns[store.name][0]
            j = f"{offset} + j" if offset else "j"
            return [f"{self.at(names.DX, 't', self.input_size, j)} += {value};"]
        if kind == "hoisted":
            return [f"{self.at(store.name, 't', n, 'j')} += {value};"]
        if kind == "param":
            acc = names.prologue_acc(self.level, store.name)
            return [f"{self.at(acc, 't', n, 'j')} = {value};"]
        raise AssertionError(f"a prologue has no {kind} store")

    def _buffers(self) -> list[DeviceBuffer]:
        program, sizes = self.program, self.sizes
        buffers = [DeviceBuffer(names.X, self.input_size, "seq")]
        for h in self.main.hoisted:
            if h.level < self.level:
                buffers.append(DeviceBuffer(names.hoisted(h.index), h.rows.bind(sizes), "seq"))
        for name in program.info.params:
            shape = program.info.param_shape(name)
            if len(shape) == 1:
                buffers.append(DeviceBuffer(names.param(name), shape[0].bind(sizes), "param",
                                            const=True))
        derived = {name: node.size.bind(sizes) for name, node in program.graph.outputs.items()}
        buffers += [DeviceBuffer(names.derived(n), w, "seq") for n, w in derived.items()]
        kept = [n for n in self.step_nodes if n.id in self.materialized]
        if self.mode == "backward":
            kept += [n for n in program.saved if n.op not in LEAVES]
            buffers += [DeviceBuffer(names.dderived(n), w, "seq") for n, w in derived.items()]
            buffers.append(DeviceBuffer(names.DX, self.input_size, "seq", zero=True))
            for store in self.stores:
                if store.kind == "hoisted":
                    buffers.append(DeviceBuffer(store.name, store.width, "seq", zero=True))
                elif store.kind == "param":
                    buffers.append(DeviceBuffer(names.prologue_acc(self.level, store.name),
                                                store.width, "seq"))
        seen = set()
        for node in kept:
            if node.id not in seen:
                seen.add(node.id)
                buffers.append(DeviceBuffer(self.node_name(node.id), self.size(node), "seq"))
        return buffers


def prologue_layouts(program: Program, sizes: dict[str, int], mode: str) -> list[PrologueLayout]:
    return [PrologueLayout(program, level, sizes, mode)
            for level in range(1, len(program.prologues) + 1)]


def union(*lists: list[DeviceBuffer]) -> list[DeviceBuffer]:
    """The buffers of several layouts of one mode, each once (its first declaration;
    `zero` if any layout clears it); a name declared with two widths is a compiler bug."""
    out: dict[str, DeviceBuffer] = {}
    for buffers in lists:
        for b in buffers:
            seen = out.get(b.name)
            if seen is None:
                out[b.name] = b
                continue
            if (seen.width, seen.slots) != (b.width, b.slots):
                raise AssertionError(f"buffer {b.name} declared as {seen} and as {b}")
            if b.zero and not seen.zero:
                out[b.name] = DeviceBuffer(b.name, b.width, b.slots, True, seen.const)
    return list(out.values())
