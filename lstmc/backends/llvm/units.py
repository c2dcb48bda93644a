"""Whether a cell's step can be split among threads by hidden units.

A step that is "unit by unit" (unit j of every new state is made from unit j of
elementwise values, of the states, and of fixed slices of each recurrent product) lets
each thread compute its own units of everything, the products' columns those units read
included, so the threads of a threaded inference kernel meet once per step (before the
next step's products read every unit of the new state) instead of after every stage,
and each thread streams only its share of the recurrent weights: across steps, that
share stays in its own core's cache. LSTM, GRU-style cells without a reset gate inside
the product, peepholes and coupled gates qualify; cells with reductions (layer norm),
concatenations or a second product stage (gru_cho, lstmp) keep the stage-by-stage split.

Training splits the same way (`trains_by_units`, `backward_units`): the training forward
as inference does, saving each thread's own units; the backward step region by region,
each thread making its units of every gradient (its units of the learned vectors'
gradients included: no two threads add to one element), and of each transposed product
the output columns of its units, after one meeting (the product reads every unit of its
operand). Dropout masks keep the stage-by-stage split (thread 0 draws them).
"""
from __future__ import annotations

from ...ir.graph import PRODUCTS, REDUCTIONS, Node, Op
from ...ir.program import Program
from ...ir.step_plan import Assemble, Compute, Region

# What a product may multiply: values whose rows lie in memory before the step begins.
_OPERANDS = {Op.STATE, Op.INPUT, Op.HOISTED}


def step_units(program: Program, sizes: dict[str, int], state_sizes: dict[str, int],
               panel: int) -> tuple[int, dict[int, list[int]]] | None:
    """Of an inference step (training saves are not considered): (U, the column
    offsets each product's units are read at, by product node id) when every state has
    U units, U is whole GEMM panels, and the forward step is one
    product stage followed by one region of loops over U units that reads each product
    only through slices [o:o+U] with o a multiple of U; else None."""
    units = set(state_sizes.values())
    if len(units) != 1 or len(program.forward) != 2:
        return None
    (U,) = units
    products, elementwise = program.forward
    plan = program.forward_plan
    region = plan.regions.get(1)
    if (U % panel or products.kind != "product" or elementwise.kind == "product"
            or region is None):
        return None
    for loop in region.loops:
        if (loop.row_level or loop.size.bind(sizes) != U
                or not all(isinstance(w, Compute) for w in loop.work)):
            return None
    if any(n.op == Op.CONCAT or n.op in REDUCTIONS for n in region.nodes):
        return None
    region_ids = {n.id for n in region.nodes}
    if any(r.node is None or r.node.id not in region_ids for r in plan.routes
           if r.kind in ("state", "output")):
        return None  # a new state is a leaf or a product: not made in the region
    offsets: dict[int, set[int]] = {}
    for node in products.nodes:
        if node.op != Op.MATMUL or node.inputs[0].op not in _OPERANDS:
            return None
        offsets[node.id] = set()
    for node in region.nodes:
        for operand in node.inputs:
            if operand.id not in offsets:
                continue
            if node.op == Op.SLICE:
                offset = node.attr.offset.bind(sizes)
            elif operand.size.bind(sizes) == U:
                offset = 0
            else:
                return None
            if offset % U:
                return None
            offsets[operand.id].add(offset)
    return U, {node_id: sorted(found) for node_id, found in offsets.items()}


def trains_by_units(program: Program) -> bool:
    """Whether the training forward of a cell whose step_units split it can be split so
    too: no masks to draw, and every saved value a leaf (thread 0 copies those) or made
    in the elementwise region (each thread stores its own units)."""
    if any(n.op == Op.MASK for n in program.graph.live_nodes()):
        return False
    return all(r.node is not None and r.node.op not in PRODUCTS
               for r in program.forward_plan.routes_of("saved"))


def backward_units(program: Program, sizes: dict[str, int], state_sizes: dict[str, int],
                   panel: int) -> int | None:
    """U when the backward step can be split by units: every state has U units, U is
    whole GEMM panels, its stages are elementwise regions of loops over U units (no
    reductions, no masks; slices at multiples of U) and product stages of transposed
    products with U output columns (the columns of a thread's units) whose operand a
    region made; every gradient the step hands out is made in a region or is a
    product's output. Else None."""
    units = set(state_sizes.values())
    if len(units) != 1:
        return None
    (U,) = units
    stages, plan = program.backward, program.backward_plan
    if U % panel or not stages or stages[0].kind == "product":
        return None
    made: set[int] = set()  # by a region or a product, in stage order
    for index, stage in enumerate(stages):
        if stage.kind == "product":
            for node in stage.nodes:
                if (node.op != Op.MATMUL_T or node.size.bind(sizes) != U
                        or node.inputs[0].id not in made):
                    return None
        elif not _unit_region(plan.regions.get(index), sizes, U):
            return None
        made |= {n.id for n in stage.nodes}
    reads = program.graph.live_nodes(program.gradients.values())
    if any(n.op == Op.MASK for n in reads):
        return None
    for route in plan.routes:
        if route.node is not None and route.node.id not in made:
            return None  # a leaf handed out as it is: thread 0 would copy all of it
    return U


def _unit_region(region: Region | None, sizes: dict[str, int], U: int) -> bool:
    if region is None:
        return False
    for loop in region.loops:
        if (loop.row_level or loop.size.bind(sizes) != U
                or not all(isinstance(w, (Compute, Assemble)) for w in loop.work)):
            return False
    return not any(n.op in REDUCTIONS or (n.op == Op.SLICE and _offset(n, sizes) % U)
                   for n in region.nodes)


def _offset(node: Node, sizes: dict[str, int]) -> int:
    return node.attr.offset.bind(sizes)
