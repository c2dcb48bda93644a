"""Which cells are exactly an ONNX LSTM, GRU or RNN operator, and with which weights.

The candidates are the importer's own equations (nodespec.spec_text) for each form an
exported node may take: LSTM with or without peepholes and input_forget, GRU with either
linear_before_reset, RNN with each activation that needs no alpha or beta. A cell matches
a form when its step graph is the form's step graph up to the names of parameters and
states, the order of the terms of a sum and of the factors of a product, and biases the
cell leaves out (ONNX adds two per gate: Wb and Rb; a missing one exports as zeros).
One identity more: sigmoid(-z) = 1 - sigmoid(z), so a coupled gate written the other way
round (CIFG: f = sigmoid(...), i = 1 - f) is ONNX's input_forget (i = sigmoid(...),
f = 1 - i) with the gate's weights negated.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..ir import ops
from ..ir.graph import Op, is_elementwise
from ..ir.size import Size
from .activations import bind
from .nodespec import DEFAULT_ACTIVATIONS, GATES, PEEPHOLES, NodeForm, _name, spec_text

COMMUTATIVE = {"mul", "min", "max"}
OPTIONAL = ("Wb", "Rb")  # bias prefixes: a cell may leave either out
RNN_ACTIVATIONS = ("Tanh", "Relu", "Sigmoid", "Softsign")
MAX_NODES = 400  # far above any candidate's step: larger cells are not even compared


@dataclass(frozen=True)
class Candidate:
    op: str
    peepholes: bool = False
    input_forget: bool = False
    linear_before_reset: bool = False
    activations: tuple[str, ...] = ()

    def form(self) -> NodeForm:
        names = list(self.activations or DEFAULT_ACTIVATIONS[self.op])
        return NodeForm(op=self.op, name="export", hidden_size=1, input_size=1,
                        directions=("forward",), layout=0,
                        activations=[bind(names, [], [], f"{self.op} export")], clip=None,
                        input_forget=self.input_forget,
                        linear_before_reset=self.linear_before_reset,
                        peepholes=self.peepholes)

    @property
    def activation_names(self) -> list[str]:
        return list(self.activations or DEFAULT_ACTIVATIONS[self.op])


CANDIDATES = (
    [Candidate("LSTM", peepholes=p, input_forget=f) for p in (False, True)
     for f in (False, True)]
    + [Candidate("GRU", linear_before_reset=lbr) for lbr in (True, False)]
    + [Candidate("RNN", activations=(a,)) for a in RNN_ACTIVATIONS])


@dataclass
class Match:
    """A cell that is `candidate`'s operator: `binding` maps each ONNX parameter name of
    the importer's spec (W_i, Rb_c, P_o, ...) to (the cell's parameter, sign), or None for
    a bias the cell leaves out; `states` maps the ONNX states (h, c) to the cell's."""

    candidate: Candidate
    binding: dict[str, tuple[str, int] | None]
    states: dict[str, str]

    def weights(self, params: dict[str, np.ndarray], hidden: int, inputs: int,
                dtype) -> dict[str, np.ndarray]:
        """This direction's parameters by ONNX spec name, every gate of the operator
        (zeros for what the cell does not use), ready for nodespec.join_weights."""
        op = self.candidate.op
        shapes = {"W": (hidden, inputs), "R": (hidden, hidden), "Wb": (hidden,),
                  "Rb": (hidden,), "P": (hidden,)}
        names = [(_name(prefix, g), prefix) for prefix in ("W", "R", "Wb", "Rb")
                 for g in GATES[op]]
        if self.candidate.peepholes:
            names += [(f"P_{g}", "P") for g in PEEPHOLES]
        out = {}
        for name, prefix in names:
            bound = self.binding.get(name)
            out[name] = (np.zeros(shapes[prefix], dtype) if bound is None
                         else bound[1] * np.asarray(params[bound[0]], dtype))
        return out


@functools.cache
def _template(candidate: Candidate):
    from ..driver import lower_spec

    program = lower_spec(spec_text(candidate.form(), f"onnx_{candidate.op.lower()}", 0))
    return program, trees(program)


