"""Planning: what each step hands out (its routes) and the loops of each elementwise
region, computed once for every native backend (see ir.step_plan).

Guarantees: every node of a region is in exactly one loop (computed, reduced, or, for a
concat, assembled by its parts' loops); a loop runs after every loop whose results it
reads from registers or memory; values of the same size and phase share a loop, so a
standard LSTM step is one loop over the 4H gate pre-activations and one over H units.
"""
from __future__ import annotations

from ..ir.graph import REDUCTIONS, Node, Op, consumers_of
from ..ir.program import Program, Stage
from ..ir.size import SCALAR, Size
from ..ir.step_plan import (
    Assemble,
    Compute,
    Finish,
    Loop,
    PackedWeight,
    Reduce,
    Region,
    Route,
    StepPlan,
)


def pack_weights(program: Program) -> list[PackedWeight]:
    """One packed matrix per distinct row order, numbered by first use: the hoisted
    products, then the step's products, then the backward step's."""
    products = [n for s in program.forward + program.backward if s.kind == "product"
                for n in s.nodes]
    packed: dict[tuple, PackedWeight] = {}
    for segments in [h.segments for h in program.hoisted] + [p.attr.segments for p in products]:
        key = tuple((name, Size.of(rows)) for name, rows in segments)
        if key not in packed:
            columns = program.info.param_shape(key[0][0])[1]
            packed[key] = PackedWeight(len(packed), key, columns)
    return list(packed.values())


def plan_forward(program: Program) -> StepPlan:
    info, graph = program.info, program.graph
    routes = [Route("saved", n.id, n, n.size) for n in program.saved]
    routes += [Route("state", name, node, info.states[name])
               for name, node in graph.outputs.items()]
    routes.append(Route("output", info.output, graph.outputs[info.output],
                        info.states[info.output]))
    return _plan(program.forward, routes)


def plan_backward(program: Program) -> StepPlan:
    info = program.info
    inputs = dict([info.input, *info.extra_inputs.items()])
    products = {p.id: p for p in program.recurrent_products}
    routes: list[Route] = []
    first_param: dict[int, str] = {}  # gradient node id -> the first parameter it is of
    for (kind, key), node in program.gradients.items():
        # a gradient's key is a name (state, input, param) or a number (hoisted, product)
        if kind == "state":
            assert isinstance(key, str)
            routes.append(Route("carry", key, node, info.states[key]))
        elif kind == "input":
            assert isinstance(key, str)
            routes.append(Route("input", key, node, Size.of(inputs[key])))
        elif kind == "hoisted":
            assert isinstance(key, int)
            routes.append(Route("hoisted", key, node, program.hoisted[key].rows))
        elif kind == "product":
            assert isinstance(key, int)
            routes.append(Route("product", key, node, products[key].size))
        elif kind == "param":
            assert isinstance(key, str)
            first = first_param.setdefault(node.id, key)
            routes.append(Route("param", key, node, info.param_shape(key)[0],
                                alias_of=first if first != key else None))
        else:
            raise ValueError(f"unknown gradient kind {kind!r}")
    carried = {r.key for r in routes if r.kind == "carry"}
    routes += [Route("carry", name, None, size) for name, size in info.states.items()
               if name not in carried]  # nothing flows back into it: its gradient is zero
    return _plan(program.backward, routes)


def _plan(stages: list[Stage], routes: list[Route]) -> StepPlan:
    nodes = [n for s in stages for n in s.nodes]
    consumers = consumers_of(nodes)
    regions = {index: _region(index, stage.nodes, consumers)
               for index, stage in enumerate(stages) if stage.kind == "elementwise"}
    return StepPlan(routes, regions, consumers)


def _region(stage_index: int, nodes: list[Node], consumers: dict[int, list[Node]]) -> Region:
    in_stage = {n.id for n in nodes}
    phase: dict[int, int] = {}
    loops: dict[tuple[int, Size, bool], Loop] = {}
    home: dict[int, Loop] = {}  # a value computed over units -> its loop

    def source_phase(u: Node, through_memory: bool) -> int:
        """The first phase that may read `u` (from memory: one after it is written)."""
        if u.id not in in_stage:
            return 0
        return phase[u.id] + (1 if through_memory and u.size != SCALAR else 0)

    def loop(p: int, size: Size, row_level: bool = False) -> Loop:
        return loops.setdefault((p, size, row_level), Loop(p, size, row_level))

    for n in nodes:
        if n.op == Op.CONCAT:  # each part's loop writes it to its place in memory
            phase[n.id] = max((source_phase(u, False) for u in n.inputs), default=0) + 1
            offset = Size()
            for part in n.inputs:
                where = home.get(part.id) or loop(source_phase(part, False), part.size)
                where.work.append(Assemble(n, part, offset))
                offset = offset + part.size
            continue
        if n.op in REDUCTIONS:  # summed in its source's loop, finished once per row
            src = n.inputs[0]
            p = source_phase(src, False) if src.size != SCALAR else phase.get(src.id, 0)
            where = home.get(src.id) or loop(p, src.size)
            where.work.append(Reduce(n))
            phase[n.id] = where.phase + 1
            loop(phase[n.id], SCALAR, row_level=True).work.append(Finish(n))
            continue
        # A slice reads units of another loop's result, a concat's reader the whole
        # concat: both from memory.
        memory = n.op == Op.SLICE or any(u.op == Op.CONCAT for u in n.inputs)
        phase[n.id] = max((source_phase(u, memory) for u in n.inputs), default=0)
        if n.size == SCALAR:
            loop(phase[n.id], SCALAR, row_level=True).work.append(Compute(n))
            continue
        where = loop(phase[n.id], n.size)
        where.work.append(Compute(n))
        home[n.id] = where

    # Phase by phase; a phase's row-level values first, since its loops may read them.
    order = sorted(loops.values(), key=lambda l: (l.phase, not l.row_level))
    loop_of: dict[int, int] = {}
    for index, l in enumerate(order):
        for w in l.work:
            if isinstance(w, (Compute, Reduce)):
                loop_of[w.node.id] = index
    return Region(stage_index, nodes, order, loop_of, consumers)


__all__ = ["pack_weights", "plan_backward", "plan_forward"]
