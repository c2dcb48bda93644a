"""ONNX's recurrent activation functions as expressions of the spec language.

ONNX names them in the `activations` attribute of LSTM, GRU and RNN; `activation_alpha`
and `activation_beta` are consumed in order by the activations that take them. Where the
specification leaves a default open (Affine, ScaledTanh), lstmc follows onnxruntime
(rnn_helpers.cc): a missing alpha or beta of Affine and ScaledTanh is 0 (so both are
then constant zero), and so is a missing alpha of ThresholdedRelu (the operator's own
default is 1), as checked against onnxruntime in tests/test_onnx_import.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OnnxError


@dataclass(frozen=True)
class Activation:
    name: str  # as ONNX spells it
    template: str  # the expression; {z} the argument, {a} alpha, {b} beta
    alpha: float | None = None  # default; None: takes no alpha
    beta: float | None = None


ACTIVATIONS = {a.name.lower(): a for a in [
    Activation("Sigmoid", "sigmoid({z})"),
    Activation("Tanh", "tanh({z})"),
    Activation("Relu", "relu({z})"),
    Activation("Softsign", "softsign({z})"),
    # log(1 + e^z), written so that neither exp overflows nor small values cancel
    Activation("Softplus", "(max({z}, 0) + log(1 + exp(-abs({z}))))"),
    Activation("Affine", "({a} * {z} + {b})", alpha=0.0, beta=0.0),
    Activation("LeakyRelu", "(max({z}, 0) + {a} * min({z}, 0))", alpha=0.01),
    Activation("ScaledTanh", "({a} * tanh({b} * {z}))", alpha=0.0, beta=0.0),
    Activation("HardSigmoid", "clip({a} * {z} + {b}, 0, 1)", alpha=0.2, beta=0.5),
    Activation("Elu", "(max({z}, 0) + {a} * (exp(min({z}, 0)) - 1))", alpha=1.0),
    Activation("ThresholdedRelu", "where({z} > {a}, {z}, 0)", alpha=0.0),
]}

# Activations ONNX names that lstmc refuses by name, with the reason (none at present:
# ThresholdedRelu, once refused for want of a comparison, is `where(z > alpha, z, 0)`).
UNSUPPORTED: dict[str, str] = {}


def number(value: float) -> str:
    """A float as spec text, exactly (a negative one in parentheses)."""
    text = repr(float(value))
    if "inf" in text or "nan" in text:
        raise OnnxError(f"the constant {text} cannot be written in a spec")
    return f"({text})" if value < 0 else text


@dataclass(frozen=True)
class BoundActivation:
    """An activation with its alpha and beta decided."""

    activation: Activation
    alpha: float | None
    beta: float | None

    def apply(self, z: str) -> str:
        a = number(self.alpha) if self.alpha is not None else ""
        b = number(self.beta) if self.beta is not None else ""
        return self.activation.template.format(z=f"({z})", a=a, b=b)


def bind(names: list[str], alphas: list[float], betas: list[float],
         where: str) -> list[BoundActivation]:
    """The activations of a node with their alphas and betas, consumed in order by the
    activations that take them (as onnxruntime does); `where` names the node."""
    alphas, betas = list(alphas), list(betas)
    bound = []
    for name in names:
        key = name.lower()
        if key in UNSUPPORTED:
            raise OnnxError(f"{where}: activation {UNSUPPORTED[key]} is not supported")
        if key not in ACTIVATIONS:
            raise OnnxError(f"{where}: unknown activation '{name}' (known: "
                            + ", ".join(a.name for a in ACTIVATIONS.values()) + ")")
        act = ACTIVATIONS[key]
        alpha = (alphas.pop(0) if alphas else act.alpha) if act.alpha is not None else None
        beta = (betas.pop(0) if betas else act.beta) if act.beta is not None else None
        for label, value in (("activation_alpha", alpha), ("activation_beta", beta)):
            if value is not None and not math.isfinite(value):
                raise OnnxError(f"{where}: attribute {label} gives {act.name} the value "
                                f"{value}: a finite number is needed")
        bound.append(BoundActivation(act, alpha, beta))
    if alphas or betas:
        raise OnnxError(f"{where}: {len(alphas)} activation_alpha and {len(betas)} "
                        "activation_beta value(s) left over: no activation takes them")
    return bound
