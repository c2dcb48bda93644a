"""The functions a spec may call: name, accepted argument counts, result sizing and how a
call lowers to the step graph.

Two kinds, one table: every elementwise op of the registry (`lstmc.ir.ops`) that is
marked `function=True` is a function of the same name that lowers to one node; the
composite functions below are written in terms of registry ops and reductions, so they
need no derivative rule or backend code of their own. `lookup` and `all_functions` read
the registry each time, so an op registered at run time is a function at once.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import ops

if TYPE_CHECKING:
    from ..ir.graph import Graph, Node


@dataclass(frozen=True)
class Function:
    name: str
    arity: tuple[int, ...]  # accepted argument counts
    result: str  # "elementwise": broadcast of the arguments; "reduce": one value per row
    doc: str
    # (graph, lowered arguments, the numbers written as arguments or None) -> node
    lower: Callable[[Graph, list[Node], list[float | None]], Node]
    # (position, what it is) of arguments that must be written as numbers
    number_args: tuple[tuple[int, str], ...] = ()


def _registry_function(op: ops.Elementwise) -> Function:
    return Function(op.name, (op.arity,), "elementwise", op.semantics,
                    lambda g, args, numbers: g.node(op, args))


def _hard_sigmoid(g: Graph, args, numbers) -> Node:  # ONNX: clip(0.2 z + 0.5, 0, 1)
    z = g.add(g.mul(g.const(0.2), args[0]), g.const(0.5))
    return g.node(ops.CLIP, (z, g.const(0.0), g.const(1.0)))


def _reduction(kind: str):
    def lower(g: Graph, args, numbers) -> Node:
        from ..ir.graph import Op

        return g.reduce(Op.MEAN if kind == "mean" else Op.SUM, args[0])
    return lower


def _layernorm(g: Graph, args, numbers) -> Node:
    from ..ir.graph import Op

    z = args[0]
    eps = numbers[1] if len(args) == 2 else 1e-5
    centered = g.sub(z, g.reduce(Op.MEAN, z))
    variance = g.reduce(Op.MEAN, g.mul(centered, centered))
    return g.div(centered, g.unary(ops.SQRT, g.add(variance, g.const(eps))))


COMPOSITES: dict[str, Function] = {
    f.name: f
    for f in [
        Function("hard_sigmoid", (1,), "elementwise", "clip(0.2*z + 0.5, 0, 1) (ONNX)",
                 _hard_sigmoid),
        Function("mean", (1,), "reduce", "mean across the units of a row", _reduction("mean")),
        Function("sum", (1,), "reduce", "sum across the units of a row", _reduction("sum")),
        Function("layernorm", (1, 2), "elementwise",
                 "layernorm(z[, eps]) = (z - mean(z)) / sqrt(var(z) + eps), eps 1e-5",
                 _layernorm, number_args=((1, "eps"),)),
    ]
}


def all_functions() -> dict[str, Function]:
    """Every function a spec may call, by name."""
    table = {name: _registry_function(op) for name, op in ops.functions().items()}
    clash = table.keys() & COMPOSITES.keys()
    if clash:
        raise ValueError(f"registered ops shadow composite functions: {sorted(clash)}")
    table.update(COMPOSITES)
    return table


def lookup(name: str) -> Function | None:
    op = ops.REGISTRY.get(name)
    if op is not None and op.function:
        return _registry_function(op)
    return COMPOSITES.get(name)
