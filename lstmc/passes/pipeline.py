"""The compiler's middle end: from a checked cell to a Program, the forward and backward
schedules every executor and backend renders. Each pass's result is verified."""
from __future__ import annotations

from dataclasses import dataclass

from ..frontend.checker import CheckedCell
from ..ir.build import CellInfo, build_step_graph
from ..ir.graph import LEAVES, Graph, Node, Op, format_node
from .autodiff import Key, autodiff
from .fuse_gates import HoistedProduct, fuse_gates
from .schedule import Stage, stage


@dataclass
class Program:
    """Everything a backend needs to run a cell over a sequence.

    - `hoisted`: products of the input, one GEMM over all T*B rows before the loop;
    - `forward`: the stages of one step, reading leaves and producing `graph.outputs`;
    - `backward`: the stages of one backward step, reading the adjoints of the new
      states and the `saved` forward values, producing `gradients` (see autodiff.Key);
    - products inside the step (`recurrent_products`) get their weight gradients after
      the loop, from the saved operands and the gradients of their outputs.
    """

    info: CellInfo
    graph: Graph
    hoisted: list[HoistedProduct]
    forward: list[Stage]
    backward: list[Stage]
    gradients: dict[Key, Node]
    saved: list[Node]

    @property
    def recurrent_products(self) -> list[Node]:
        return [n for s in self.forward if s.kind == "product" for n in s.nodes]

    def products_per_step(self) -> int:
        return len(self.recurrent_products)

    def format(self, backward: bool = False) -> str:
        return format_program(self, backward)


def unfused_graph(cell: CheckedCell) -> tuple[CellInfo, Graph]:
    info, graph = build_step_graph(cell)
    graph.verify()
    return info, graph


def lower(cell: CheckedCell) -> Program:
    """Run the passes in order, verifying the IR after each."""
    info, graph = unfused_graph(cell)                 # 1. the step as written
    graph, hoisted = fuse_gates(graph)                # 2. pack products, hoist x products
    graph.verify()
    forward_nodes = graph.live_nodes()
    forward_ids = {n.id for n in forward_nodes}
    gradients = autodiff(graph)                       # 3. reverse mode, appended in place
    graph.verify()
    backward_nodes = [n for n in graph.live_nodes(gradients.values()) if n.id not in forward_ids]
    saved_ids = {i.id for n in backward_nodes for i in n.inputs
                 if i.id in forward_ids and i.op not in (Op.PARAM, Op.CONST)}
    for product in (n for n in forward_nodes if n.op == Op.MATMUL):
        saved_ids.add(product.inputs[0].id)  # operands feed the deferred weight gradients
    return Program(                                   # 4. stage both steps
        info=info,
        graph=graph,
        hoisted=hoisted,
        forward=stage(forward_nodes, set()),
        backward=stage(backward_nodes, forward_ids),
        gradients=gradients,
        saved=[n for n in forward_nodes if n.id in saved_ids],
    )


def format_program(program: Program, backward: bool = False) -> str:
    info = program.info
    lines = [f"cell {info.name}({info.input[0]}: {info.input[1]}) -> {info.output}"]
    lines.append("  states: " + ", ".join(f"{n}: {s}" for n, s in info.states.items()))
    params = ", ".join(f"{p}[{'x'.join(str(d) for d in info.param_shape(p))}]" for p in info.params)
    lines.append(f"  params: {params}")
    lines.append("before the loop:")
    for h in program.hoisted:
        names = ", ".join(f"{p}[{r}x{h.in_size}]" for p, r in h.segments)
        lines.append(f"  hoisted #{h.index}: {h.rows} = [{names}] @ {info.input[0]}  "
                     f"(one GEMM over all T*B rows)")
    lines.append(f"step ({program.products_per_step()} recurrent product(s)):")
    _format_stages(lines, program.forward, program)
    for name, node in program.graph.outputs.items():
        lines.append(f"  {name}' = {node!r}")
    if backward:
        lines.append(f"backward step (saves {len(program.saved)} value(s) per step: "
                     + " ".join(repr(n) for n in program.saved) + "):")
        _format_stages(lines, program.backward, program)
        for key, node in program.gradients.items():
            lines.append(f"  d{key[0]}[{key[1]}] = {node!r}")
        lines.append("after the loop: weight gradients of each product as one GEMM over all steps")
    return "\n".join(lines)


def _format_stages(lines: list[str], stages: list[Stage], program: Program) -> None:
    leaves = sorted({i.id: i for s in stages for n in s.nodes for i in n.inputs
                     if i.op in LEAVES}.values(), key=lambda n: n.id)
    for leaf in leaves:
        lines.append("  " + format_node(leaf))
    for s in stages:
        lines.append(f"  -- {s.kind} stage ({len(s.nodes)} op{'s' if len(s.nodes) != 1 else ''})")
        for node in s.nodes:
            lines.append("    " + format_node(node))
