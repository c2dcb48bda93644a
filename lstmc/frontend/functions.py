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
    # "elementwise": broadcast of the arguments; "reduce": one value per row; "concat": the
    # arguments one after the other
    result: str
    doc: str
    # (graph, lowered arguments, the numbers written as arguments or None) -> node
    lower: Callable[[Graph, list[Node], list[float | None]], Node]
    # (position, what it is) of arguments that must be written as numbers
    number_args: tuple[tuple[int, str], ...] = ()
    # the numbers written as arguments -> what is wrong with them, or None
    check_numbers: Callable[[list[float | None]], str | None] | None = None


def _registry_function(op: ops.Elementwise) -> Function:
    """A registry op as a function; its optional trailing operands (`op.optional`) are
    numbers in the spec and constant operands in the step graph, defaults filled in."""
    required = op.arity - len(op.optional)

    def lower(g: Graph, args, numbers) -> Node:
        given = [g.const(numbers[i]) if i >= required else a for i, a in enumerate(args)]
        missing = op.optional[len(args) - required:]
        return g.node(op, [*given, *(g.const(default) for _, default in missing)])

    return Function(op.name, tuple(range(required, op.arity + 1)), "elementwise",
                    op.semantics, lower,
                    number_args=tuple((required + k, what)
                                      for k, (what, _) in enumerate(op.optional)))


def _hard_sigmoid(g: Graph, args, numbers) -> Node:  # ONNX: clip(0.2 z + 0.5, 0, 1)
    z = g.add(g.mul(g.const(0.2), args[0]), g.const(0.5))
    return g.node(ops.CLIP, (z, g.const(0.0), g.const(1.0)))


def _reduction(kind: str):
    def lower(g: Graph, args, numbers) -> Node:
        from ..ir.graph import Op

        return g.reduce(Op.MEAN if kind == "mean" else Op.SUM, args[0])
    return lower


def _concat(g: Graph, args, numbers) -> Node:
    from ..ir.graph import Op

    return args[0] if len(args) == 1 else g.node(Op.CONCAT, args)


MAX_CONCAT = 64  # parts of one concat; far above use, and a bounded arity to report


def _layernorm(g: Graph, args, numbers) -> Node:
    from ..ir.graph import Op

    z = args[0]
    eps = numbers[1] if len(args) == 2 else 1e-5
    centered = g.sub(z, g.reduce(Op.MEAN, z))
    variance = g.reduce(Op.MEAN, g.mul(centered, centered))
    return g.div(centered, g.unary(ops.SQRT, g.add(variance, g.const(eps))))


def _mask(kind: str, per_sequence: bool = False):
    """dropout(v, p), variational_dropout(v, p): v times a fresh mask of 0 and 1/(1-p)
    (per step, or one per sequence); zoneout(new, old, p): where a mask hits, the old
    value is kept. Masks are leaves drawn from the position (ir/masks.py); each call is
    its own site, so no two calls share a mask."""
    def lower(g: Graph, args, numbers) -> Node:
        from ..ir.graph import Op
        from ..ir.masks import MaskAttr

        site = sum(1 for n in g.nodes if n.op == Op.MASK)
        p = numbers[-1]
        assert p is not None  # the checker saw a number
        mask = g.node(Op.MASK, (), args[0].size, MaskAttr(kind, float(p), site, per_sequence))
        if kind == "dropout":
            return g.mul(args[0], mask)
        new, old = args[0], args[1]
        return g.add(new, g.mul(mask, g.sub(old, new)))
    return lower


def _probability(upper_open: bool):
    def check(numbers: list[float | None]) -> str | None:
        p = numbers[-1]
        if p is None or 0.0 <= p < 1.0 or (p == 1.0 and not upper_open):
            return None
        return f"the probability must be in [0, 1{')' if upper_open else ']'}, got {p:g}"
    return check


COMPOSITES: dict[str, Function] = {
    f.name: f
    for f in [
        Function("hard_sigmoid", (1,), "elementwise", "clip(0.2*z + 0.5, 0, 1) (ONNX)",
                 _hard_sigmoid),
        Function("mean", (1,), "reduce", "mean across the units of a row", _reduction("mean")),
        Function("concat", tuple(range(1, MAX_CONCAT + 1)), "concat",
                 "concat(a, b, ...): the units of a, then those of b, ...", _concat),
        Function("sum", (1,), "reduce", "sum across the units of a row", _reduction("sum")),
        Function("layernorm", (1, 2), "elementwise",
                 "layernorm(z[, eps]) = (z - mean(z)) / sqrt(var(z) + eps), eps 1e-5",
                 _layernorm, number_args=((1, "eps"),)),
        Function("dropout", (2,), "elementwise",
                 "dropout(v, p): inverted dropout, a new mask every step (train=True); "
                 "v at inference", _mask("dropout"), number_args=((1, "probability"),),
                 check_numbers=_probability(True)),
        Function("variational_dropout", (2,), "elementwise",
                 "variational_dropout(v, p): dropout with one mask per sequence and row "
                 "(Gal & Ghahramani 2016)", _mask("dropout", per_sequence=True),
                 number_args=((1, "probability"),), check_numbers=_probability(True)),
        Function("zoneout", (3,), "elementwise",
                 "zoneout(new, old, p): keep old with probability p (Krueger et al. 2017); "
                 "p*old + (1-p)*new at inference", _mask("zoneout"),
                 number_args=((2, "probability"),), check_numbers=_probability(False)),
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
