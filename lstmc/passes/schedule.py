"""Staging: order the work of one step into product stages and elementwise regions.

Guarantees: a step is a list of stages; a product stage holds products whose operands
were computed by earlier stages, an elementwise region holds everything else that can run
once those products are done. A standard LSTM step is one product stage and one region;
each product that needs the result of another in the same step adds a stage.
"""
from __future__ import annotations

from ..ir.graph import LEAVES, PRODUCTS, Node, consumers_of
from ..ir.program import Stage


def stage(nodes: list[Node], available: set[int]) -> list[Stage]:
    """Stage `nodes` (topologically ordered); ids in `available` are already computed
    (leaves, and for the backward step the saved forward values)."""
    level: dict[int, int] = {}
    for node in nodes:
        if node.op in LEAVES or node.id in available:
            level[node.id] = 0
            continue
        deepest = max((level.get(i.id, 0) for i in node.inputs), default=0)
        level[node.id] = deepest + 1 if node.op in PRODUCTS else deepest
    work = [n for n in nodes if n.op not in LEAVES and n.id not in available]
    # Products run as early as their operand allows; elementwise work as late as its
    # consumers allow, so work that no product waits for joins the region after it.
    last = max((level[n.id] for n in work), default=0)
    consumers = consumers_of(work)
    for node in reversed(work):
        if node.op in PRODUCTS:
            continue
        needed_by = [level[c.id] - 1 if c.op in PRODUCTS else level[c.id]
                     for c in consumers.get(node.id, [])]
        if needed_by:  # results nobody in the step reads stay where they first can run
            level[node.id] = min(needed_by)
    stages: list[Stage] = []
    for depth in range(last + 1):
        products = [n for n in work if n.op in PRODUCTS and level[n.id] == depth]
        region = [n for n in work if n.op not in PRODUCTS and level[n.id] == depth]
        if products:
            stages.append(Stage("product", products))
        if region:
            stages.append(Stage("elementwise", region))
    return stages
