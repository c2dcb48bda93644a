"""The program the backends consume: the fused step, its backward step, both staged,
and the products hoisted out of the time loop. Built by `passes.pipeline.lower`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .build import CellInfo
from .graph import LEAVES, Graph, Node, Op, format_node
from .size import Size
from .step_plan import PackedWeight, StepPlan

# Backward output keys: ("state", name) d old state, ("input", name), ("hoisted", index),
# ("param", name) per-row gradient of a learned vector, ("product", node id) gradient of a
# packed product's output (its weight gradient is deferred to after the time loop).
Key = tuple[str, object]


@dataclass(frozen=True)
class HoistedProduct:
    """`out[t] = W_packed @ x[t]` for every step, one GEMM over all T*B rows."""

    index: int
    segments: tuple[tuple[str, Size], ...]
    in_size: Size
    operand: str = "x"  # the name of the input it multiplies

    @property
    def rows(self) -> Size:
        return sum((r for _, r in self.segments), Size())


@dataclass
class Stage:
    kind: str  # "product" or "elementwise"
    nodes: list[Node]  # topological order


@dataclass
class Program:
    """Everything a backend needs to run a cell over a sequence.

    - `hoisted`: products of the input, one GEMM over all T*B rows before the loop;
    - `forward`: the stages of one step, reading leaves and producing `graph.outputs`;
    - `backward`: the stages of one backward step, reading the adjoints of the new
      states and the `saved` forward values, producing `gradients` (see Key);
    - products inside the step (`recurrent_products`) get their weight gradients after
      the loop, from the saved operands and the gradients of their outputs;
    - `forward_plan`, `backward_plan`: each step's routes and region loops;
      `packed_weights`: the stacked matrices the products read.
    """

    info: CellInfo
    graph: Graph
    hoisted: list[HoistedProduct]
    forward: list[Stage]
    backward: list[Stage]
    gradients: dict[Key, Node]
    saved: list[Node]
    # What the native backends render of each step (passes.plan_step), set by `lower`.
    forward_plan: StepPlan = field(init=False, repr=False)
    backward_plan: StepPlan = field(init=False, repr=False)
    packed_weights: list[PackedWeight] = field(init=False, repr=False)

    @property
    def recurrent_products(self) -> list[Node]:
        return [n for s in self.forward if s.kind == "product" for n in s.nodes]

    def packed_weight(self, segments) -> PackedWeight:
        """The packed matrix a product with these segments reads."""
        key = tuple((name, Size.of(rows)) for name, rows in segments)
        for weight in self.packed_weights:
            if weight.segments == key:
                return weight
        raise KeyError(f"no packed weight stacks {key}")

    def products_per_step(self) -> int:
        return len(self.recurrent_products)

    def format(self, backward: bool = False) -> str:
        return format_program(self, backward)


def format_program(program: Program, backward: bool = False) -> str:
    info = program.info
    inputs = ", ".join(f"{n}: {s}" for n, s in [info.input, *info.extra_inputs.items()])
    lines = [f"cell {info.name}({inputs}) -> {info.output}"]
    lines.append("  states: " + ", ".join(f"{n}: {s}" for n, s in info.states.items()))
    params = ", ".join(f"{p}[{'x'.join(str(d) for d in info.param_shape(p))}]" for p in info.params)
    lines.append(f"  params: {params}")
    lines.append("before the loop:")
    for h in program.hoisted:
        names = ", ".join(f"{p}[{r}x{h.in_size}]" for p, r in h.segments)
        lines.append(f"  hoisted #{h.index}: {h.rows} = [{names}] @ {h.operand}  "
                     f"(one GEMM over all T*B rows)")
    lines.append(f"step ({program.products_per_step()} recurrent product(s)):")
    _format_stages(lines, program.forward)
    for name, node in program.graph.outputs.items():
        lines.append(f"  {name}' = {node!r}")
    if backward:
        lines.append(f"backward step (saves {len(program.saved)} value(s) per step: "
                     + " ".join(repr(n) for n in program.saved) + "):")
        _format_stages(lines, program.backward)
        for key, node in program.gradients.items():
            lines.append(f"  d{key[0]}[{key[1]}] = {node!r}")
        lines.append("after the loop: weight gradients of each product as one GEMM over all steps")
    return "\n".join(lines)


def _format_stages(lines: list[str], stages: list[Stage]) -> None:
    leaves = sorted({i.id: i for s in stages for n in s.nodes for i in n.inputs
                     if i.op in LEAVES}.values(), key=lambda n: n.id)
    for leaf in leaves:
        lines.append("  " + format_node(leaf))
    for s in stages:
        lines.append(f"  -- {s.kind} stage ({len(s.nodes)} op{'s' if len(s.nodes) != 1 else ''})")
        for node in s.nodes:
            lines.append("    " + format_node(node))


__all__ = ["HoistedProduct", "Key", "Op", "Program", "Stage", "format_program"]
