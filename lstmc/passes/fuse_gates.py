"""Gate fusion.

Guarantees: products of learned matrices that share an operand become one packed product
(their matrices stacked by rows, in the order the spec first uses them) followed by
slices; a packed product whose operand is an input of the cell (any of them) does not
depend on the recurrence, so it leaves the time loop: it becomes a HOISTED leaf, computed
for all T*B rows by one GEMM before the loop. What is left inside the step are recurrent
products and elementwise work.
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, Op, ProductAttr, SliceAttr
from ..ir.program import HoistedProduct
from ..ir.rewrite import rewrite
from ..ir.size import Size


def fuse_gates(graph: Graph) -> tuple[Graph, list[HoistedProduct]]:
    groups: dict[int, list[Node]] = {}  # operand id -> products reading it, in order
    for node in graph.live_nodes():
        if node.op == Op.MATMUL:
            groups.setdefault(node.inputs[0].id, []).append(node)

    packed: dict[int, Node] = {}  # operand id -> packed product (or hoisted leaf)
    hoisted: list[HoistedProduct] = []

    def transform(g: Graph, node: Node, inputs: tuple[Node, ...]) -> Node | None:
        if node.op != Op.MATMUL:
            return None
        operand_id = node.inputs[0].id
        group = groups[operand_id]
        if operand_id not in packed:
            segments = tuple(seg for product in group for seg in product.segments)
            in_size = node.attr.in_size
            if node.inputs[0].op == Op.INPUT:
                made = HoistedProduct(len(hoisted), segments, in_size, node.inputs[0].attr)
                hoisted.append(made)
                packed[operand_id] = g.node(Op.HOISTED, (), made.rows, made.index)
            else:
                packed[operand_id] = g.node(Op.MATMUL, inputs, attr=ProductAttr(segments, in_size))
        whole = packed[operand_id]
        if len(group) == 1:
            return whole
        offset = Size()
        for product in group:
            if product is node:
                return g.node(Op.SLICE, (whole,), node.size, SliceAttr(offset, node.size))
            offset = offset + product.size
        raise AssertionError("product missing from its own group")

    return rewrite(graph, transform), hoisted


__all__ = ["HoistedProduct", "fuse_gates"]
