"""Chain hoisting: a product whose operand is computed from the inputs alone
(`U_z @ tanh(W_x @ x)`, MinimalRNN's) leaves the time loop too.

Guarantees: after this pass no product inside the step has an operand that is the same
for every step's recurrence, unless that operand is a learned vector. Each such operand
becomes a *derived value* `$k`, computed before the loop for all T*B rows by a prologue
(an elementwise graph over the inputs, learned vectors and earlier hoisted products), and
its product becomes a HOISTED leaf whose HoistedProduct reads `$k`. Chains nest: a round
hoists the products whose operands read only leaves, the next round those whose operands
read the products just hoisted (`U @ tanh(V @ tanh(W @ x))` takes two rounds, two
prologues). The prologue graphs are returned, one per round, each with the derived
values of its round as outputs named `$k`; the caller lowers them (pipeline.lower).
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, Op
from ..ir.program import HoistedProduct
from ..ir.rewrite import rewrite
from ..ir.size import SCALAR

# What a step's value may read and still be the same for every recurrence: not a state,
# not a mask (drawn per step position), not a product still inside the step.
_VARYING = {Op.STATE, Op.MASK, Op.ADJOINT, Op.MATMUL, Op.MATMUL_T}


def derived_name(index: int) -> str:
    return f"${index}"


def hoist_chains(graph: Graph, hoisted: list[HoistedProduct]
                 ) -> tuple[Graph, list[HoistedProduct], list[Graph]]:
    hoisted = list(hoisted)
    prologues: list[Graph] = []
    derived_count = 0
    while True:
        candidates = _candidates(graph)
        if not candidates:
            return graph, hoisted, prologues
        level = len(prologues) + 1
        prologue = Graph()
        prologue.folds_constants = graph.folds_constants
        copies: dict[int, Node] = {}
        derived: dict[int, str] = {}  # operand id -> its name
        for product in candidates:
            operand = product.inputs[0]
            if operand.id not in derived:
                derived[operand.id] = derived_name(derived_count)
                derived_count += 1
                prologue.outputs[derived[operand.id]] = _copy(prologue, operand, copies)
        leaves: dict[int, HoistedProduct] = {}
        for product in candidates:
            leaves[product.id] = HoistedProduct(len(hoisted), product.attr.segments,
                                                product.attr.in_size,
                                                derived[product.inputs[0].id], level)
            hoisted.append(leaves[product.id])

        graph = rewrite(graph, _to_leaves(leaves))
        prologues.append(prologue)


def _to_leaves(leaves: dict[int, HoistedProduct]):
    """The rewrite that turns each product of `leaves` (by node id) into its leaf."""
    def transform(g: Graph, node: Node, inputs: tuple[Node, ...]) -> Node | None:
        h = leaves.get(node.id)
        return None if h is None else g.node(Op.HOISTED, (), h.rows, h.index)
    return transform


def _candidates(graph: Graph) -> list[Node]:
    """The step's products whose operands read no state, mask or product of the step."""
    varying: set[int] = set()
    found = []
    for node in graph.live_nodes():
        if node.op in _VARYING or any(i.id in varying for i in node.inputs):
            varying.add(node.id)
        if node.op == Op.MATMUL:
            operand = node.inputs[0]
            if (operand.id not in varying and operand.op not in (Op.INPUT, Op.PARAM, Op.CONST)
                    and operand.size != SCALAR):
                found.append(node)
    return found


def _copy(g: Graph, root: Node, copies: dict[int, Node]) -> Node:
    """`root` and what it reads, rebuilt in g (leaves as they are), without recursion."""
    order: list[Node] = []
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node.id in seen or node.id in copies:
            continue
        seen.add(node.id)
        order.append(node)
        stack.extend(node.inputs)
    for node in sorted(order, key=lambda n: n.id):  # ids are a topological order
        copies[node.id] = g.node(node.op, tuple(copies[i.id] for i in node.inputs),
                                 node.size, node.attr)
    return copies[root.id]


__all__ = ["derived_name", "hoist_chains"]
