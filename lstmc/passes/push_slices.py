"""Slices pushed through elementwise work, toward the products and leaves they cut.

Guarantees: a value computed only to be cut into slices that tile it (`gates[0:H]` ...
`gates[3*H:4*H]` of `gates = W @ x + b + U @ h + c`) is not computed whole: each slice is
the same elementwise op of the operands' slices (a per-row scalar operand stays whole, a
broadcast becomes one of the slice's width, a slice of a slice is one slice). So a cell
written on packed weights is the step of the split form: slices of the products and of the
parameter vectors, then per-gate elementwise work, which the GPU kernels can run unit by
unit. The work is the same, never duplicated: values read whole by anything else than
their tiling slices stay as they are.
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, Op, SliceAttr, consumers_of, is_elementwise
from ..ir.rewrite import rewrite
from ..ir.size import SCALAR, Size


def push_slices(graph: Graph) -> Graph:
    """Push until nothing moves (each round moves every slice one op closer to a leaf)."""
    while True:
        pushed, graph = _push_once(graph)
        if not pushed:
            return graph


def _tiled_by_slices(graph: Graph) -> set[int]:
    """Ids of elementwise and broadcast values read only by slices that tile them."""
    consumers = consumers_of(graph.live_nodes())
    outputs = {n.id for n in graph.outputs.values()}
    tiled = set()
    for node in graph.live_nodes():
        users = consumers.get(node.id, [])
        if node.id in outputs or not users or node.size == SCALAR:
            continue
        if not (is_elementwise(node.op) or node.op in (Op.BROADCAST, Op.SLICE)):
            continue
        if any(u.op != Op.SLICE for u in users):
            continue
        by_offset = {u.attr.offset: u for u in users}
        cursor = Size()
        while cursor in by_offset and cursor != node.size:
            cursor = cursor + by_offset.pop(cursor).attr.size
        if cursor == node.size and not by_offset:
            tiled.add(node.id)
    return tiled


def _push_once(graph: Graph) -> tuple[bool, Graph]:
    tiled = _tiled_by_slices(graph)
    pushed = False

    def transform(g: Graph, node: Node, inputs: tuple[Node, ...]) -> Node | None:
        nonlocal pushed
        if node.op != Op.SLICE or node.inputs[0].id not in tiled:
            return None
        whole, new_whole = node.inputs[0], inputs[0]
        offset, size = node.attr.offset, node.attr.size
        pushed = True
        if whole.op == Op.SLICE:
            inner = new_whole.attr.offset + offset
            return g.node(Op.SLICE, new_whole.inputs, size, SliceAttr(inner, size))
        if whole.op == Op.BROADCAST:
            return g.broadcast(new_whole.inputs[0], size)
        parts = [a if a.size == SCALAR else g.node(Op.SLICE, (a,), size, SliceAttr(offset, size))
                 for a in new_whole.inputs]
        return g.node(whole.op, parts)

    result = rewrite(graph, transform)
    return pushed, result
