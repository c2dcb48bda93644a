"""Constant folding.

Guarantees: no elementwise node has only constant operands, in the step graph and in every
graph derived from it (fusion, the backward step): each one (`-3`, `1 / 3`, `2 * 0.5`,
`sqrt(2)`, the masks of `clip(v, -3, 3)`'s derivative) is the constant it evaluates to, by
the op's reference definition in float64 (`ops.fold`), so that a constant reads the same on
every target, and kernels see literals, not work. A result that is not finite (`1 / 0`)
stays as written. Nothing else changes: no reassociation (`2 * x * 3` keeps both
products), no algebra (`x * 1` stays).
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.rewrite import rewrite


def fold_constants(graph: Graph) -> Graph:
    """A folded copy of `graph`; it and the graphs rewritten from it keep folding the nodes
    built later (`Graph.folds_constants`: the copy goes through Graph.node, which folds)."""
    return rewrite(graph, lambda g, node, inputs: None, fold_constants=True)
