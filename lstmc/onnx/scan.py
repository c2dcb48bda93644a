"""Any cell as an ONNX `Scan`: the step graph of the cell's Program (after gate fusion)
becomes the Scan body, node by node; the products of the input that fusion hoisted out of
the time loop become one MatMul over all T*B rows before the Scan.

Each elementwise op of the IR's registry (lstmc/ir/ops.py) has one ONNX form here, keyed
by the registry entry; an op registered by an extension without an ONNX form is refused
by name. Lengths are handled by masking in the body, as lstmc's executors do: for a row
past its length the state stays as it was and the output is zero (`Where`, so whatever
the padding computes, NaN included, reaches nothing).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ..ir import ops
from ..ir.graph import Node, Op, is_elementwise
from .builder import Builder
from .errors import OnnxError

Emit = Callable[[Builder, list[str]], str]


def _plain(onnx_op: str) -> Emit:
    return lambda b, args: b.node(onnx_op, args)


def _mask(onnx_op: str) -> Emit:
    """A comparison as lstmc's masks compute it: 1.0 where it holds, else 0.0."""
    return lambda b, args: b.node("Cast", [b.node(onnx_op, args)], to=b.elem)


def _clip(b: Builder, args: list[str]) -> str:
    # lstmc's clip takes tensor bounds (min(max(z, lo), hi)); ONNX Clip takes scalars only
    z, lo, hi = args
    return b.node("Min", [b.node("Max", [z, lo]), hi])


def _where(b: Builder, args: list[str]) -> str:
    cond, x, y = args  # nonzero (NaN included) selects x, as lstmc's where
    return b.node("Where", [b.node("Not", [b.node("Equal", [cond, b.constant(0.0)])]), x, y])


def _positive_or(b: Builder, z: str, otherwise: str) -> str:
    return b.node("Where", [b.node("Greater", [z, b.constant(0.0)]), z, otherwise])


def _softplus(b: Builder, args: list[str]) -> str:  # torch's threshold at 20
    (z,) = args
    soft = b.node("Log", [b.node("Add", [b.constant(1.0), b.node("Exp", [z])])])
    return b.node("Where", [b.node("Greater", [z, b.constant(20.0)]), z, soft])


def _logsigmoid(b: Builder, args: list[str]) -> str:
    (z,) = args
    tail = b.node("Exp", [b.node("Neg", [b.node("Abs", [z])])])
    return b.node("Sub", [b.node("Min", [z, b.constant(0.0)]),
                          b.node("Log", [b.node("Add", [b.constant(1.0), tail])])])


def _elu(b: Builder, args: list[str]) -> str:
    z, alpha = args
    return _positive_or(b, z, b.node("Mul", [alpha, b.node("Sub", [b.node("Exp", [z]),
                                                                     b.constant(1.0)])]))


def _gelu(b: Builder, args: list[str]) -> str:
    (z,) = args
    cdf = b.node("Add", [b.constant(1.0), b.node("Erf", [b.node("Mul", [z, b.constant(ops.SQRT1_2)])])])
    return b.node("Mul", [b.node("Mul", [z, b.constant(0.5)]), cdf])


def _gelu_tanh(b: Builder, args: list[str]) -> str:
    (z,) = args
    cube = b.node("Mul", [b.node("Mul", [z, z]), z])
    inner = b.node("Mul", [b.constant(-2 * ops.GELU_BETA),
                           b.node("Add", [z, b.node("Mul", [b.constant(ops.GELU_KAPPA), cube])])])
    return b.node("Div", [z, b.node("Add", [b.constant(1.0), b.node("Exp", [inner])])])


def _silu(b: Builder, args: list[str]) -> str:
    return b.node("Mul", [args[0], b.node("Sigmoid", args)])


def _leaky_relu(b: Builder, args: list[str]) -> str:
    z, slope = args
    return _positive_or(b, z, b.node("Mul", [z, slope]))


