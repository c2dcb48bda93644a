"""The elementwise op registry: every elementwise op of the IR, defined once.

An entry holds everything the pipeline needs to know about one op:

- `name`, `arity`, and `function` (callable from specs as `name(a, ...)`); arithmetic
  (`+ - * /`, unary `-`) and the masks the derivative rules use are not functions;
- result sizing, the same for every elementwise op: all operands have one size, or are
  per-row scalars that broadcast (`graph.infer_size`, `checker._call`);
- `semantics`: the exact meaning, NaN, +-inf, ties and overflow included. The choices
  follow PyTorch, value and gradient, in float32 and float64;
- `reference`: the NumPy definition the reference executor runs (arguments are arrays
  of one dtype; the result has that dtype);
- `derivative(g, y, dy)`: one gradient node per operand (None: zero), built from
  primitives in graph `g`, for the node `y` (its operands are `y.inputs`) and the
  incoming gradient `dy`; rules reuse `y` where they can (sigmoid' = y(1-y));
- `llvm(m, b, *args)`: the LLVM IR of one element, for `m` a backends.llvm.MathLib (its
  `const`, `ftype`, `exp`, `tanh`, `log`, `sqrt`, `fabs`) and `b` an llvmlite IRBuilder;
- `c`: the float32 C expression of the GPU dialect; `{0}`, `{1}`, ... are the operands,
  each a side-effect-free expression that may be repeated.

Extension point: `register(Elementwise(...))` adds an op (language functions, checker,
lowering, autodiff and every backend read this table); `unregister(name)` removes one
again. Everything else in lstmc looks ops up here; no other file lists them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .graph import Graph, Node

Rule = Callable[["Graph", "Node", "Node"], "list[Node | None]"]

FAST = ("contract",)  # LLVM may fuse multiply-adds; never reassociate pointwise math


@dataclass(frozen=True, eq=False)
class Elementwise:
    """One elementwise op (see the module docstring for each field's contract)."""

    name: str
    arity: int
    semantics: str
    reference: Callable[..., np.ndarray]
    derivative: Rule
    llvm: Callable[..., Any]
    c: str
    function: bool = False  # callable from specs by `name`

    @property
    def value(self) -> str:  # printed IR names ops by `.value`, as for structural ops
        return self.name

    def __repr__(self) -> str:
        return f"<op {self.name}>"


REGISTRY: dict[str, Elementwise] = {}


def register(op: Elementwise) -> Elementwise:
    """Add an op; its name must be new. Returns the op for use as a constant."""
    if op.name in REGISTRY:
        raise ValueError(f"an elementwise op named '{op.name}' is already registered")
    if op.arity < 1 or op.c.count("{") < 1:
        raise ValueError(f"op '{op.name}': arity >= 1 and a C expression using its operands")
    REGISTRY[op.name] = op
    return op


def unregister(name: str) -> None:
    REGISTRY.pop(name)


def functions() -> dict[str, Elementwise]:
    """The ops a spec may call by name."""
    return {name: op for name, op in REGISTRY.items() if op.function}


# -- helpers for derivative rules ---------------------------------------------------------

def _fit(g: Graph, grad: Node, operand: Node) -> Node:
    """Undo broadcasting: a per-row scalar operand gets the row sum of its gradient."""
    from .graph import Op
    from .size import SCALAR

    if operand.size == grad.size:
        return grad
    if operand.size == SCALAR:
        return g.node(Op.SUM, (grad,))
    return g.broadcast(grad, operand.size)


def _fit_all(g: Graph, y: Node, grads: list[Node | None]) -> list[Node | None]:
    return [None if d is None else _fit(g, d, x) for d, x in zip(grads, y.inputs)]


def _unary(derivative: Callable[[Graph, Node, Node], Node]) -> Rule:
    """A rule `dy * f'(...)` for a unary op, f' given as (g, y, x) -> node."""
    return lambda g, y, dy: [g.mul(dy, derivative(g, y, y.inputs[0]))]


def _one(g: Graph) -> Node:
    return g.const(1.0)


def _errstate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """NumPy evaluation with IEEE results (inf, NaN) and no warnings."""
    def run(*args):
        with np.errstate(all="ignore"):
            return fn(*args)
    run.__doc__ = fn.__doc__
    return run


def _mask(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.astype(np.result_type(like))


def _llvm_mask(m, b, predicate: str, x, y):
    return b.uitofp(b.fcmp_ordered(predicate, x, y), m.ftype)


# -- the ops ------------------------------------------------------------------------------
# Arithmetic.

ADD = register(Elementwise(
    "add", 2, "IEEE a + b.", np.add,
    lambda g, y, dy: _fit_all(g, y, [dy, dy]),
    lambda m, b, x, y: b.fadd(x, y, flags=FAST), "(({0}) + ({1}))"))

SUB = register(Elementwise(
    "sub", 2, "IEEE a - b.", np.subtract,
    lambda g, y, dy: _fit_all(g, y, [dy, g.unary(NEG, dy)]),
    lambda m, b, x, y: b.fsub(x, y, flags=FAST), "(({0}) - ({1}))"))

MUL = register(Elementwise(
    "mul", 2, "IEEE a * b.", np.multiply,
    lambda g, y, dy: _fit_all(g, y, [g.mul(dy, y.inputs[1]), g.mul(dy, y.inputs[0])]),
    lambda m, b, x, y: b.fmul(x, y, flags=FAST), "(({0}) * ({1}))"))

DIV = register(Elementwise(
    "div", 2, "IEEE a / b (x/0 = +-inf, 0/0 = NaN). d/db = -dy * (y / b), as torch.",
    _errstate(np.divide),
    lambda g, y, dy: _fit_all(g, y, [g.div(dy, y.inputs[1]),
                                     g.unary(NEG, g.mul(dy, g.div(y, y.inputs[1])))]),
    lambda m, b, x, y: b.fdiv(x, y), "(({0}) / ({1}))"))

# Annotated: the rules of SUB, DIV and NEG itself refer to NEG before its assignment.
NEG: Elementwise = register(Elementwise(
    "neg", 1, "-a (flips the sign of zeros and NaNs).", np.negative,
    lambda g, y, dy: [g.unary(NEG, dy)],
    lambda m, b, x: b.fneg(x), "(-({0}))"))

# Masks: 1.0 where the comparison holds, else 0.0 (NaN compares false). No gradient.

GT = register(Elementwise(
    "gt", 2, "1 where a > b, else 0 (0 when either is NaN).",
    lambda a, b: _mask(np.greater(a, b), a),
    lambda g, y, dy: [None, None],
    lambda m, b, x, y: _llvm_mask(m, b, ">", x, y), "((({0}) > ({1})) ? 1.0f : 0.0f)"))

GE = register(Elementwise(
    "ge", 2, "1 where a >= b, else 0 (0 when either is NaN).",
    lambda a, b: _mask(np.greater_equal(a, b), a),
    lambda g, y, dy: [None, None],
    lambda m, b, x, y: _llvm_mask(m, b, ">=", x, y), "((({0}) >= ({1})) ? 1.0f : 0.0f)"))

EQ = register(Elementwise(
    "eq", 2, "1 where a == b, else 0 (0 when either is NaN; -0 == +0).",
    lambda a, b: _mask(np.equal(a, b), a),
    lambda g, y, dy: [None, None],
    lambda m, b, x, y: _llvm_mask(m, b, "==", x, y), "((({0}) == ({1})) ? 1.0f : 0.0f)"))


# Activations.

def _sigmoid(z: np.ndarray) -> np.ndarray:
    # torch's formula, in the argument's dtype: exp(-z) overflows to inf below
    # z = -88.72 (float32) / -709.78 (float64) and sigmoid is then exactly 0, as in torch.
    return 1 / (1 + np.exp(-z))


SIGMOID = register(Elementwise(
    "sigmoid", 1,
    "1 / (1 + exp(-z)) in the working dtype: exactly 0 where exp(-z) overflows "
    "(z < -88.72 in float32, z < -709.78 in float64) and 1 where it underflows, as torch; "
    "NaN -> NaN. Derivative dy * y * (1 - y).",
    _errstate(_sigmoid),
    _unary(lambda g, y, x: g.mul(y, g.sub(_one(g), y))),
    lambda m, b, x: m.sigmoid(b, x), "SIGMOIDF({0})", function=True))

TANH = register(Elementwise(
    "tanh", 1, "hyperbolic tangent; +-1 for large |z|, NaN -> NaN. Derivative dy * (1 - y^2).",
    np.tanh,
    _unary(lambda g, y, x: g.sub(_one(g), g.mul(y, y))),
    lambda m, b, x: m.tanh(b, x), "TANHF({0})", function=True))

RELU = register(Elementwise(
    "relu", 1,
    "max(z, 0) with NaN -> NaN (torch); -0 -> -0. Derivative: dy where y > 0 or y is NaN "
    "(torch's threshold_backward), else 0 (so relu'(0) = 0).",
    lambda z: np.where(z < 0, np.zeros_like(z), z),
    _unary(lambda g, y, x: g.sub(_one(g), g.binary(GE, g.const(0.0), y))),
    lambda m, b, x: b.select(b.fcmp_ordered("<", x, m.const(0.0)), m.const(0.0), x),
    "((({0}) < 0.0f) ? 0.0f : ({0}))", function=True))

EXP = register(Elementwise(
    "exp", 1,
    "e^z: +inf above the dtype's overflow (88.72 float32, 709.78 float64), denormals then "
    "exactly 0 far below (torch), NaN -> NaN. Derivative dy * y.",
    _errstate(np.exp),
    _unary(lambda g, y, x: y),
    lambda m, b, x: m.exp(b, x), "EXPF({0})", function=True))

LOG = register(Elementwise(
    "log", 1, "natural logarithm: log(0) = -inf, log(z < 0) = NaN, log(inf) = inf. "
    "Derivative dy / z.",
    _errstate(np.log),
    lambda g, y, dy: [g.div(dy, y.inputs[0])],
    lambda m, b, x: m.log(b, x), "LOGF({0})", function=True))

SQRT = register(Elementwise(
    "sqrt", 1, "square root: sqrt(z < 0) = NaN, sqrt(-0) = -0. Derivative dy / (2 y) "
    "(+inf at 0, as torch).",
    _errstate(np.sqrt),
    lambda g, y, dy: [g.div(dy, g.mul(g.const(2.0), y))],
    lambda m, b, x: m.sqrt(b, x), "SQRTF({0})", function=True))

ABS = register(Elementwise(
    "abs", 1, "|z|, NaN -> NaN. Derivative dy * sign(z) with sign(0) = sign(NaN) = 0 (torch).",
    np.abs,
    _unary(lambda g, y, x: g.sub(g.binary(GT, x, g.const(0.0)), g.binary(GT, g.const(0.0), x))),
    lambda m, b, x: m.fabs(b, x), "FABSF({0})", function=True))

SOFTSIGN = register(Elementwise(
    "softsign", 1, "z / (1 + |z|): NaN at +-inf (inf/inf, as torch). Derivative "
    "dy / (1 + |z|)^2, from z: (1 - |y|)^2 loses digits to cancellation for large |z|; "
    "the limit 0 at +-inf, where torch's composite rule gives inf/inf = NaN.",
    _errstate(lambda z: z / (1 + np.abs(z))),
    lambda g, y, dy: [g.div(dy, _square(g, g.add(_one(g), g.unary(ABS, y.inputs[0]))))],
    lambda m, b, x: b.fdiv(x, b.fadd(m.const(1.0), m.fabs(b, x))),
    "(({0}) / (1.0f + FABSF({0})))", function=True))


def _square(g: Graph, a: Node) -> Node:
    return g.mul(a, a)


# Selection. Gradients as torch.minimum / torch.maximum / torch.clamp.

def _half_tie(g: Graph, a: Node, b: Node) -> Node:
    return g.mul(g.const(0.5), g.binary(EQ, a, b))


def _select_rule(loser: Callable[[Node, Node], tuple[Node, Node]]) -> Rule:
    """Each operand gets dy unless it lost the comparison; ties split dy evenly; when
    either is NaN both get dy (torch). `loser(a, b)` orders the GT that says a lost."""
    def rule(g, y, dy):
        a, b = y.inputs
        share = [g.sub(g.sub(_one(g), g.binary(GT, *loser(a, b))), _half_tie(g, a, b)),
                 g.sub(g.sub(_one(g), g.binary(GT, *loser(b, a))), _half_tie(g, a, b))]
        return _fit_all(g, y, [g.mul(dy, s) for s in share])
    return rule


def _llvm_max(m, b, x, y):
    # NaN in either operand gives NaN: x when x is NaN (the compare is false), y when y is.
    chosen = b.select(b.fcmp_ordered("<", x, y), y, x)
    return b.select(b.fcmp_unordered("uno", y, y), y, chosen)


def _llvm_min(m, b, x, y):
    chosen = b.select(b.fcmp_ordered(">", x, y), y, x)
    return b.select(b.fcmp_unordered("uno", y, y), y, chosen)


MIN = register(Elementwise(
    "min", 2,
    "elementwise minimum; NaN if either operand is NaN (torch.minimum). Gradient: to the "
    "smaller operand, split evenly on ties, to both when either is NaN.",
    np.minimum,
    _select_rule(lambda a, b: (a, b)),  # a lost when a > b
    _llvm_min, "((({0}) > ({1}) || ({1}) != ({1})) ? ({1}) : ({0}))", function=True))

MAX = register(Elementwise(
    "max", 2,
    "elementwise maximum; NaN if either operand is NaN (torch.maximum). Gradient: to the "
    "larger operand, split evenly on ties, to both when either is NaN.",
    np.maximum,
    _select_rule(lambda a, b: (b, a)),  # a lost when b > a
    _llvm_max, "((({0}) < ({1}) || ({1}) != ({1})) ? ({1}) : ({0}))", function=True))


def _clip_rule(g, y, dy):
    z, lo, hi = y.inputs
    inside = g.mul(g.binary(GE, z, lo), g.binary(GE, hi, z))
    below = g.mul(g.binary(GT, lo, z), g.binary(GT, hi, lo))
    above = g.binary(MAX, g.binary(GT, z, hi), g.binary(GT, lo, hi))
    return _fit_all(g, y, [g.mul(dy, inside), g.mul(dy, below), g.mul(dy, above)])


CLIP = register(Elementwise(
    "clip", 3,
    "clip(z, lo, hi) = min(max(z, lo), hi): hi when lo > hi, NaN if any operand is NaN "
    "(torch.clamp with tensor bounds). Gradient as torch: to z where lo <= z <= hi, to lo "
    "where z < lo < hi, to hi where z > hi or hi < lo; nothing when an operand is NaN.",
    lambda z, lo, hi: np.minimum(np.maximum(z, lo), hi),
    _clip_rule,
    lambda m, b, z, lo, hi: _llvm_min(m, b, _llvm_max(m, b, z, lo), hi),
    "((({0}) < ({1}) || ({1}) != ({1})) ? (((({1}) > ({2}) || ({2}) != ({2})) ? ({2}) : ({1}))) "
    ": (((({0}) > ({2}) || ({2}) != ({2})) ? ({2}) : ({0}))))",
    function=True))


BUILTIN = frozenset(REGISTRY)
