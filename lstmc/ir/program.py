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
    """`out[t] = W_packed @ v[t]` for every step, one GEMM over all T*B rows. `v` is an
    input (level 0) or a derived value `$k` of the prologue of round `level` (1, 2, ...),
    computed from the inputs and earlier hoisted products (passes/hoist_chains.py)."""

    index: int
    segments: tuple[tuple[str, Size], ...]
    in_size: Size
    operand: str = "x"  # the name of the input, or of the derived value, it multiplies
    level: int = 0

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

    - `hoisted`: products of the input, one GEMM over all T*B rows before the loop,
      in level order; `prologues[L-1]` computes, for all T*B rows at once, the derived
      values `$k` the hoisted products of level L multiply. A prologue is itself a
      Program of one "step" over T*B rows: its states are its derived values (never read
      back), its leaves the inputs, learned vectors and hoisted products of lower levels,
      its gradients (of its derived values' adjoints) go to those leaves;
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
    prologues: list[Program] = field(default_factory=list)
    forward_plan: StepPlan = field(init=False, repr=False)
    backward_plan: StepPlan = field(init=False, repr=False)
    packed_weights: list[PackedWeight] = field(init=False, repr=False)

    def hoisted_at(self, level: int) -> list[HoistedProduct]:
        return [h for h in self.hoisted if h.level == level]

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
    for level in range(len(program.prologues) + 1):
        if level:
            prologue = program.prologues[level - 1]
            lines.append(f"  prologue {level}: elementwise over all T*B rows")
            _format_stages(lines, prologue.forward, indent="  ")
            for name, node in prologue.graph.outputs.items():
                lines.append(f"    {name} = {node!r}")
        for h in program.hoisted_at(level):
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


def _format_stages(lines: list[str], stages: list[Stage], indent: str = "") -> None:
    leaves = sorted({i.id: i for s in stages for n in s.nodes for i in n.inputs
                     if i.op in LEAVES}.values(), key=lambda n: n.id)
    for leaf in leaves:
        lines.append(indent + "  " + format_node(leaf))
    for s in stages:
        lines.append(f"{indent}  -- {s.kind} stage "
                     f"({len(s.nodes)} op{'s' if len(s.nodes) != 1 else ''})")
        for node in s.nodes:
            lines.append(indent + "    " + format_node(node))


__all__ = ["HoistedProduct", "Key", "Op", "Program", "Stage", "format_program"]