def _mod(b: Builder, args: list[str]) -> str:
    a, d = args  # fmod, plus d where the signs of the result and d differ (torch.remainder)
    r = b.node("Mod", [a, d], fmod=1)
    zero = b.constant(0.0)
    fix = b.node("And", [b.node("Not", [b.node("Equal", [r, zero])]),
                         b.node("Xor", [b.node("Less", [d, zero]), b.node("Less", [r, zero])])])
    return b.node("Where", [fix, b.node("Add", [r, d]), r])


def _floor_divide(b: Builder, args: list[str]) -> str:
    return b.node("Floor", [b.node("Div", args)])


# The registry's ops, each as ONNX nodes (the keys are the registry entries themselves).
ELEMENTWISE: dict[ops.Elementwise, Emit] = {
    ops.ADD: _plain("Add"), ops.SUB: _plain("Sub"), ops.MUL: _plain("Mul"),
    ops.DIV: _plain("Div"), ops.NEG: _plain("Neg"),
    ops.GT: _mask("Greater"), ops.GE: _mask("GreaterOrEqual"), ops.EQ: _mask("Equal"),
    ops.SIGMOID: _plain("Sigmoid"), ops.TANH: _plain("Tanh"), ops.RELU: _plain("Relu"),
    ops.EXP: _plain("Exp"), ops.LOG: _plain("Log"), ops.SQRT: _plain("Sqrt"),
    ops.ABS: _plain("Abs"), ops.SOFTSIGN: _plain("Softsign"),
    ops.MIN: _plain("Min"), ops.MAX: _plain("Max"), ops.CLIP: _clip,
    ops.WHERE: _where, ops.SOFTPLUS: _softplus, ops.LOGSIGMOID: _logsigmoid, ops.ELU: _elu,
    ops.SELU: _plain("Selu"), ops.ERF: _plain("Erf"), ops.GELU: _gelu,
    ops.GELU_TANH: _gelu_tanh, ops.SILU: _silu, ops.LEAKY_RELU: _leaky_relu,
    ops.SIN: _plain("Sin"), ops.COS: _plain("Cos"), ops.FLOOR: _plain("Floor"),
    ops.MOD: _mod, ops.FLOOR_DIVIDE: _floor_divide, ops.POW: _plain("Pow"),
}


def elementwise_form(op: ops.Elementwise) -> Emit:
    form = ELEMENTWISE.get(op)
    if form is None:
        known = ", ".join(sorted(o.name for o in ELEMENTWISE))
        raise OnnxError(f"the cell uses the op '{op.name}', which has no ONNX form (an op "
                        f"added to lstmc's registry by an extension; ONNX forms exist for: "
                        f"{known})")
    return form


def check_exportable(program) -> None:
    """Refuse, by name, a cell whose step or prologues use an op without an ONNX form."""
    for graph in [program.graph] + [p.graph for p in program.prologues]:
        for node in graph.live_nodes():
            if is_elementwise(node.op):
                elementwise_form(node.op)


