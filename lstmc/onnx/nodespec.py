"""One ONNX LSTM, GRU or RNN node as lstmc spec text, and its weights as lstmc parameters.

The equations are those of the ONNX operator documentation (opset 14 and later), with
its gate orders: LSTM i, o, f, c; GRU z, r, h. Where the documentation is silent lstmc
does what onnxruntime does:
- `clip` bounds every gate's pre-activation (after adding biases and peepholes); the
  LSTM cell state is not clipped, not even where h(.) reads it;
- `input_forget` couples the forget gate to the input gate: f = 1 - i.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .activations import BoundActivation, bind, number
from .errors import OnnxError

GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("",)}
PEEPHOLES = ("i", "o", "f")
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "RNN": ["Tanh"]}
# Each attribute's type, as the operator documentation declares it (AttributeProto names).
ATTRIBUTE_TYPES = {"activation_alpha": "FLOATS", "activation_beta": "FLOATS",
                   "activations": "STRINGS", "clip": "FLOAT", "direction": "STRING",
                   "hidden_size": "INT", "layout": "INT", "input_forget": "INT",
                   "linear_before_reset": "INT"}
KNOWN_ATTRIBUTES = set(ATTRIBUTE_TYPES)


@dataclass
class NodeForm:
    """What decides a node's equations, per direction."""

    op: str
    name: str
    hidden_size: int
    input_size: int
    directions: tuple[str, ...]  # ("forward",), ("reverse",) or ("forward", "reverse")
    layout: int
    activations: list[list[BoundActivation]]  # per direction
    clip: float | None
    input_forget: bool
    linear_before_reset: bool
    peepholes: bool

    @property
    def where(self) -> str:
        return f"{self.op} node '{self.name}'"


def _name(prefix: str, gate: str) -> str:
    return f"{prefix}_{gate}" if gate else prefix


