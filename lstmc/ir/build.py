"""Lower a checked cell to its step graph: one node per operation, composite functions
(hard_sigmoid, clip, layernorm) expanded into primitives so only primitives need
derivative rules."""
from __future__ import annotations

from dataclasses import dataclass

from ..frontend import ast
from ..frontend.checker import CheckedCell, ParamInfo
from .graph import Graph, Node, Op
from .size import SCALAR, Size

_UNARY = {
    "sigmoid": Op.SIGMOID, "tanh": Op.TANH, "relu": Op.RELU, "exp": Op.EXP, "log": Op.LOG,
    "sqrt": Op.SQRT, "abs": Op.ABS, "softsign": Op.SOFTSIGN,
}
_BINARY = {"+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "min": Op.MIN, "max": Op.MAX}


@dataclass
class CellInfo:
    """What a compiled cell takes and returns, independent of how it is computed."""

    name: str
    input: tuple[str, Size]
    output: str
    states: dict[str, Size]
    params: dict[str, ParamInfo]

    def param_shape(self, name: str) -> tuple[Size, ...]:
        return tuple(Size.of(s) for s in self.params[name].shape)


def build_step_graph(cell: CheckedCell) -> tuple[CellInfo, Graph]:
    info = CellInfo(
        name=cell.name,
        input=(cell.input[0], Size.of(cell.input[1])),
        output=cell.output,
        states={n: Size.of(s) for n, s in cell.states.items()},
        params=cell.params,
    )
    graph = Graph()
    builder = _Builder(info, graph)
    for assign in cell.decl.assigns:
        value = builder.expr(assign.value)
        if assign.primed:
            graph.outputs[assign.name] = graph.broadcast(value, info.states[assign.name])
        else:
            builder.locals[assign.name] = value
    # Outputs in state order, the cell's output first.
    graph.outputs = {name: graph.outputs[name] for name in info.states}
    return info, graph


class _Builder:
    def __init__(self, info: CellInfo, graph: Graph):
        self.info, self.g = info, graph
        self.locals: dict[str, Node] = {}

    def expr(self, e: ast.Expr) -> Node:
        g = self.g
        if isinstance(e, ast.Number):
            return g.const(e.value)
        if isinstance(e, ast.Var):
            return self.var(e)
        if isinstance(e, ast.Neg):
            return g.unary(Op.NEG, self.expr(e.operand))
        if isinstance(e, ast.BinOp):
            return g.binary(_BINARY[e.op], self.expr(e.left), self.expr(e.right))
        if isinstance(e, ast.MatMul):
            rows, cols = self.info.param_shape(e.matrix)
            return g.node(Op.MATMUL, (self.expr(e.operand),), attr=(((e.matrix, rows),), cols))
        if isinstance(e, ast.Call):
            return self.call(e.func, [self.expr(a) for a in e.args], e)
        raise TypeError(f"unknown expression {e!r}")

    def var(self, e: ast.Var) -> Node:
        g, info = self.g, self.info
        if e.primed:
            return g.outputs[e.name]
        if e.name == info.input[0]:
            return g.node(Op.INPUT, (), info.input[1], e.name)
        if e.name in info.states:
            return g.node(Op.STATE, (), info.states[e.name], e.name)
        if e.name in info.params:
            return g.node(Op.PARAM, (), info.param_shape(e.name)[0], e.name)
        return self.locals[e.name]

    def call(self, func: str, args: list[Node], e: ast.Call) -> Node:
        g = self.g
        if func in _UNARY:
            return g.unary(_UNARY[func], args[0])
        if func in _BINARY:
            return g.binary(_BINARY[func], *args)
        if func == "hard_sigmoid":  # ONNX: clip(0.2 z + 0.5, 0, 1)
            z = g.add(g.mul(g.const(0.2), args[0]), g.const(0.5))
            return g.binary(Op.MAX, g.binary(Op.MIN, z, g.const(1.0)), g.const(0.0))
        if func == "clip":
            z, lo, hi = args
            return g.binary(Op.MIN, g.binary(Op.MAX, z, lo), hi)
        if func == "mean":
            return g.node(Op.MEAN, args)
        if func == "sum":
            return g.node(Op.SUM, args)
        if func == "layernorm":
            z = args[0]
            eps = e.args[1].value if len(args) == 2 else 1e-5
            centered = g.sub(z, g.node(Op.MEAN, (z,)))
            variance = g.node(Op.MEAN, (g.mul(centered, centered),))
            return g.div(centered, g.unary(Op.SQRT, g.add(variance, g.const(eps))))
        raise TypeError(f"no lowering for function {func}")


__all__ = ["CellInfo", "build_step_graph", "SCALAR"]