class StepEmitter:
    """The nodes of one step of `program` into builder `b` (a Scan body)."""

    def __init__(self, b: Builder, program, sizes: dict[str, int], opset: int,
                 param: Callable[[str], str], packed: Callable[[Node], str],
                 leaves: dict[Op, Callable[[Any], str]], batch: Callable[[], str]):
        self.b, self.program, self.sizes, self.opset = b, program, sizes, opset
        self.param, self.packed, self.leaves, self.batch = param, packed, leaves, batch

    def width(self, node: Node) -> int:
        return node.size.bind(self.sizes)

    def rows(self, name: str, width: int) -> str:
        """`name` broadcast to (B, width)."""
        b = self.b
        return b.node("Expand", [name, b.node("Concat", [self.batch(), b.ints(width)],
                                               axis=0)])

    def run(self) -> dict[int, str]:
        b = self.b
        env: dict[int, str] = {}
        for node in self.program.graph.live_nodes():
            args = [env[i.id] for i in node.inputs]
            op = node.op
            if is_elementwise(op):
                env[node.id] = elementwise_form(op)(b, args)
            elif op in self.leaves:
                env[node.id] = self.leaves[op](node.attr)
            elif op == Op.PARAM:
                env[node.id] = self.param(node.attr)
            elif op == Op.CONST:
                env[node.id] = b.constant(node.attr)
            elif op == Op.MASK:  # an exported cell infers: dropout and zoneout as expected
                env[node.id] = b.constant(node.attr.expectation)
            elif op == Op.MATMUL:
                env[node.id] = b.node("MatMul", [args[0], self.packed(node)])
            elif op == Op.SLICE:
                offset, size = (s.bind(self.sizes) for s in (node.attr.offset, node.attr.size))
                env[node.id] = b.node("Slice", [args[0], b.ints(offset), b.ints(offset + size),
                                                b.ints(-1)])
            elif op == Op.CONCAT:
                parts = [self.rows(a, self.width(i)) for a, i in zip(args, node.inputs)]
                env[node.id] = b.node("Concat", parts, axis=-1)
            elif op == Op.BROADCAST:
                env[node.id] = self.rows(args[0], self.width(node))
            elif op == Op.SUM:
                env[node.id] = b.node("ReduceSum", [args[0], b.ints(-1)], keepdims=1)
            elif op == Op.MEAN:
                if self.opset >= 18:
                    env[node.id] = b.node("ReduceMean", [args[0], b.ints(-1)], keepdims=1)
                else:
                    env[node.id] = b.node("ReduceMean", [args[0]], axes=[-1], keepdims=1)
            else:
                raise OnnxError(f"the IR op '{op.value}' has no ONNX form")
        return env


def _prologue(b: Builder, prologue, sizes, opset, seq: str, input_size: int,
              hoisted_seq: dict[int, str], param: Callable[[str], str]) -> dict[str, str]:
    """A prologue's derived values, each (T, B, n), computed as one step over the T*B
    rows of the (T, B, F) sequence `seq` and of the hoisted products it reads."""
    shape = b.node("Shape", [seq])
    steps_and_batch = b.node("Slice", [shape, b.ints(0), b.ints(2)])

    def flat(name: str, width: int) -> str:
        return b.node("Reshape", [name, b.ints(-1, width)])

    rows = flat(seq, input_size)
    emitter = StepEmitter(
        b, prologue, sizes, opset, param=param,
        packed=lambda node: _no_product(node),
        leaves={Op.INPUT: lambda attr: rows,
                Op.HOISTED: lambda attr: flat(hoisted_seq[attr],
                                              prologue.hoisted[attr].rows.bind(sizes))},
        batch=lambda: b.node("Slice", [b.node("Shape", [rows]), b.ints(0), b.ints(1)]))
    env = emitter.run()
    derived = {}
    for name, node in prologue.graph.outputs.items():
        width = node.size.bind(sizes)
        every_row = emitter.rows(env[node.id], width)  # of learned vectors only: one row
        derived[name] = b.node("Reshape", [every_row, b.node(
            "Concat", [steps_and_batch, b.ints(width)], axis=0)], hint="derived")
    return derived


def _no_product(node: Node) -> str:
    raise OnnxError(f"a prologue holds the product {node!r}: hoist_chains hoists every one")


