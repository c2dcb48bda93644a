"""Lower a checked cell to its step graph: one node per operation, composite functions
(hard_sigmoid, layernorm, ...) expanded into registry ops and reductions, so only those
need derivative rules. Expressions are lowered by a loop (ast.fold), never by
recursion, so any depth the grammar accepts is lowered."""
from __future__ import annotations

from dataclasses import dataclass, field

from lstmc_runtime.manifest import DerivedTerm, ParamSpec

from ..frontend import ast
from ..frontend.checker import CheckedCell, ParamInfo, matrix_text
from ..frontend.functions import lookup
from . import ops
from .graph import Graph, Node, Op, ProductAttr, SliceAttr
from .size import SCALAR, Size

_BINARY = {"+": ops.ADD, "-": ops.SUB, "*": ops.MUL, "/": ops.DIV}
# Comparisons: (mask op, whether the operands swap): a < b is b > a.
_COMPARISON = {"<": (ops.GT, True), "<=": (ops.GE, True), ">": (ops.GT, False),
               ">=": (ops.GE, False)}


@dataclass
class CellInfo:
    """What a compiled cell takes and returns, independent of how it is computed."""

    name: str
    input: tuple[str, Size]
    output: str
    states: dict[str, Size]
    params: dict[str, ParamInfo]
    # Inputs after the first, in declared order. Every executor takes all inputs as one
    # (T, B, sum of sizes) sequence, the first input's units first (see input_columns).
    extra_inputs: dict[str, Size] = field(default_factory=dict)

    def input_columns(self, sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
        """(offset, width) of each input's units in the packed input sequence."""
        columns, offset = {}, 0
        for name, size in [self.input, *self.extra_inputs.items()]:
            width = size.bind(sizes)
            columns[name] = (offset, width)
            offset += width
        return columns

    def packed_input_size(self, sizes: dict[str, int]) -> int:
        return sum(width for _, width in self.input_columns(sizes).values())

    def param_shape(self, name: str) -> tuple[Size, ...]:
        return tuple(Size.of(s) for s in self.params[name].shape)

    def param_specs(self, sizes: dict[str, int]) -> dict[str, ParamSpec]:
        """Each parameter as the runtime describes it, sizes bound (derived matrices
        with their terms: the caller never passes those; a multi-head matrix as the
        (heads, rows/heads, cols/heads) array of its blocks)."""
        specs = {}
        for name, p in self.params.items():
            shape = tuple(d.bind(sizes) for d in self.param_shape(name))
            if p.heads is not None:
                n = Size.of(p.heads).bind(sizes)
                shape = (n, shape[0] // n, shape[1] // n)
            derived = None if p.derived is None else tuple(
                DerivedTerm(coef, param, transposed, block)
                for coef, param, transposed, block in p.derived)
            specs[name] = ParamSpec(shape, p.init, derived)
        return specs

    @property
    def has_heads(self) -> bool:
        return any(p.heads is not None for p in self.params.values())


def build_step_graph(cell: CheckedCell, sizes: dict[str, int] | None = None
                     ) -> tuple[CellInfo, Graph]:
    """The step graph, sizes symbolic; with `sizes` (needed by multi-head matrices,
    whose head count shapes the graph) every size is a number instead, and each
    block-diagonal product is one product per head."""
    size = Size.of if sizes is None else (lambda s: Size.of(Size.of(s).bind(sizes)))
    info = CellInfo(
        name=cell.name,
        input=(cell.input[0], size(cell.input[1])),
        output=cell.output,
        states={n: size(s) for n, s in cell.states.items()},
        params=cell.params if sizes is None else _concrete_params(cell.params, sizes),
        extra_inputs={n: size(s) for n, s in cell.extra_inputs.items()},
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
        # ast.constant_value of each node folded, kept as the fold goes up: a chain of
        # `**` or of functions that take numbers folds each operand once, not again
        # per link (quadratic: `x ** 1 ** 1 ...` 2,000 long took 10 s).
        self.numbers: dict[int, float | None] = {}

    def expr(self, e: ast.Expr) -> Node:
        return ast.fold(e, self._node)

    def _number(self, e: ast.Expr) -> float:
        value = self.numbers[id(e)]
        if value is None:
            raise TypeError(f"expected a constant expression, got {e!r}")
        return value

    def _node(self, e: ast.Expr, args: list[Node]) -> Node:
        g = self.g
        self.numbers[id(e)] = ast.number_of(e, [self.numbers[id(c)] for c in ast.children(e)])
        if isinstance(e, ast.Number):
            return g.const(e.value)
        if isinstance(e, ast.Var):
            return self.var(e)
        if isinstance(e, ast.Neg):
            return g.unary(ops.NEG, args[0])
        if isinstance(e, ast.Slice):
            if e.start == Size() and e.stop == args[0].size:
                return args[0]  # the whole value
            width = e.stop - e.start
            return g.node(Op.SLICE, args, width, SliceAttr(e.start, width))
        if isinstance(e, ast.BinOp):
            if e.op == "**":  # the checker saw a constant exponent
                return g.binary(ops.POW, args[0], g.const(self._number(e.right)))
            if e.op in _COMPARISON:
                op, swap = _COMPARISON[e.op]
                return g.binary(op, *(reversed(args) if swap else args))
            return g.binary(_BINARY[e.op], *args)
        if isinstance(e, ast.MatMul):
            name = matrix_text(e.matrix)  # a parameter, or a matrix derived from them
            rows, cols = self.info.param_shape(name)
            heads = self.info.params[name].heads
            if heads is not None and not rows.names:  # sizes known: one product a head
                return self._heads(name, int(heads), rows.const, cols.const, args[0])
            return g.node(Op.MATMUL, args, attr=ProductAttr(((name, rows),), cols))
        if isinstance(e, ast.Call):
            func = lookup(e.func)
            if func is None:
                raise TypeError(f"no lowering for function {e.func}")
            numbers = [self.numbers[id(a)] for a in e.args]
            return func.lower(g, args, numbers)
        raise TypeError(f"unknown expression {e!r}")

    def _heads(self, name: str, heads: int, rows: int, cols: int, operand: Node) -> Node:
        """A block-diagonal product as `heads` products of the operand's slices."""
        r, c = rows // heads, cols // heads
        parts = []
        for k in range(heads):
            piece = self.g.node(Op.SLICE, (operand,), Size.of(c),
                                SliceAttr(Size.of(k * c), Size.of(c)))
            block = ((block_name(name, k), Size.of(r)),)
            parts.append(self.g.node(Op.MATMUL, (piece,), attr=ProductAttr(block, Size.of(c))))
        return parts[0] if heads == 1 else self.g.node(Op.CONCAT, parts)

    def var(self, e: ast.Var) -> Node:
        g, info = self.g, self.info
        if e.primed:
            return g.outputs[e.name]
        if e.name == info.input[0]:
            return g.node(Op.INPUT, (), info.input[1], e.name)
        if e.name in info.extra_inputs:
            return g.node(Op.INPUT, (), info.extra_inputs[e.name], e.name)
        if e.name in info.states:
            return g.node(Op.STATE, (), info.states[e.name], e.name)
        if e.name in info.params:
            return g.node(Op.PARAM, (), info.param_shape(e.name)[0], e.name)
        if e.name not in self.locals:  # a size used as a number: the checker saw it named
            # a row's count of ones, a per-row scalar (sizes are bound after compiling)
            return g.reduce(Op.SUM, g.broadcast(g.const(1.0), Size.of(e.name)))
        return self.locals[e.name]


def block_name(param: str, k: int) -> str:
    """The parameter the kernels take for block k of a multi-head matrix."""
    return f"{param}[{k}]"


def _concrete_params(params: dict[str, ParamInfo], sizes: dict[str, int]
                     ) -> dict[str, ParamInfo]:
    """The parameters with numeric shapes, plus each block of every multi-head matrix
    as a parameter derived from it (the runtime slices the caller's array)."""
    bind = lambda atom: Size.of(atom).bind(sizes)  # noqa: E731
    out: dict[str, ParamInfo] = {}
    for name, p in params.items():
        shape = tuple(bind(d) for d in p.shape)
        heads = None if p.heads is None else bind(p.heads)
        out[name] = ParamInfo(name, shape, p.init, p.loc, p.derived, heads)
        if heads is None:
            continue
        if shape[0] % heads or shape[1] % heads:
            from ..errors import CompileError

            raise CompileError(f"parameter '{name}' is {shape[0]} x {shape[1]}, which "
                               f"{heads} heads do not divide into equal blocks")
        for k in range(heads):
            out[block_name(name, k)] = ParamInfo(
                block_name(name, k), (shape[0] // heads, shape[1] // heads), None, p.loc,
                derived=((1.0, name, False, k),))
    return out


__all__ = ["SCALAR", "CellInfo", "build_step_graph"]
