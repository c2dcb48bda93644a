"""The elementwise op registry: every elementwise op of the IR, defined once.

An entry holds everything the pipeline needs to know about one op:

- `name`, `arity`, and `function` (callable from specs as `name(a, ...)`); arithmetic
  (`+ - * /`, unary `-`, `**`) and the comparisons (`<`, `<=`, `>`, `>=`, also used by
  derivative rules as masks) are operators, not functions;
- `optional`: trailing operands a spec may leave out, each `(what it is, default)` as in
  `torch.nn.functional` (`elu(z[, alpha])`); a spec writes them as numbers, the step graph
  holds them as constant operands, so every backend reads them like any operand;
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

import math
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
    optional: tuple[tuple[str, float], ...] = ()  # trailing (what, default); numbers in specs

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
    if len(op.optional) >= op.arity:
        raise ValueError(f"op '{op.name}': at least one operand must be required")
    REGISTRY[op.name] = op
    return op


def unregister(name: str) -> None:
    REGISTRY.pop(name)


def fold(op: Elementwise, values: list[float]) -> float | None:
    """The op applied to constants, by its reference definition in float64; None where the
    result is not finite (a kernel has no literal for it), so the node stays as written."""
    with np.errstate(all="ignore"):
        result = float(np.asarray(op.reference(*(np.array(v, np.float64) for v in values))))
    return result if math.isfinite(result) else None


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


# -- the functions researchers use (torch.nn.functional's definitions and defaults) ------

def _where(g: Graph, cond: Node, a: Node, b: Node) -> Node:
    return g.node(WHERE, (cond, a, b))


def _constant(node: Node, what: str) -> float:
    """The value of an operand the language requires to be a number (an exponent, elu's
    alpha): a constant node of the step graph."""
    from .graph import IRError, Op

    if node.op != Op.CONST:
        raise IRError(f"the {what} must be a constant node, got {node.op.value}")
    return float(node.attr)


def _select(cond: Any, a: Any, b: Any) -> np.ndarray:
    return np.asarray(np.where(cond, a, b))


def _llvm_gt(m, b, x, value: float):
    return b.fcmp_ordered(">", x, m.const(value))


WHERE: Elementwise = register(Elementwise(
    "where", 3,
    "where(cond, a, b): a where cond is nonzero, else b (torch.where with cond != 0; a NaN "
    "cond counts as true, as bool(NaN) in torch). Gradient: dy to a where cond holds, to b "
    "elsewhere (the other branch gets exactly 0, even if it is inf or NaN); none to cond.",
    lambda c, a, b: _select(c != 0, a, b),
    lambda g, y, dy: _fit_all(g, y, [
        None,
        _where(g, y.inputs[0], dy, g.const(0.0)),
        _where(g, y.inputs[0], g.const(0.0), dy)]),
    lambda m, b, c, x, y: b.select(b.fcmp_unordered("une", c, m.const(0.0)), x, y),
    "((({0}) != 0.0f) ? ({1}) : ({2}))", function=True))

SOFTPLUS = register(Elementwise(
    "softplus", 1,
    "log(1 + e^z), torch's threshold: z itself where z > 20, log1p(exp(z)) below, so it "
    "never overflows (softplus(inf) = inf, softplus(-inf) = 0, NaN -> NaN). Derivative "
    "dy where z > 20, else dy * sigmoid(z) (0 at -inf).",
    _errstate(lambda z: _select(z > 20, z, np.log1p(np.exp(z)))),
    _unary(lambda g, y, x: _where(g, g.binary(GT, x, g.const(20.0)), _one(g),
                                  g.unary(SIGMOID, x))),
    lambda m, b, x: b.select(_llvm_gt(m, b, x, 20.0), x, m.log1p(b, m.exp(b, x))),
    "((({0}) > 20.0f) ? ({0}) : LOG1PF(EXPF({0})))", function=True))


LOGSIGMOID = register(Elementwise(
    "logsigmoid", 1,
    "log(sigmoid(z)) = min(z, 0) - log1p(exp(-|z|)) (torch's form): never overflows, "
    "-inf only at z = -inf, z itself far below 0, 0 at +inf, NaN -> NaN. Derivative "
    "dy * sigmoid(-z) (1 at -inf, 0 at +inf).",
    _errstate(lambda z: np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))),
    _unary(lambda g, y, x: g.unary(SIGMOID, g.unary(NEG, x))),
    lambda m, b, x: b.fsub(b.select(b.fcmp_ordered("<", x, m.const(0.0)), x, m.const(0.0)),
                           m.log1p(b, m.exp(b, b.fneg(m.fabs(b, x))))),
    "(((({0}) < 0.0f) ? ({0}) : 0.0f) - LOG1PF(EXPF(-FABSF({0}))))", function=True))


def _elu_rule(g, y, dy):
    # torch's elu_backward from the input: dy where z > 0, else dy * alpha * e^z (NaN at
    # a NaN z, as torch's vectorized kernel)
    z, alpha = y.inputs
    positive = g.binary(GT, z, g.const(0.0))
    return [_where(g, positive, dy, g.mul(g.mul(dy, alpha), g.unary(EXP, z))), None]


ELU = register(Elementwise(
    "elu", 2,
    "elu(z[, alpha]), alpha 1: z where z > 0, else alpha * expm1(z) (torch; NaN -> NaN, "
    "-inf -> -alpha). Derivative dy where z > 0, else dy * alpha * e^z (NaN at NaN, as "
    "torch's vectorized kernels). alpha must be a number.",
    _errstate(lambda z, alpha: np.where(z > 0, z, np.expm1(z) * alpha)),
    _elu_rule,
    lambda m, b, x, alpha: b.select(_llvm_gt(m, b, x, 0.0), x, b.fmul(m.expm1(b, x), alpha)),
    "((({0}) > 0.0f) ? ({0}) : EXPM1F({0}) * ({1}))", function=True,
    optional=(("alpha", 1.0),)))

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _selu_rule(g, y, dy):
    (z,) = y.inputs
    positive = g.binary(GT, z, g.const(0.0))
    return [_where(g, positive, g.mul(dy, g.const(SELU_SCALE)),
                   g.mul(g.mul(dy, g.const(SELU_ALPHA * SELU_SCALE)), g.unary(EXP, z)))]


SELU = register(Elementwise(
    "selu", 1,
    "scale * z where z > 0, else scale * alpha * expm1(z), with torch's alpha = 1.6732632 "
    "and scale = 1.0507010 (Klambauer et al. 2017). Derivative as elu's, times scale.",
    _errstate(lambda z: np.where(z > 0, z * SELU_SCALE,
                                 np.expm1(z) * (SELU_ALPHA * SELU_SCALE))),
    _selu_rule,
    lambda m, b, x: b.select(_llvm_gt(m, b, x, 0.0), b.fmul(x, m.const(SELU_SCALE)),
                             b.fmul(m.expm1(b, x), m.const(SELU_ALPHA * SELU_SCALE))),
    f"((({{0}}) > 0.0f) ? ({{0}}) * {SELU_SCALE!r}f : EXPM1F({{0}}) * "
    f"{SELU_ALPHA * SELU_SCALE!r}f)", function=True))


def _erf(z: np.ndarray) -> np.ndarray:
    # NumPy has no erf; math.erf per element (in float64, rounded to z's dtype) is exact
    # to the last bit that matters and the reference executor favours obvious over fast.
    return np.vectorize(math.erf, otypes=[np.float64])(z).astype(z.dtype)


SQRT1_2 = 0.70710678118654752440
INV_SQRT_2PI = 0.39894228040143267794  # torch's kBeta = M_2_SQRTPI * M_SQRT1_2 * 0.5

ERF = register(Elementwise(
    "erf", 1,
    "the error function: +-1 at +-inf, NaN -> NaN. Derivative dy * 2/sqrt(pi) * e^(-z^2).",
    lambda z: _erf(np.asarray(z)),
    _unary(lambda g, y, x: g.mul(g.const(2 / math.sqrt(math.pi)),
                                 g.unary(EXP, g.unary(NEG, g.mul(x, x))))),
    lambda m, b, x: m.erf(b, x), "ERFF({0})", function=True))


def _gelu_rule(g, y, dy):
    # torch's GeluBackward (erf form): dy * (cdf + z * pdf)
    (z,) = y.inputs
    cdf = g.mul(g.const(0.5), g.add(_one(g), g.unary(ERF, g.mul(z, g.const(SQRT1_2)))))
    pdf = g.mul(g.unary(EXP, g.mul(g.const(-0.5), g.mul(z, z))), g.const(INV_SQRT_2PI))
    return [g.mul(dy, g.add(cdf, g.mul(z, pdf)))]


GELU = register(Elementwise(
    "gelu", 1,
    "z * Phi(z) = z/2 * (1 + erf(z / sqrt 2)) (torch's default, exact form): gelu(+inf) = "
    "inf (torch's float64 and scalar kernels; its vectorized float32 kernel gives NaN), "
    "gelu(-inf) = NaN (-inf * 0, as torch), NaN -> NaN. Derivative dy * (Phi(z) + z * "
    "phi(z)) as torch: NaN at +-inf.",
    lambda z: z * 0.5 * (1 + _erf(z * SQRT1_2)),
    _gelu_rule,
    lambda m, b, x: b.fmul(b.fmul(x, m.const(0.5)),
                           b.fadd(m.const(1.0), m.erf(b, b.fmul(x, m.const(SQRT1_2))))),
    "(({0}) * 0.5f * (1.0f + ERFF(({0}) * 0.70710678118654752f)))", function=True))

GELU_BETA = 0.79788456080286535588  # sqrt(2 / pi)
GELU_KAPPA = 0.044715


def _gelu_tanh_inner(g: Graph, z: Node) -> Node:
    return g.mul(g.const(GELU_BETA), g.add(z, g.mul(g.const(GELU_KAPPA),
                                                     g.mul(g.mul(z, z), z))))


def _gelu_tanh_rule(g, y, dy):
    # torch's terms, 0.5 (1 + t) + 0.5 z (1 - t^2) u', with 1 + t = 2 s and
    # 1 - t^2 = 4 s (1 - s) for s = sigmoid(2u): no cancellation where t is near -1
    (z,) = y.inputs
    s = g.unary(SIGMOID, g.mul(g.const(2.0), _gelu_tanh_inner(g, z)))
    inner_derivative = g.mul(g.const(2 * GELU_BETA),
                             g.add(_one(g), g.mul(g.const(3 * GELU_KAPPA), g.mul(z, z))))
    right = g.mul(g.mul(z, g.mul(s, g.sub(_one(g), s))), inner_derivative)
    return [g.mul(dy, g.add(s, right))]


def _gelu_tanh_reference(z: np.ndarray) -> np.ndarray:
    u = GELU_BETA * (z + GELU_KAPPA * (z * z * z))
    return z / (1 + np.exp(-2 * u))


def _llvm_gelu_tanh(m, b, x):
    cube = b.fmul(b.fmul(x, x), x)
    inner = b.fmul(m.const(GELU_BETA), b.fadd(x, b.fmul(m.const(GELU_KAPPA), cube)))
    return b.fdiv(x, b.fadd(m.const(1.0), m.exp(b, b.fmul(m.const(-2.0), inner))))


GELU_TANH = register(Elementwise(
    "gelu_tanh", 1,
    "z/2 * (1 + tanh(u)), u = sqrt(2/pi) * (z + 0.044715 z^3) (torch's approximate='tanh'), "
    "computed as z / (1 + e^(-2u)), which does not cancel where tanh(u) is near -1 "
    "(torch's float32 loses 4 digits at z = -3): +inf -> inf, -inf -> NaN (-inf * 0, as "
    "torch), NaN -> NaN. Derivative torch's, in the same cancellation-free form (NaN where "
    "z^2 overflows, as torch).",
    _errstate(_gelu_tanh_reference),
    _gelu_tanh_rule,
    _llvm_gelu_tanh,
    "(({0}) / (1.0f + EXPF(-1.5957691216057307f * (({0}) + 0.044715f * "
    "(({0}) * ({0}) * ({0}))))))", function=True))


def _silu_rule(g, y, dy):
    # torch's SiluBackward: dy * s * (1 + z * (1 - s)), s = sigmoid(z)
    (z,) = y.inputs
    s = g.unary(SIGMOID, z)
    return [g.mul(dy, g.mul(s, g.add(_one(g), g.mul(z, g.sub(_one(g), s)))))]


SILU = register(Elementwise(
    "silu", 1,
    "z * sigmoid(z), computed as z / (1 + e^-z) (torch): +inf -> inf, -inf -> NaN "
    "(-inf / inf, as torch), NaN -> NaN. Derivative dy * s * (1 + z (1 - s)), s = "
    "sigmoid(z), as torch.",
    _errstate(lambda z: z / (1 + np.exp(-z))),
    _silu_rule,
    lambda m, b, x: b.fdiv(x, b.fadd(m.const(1.0), m.exp(b, b.fneg(x)))),
    "(({0}) / (1.0f + EXPF(-({0}))))", function=True))


def _leaky_relu_rule(g, y, dy):
    z, slope = y.inputs
    return [_where(g, g.binary(GT, z, g.const(0.0)), dy, g.mul(dy, slope)), None]


LEAKY_RELU = register(Elementwise(
    "leaky_relu", 2,
    "leaky_relu(z[, slope]), slope 0.01: z where z > 0, else z * slope (torch; NaN -> "
    "NaN). Derivative dy where z > 0, else dy * slope (also at 0 and NaN, as torch). "
    "slope must be a number.",
    lambda z, slope: np.where(z > 0, z, z * slope),
    _leaky_relu_rule,
    lambda m, b, x, slope: b.select(_llvm_gt(m, b, x, 0.0), x, b.fmul(x, slope)),
    "((({0}) > 0.0f) ? ({0}) : ({0}) * ({1}))", function=True,
    optional=(("slope", 0.01),)))

SIN: Elementwise = register(Elementwise(
    "sin", 1, "sine (radians): NaN at +-inf and NaN. Derivative dy * cos(z).",
    _errstate(np.sin),
    _unary(lambda g, y, x: g.unary(COS, x)),
    lambda m, b, x: m.sin(b, x), "SINF({0})", function=True))

COS: Elementwise = register(Elementwise(
    "cos", 1, "cosine (radians): NaN at +-inf and NaN. Derivative dy * -sin(z).",
    _errstate(np.cos),
    _unary(lambda g, y, x: g.unary(NEG, g.unary(SIN, x))),
    lambda m, b, x: m.cos(b, x), "COSF({0})", function=True))

FLOOR = register(Elementwise(
    "floor", 1, "the largest integer <= z; +-inf, +-0 and NaN unchanged. Gradient 0 "
    "(torch).",
    np.floor,
    lambda g, y, dy: [None],
    lambda m, b, x: m.floor(b, x), "FLOORF({0})", function=True))


def _remainder(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r = np.fmod(a, b)
    return np.where((r != 0) & ((b < 0) != (r < 0)), r + b, r)


def _llvm_remainder(m, b, x, y):
    r = b.frem(x, y)
    zero = m.const(0.0)
    fix = b.and_(b.fcmp_ordered("!=", r, zero),
                 b.icmp_unsigned("!=", b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", r, zero)))
    return b.select(fix, b.fadd(r, y), r)


def _floor_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # torch's div_floor_floating, the quotient its remainder gradient uses
    r = np.fmod(a, b)
    q = (a - r) / b
    q = np.where((r != 0) & ((b < 0) != (r < 0)), q - 1, q)
    floored = np.floor(q)
    floored = np.where(q - floored > 0.5, floored + 1, floored)
    floored = np.where(q == 0, np.copysign(np.zeros_like(q), a / b), floored)
    return np.where(b == 0, a / b, floored)


def _llvm_floor_divide(m, b, x, y):
    zero = m.const(0.0)
    r = b.frem(x, y)
    q = b.fdiv(b.fsub(x, r), y)
    fix = b.and_(b.fcmp_ordered("!=", r, zero),
                 b.icmp_unsigned("!=", b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", r, zero)))
    q = b.select(fix, b.fsub(q, m.const(1.0)), q)
    floored = m.floor(b, q)
    floored = b.select(b.fcmp_ordered(">", b.fsub(q, floored), m.const(0.5)),
                       b.fadd(floored, m.const(1.0)), floored)
    floored = b.select(b.fcmp_ordered("==", q, zero),
                       m.copysign(b, zero, b.fdiv(x, y)), floored)
    return b.select(b.fcmp_ordered("==", y, zero), b.fdiv(x, y), floored)


FLOOR_DIVIDE = register(Elementwise(
    "floor_divide", 2,
    "floor(a / b) as torch's div(rounding_mode='floor') computes it: (a - fmod(a, b)) / b, "
    "corrected to the floor, so that it agrees with mod; a / b where b = 0. Gradient 0. "
    "Not a function of the language: mod's derivative rule uses it.",
    _errstate(_floor_divide),
    lambda g, y, dy: [None, None],
    _llvm_floor_divide, "FLOORDIVF({0}, {1})"))

MOD = register(Elementwise(
    "mod", 2,
    "mod(a, b) = a - b * floor(a / b), the sign of b (Python's %, torch.remainder), "
    "computed as torch: fmod(a, b), plus b where the signs differ. NaN where b = 0 or a "
    "is infinite; mod(a, +-inf) = a or +-inf as Python. Gradient as torch: dy to a, "
    "-dy * floor_divide(a, b) to b.",
    _errstate(_remainder),
    lambda g, y, dy: _fit_all(g, y, [dy, g.unary(NEG, g.mul(dy, g.binary(FLOOR_DIVIDE,
                                                                          *y.inputs)))]),
    _llvm_remainder, "REMAINDERF({0}, {1})", function=True))


def _pow(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    # torch's specializations of pow(tensor, scalar) that differ from C's pow at edges:
    # 0.5 is sqrt (sqrt(-0) = -0, sqrt(-inf) = NaN), -0.5 is 1 / sqrt
    return np.where(c == 0.5, np.sqrt(a), np.where(c == -0.5, 1 / np.sqrt(a), np.power(a, c)))


def _pow_rule(g, y, dy):
    # torch's pow_backward: dy * c * a^(c - 1), and 0 when c = 0
    a, exponent = y.inputs
    c = _constant(exponent, "exponent of **")
    if c == 0:
        return [None, None]
    return [g.mul(dy, g.mul(exponent, g.binary(POW, a, g.const(c - 1)))), None]


def _llvm_pow(m, b, x, c):
    # c is a constant: LLVM folds the selects to one branch
    root = m.sqrt(b, x)
    general = m.pow(b, x, c)
    return b.select(b.fcmp_ordered("==", c, m.const(0.5)), root,
                    b.select(b.fcmp_ordered("==", c, m.const(-0.5)),
                             b.fdiv(m.const(1.0), root), general))


POW: Elementwise = register(Elementwise(
    "pow", 2,
    "a ** c for a constant c (torch.pow with a scalar exponent): C's pow (a ** 0 = 1 even "
    "for NaN, negative a to a non-integer power is NaN), except c = 0.5 is sqrt(a) and "
    "c = -0.5 is 1/sqrt(a), as torch (so (-inf) ** 0.5 = NaN, (-0) ** 0.5 = -0). "
    "Derivative dy * c * a ** (c - 1), 0 when c = 0 (torch).",
    _errstate(_pow),
    _pow_rule,
    _llvm_pow,
    "((({1}) == 0.5f) ? SQRTF({0}) : (({1}) == -0.5f) ? (1.0f / SQRTF({0})) "
    ": POWF({0}, {1}))"))


BUILTIN = frozenset(REGISTRY)
