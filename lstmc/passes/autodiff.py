"""Reverse-mode differentiation of the fused step graph.

Guarantees: for every leaf the step reads (old states, the input, hoisted products,
learned vectors) and every packed product inside the step, the returned backward outputs
give the gradient of `sum(adjoint[s] * new_state[s])` with respect to it, per row. The
backward nodes are appended to the same graph, so they read forward values directly; the
forward values they read are what the forward pass must save. Gradients that would be zero
(constants, masks) are never built. The rule of an elementwise op is its registry entry's
`derivative` (ir/ops.py); the structural ops' rules are below. The walk over the graph is
a loop, not a recursion, so any depth of expression is differentiated.
"""
from __future__ import annotations

from collections.abc import Callable

from ..ir.graph import LEAVES, REGENERATED, Graph, IRError, Node, Op, SliceAttr, is_elementwise
from ..ir.program import Key
from ..ir.size import Size

Rule = Callable[[Graph, Node, Node], list[Node | None]]


def _inverse_count(g: Graph, v: Node) -> Node:
    """1/n for a row of v's size n, as a node: n is symbolic until sizes are bound."""
    one = g.const(1.0)
    return g.div(one, g.reduce(Op.SUM, g.broadcast(one, v.size)))


STRUCTURAL_RULES: dict[Op, Rule] = {
    Op.SUM: lambda g, y, dy: [g.broadcast(dy, y.inputs[0].size)],
    Op.MEAN: lambda g, y, dy: [g.broadcast(g.mul(dy, _inverse_count(g, y.inputs[0])),
                                           y.inputs[0].size)],
    Op.BROADCAST: lambda g, y, dy: [g.node(Op.SUM, (dy,))],
    Op.CONCAT: lambda g, y, dy: _split(g, y, dy),
    Op.MATMUL: lambda g, y, dy: [g.node(Op.MATMUL_T, (dy,), attr=y.attr)],
    # Op.SLICE: handled with its siblings, see _slices_to_concat
}


def rule_for(op) -> Rule:
    if is_elementwise(op):
        return op.derivative
    rule = STRUCTURAL_RULES.get(op)
    if rule is None:
        raise IRError(f"no derivative rule for op '{op.value}'")
    return rule


def _split(g: Graph, y: Node, dy: Node) -> list[Node | None]:
    grads: list[Node | None] = []
    offset = Size()
    for part in y.inputs:
        grads.append(g.node(Op.SLICE, (dy,), part.size, SliceAttr(offset, part.size)))
        offset = offset + part.size
    return grads


def autodiff(graph: Graph) -> dict[Key, Node]:
    """Append the backward step to `graph`; return its outputs (see Key)."""
    g = graph
    forward = g.live_nodes()
    contributions: dict[int, list[Node]] = {}

    def contribute(node: Node, grad: Node | None) -> None:
        if grad is not None:
            contributions.setdefault(node.id, []).append(grad)

    for name, node in graph.outputs.items():
        contribute(node, g.node(Op.ADJOINT, (), g.outputs[name].size, name))

    slice_users: dict[int, list[Node]] = {}
    for node in forward:
        if node.op == Op.SLICE:
            slice_users.setdefault(node.inputs[0].id, []).append(node)

    outputs: dict[Key, Node] = {}
    for node in reversed(forward):
        parts = contributions.get(node.id)
        users = slice_users.get(node.id, [])
        if any(u.id in contributions for u in users):  # packed: concat of its slices' grads
            parts = (parts or []) + [_slices_to_concat(g, node, users, contributions)]
        if not parts:
            continue
        grad = parts[0]
        for part in parts[1:]:
            grad = g.add(grad, part)
        if node.op in LEAVES:
            if node.op not in REGENERATED:
                outputs[(node.op.value, node.attr)] = grad
            continue
        if node.op == Op.MATMUL:
            outputs[("product", node.id)] = grad
        if node.op == Op.SLICE:
            continue
        for inp, d in zip(node.inputs, rule_for(node.op)(g, node, grad)):
            contribute(inp, d)
    return outputs


def _slices_to_concat(g: Graph, whole: Node, slices: list[Node], contributions) -> Node:
    """Gradient of a value from the gradients of its slices. Where the slices tile it (a
    packed product's, or `gates[0:H]` ... `gates[3*H:4*H]` in any order), the concat of
    their gradients, zeros for parts nobody reads; otherwise (overlapping slices, parts
    never read) the sum of each slice's gradient put in place between zeros."""
    def gradient(s: Node) -> Node | None:
        grads = contributions.get(s.id)
        if not grads:
            return None
        d = grads[0]
        for more in grads[1:]:
            d = g.add(d, more)
        return d

    def zeros(size: Size) -> Node:
        return g.broadcast(g.const(0.0), size)

    by_offset: dict[Size, Node] = {}
    for s in sorted(slices, key=lambda s: s.id):
        by_offset.setdefault(s.attr.offset, s)
    tiles, cursor = [], Size()
    while cursor in by_offset and cursor != whole.size:
        tiles.append(by_offset[cursor])
        cursor = cursor + by_offset[cursor].attr.size
    if cursor == whole.size and len(tiles) == len(slices):
        parts = [gradient(s) or zeros(s.attr.size) for s in tiles]
        return parts[0] if len(parts) == 1 else g.node(Op.CONCAT, parts)
    total: Node | None = None
    for s in slices:
        d = gradient(s)
        if d is None:
            continue
        before, after = s.attr.offset, whole.size - s.attr.offset - s.attr.size
        parts = ([zeros(before)] if before != Size() else []) + [d] + (
            [zeros(after)] if after != Size() else [])
        placed = parts[0] if len(parts) == 1 else g.node(Op.CONCAT, parts)
        total = placed if total is None else g.add(total, placed)
    assert total is not None  # called only when some slice has a gradient
    return total