def trees(program) -> dict[str, tuple] | None:
    """Each new state of the step as a tree of tuples, products unpacked again (a slice
    of a packed or hoisted product that is one of its matrices is that product); None for
    a step too large to be any operator."""
    nodes = program.graph.live_nodes()
    if len(nodes) > MAX_NODES:
        return None
    hoisted = {h.index: h for h in program.hoisted}
    memo: dict[int, tuple] = {}
    for node in nodes:  # topological order
        op, args = node.op, tuple(memo[i.id] for i in node.inputs)
        tree: tuple
        if op == Op.INPUT:
            tree = ("x",)
        elif op == Op.STATE:
            tree = ("state", node.attr)
        elif op == Op.PARAM:
            tree = ("param", node.attr)
        elif op == Op.CONST:
            tree = ("const", float(node.attr))
        elif op == Op.MASK:  # inference: the mask's expectation
            tree = ("const", float(node.attr.expectation))
        elif op == Op.HOISTED:
            segments = hoisted[node.attr].segments
            tree = (("matmul", segments[0][0], ("x",)) if len(segments) == 1
                    else ("packed", node.id))
        elif op == Op.MATMUL:
            tree = (("matmul", node.segments[0][0], args[0]) if len(node.segments) == 1
                    else ("packed", node.id))
        elif op == Op.SLICE:
            tree = _unpack(node, memo, program, hoisted) or ("slice", node.id)
        elif op is ops.ADD:
            terms: list[tuple] = []
            for a in args:
                terms.extend(a[1] if a[0] == "add" else (a,))
            tree = ("add", tuple(terms))
        elif is_elementwise(op):
            tree = ("op", op.name, args)
        else:
            tree = ("struct", op.value, args)
        memo[node.id] = tree
    return {name: memo[node.id] for name, node in program.graph.outputs.items()}


def _unpack(node, memo, program, hoisted):
    """A slice that is exactly one matrix of a packed product, as that product."""
    source = node.inputs[0]
    if source.op == Op.HOISTED:
        segments, operand = hoisted[source.attr].segments, ("x",)
    elif source.op == Op.MATMUL:
        segments, operand = source.segments, memo[source.inputs[0].id]
    else:
        return None
    offset = Size()
    for name, rows in segments:
        if offset == node.attr.offset and rows == node.attr.size:
            return ("matmul", name, operand)
        offset = offset + rows
    return None


def _bind(env: dict, key, value) -> Iterator[dict]:
    if key in env:
        if env[key] == value:
            yield env
        return
    new = dict(env)
    new[key] = value
    yield new


def _one_minus_sigmoid(t: tuple) -> tuple | None:
    """z when t is 1 - sigmoid(z)."""
    if (t[0] == "op" and t[1] == "sub" and t[2][0] == ("const", 1.0)
            and t[2][1][0] == "op" and t[2][1][1] == "sigmoid"):
        return t[2][1][2][0]
    return None


def _sigmoid_arg(t: tuple) -> tuple | None:
    return t[2][0] if t[0] == "op" and t[1] == "sigmoid" else None


