"""The spec's abstract syntax tree: plain dataclasses, each with its source position."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import Location
from ..ir.size import Size


@dataclass(frozen=True)
class Number:
    value: float
    loc: Location


@dataclass(frozen=True)
class Var:
    name: str
    primed: bool  # `c'` is the state's new value in this step
    loc: Location


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    loc: Location


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / ** < <= > >=
    left: Expr
    right: Expr
    loc: Location


@dataclass(frozen=True)
class Neg:
    operand: Expr
    loc: Location


@dataclass(frozen=True)
class Transpose:
    """`W.T`: only in a matrix expression, on the left of `@`."""

    name: str
    loc: Location


@dataclass(frozen=True)
class Slice:
    operand: Expr
    start: Size  # units start <= j < stop of the operand
    stop: Size
    loc: Location


@dataclass(frozen=True)
class MatMul:
    matrix: str | Expr  # a parameter's name, or a matrix expression (`(W - W.T)`, `W.T`)
    operand: Expr
    loc: Location  # position of the matrix


Expr = Number | Var | Call | BinOp | Neg | MatMul | Transpose | Slice


@dataclass(frozen=True)
class SizeRef:
    value: str | int | Size  # a name, an integer, or a compound size (`4*H`)
    loc: Location


@dataclass(frozen=True)
class Port:
    name: str
    size: SizeRef
    loc: Location


@dataclass(frozen=True)
class ParamDecl:
    name: str
    shape: tuple[SizeRef, ...] | None  # (n,) for a vector, (rows, cols) for a matrix
    init: float | str | None  # a constant, "eye" (identity); None: uniform(+-1/sqrt(H))
    loc: Location
    heads: SizeRef | None = None  # block-diagonal over this many heads


@dataclass(frozen=True)
class Assign:
    name: str
    primed: bool
    value: Expr
    loc: Location


@dataclass
class CellDecl:
    name: str
    input: Port
    output: Port
    states: list[Port] = field(default_factory=list)
    params: list[ParamDecl] = field(default_factory=list)
    assigns: list[Assign] = field(default_factory=list)
    loc: Location | None = None
    # Inputs after the first (`cell c(x: I, dt: 1)`): passed to forward by name.
    extra_inputs: list[Port] = field(default_factory=list)


def children(expr: Expr) -> tuple[Expr, ...]:
    """The operands of an expression, left to right."""
    if isinstance(expr, BinOp):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    if isinstance(expr, (Neg, MatMul, Slice)):
        return (expr.operand,)
    return ()


def fold(root: Expr, visit, enter=None):
    """`visit(expr, results of its children)` for every node of `root`, children first,
    left to right; returns root's result. `enter(expr)`, if given, runs when a node is
    first reached, before its children. A loop with its own stack, not a recursion:
    expressions of any depth (10,000 nested calls, 100,000-term sums) are folded."""
    results: list = []
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        expr, ready = stack.pop()
        if ready:
            count = len(children(expr))
            args = results[len(results) - count:] if count else []
            if count:
                del results[len(results) - count:]
            results.append(visit(expr, args))
            continue
        if enter is not None:
            enter(expr)
        stack.append((expr, True))
        stack.extend((c, False) for c in reversed(children(expr)))
    return results[0]


def walk(root: Expr):
    """Every node of `root`, parents before children (no recursion)."""
    stack = [root]
    while stack:
        expr = stack.pop()
        yield expr
        stack.extend(reversed(children(expr)))


def number_of(expr: Expr, args: list[float | None]) -> float | None:
    """The value of one node of numbers only, given its operands' values (None: not a
    number), with IEEE float64 results; None if it reads anything else."""
    if isinstance(expr, Number):
        return expr.value
    if None in args or not isinstance(expr, (Neg, BinOp)):
        return None
    if isinstance(expr, Neg):
        return -args[0]  # type: ignore[operator]
    a, b = args
    with np.errstate(all="ignore"):
        x, y = np.float64(a), np.float64(b)
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y,
                 "**": np.power(x, y)}.get(expr.op)
    return None if value is None else float(value)


def constant_values(root: Expr) -> dict[int, float | None]:
    """constant_value of every node of `root`, by the node's id, in one fold (a caller
    asking node by node down a chain would fold each link's operand again)."""
    values: dict[int, float | None] = {}

    def visit(expr: Expr, args: list[float | None]) -> float | None:
        values[id(expr)] = value = number_of(expr, args)
        return value
    fold(root, visit)
    return values


def constant_value(root: Expr) -> float | None:
    """The value of an expression of numbers only (`2`, `-0.5`, `1/3`, `2 ** -1`), with
    IEEE float64 results; None if it reads anything else. Where the language wants a
    number (an exponent, elu's alpha), any such expression is one."""
    return fold(root, number_of)