def spec_text(form: NodeForm, cell: str, direction: int) -> str:
    """The spec of one direction's cell."""
    acts = form.activations[direction]
    lines = [f"# {form.where}, direction {form.directions[direction]}: activations "
             + ", ".join(_describe(a) for a in acts)
             + (f"; clip {form.clip:g}" if form.clip is not None else "")
             + ("; input_forget" if form.input_forget else "")
             + ("; linear_before_reset" if form.op == "GRU" and form.linear_before_reset
                else ""),
             f"cell {cell}(x: I) -> h: H {{"]
    gates = used_gates(form)
    if form.op == "LSTM":
        lines.append("  state c: H")
    for prefix in ("W", "R", "Wb", "Rb"):
        lines.append("  param " + ", ".join(_name(prefix, g) for g in gates))
    if form.peepholes:
        lines.append("  param " + ", ".join(f"P_{g}" for g in PEEPHOLES if g in gates))

    def clipped(z: str) -> str:
        if form.clip is None:
            return z
        return f"clip({z}, {number(-form.clip)}, {number(form.clip)})"

    def pre(g: str, extra: str = "") -> str:
        return clipped(f"{_name('W', g)} @ x + {_name('R', g)} @ h{extra} + {_name('Wb', g)}"
                       f" + {_name('Rb', g)}")

    if form.op == "LSTM":
        f, g, h = acts
        peep = (lambda gate, state: f" + P_{gate} * {state}") if form.peepholes else (
            lambda gate, state: "")
        lines.append(f"  i  = {f.apply(pre('i', peep('i', 'c')))}")
        if form.input_forget:
            lines.append("  f  = 1 - i")
        else:
            lines.append(f"  f  = {f.apply(pre('f', peep('f', 'c')))}")
        lines.append(f"  g  = {g.apply(pre('c'))}")
        lines.append("  c' = f * c + i * g")
        new_c = "c'"
        lines.append(f"  o  = {f.apply(pre('o', peep('o', new_c)))}")
        lines.append(f"  h' = o * {h.apply(new_c)}")
    elif form.op == "GRU":
        f, g = acts
        lines.append(f"  z  = {f.apply(pre('z'))}")
        lines.append(f"  r  = {f.apply(pre('r'))}")
        if form.linear_before_reset:
            n = clipped("W_h @ x + r * (R_h @ h + Rb_h) + Wb_h")
        else:
            n = clipped("W_h @ x + R_h @ (r * h) + Rb_h + Wb_h")
        lines.append(f"  n  = {g.apply(n)}")
        lines.append("  h' = (1 - z) * n + z * h")
    else:
        lines.append(f"  h' = {acts[0].apply(pre(''))}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _describe(act: BoundActivation) -> str:
    args = [f"{v:g}" for v in (act.alpha, act.beta) if v is not None]
    return act.activation.name + (f"({', '.join(args)})" if args else "")


def used_gates(form: NodeForm) -> tuple[str, ...]:
    """The gates whose weights the equations read (input_forget: not the forget gate's)."""
    return tuple(g for g in GATES[form.op] if not (form.input_forget and g == "f"))


def split_weights(form: NodeForm, weights: dict[str, np.ndarray | None],
                  direction: int) -> dict[str, np.ndarray]:
    """One direction's parameters, by spec name, from the node's W, R, B and P (B and P
    may be None: zero biases, no peepholes)."""
    H = form.hidden_size
    gates = GATES[form.op]
    used = used_gates(form)
    params = {}
    for prefix in ("W", "R"):
        blocks = np.asarray(weights[prefix])[direction]
        for k, g in enumerate(gates):
            params[_name(prefix, g)] = blocks[k * H:(k + 1) * H]
    bias = weights.get("B")
    bias = (np.zeros(2 * len(gates) * H) if bias is None else np.asarray(bias)[direction])
    for half, prefix in enumerate(("Wb", "Rb")):
        for k, g in enumerate(gates):
            start = (half * len(gates) + k) * H
            params[_name(prefix, g)] = bias[start:start + H]
    if form.peepholes:
        P = np.asarray(weights["P"])[direction]
        for k, g in enumerate(PEEPHOLES):
            params[f"P_{g}"] = P[k * H:(k + 1) * H]
    return {n: v for n, v in params.items() if n.rsplit("_", 1)[-1] in used or n in "WR"
            or n in ("Wb", "Rb")}


def join_weights(op: str, per_direction: list[dict[str, np.ndarray]],
                 peepholes: bool) -> dict[str, np.ndarray]:
    """The inverse of split_weights: ONNX's W, R, B (and P) from each direction's
    parameters by spec name."""
    gates = GATES[op]
    out = {}
    for prefix in ("W", "R"):
        out[prefix] = np.stack([np.concatenate([p[_name(prefix, g)] for g in gates])
                                for p in per_direction])
    out["B"] = np.stack([np.concatenate([p[_name(pre, g)] for pre in ("Wb", "Rb")
                                         for g in gates]) for p in per_direction])
    if peepholes:
        out["P"] = np.stack([np.concatenate([p[f"P_{g}"] for g in PEEPHOLES])
                             for p in per_direction])
    return out


def _text(value) -> str:
    """A string attribute's bytes as text; bytes that are not UTF-8 are replaced, so the
    error that names the value can still be written."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def node_form(op: str, name: str, attributes: dict, shapes: dict[str, tuple],
              has_peepholes: bool) -> NodeForm:
    """Read and check a node's attributes; `shapes` holds W's and R's shapes."""
    where = f"{op} node '{name}'"
    unknown = sorted(set(attributes) - KNOWN_ATTRIBUTES)
    if unknown:
        raise OnnxError(f"{where}: unknown attribute(s) {', '.join(unknown)}")
    direction = _text(attributes.get("direction", b"forward"))
    directions = {"forward": ("forward",), "reverse": ("reverse",),
                  "bidirectional": ("forward", "reverse")}.get(direction)
    if directions is None:
        raise OnnxError(f"{where}: attribute direction='{direction}' is not one of forward, "
                        "reverse, bidirectional")
    D = len(directions)
    W, R = shapes["W"], shapes["R"]
    gates = len(GATES[op])
    if len(W) != 3 or len(R) != 3 or W[0] != D or R[0] != D:
        raise OnnxError(f"{where}: W {W} and R {R} must be 3-D with {D} direction(s) first")
    H = int(attributes.get("hidden_size", R[2]))
    if W[1] != gates * H or R[1:] != (gates * H, H):
        raise OnnxError(f"{where}: hidden_size {H} needs W ({D}, {gates * H}, I) and R ({D}, "
                        f"{gates * H}, {H}), got {W} and {R}")
    layout = int(attributes.get("layout", 0))
    if layout not in (0, 1):
        raise OnnxError(f"{where}: attribute layout={layout} is not 0 or 1")
    names = [_text(n) for n in attributes.get("activations", [])]
    per = len(DEFAULT_ACTIVATIONS[op])
    if not names:
        names = DEFAULT_ACTIVATIONS[op] * D
    if len(names) != per * D:
        raise OnnxError(f"{where}: attribute activations has {len(names)} names, expected "
                        f"{per * D} ({per} per direction)")
    alphas = list(attributes.get("activation_alpha", []))
    betas = list(attributes.get("activation_beta", []))
    bound = bind(names, alphas, betas, where)  # consumed across both directions in order
    clip = attributes.get("clip")
    if clip is not None and not float(clip) > 0:
        raise OnnxError(f"{where}: attribute clip={clip} must be positive")
    if clip is not None and math.isinf(clip):  # bounds nothing, as in onnxruntime
        clip = None
    input_forget = bool(attributes.get("input_forget", 0))
    if input_forget and op != "LSTM":
        raise OnnxError(f"{where}: attribute input_forget belongs to LSTM")
    lbr = attributes.get("linear_before_reset")
    if lbr is not None and op != "GRU":
        raise OnnxError(f"{where}: attribute linear_before_reset belongs to GRU")
    return NodeForm(op=op, name=name, hidden_size=H, input_size=int(W[2]),
                    directions=directions, layout=layout,
                    activations=[bound[d * per:(d + 1) * per] for d in range(D)],
                    clip=None if clip is None else float(clip), input_forget=input_forget,
                    linear_before_reset=bool(lbr), peepholes=has_peepholes)