def unify(p: tuple, c: tuple, env: dict, sign: int = 1) -> Iterator[dict]:
    """Every way the pattern tree `p` (a candidate's) is the cell's tree `c`, extending
    `env` (("param", name) -> (cell name, sign) or None; ("state", name) -> cell name).
    With sign -1, `c` must be -p: only sums, products with a parameter and constants."""
    kind = p[0]
    if kind == "add":
        yield from _terms(list(p[1]), list(c[1]) if c[0] == "add" else [c], env, sign)
        return
    if kind == "param":
        if c[0] == "param":
            yield from _bind(env, ("param", p[1]), (c[1], sign))
        return
    if kind == "matmul":
        if c[0] == "matmul":
            for e in _bind(env, ("param", p[1]), (c[1], sign)):
                yield from unify(p[2], c[2], e)
        return
    if kind == "const":
        if c == ("const", sign * p[1]):
            yield env
        return
    if sign < 0:  # -(P * v) = (-P) * v: the sign goes to the parameter factor
        if kind == "op" and p[1] == "mul" and c[0] == "op" and c[1] == "mul":
            for pp, pv in (p[2], p[2][::-1]):
                if pp[0] == "param":
                    for cp, cv in (c[2], c[2][::-1]):
                        for e in unify(pp, cp, env, -1):
                            yield from unify(pv, cv, e)
        return
    if kind == "x":
        if c == ("x",):
            yield env
        return
    if kind == "state":
        if c[0] == "state":
            yield from _bind(env, ("state", p[1]), c[1])
        return
    if kind == "op":
        inner = _sigmoid_arg(p)  # sigmoid(z) = 1 - sigmoid(-z), and the other way round
        other = _one_minus_sigmoid(c)
        if inner is not None and other is not None:
            yield from unify(inner, other, env, -1)
        inner, other = _one_minus_sigmoid(p), _sigmoid_arg(c)
        if inner is not None and other is not None:
            yield from unify(inner, other, env, -1)
        if c[0] == "op" and c[1] == p[1] and len(c[2]) == len(p[2]):
            orders = [c[2]] + ([c[2][::-1]] if p[1] in COMMUTATIVE else [])
            for order in orders:
                yield from _sequence(list(p[2]), list(order), env)
        return
    if kind == "struct" and c[0] == "struct" and c[1] == p[1] and len(c[2]) == len(p[2]):
        yield from _sequence(list(p[2]), list(c[2]), env)


def _sequence(ps: list, cs: list, env: dict) -> Iterator[dict]:
    if not ps:
        yield env
        return
    for e in unify(ps[0], cs[0], env):
        yield from _sequence(ps[1:], cs[1:], e)


def _terms(ps: list, cs: list, env: dict, sign: int) -> Iterator[dict]:
    """The terms of a sum, in any order; pattern biases may be left unmatched."""
    if not cs:
        if all(p[0] == "param" and p[1].split("_")[0] in OPTIONAL for p in ps):
            new = dict(env)
            for p in ps:
                if new.setdefault(("param", p[1]), None) is not None:
                    return
            yield new
        return
    for i, p in enumerate(ps):
        for e in unify(p, cs[0], env, sign):
            yield from _terms(ps[:i] + ps[i + 1:], cs[1:], e, sign)


def match(cell) -> Match | None:
    """The ONNX operator form `cell` (a compiled reference cell) is exactly, or None."""
    program = cell.program
    states = list(cell.state_sizes)
    hidden = cell.state_sizes[cell.output]
    if any(size != hidden for size in cell.state_sizes.values()) or len(states) > 2:
        return None
    cell_trees = trees(program)
    if cell_trees is None:
        return None
    sizes = {"H": hidden, "I": cell.input_size}
    for candidate in CANDIDATES:
        template, pattern = _template(candidate)
        if len(template.info.states) != len(states):
            continue
        pairs = {template.info.output: cell.output}
        for name in template.info.states:
            if name != template.info.output:
                pairs[name] = next(s for s in states if s != cell.output)
        env = {("state", p): c for p, c in pairs.items()}
        for found in _unify_states(list(pairs.items()), pattern, cell_trees, env):
            binding = {key[1]: value for key, value in found.items() if key[0] == "param"}
            if _complete(binding, template, cell, sizes):
                return Match(candidate, binding, pairs)
    return None


def _unify_states(pairs, pattern, cell_trees, env) -> Iterator[dict]:
    if not pairs:
        yield env
        return
    (p, c), rest = pairs[0], pairs[1:]
    for e in unify(pattern[p], cell_trees[c], env):
        yield from _unify_states(rest, pattern, cell_trees, e)


def _complete(binding, template, cell, sizes) -> bool:
    """Every cell parameter bound once, with the shape the operator gives it."""
    used = [value[0] for value in binding.values() if value is not None]
    if len(used) != len(set(used)) or set(used) != set(cell.param_shapes):
        return False
    for name, value in binding.items():
        if value is None:
            continue
        shape = tuple(d.bind(sizes) for d in template.info.param_shape(name))
        if tuple(cell.param_shapes[value[0]]) != shape:
            return False
    return True
