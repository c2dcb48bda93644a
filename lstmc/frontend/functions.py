"""The functions a spec may call, with their arity and how their result is sized."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    name: str
    arity: tuple[int, ...]  # accepted argument counts
    result: str  # "elementwise": broadcast of the arguments; "reduce": one value per row
    doc: str


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in [
        Function("sigmoid", (1,), "elementwise", "logistic 1/(1+exp(-z))"),
        Function("tanh", (1,), "elementwise", "hyperbolic tangent"),
        Function("relu", (1,), "elementwise", "max(z, 0)"),
        Function("exp", (1,), "elementwise", "e^z"),
        Function("log", (1,), "elementwise", "natural logarithm"),
        Function("sqrt", (1,), "elementwise", "square root"),
        Function("abs", (1,), "elementwise", "|z|"),
        Function("softsign", (1,), "elementwise", "z/(1+|z|)"),
        Function("hard_sigmoid", (1,), "elementwise", "clip(0.2*z + 0.5, 0, 1) (ONNX)"),
        Function("min", (2,), "elementwise", "elementwise minimum"),
        Function("max", (2,), "elementwise", "elementwise maximum"),
        Function("clip", (3,), "elementwise", "clip(z, lo, hi) = min(max(z, lo), hi)"),
        Function("mean", (1,), "reduce", "mean across the units of a row"),
        Function("sum", (1,), "reduce", "sum across the units of a row"),
        Function("layernorm", (1, 2), "elementwise",
                 "layernorm(z[, eps]) = (z - mean(z)) / sqrt(var(z) + eps), eps 1e-5"),
    ]
}
