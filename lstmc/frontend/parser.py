"""Parse spec text into AST cells with lark (LALR), turning parse failures into
`path:line:col` diagnostics that say what was expected."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any, cast

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args

from ..errors import SpecError, SpecSyntaxError
from ..ir.size import Size
from . import ast
from .checker import check_size_range
from .source import Source

# How terminals matched by a regular expression are named in messages.
_FRIENDLY = {"NAME": "a name", "NUMBER": "a number", "PRIME": "a prime (')", "MINUS": "'-'"}

_TRANSPOSE = ("the transpose of a parameter matrix is written `W.T` (`W.T @ h`, "
              "`(W - W.T) @ h`)")
_LOGIC = ("there are no logical operators: multiply masks for 'and' (`(a > 0) * (b > 0)`), "
          "take their max for 'or', and write `1 - m` for 'not'")
_EQUALITY = ("there is no equality test: comparisons are <, <=, > and >=; a mask of a == b "
             "is `(a >= b) * (a <= b)`")
_SLICE = ("a part of a vector is a slice `v[a:b]`, units a <= j < b, the bounds sizes "
          "(`gates[H:2*H]`; one unit: `v[0:1]`)")
# Characters people reach for that the language spells otherwise: what to write instead.
_INSTEAD = {
    "^": "a power is written `a ** c`; " + _TRANSPOSE,
    "%": "the remainder is written `mod(a, b)` (the sign of b, as Python's %)",
    "&": _LOGIC, "|": _LOGIC, "~": _LOGIC,
    "!": _LOGIC,  # `!=`: see _syntax_error
    "[": _SLICE, "]": _SLICE,
    ".": "there are no attributes or methods; " + _TRANSPOSE,  # `.T` is the one
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(source: Source) -> list[ast.CellDecl]:
    try:
        tree = _parser().parse(source.text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(source, exc) from None
    try:
        return _ToAst(source).transform(tree)
    except lark.exceptions.VisitError as exc:  # a check made while building the AST
        if isinstance(exc.orig_exc, SpecError):
            raise exc.orig_exc from None
        raise


def _describe_terminal(name: str) -> str:
    if name in _FRIENDLY:
        return _FRIENDLY[name]
    if name == "$END":
        return "end of file"
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"'{pattern.value}'"
    return name.lower()


def _expected(names) -> str:
    described = sorted({_describe_terminal(n) for n in names})
    if len(described) == 1:
        return described[0]
    return "one of " + ", ".join(described)


def _syntax_error(source: Source, exc: lark.exceptions.UnexpectedInput) -> SpecSyntaxError:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        # lark declares pos_in_stream None on UnexpectedInput; UnexpectedCharacters sets
        # it to the lexer's position, an int
        pos = cast(int, exc.pos_in_stream)
        char = source.text[pos]
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        message = f"unexpected character {shown}"
        if exc.allowed:
            message += f"; expected {_expected(exc.allowed)}"
        hint = _INSTEAD.get(char, "")
        if source.text[pos:pos + 2] == "!=":
            hint = _EQUALITY
        return SpecSyntaxError(message, source.location(exc.line, exc.column), hint=hint)
    if isinstance(exc, lark.exceptions.UnexpectedEOF) or (
        isinstance(exc, lark.exceptions.UnexpectedToken) and exc.token.type == "$END"
    ):
        # The end of the last line with text on it, by Source's one definition of a line.
        lines = source.lines
        line = max((i for i, text in enumerate(lines, 1) if text.strip()), default=1)
        column = len(lines[line - 1].rstrip()) + 1
        return SpecSyntaxError(
            f"unexpected end of file; expected {_expected(exc.expected)}",
            source.location(line, column),
        )
    assert isinstance(exc, lark.exceptions.UnexpectedToken)
    token = exc.token
    shown = {"NAME": f"name '{token.value}'", "NUMBER": f"number {token.value}",
             "PRIME": "prime (')"}.get(token.type, f"'{token.value}'")
    hint = _INSTEAD.get(token.value, "")
    following = source.text[token.end_pos:token.end_pos + 1] if token.end_pos else ""
    if token.value in ("=", "<=", ">=") and following == "=":  # `a == b`, `a <== b`
        hint = _EQUALITY
    elif token.value in ("<", "<=", ">", ">="):  # the lowest precedence: only a chain
        hint = "comparisons do not chain: write `(a < b) * (b < c)`"
    return SpecSyntaxError(
        f"unexpected {shown}; expected {_expected(exc.expected)}",
        source.location(token.line, token.column), hint=hint,
    )


def _binop_rule(op: str) -> Callable[[Any, Any, list], ast.BinOp]:
    """_ToAst's rule for a binary operator: a method (v_args wraps it with the class's)."""
    def build(self, meta, children) -> ast.BinOp:
        left, *_, right = children  # `-` keeps its token between the operands
        return ast.BinOp(op, left, right, self._loc(meta))

    return build


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Lark tree to AST; every node keeps the location of where it starts. Lark's
    non-recursive transformer, so trees of any depth convert (the LALR parser itself
    keeps its stack in a list)."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _loc(self, meta_or_token):
        return self.source.location(meta_or_token.line, meta_or_token.column)

    def start(self, meta, cells):
        return list(cells)

    def cell(self, meta, children):
        name, (input_port, *extra_inputs), output_port, *stmts = children
        cell = ast.CellDecl(str(name), input_port, output_port, loc=self._loc(name),
                            extra_inputs=extra_inputs)
        for stmt in stmts:
            if isinstance(stmt, list):  # a `state` line declares one or more ports
                cell.states.extend(stmt)
            elif isinstance(stmt, tuple):  # a `param` line
                cell.params.extend(stmt)
            else:
                cell.assigns.append(stmt)
        return cell

    def inputs(self, meta, ports):
        return tuple(ports)

    def port(self, meta, children):
        name, size = children
        return ast.Port(str(name), size, self._loc(name))

    def size(self, meta, children):
        """A name, a positive integer, or a sum of multiples (`4*H`, `2*H + 1`): the
        checker's atom for it (a name, an int, or a compound Size)."""
        total = self._size_sum(children, "a size must be a name or a positive integer, not "
                                         "{} (or a sum of their multiples: `4*H`, `2*H + 1`)")
        first = children[0][0] if isinstance(children[0], tuple) else children[0]
        return ast.SizeRef(total.atom, self._loc(first))

    def bound(self, meta, children):
        """A slice bound: a size that may be 0."""
        return self._size_sum(children, "a slice bound must be a size (`0`, `H`, `2*H`), not {}",
                              zero=True)

    def _size_sum(self, children, message: str, zero: bool = False) -> Size:
        total = Size()
        for term in children:
            number, name = term if isinstance(term, tuple) else (
                (term, None) if term.type == "NUMBER" else (None, term))
            count = 1
            if number is not None:
                allowed = number.value.isdigit() and (int(number.value) >= 1 or (
                    zero and name is None and len(children) == 1))
                if not allowed:
                    raise SpecSyntaxError(message.format(number.value), self._loc(number))
                count = int(number.value)
            total = total + (Size.of(str(name)).scaled(count) if name is not None else count)
            check_size_range(total, self._loc(number if number is not None else name))
        return total

    def size_term(self, meta, children):
        return children[0]

    def scaled_size(self, meta, children):
        number, name = children
        return (number, name)

    def slice(self, meta, children):
        operand, start, stop = children
        return ast.Slice(operand, start, stop, self._loc(meta))

    def state_decl(self, meta, ports):
        return list(ports)

    def param_decl(self, meta, items):
        return tuple(items)

    def param_item(self, meta, children):
        name, shape, heads, init = children
        if isinstance(init, Token):  # a named initial value: only the identity is known
            if str(init) != "eye":
                raise SpecSyntaxError(f"unknown initial value '{init}'", self._loc(init),
                                      hint="a parameter starts at a number (`= 0`, `= 1.5`), "
                                           "at the identity (`= eye`, a matrix), or at "
                                           "PyTorch's uniform(-1/sqrt(H), 1/sqrt(H)) when "
                                           "no value is given")
            init = "eye"
        return ast.ParamDecl(str(name), shape, init, self._loc(name), heads)

    def named_init(self, meta, children):
        return children[0]

    def vector_shape(self, meta, children):
        return (children[0],)

    def matrix_shape(self, meta, children):
        return (children[0], children[1])

    def signed_number(self, meta, children):
        sign, number = children
        value = self._finite(number)
        return -value if sign is not None else value

    def assign(self, meta, children):
        (name, primed), value = children
        return ast.Assign(name, primed, value, self._loc(meta))

    def target(self, meta, children):
        name, prime = children
        return (str(name), prime is not None)

    def number(self, meta, children):
        return ast.Number(self._finite(children[0]), self._loc(meta))

    def _finite(self, number) -> float:
        """A NUMBER token's value; one past float64's range (`1e400`) would silently be
        infinity."""
        value = float(number)
        if math.isinf(value):
            raise SpecSyntaxError(f"the number {number.value} is too large: its float64 "
                                  f"value would be infinite (the largest is about 1.8e308)",
                                  self._loc(number))
        return value

    def var(self, meta, children):
        name, prime = children
        return ast.Var(str(name), prime is not None, self._loc(meta))

    def call(self, meta, children):
        name, *args = children
        args = tuple(a for a in args if a is not None)
        return ast.Call(str(name), args, self._loc(meta))

    add = _binop_rule("+")
    sub = _binop_rule("-")
    mul = _binop_rule("*")
    div = _binop_rule("/")
    pow = _binop_rule("**")
    lt = _binop_rule("<")
    le = _binop_rule("<=")
    gt = _binop_rule(">")
    ge = _binop_rule(">=")

    def neg(self, meta, children):
        _, operand = children
        return ast.Neg(operand, self._loc(meta))

    def unary(self, meta, children):  # unary plus
        return children[0]

    def matmul(self, meta, children):
        name, operand = children
        return ast.MatMul(str(name), operand, self._loc(name))

    def matmul_transposed(self, meta, children):
        name, operand = children
        return ast.MatMul(ast.Transpose(str(name), self._loc(name)), operand, self._loc(name))

    def matmul_expr(self, meta, children):
        matrix, operand = children
        return ast.MatMul(matrix, operand, self._loc(meta))

    def transpose(self, meta, children):
        return ast.Transpose(str(children[0]), self._loc(meta))


__all__ = ["Token", "parse"]
