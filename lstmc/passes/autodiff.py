"""Reverse-mode differentiation of the fused step graph.

Guarantees: for every leaf the step reads (old states, the input, hoisted products,
learned vectors) and every packed product inside the step, the returned backward outputs
give the gradient of `sum(adjoint[s] * new_state[s])` with respect to it, per row. The
backward nodes are appended to the same graph, so they read forward values directly; the
forward values they read are what the forward pass must save. Gradients that would be zero
(constants, masks) are never built. A rule per primitive op; rules reuse forward outputs
(sigmoid' = y(1-y), tanh' = 1-y^2, exp' = y).
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import LEAVES, Graph, IRError, Node, Op
from ..ir.size import SCALAR, Size

# Backward output keys: ("state", name) d old state, ("input", name), ("hoisted", index),
# ("param", name) per-row gradient of a learned vector, ("product", node id) gradient of a
# packed product's output (its weight gradient is deferred to after the time loop).
Key = tuple[str, object]
Rule = Callable[[Graph, Node, Node], list[Node | None]]


def _fit(g: Graph, grad: Node, operand: Node) -> Node:
    """Undo broadcasting: a per-row scalar operand gets the sum of its gradient."""
    if operand.size == grad.size:
        return grad
    if operand.size == SCALAR:
        return g.node(Op.SUM, (grad,))
    return g.broadcast(grad, operand.size)


def _add(g, y, dy):
    a, b = y.inputs
    return [_fit(g, dy, a), _fit(g, dy, b)]


def _sub(g, y, dy):
    a, b = y.inputs
    return [_fit(g, dy, a), _fit(g, g.unary(Op.NEG, dy), b)]


def _mul(g, y, dy):
    a, b = y.inputs
    return [_fit(g, g.mul(dy, b), a), _fit(g, g.mul(dy, a), b)]


def _div(g, y, dy):
    a, b = y.inputs
    da = g.div(dy, b)
    return [_fit(g, da, a), _fit(g, g.unary(Op.NEG, g.mul(da, y)), b)]  # d(a/b)/db = -y/b


def _select(g, y, dy):
    """min/max: the gradient goes to the operand that was chosen (the first on ties)."""
    a, b = y.inputs
    order = (b, a) if y.op == Op.MAX else (a, b)
    took_b = g.binary(Op.GT, *order)  # max: b > a; min: a > b
    db = g.mul(dy, took_b)
    return [_fit(g, g.sub(dy, db), a), _fit(g, db, b)]


def _unary(derivative: Callable[[Graph, Node, Node], Node]) -> Rule:
    return lambda g, y, dy: [g.mul(dy, derivative(g, y, y.inputs[0]))]


one = lambda g: g.const(1.0)  # noqa: E731

RULES: dict[Op, Rule] = {
    Op.ADD: _add,
    Op.SUB: _sub,
    Op.MUL: _mul,
    Op.DIV: _div,
    Op.MIN: _select,
    Op.MAX: _select,
    Op.GT: lambda g, y, dy: [None, None],
    Op.NEG: lambda g, y, dy: [g.unary(Op.NEG, dy)],
    Op.SIGMOID: _unary(lambda g, y, x: g.mul(y, g.sub(one(g), y))),
    Op.TANH: _unary(lambda g, y, x: g.sub(one(g), g.mul(y, y))),
    Op.RELU: _unary(lambda g, y, x: g.binary(Op.GT, x, g.const(0.0))),
    Op.EXP: _unary(lambda g, y, x: y),
    Op.LOG: lambda g, y, dy: [g.div(dy, y.inputs[0])],
    Op.SQRT: lambda g, y, dy: [g.div(g.mul(dy, g.const(0.5)), y)],
    Op.ABS: _unary(lambda g, y, x: g.sub(g.binary(Op.GT, x, g.const(0.0)),
                                         g.binary(Op.GT, g.const(0.0), x))),
    # softsign(x) = x / (1 + |x|): derivative 1 / (1 + |x|)^2 = (1 - |y|)^2
    Op.SOFTSIGN: _unary(lambda g, y, x: _square(g, g.sub(one(g), g.unary(Op.ABS, y)))),
    Op.SUM: lambda g, y, dy: [g.broadcast(dy, y.inputs[0].size)],
    Op.MEAN: lambda g, y, dy: [g.broadcast(g.mul(dy, _inverse_count(g, y.inputs[0])),
                                           y.inputs[0].size)],
    Op.BROADCAST: lambda g, y, dy: [g.node(Op.SUM, (dy,))],
    Op.SLICE: None,  # handled with its siblings: see _slices_to_concat
    Op.CONCAT: lambda g, y, dy: _split(g, y, dy),
    Op.MATMUL: lambda g, y, dy: [g.node(Op.MATMUL_T, (dy,), attr=y.attr)],
}


def _square(g: Graph, a: Node) -> Node:
    return g.mul(a, a)


def _inverse_count(g: Graph, v: Node) -> Node:
    """1/n for a row of v's size n, as a node: n is symbolic until sizes are bound."""
    return g.div(one(g), g.node(Op.SUM, (g.broadcast(one(g), v.size),)))


def _split(g: Graph, y: Node, dy: Node) -> list[Node]:
    grads, offset = [], Size()
    for part in y.inputs:
        grads.append(g.node(Op.SLICE, (dy,), part.size, (offset, part.size)))
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
            if node.op != Op.CONST:
                outputs[(node.op.value, node.attr)] = grad
            continue
        if node.op == Op.MATMUL:
            outputs[("product", node.id)] = grad
        if node.op == Op.SLICE:
            continue
        rule = RULES.get(node.op)
        if rule is None:
            raise IRError(f"no derivative rule for op '{node.op.value}'")
        for inp, d in zip(node.inputs, rule(g, node, grad)):
            contribute(inp, d)
    return outputs


def _slices_to_concat(g: Graph, whole: Node, slices: list[Node], contributions) -> Node:
    """Gradient of a packed value from the gradients of its slices, which tile it in
    packing order (their ids follow that order); parts nobody reads get zeros."""
    cursor, parts = Size(), []
    for s in sorted(slices, key=lambda s: s.id):
        offset, size = s.attr
        if offset != cursor:
            raise AssertionError("slices of a packed value must tile it in order")
        grads = contributions.get(s.id)
        if grads:
            d = grads[0]
            for more in grads[1:]:
                d = g.add(d, more)
        else:
            d = g.broadcast(g.const(0.0), size)
        parts.append(d)
        cursor = cursor + size
    if cursor != whole.size:
        raise AssertionError("slices of a packed value must cover it")
    return parts[0] if len(parts) == 1 else g.node(Op.CONCAT, parts)
