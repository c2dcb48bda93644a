"""Graph rewriting: copy the live part of a graph node by node, letting a pass replace
any node on the way. Passes never mutate a graph in place."""
from __future__ import annotations

from collections.abc import Callable

from .graph import Graph, Node

# (new graph, old node, its inputs already rewritten) -> replacement, or None to copy it
Transform = Callable[[Graph, Node, tuple[Node, ...]], "Node | None"]


def rewrite(graph: Graph, transform: Transform, fold_constants: bool | None = None) -> Graph:
    """The copy folds constants as `graph` does, unless `fold_constants` says otherwise."""
    new = Graph()
    new.folds_constants = graph.folds_constants if fold_constants is None else fold_constants
    mapping: dict[int, Node] = {}
    for node in graph.live_nodes():
        inputs = tuple(mapping[i.id] for i in node.inputs)
        replaced = transform(new, node, inputs)
        if replaced is None:
            replaced = new.node(node.op, inputs, node.size, node.attr)
        mapping[node.id] = replaced
    new.outputs = {name: mapping[node.id] for name, node in graph.outputs.items()}
    return new
