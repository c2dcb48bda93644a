"""The spec's abstract syntax tree: plain dataclasses, each with its source position."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Location


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
    args: tuple["Expr", ...]
    loc: Location


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * /
    left: "Expr"
    right: "Expr"
    loc: Location


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    loc: Location


@dataclass(frozen=True)
class MatMul:
    matrix: str
    operand: "Expr"
    loc: Location  # position of the matrix name


Expr = Number | Var | Call | BinOp | Neg | MatMul


@dataclass(frozen=True)
class SizeRef:
    value: str | int
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
    init: float | None  # a constant initial value; None: uniform(-1/sqrt(H), 1/sqrt(H))
    loc: Location


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
