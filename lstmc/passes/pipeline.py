"""The compiler's middle end: from a checked cell to a Program, the forward and backward
schedules every executor and backend renders. Each pass's result is verified."""
from __future__ import annotations

from dataclasses import replace

from ..frontend.checker import CheckedCell
from ..ir.build import CellInfo, build_step_graph
from ..ir.graph import REGENERATED, Graph, Op
from ..ir.program import HoistedProduct, Program, format_program
from .autodiff import autodiff
from .fold_constants import fold_constants
from .fuse_gates import fuse_gates
from .hoist_chains import hoist_chains as hoist_chains_pass
from .plan_step import pack_weights, plan_backward, plan_forward
from .push_slices import push_slices
from .schedule import stage


def unfused_graph(cell: CheckedCell, sizes: dict[str, int] | None = None
                  ) -> tuple[CellInfo, Graph]:
    info, graph = build_step_graph(cell, sizes)
    graph.verify()
    return info, graph


def lower(cell: CheckedCell, sizes: dict[str, int] | None = None,
          hoist_chains: bool = True) -> Program:
    """Run the passes in order, verifying the IR after each. `sizes`: lower with every
    size a number (what multi-head matrices need: see build_step_graph). Without
    `hoist_chains`, products of values made from the inputs stay in the step (what the
    chain benchmark and tests compare with)."""
    info, graph = unfused_graph(cell, sizes)                 # 1. the step as written
    graph = fold_constants(graph)                     # 2. constants folded, from here on
    graph.verify()
    graph = push_slices(graph)                        # 3. slices cut products, not sums
    graph.verify()
    graph, hoisted = fuse_gates(graph)                # 4. pack products, hoist x products
    graph.verify()
    chains: list[Graph] = []
    if hoist_chains:
        graph, hoisted, chains = hoist_chains_pass(graph, hoisted)  # 5. and of x-only values
    graph.verify()
    prologues = []
    for level, prologue in enumerate(chains, 1):       # each round's values, before the loop
        prologue.verify()
        states = {name: node.size for name, node in prologue.outputs.items()}
        prologue_info = replace(info, name=f"{info.name}.prologue{level}",
                                output=next(iter(states)), states=states)
        prologues.append(_differentiate(prologue_info, prologue, hoisted))
        prologues[-1].packed_weights = []  # it reads hoisted products, computes none
        _plan(prologues[-1])
    program = _differentiate(info, graph, hoisted)     # 6.-7.
    program.prologues = prologues
    program.packed_weights = pack_weights(program)    # 8. the stacked weights,
    _plan(program)                                    #    each step's routes and loops
    return program


def _plan(program: Program) -> None:
    program.forward_plan = plan_forward(program)
    program.backward_plan = plan_backward(program)


def _differentiate(info: CellInfo, graph: Graph, hoisted: list[HoistedProduct]) -> Program:
    """Differentiate a step (pass 6) and stage both directions (pass 7)."""
    forward_nodes = graph.live_nodes()
    forward_ids = {n.id for n in forward_nodes}
    gradients = autodiff(graph)                       # 6. reverse mode, appended in place
    graph.verify()
    backward_nodes = [n for n in graph.live_nodes(gradients.values()) if n.id not in forward_ids]
    # Masks are drawn again in the backward step, never stored.
    saved_ids = {i.id for n in backward_nodes for i in n.inputs
                 if i.id in forward_ids and i.op not in REGENERATED and i.op != Op.PARAM}
    for product in (n for n in forward_nodes if n.op == Op.MATMUL):
        saved_ids.add(product.inputs[0].id)  # operands feed the deferred weight gradients
    program = Program(                                # 7. stage both steps
        info=info,
        graph=graph,
        hoisted=hoisted,
        forward=stage(forward_nodes, set()),
        backward=stage(backward_nodes, forward_ids),
        gradients=gradients,
        saved=[n for n in forward_nodes if n.id in saved_ids],
    )
    return program


__all__ = ["Program", "format_program", "lower", "unfused_graph"]