def scan_direction(b: Builder, cell, params: dict[str, np.ndarray], prefix: str,
                   seq: str, mask: str, initial: dict[str, str], opset: int):
    """One direction of one layer as a Scan over `seq` (T, B, F). `mask` (T, B, 1) bool
    says which steps are inside each row's length; `initial` names each state's (B, n)
    start. Returns (final state names, Y name (T, B, out))."""
    from onnx import TensorProto, helper

    program, sizes, dtype = cell.program, cell.sizes, b.dtype
    check_exportable(program)
    weights: dict[str, str] = {}

    def weight(key: str, make: Callable[[], np.ndarray]) -> str:
        if key not in weights:
            weights[key] = b.initializer(np.asarray(make(), dtype), b.fresh(prefix + key))
        return weights[key]

    def packed_t(segments) -> np.ndarray:
        return np.concatenate([params[name] for name, _ in segments], axis=0).T

    scan_inputs, body_scan_inputs = [], []
    body = b.sub()
    hoisted_names = {}
    # One GEMM over all T*B rows per hoisted product, before the loop, level by level:
    # each level's operands made by its prologue, over all T*B rows at once.
    hoisted_seq: dict[int, str] = {}
    for level in range(len(program.prologues) + 1):
        derived = {}
        if level:
            derived = _prologue(b, program.prologues[level - 1], sizes, opset, seq,
                                cell.input_size, hoisted_seq,
                                lambda name: weight(name, lambda: params[name]))
        for h in program.hoisted_at(level):
            w = weight(f"hoisted{h.index}", partial(packed_t, h.segments))
            operand = derived[h.operand] if level else seq
            hoisted_seq[h.index] = b.node("MatMul", [operand, w], hint=f"{prefix}hoisted")
    for h in program.hoisted:
        scan_inputs.append(hoisted_seq[h.index])
        hoisted_names[h.index] = body.fresh(f"hoisted{h.index}_t")
        body_scan_inputs.append(helper.make_tensor_value_info(
            hoisted_names[h.index], b.elem, [None, h.rows.bind(sizes)]))
    live = program.graph.live_nodes()
    x_t = None
    if any(n.op == Op.INPUT for n in live):
        x_t = body.fresh("x_t")
        scan_inputs.append(seq)
        body_scan_inputs.append(helper.make_tensor_value_info(x_t, b.elem,
                                                              [None, cell.input_size]))
    mask_t = body.fresh("mask_t")
    scan_inputs.append(mask)
    body_scan_inputs.append(helper.make_tensor_value_info(mask_t, TensorProto.BOOL, [None, 1]))

    states = list(cell.state_sizes)
    state_in = {n: body.fresh(f"{n}_old") for n in states}
    batch_name: list[str] = []

    def batch() -> str:  # (1,) int64: B, from the first state (made once, when needed)
        if not batch_name:
            batch_name.append(body.node("Slice", [body.node("Shape", [state_in[states[0]]]),
                                                  body.ints(0), body.ints(1)]))
        return batch_name[0]

    leaves: dict[Op, Callable[[Any], str]] = {Op.STATE: lambda attr: state_in[attr],
                                              Op.HOISTED: lambda attr: hoisted_names[attr]}
    if x_t is not None:  # the step reads the input
        leaves[Op.INPUT] = lambda attr: x_t
    emitter = StepEmitter(
        body, program, sizes, opset,
        param=lambda name: weight(name, lambda: params[name]),
        packed=lambda node: weight(f"packed{node.id}", lambda: packed_t(node.segments)),
        leaves=leaves, batch=batch)
    env = emitter.run()
    zero = body.constant(0.0)
    outputs = {}
    for name in states:
        new = env[program.graph.outputs[name].id]
        outputs[name] = body.node("Where", [mask_t, new, state_in[name]], hint=f"{name}_new")
    y_t = body.node("Where", [mask_t, outputs[cell.output], zero], hint="y_t")
    body_inputs = [helper.make_tensor_value_info(state_in[n], b.elem,
                                                 [None, cell.state_sizes[n]]) for n in states]
    body_outputs = [helper.make_tensor_value_info(outputs[n], b.elem,
                                                  [None, cell.state_sizes[n]]) for n in states]
    body_outputs.append(helper.make_tensor_value_info(
        y_t, b.elem, [None, cell.state_sizes[cell.output]]))
    graph = helper.make_graph(body.nodes, body.fresh(f"{prefix}step"),
                              body_inputs + body_scan_inputs, body_outputs,
                              body.initializers)
    results = b.node("Scan", [initial[n] for n in states] + scan_inputs,
                     hint=f"{prefix}scan", node_name=b.fresh(f"{prefix}scan"),
                     outputs=len(states) + 1, body=graph, num_scan_inputs=len(scan_inputs))
    return dict(zip(states, results[:-1])), results[-1]
