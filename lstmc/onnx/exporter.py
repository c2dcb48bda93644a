"""Export: any lstmc cell, stack or bidirectional stack as an ONNX model.

The model's interface is the same whatever the cell:
- input `X` (T, B, I), or (B, T, I) when the cell is batch-first; T and B are dynamic;
- optional `sequence_lens` (B,) int32: each row's length, 0..T (default: T for all);
- optional `initial_<state>` (L*D, B, n) for each state, in lstmc's stacked layout
  (default: zeros);
- outputs `Y` as lstmc's y ((T, B, D*out) or batch-first) and `final_<state>`
  (L*D, B, n) as lstmc's final states.
The optional inputs are graph inputs with a default value (ONNX's overridable
initializers): leave them out of a run and the defaults apply.

A layer whose cell is exactly an ONNX operator (match.py) exports as that operator, its
weights in ONNX's gate order (nodespec.join_weights, the importer's inverse); every other
layer as a Scan per direction (scan.py). Reverse directions read each row's valid prefix
backwards (ReverseSequence), as lstmc's stacks do. lstmc's semantics hold on top of the
operators: outputs past a row's length are zero and a row of length 0 keeps its initial
state (onnxruntime's operators zero it).
"""
from __future__ import annotations

import os
from typing import Any, TypeGuard

import numpy as np

from .builder import Builder
from .errors import OnnxError
from .match import Match, match
from .nodespec import join_weights
from .scan import check_exportable, scan_direction

DEFAULT_OPSET = 17
MIN_OPSET = 14  # LSTM, GRU and RNN as of opset 14; ReduceSum takes its axes as an input
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a file beside the model


def require_onnx():
    """The onnx package, or an OnnxError that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError("ONNX export and import need the onnx package: "
                        "pip install lstmc[onnx]") from None
    return onnx


def _layout(cell):
    """(layers[l][d] cells, direction names, batch_first, prefix(l, d))."""
    from lstmc_runtime.stack import Stack

    if isinstance(cell, Stack):
        return cell.layers, cell.directions, bool(cell.batch_first), cell.prefix
    if hasattr(cell, "state_sizes") and hasattr(cell, "param_shapes"):
        return [[cell]], ("forward",), bool(getattr(cell, "batch_first", False)), \
            lambda layer, direction: ""
    raise OnnxError(f"export takes a compiled cell or stack (lstmc.compile), got "
                    f"{type(cell).__name__}")


def _check_params(cell, params, dtype) -> dict[str, np.ndarray]:
    if not isinstance(params, dict):
        raise OnnxError(f"params: expected a dict of arrays, got {type(params).__name__}")
    expected = dict(cell.param_shapes)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    if missing or extra:
        raise OnnxError("params: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unexpected {', '.join(extra)}" if extra else "") if part)
            + f" (the cell's parameters: {', '.join(expected)})")
    out = {}
    for name, shape in expected.items():
        value = np.asarray(params[name])
        if value.dtype.kind not in "fiu":
            raise OnnxError(f"params['{name}']: expected numbers, got {value.dtype}")
        if value.shape != tuple(shape):
            raise OnnxError(f"params['{name}']: expected shape {tuple(shape)}, got "
                            f"{value.shape}")
        out[name] = value.astype(dtype)
    return out


def export(cell, params: dict, path: str | os.PathLike | None = None,
           opset: int = DEFAULT_OPSET, native: bool = True):
    """Write `cell` (a compiled cell or Stack from lstmc.compile with target
    "reference", the default) with parameters `params` as an ONNX model to `path`, and
    return the onnx.ModelProto (path None: only return it). Cells that are exactly an
    ONNX LSTM, GRU or RNN operator export as that operator unless native=False; all
    others as Scan loops. The model computes in the cell's dtype (float32 or float64;
    float64 cells export as Scan, since onnxruntime runs those operators in float32
    only)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper

    layers, directions, batch_first, prefix = _layout(cell)
    extra = getattr(cell, "extra_inputs", None)
    if extra:
        raise OnnxError(f"cell {cell.name} takes inputs after the first "
                        f"({', '.join(extra)}); ONNX export takes cells of one input `X`: "
                        "run such cells with lstmc (the cpu, cuda or opencl target) or "
                        "lstmc.nn")
    if isinstance(opset, bool) or not isinstance(opset, int) or not (
            MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
        raise OnnxError(f"opset must be an integer in {MIN_OPSET}.."
                        f"{onnx.defs.onnx_opset_version()} (this onnx package's newest), "
                        f"got {opset!r}")
    for cells in layers:
        for c in cells:
            if getattr(c, "program", None) is None:
                raise OnnxError(
                    f"cannot export {c!r}: export reads the cell's step graph, which only a "
                    "cell compiled for the reference target keeps; compile the cell with "
                    "target='reference' (the ONNX runtime does the computing)")
            check_exportable(c.program)
    dtype = np.dtype(cell.dtype)
    if dtype not in (np.float32, np.float64):
        raise OnnxError(f"export computes in float32 or float64, not {dtype}")
    params = _check_params(cell, params, dtype)
    # onnxruntime's LSTM, GRU and RNN kernels compute in float32 only: float64 as Scan
    native = native and dtype == np.float32
    L, D = len(layers), len(directions)
    states = dict(layers[0][0].state_sizes)
    output = layers[0][0].output

    b = Builder(dtype)
    elem = b.elem
    inputs = [helper.make_tensor_value_info(
        "X", elem, ["B", "T", layers[0][0].input_size] if batch_first
        else ["T", "B", layers[0][0].input_size])]
    inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
    b.initializer(np.zeros(0, np.int32), "sequence_lens")  # default: none given
    for name, size in states.items():
        inputs.append(helper.make_tensor_value_info(f"initial_{name}", elem,
                                                    [L * D, "B", size]))
        b.initializer(np.zeros((L * D, 1, size), dtype), f"initial_{name}")  # zeros

    x = b.node("Transpose", ["X"], perm=[1, 0, 2]) if batch_first else "X"
    shape = b.node("Shape", [x])
    steps = b.node("Slice", [shape, b.ints(0), b.ints(1)], hint="T")  # (1,) int64
    batch = b.node("Slice", [shape, b.ints(1), b.ints(2)], hint="B")
    # lengths: the given ones, or T for every row (concatenate, keep the first B)
    full = b.node("Expand", [b.node("Cast", [steps], to=TensorProto.INT32), batch])
    lens32 = b.node("Slice", [b.node("Concat", ["sequence_lens", full], axis=0),
                              b.ints(0), batch], hint="lengths")
    lens = b.node("Cast", [lens32], to=TensorProto.INT64)
    time = b.node("Range", [b.constant(0, np.int64),
                            b.node("Squeeze", [steps, b.ints(0)]),
                            b.constant(1, np.int64)])
    mask = b.node("Unsqueeze", [b.node("Less", [b.node("Unsqueeze", [time, b.ints(1)]),
                                               b.node("Unsqueeze", [lens, b.ints(0)])]),
                                b.ints(2)], hint="mask")  # (T, B, 1): t < length
    empty = b.node("Unsqueeze", [b.node("Equal", [lens, b.constant(0, np.int64)]),
                                 b.ints(0, 2)], hint="empty")  # (1, B, 1): length 0
    rev_lens = b.node("Max", [lens, b.constant([1], np.int64)])  # a prefix of 0 or 1: same
    # padding is zero before anything reads it, as lstmc's cells make it
    layer_input = b.node("Where", [mask, x, b.constant(0.0)], hint="x")

    def initial(name: str, first: int, count: int) -> str:
        """initial_<name>[first:first+count], broadcast to (count, B, n)."""
        part = b.node("Slice", [f"initial_{name}", b.ints(first), b.ints(first + count),
                                b.ints(0)])
        return b.node("Expand", [part, b.node("Concat", [b.ints(count), batch,
                                                         b.ints(states[name])], axis=0)])

    finals: dict[str, list[str]] = {name: [] for name in states}
    for l, cells in enumerate(layers):
        matches: list[Match | None] = [match(c) for c in cells] if native else [None]
        if native and _same_operator(matches):
            y, layer_finals = _native_layer(b, l, cells, matches, [prefix(l, d) for d in
                                                                 range(D)], params,
                                            directions, layer_input, lens32, mask, empty,
                                            lambda name, l=l: initial(name, l * D, D))
            for name in states:
                finals[name].append(layer_finals[name])
        else:
            ys = []
            for d, c in enumerate(cells):
                back = directions[d] == "reverse"
                # matrices derived from the parameters ((W - W.T) @ h) become constants
                sub = c._expand({n: params[prefix(l, d) + n] for n in c.param_shapes})
                seq = layer_input
                if back:
                    seq = b.node("ReverseSequence", [seq, rev_lens], batch_axis=1,
                                 time_axis=0)
                init = {n: b.node("Squeeze", [initial(n, l * D + d, 1), b.ints(0)])
                        for n in states}
                final, y = scan_direction(b, c, sub, prefix(l, d) or "cell.", seq, mask,
                                          init, opset)
                if back:
                    y = b.node("ReverseSequence", [y, rev_lens], batch_axis=1, time_axis=0)
                ys.append(y)
                for name in states:
                    finals[name].append(b.node("Unsqueeze", [final[name], b.ints(0)]))
            y = ys[0] if D == 1 else b.node("Concat", ys, axis=-1)
        layer_input = y

    out_size = sum(c.state_sizes[c.output] for c in layers[-1])
    if batch_first:
        b.node("Transpose", [layer_input], names=["Y"], perm=[1, 0, 2])
    else:
        b.node("Identity", [layer_input], names=["Y"])
    outputs = [helper.make_tensor_value_info(
        "Y", elem, ["B", "T", out_size] if batch_first else ["T", "B", out_size])]
    for name, size in states.items():
        parts = finals[name]
        attributes: dict[str, Any] = {"axis": 0} if len(parts) > 1 else {}
        b.node("Concat" if len(parts) > 1 else "Identity", parts, names=[f"final_{name}"],
               **attributes)
        outputs.append(helper.make_tensor_value_info(f"final_{name}", elem,
                                                     [L * D, "B", size]))
    graph = helper.make_graph(b.nodes, f"lstmc_{layers[0][0].name}", inputs, outputs,
                              b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lstmc",
                              doc_string=_describe(layers, directions, batch_first, output))
    model.ir_version = max(4, helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)  # a fast structural check; tests run the full one
    if path is not None:
        _save(onnx, model, os.fspath(path))
    return model


def _describe(layers, directions, batch_first, output) -> str:
    first = layers[0][0]
    return (f"lstmc cell {first.name}: {len(layers)} layer(s), directions "
            f"{', '.join(directions)}{', batch-first' if batch_first else ''}; output state "
            f"{output}; states {', '.join(first.state_sizes)}")


def _save(onnx, model, path: str) -> None:
    size = sum(t.ByteSize() for t in model.graph.initializer)
    try:
        if size > EXTERNAL_DATA_BYTES:  # protobuf cannot hold 2 GiB in one message
            onnx.save_model(model, path, save_as_external_data=True,
                            location=os.path.basename(path) + ".data")
        else:
            onnx.save_model(model, path)
    except OSError as exc:
        raise OnnxError(f"cannot write {path}: {exc.strerror or exc}") from None


def _same_operator(matches: list[Match | None]) -> TypeGuard[list[Match]]:
    """Every direction of the layer is one ONNX operator with the same attributes but
    perhaps different activations (ONNX lists them per direction)."""
    found = [m for m in matches if m is not None]
    if len(found) < len(matches):
        return False
    first = found[0].candidate
    return all((m.candidate.op, m.candidate.peepholes, m.candidate.input_forget,
                m.candidate.linear_before_reset) == (first.op, first.peepholes,
                                                     first.input_forget,
                                                     first.linear_before_reset)
               for m in found)


def _native_layer(b: Builder, layer: int, cells, matches: list[Match], prefixes, params,
                  directions, seq, lens32, mask, empty, initial):
    """One layer as an ONNX LSTM, GRU or RNN node. Returns (Y (T, B, D*H), finals)."""
    candidate = matches[0].candidate
    op, D = candidate.op, len(cells)
    H = cells[0].state_sizes[cells[0].output]
    per_direction = []
    for c, m, pre in zip(cells, matches, prefixes):
        sub = c._expand({n: params[pre + n] for n in c.param_shapes})
        per_direction.append(m.weights(sub, H, c.input_size, b.dtype))
    weights = join_weights(op, per_direction, candidate.peepholes)
    tag = prefixes[0].split(".")[0] + "." if prefixes[0] else ""
    names = {k: b.initializer(v, b.fresh(f"{tag}{op}_{k}")) for k, v in weights.items()}
    onnx_states = ["h", "c"] if op == "LSTM" else ["h"]
    cell_state = {s: matches[0].states[s] for s in onnx_states}
    inits = {s: initial(cell_state[s]) for s in onnx_states}
    node_inputs = [seq, names["W"], names["R"], names["B"], lens32, inits["h"]]
    if op == "LSTM":
        node_inputs += [inits["c"], names.get("P", "")]
        while node_inputs[-1] == "":
            node_inputs.pop()
    direction = "bidirectional" if D == 2 else directions[0]
    attributes = {"hidden_size": H, "direction": direction,
                  "activations": [a for m in matches for a in m.candidate.activation_names]}
    if op == "LSTM" and candidate.input_forget:
        attributes["input_forget"] = 1
    if op == "GRU":
        attributes["linear_before_reset"] = int(candidate.linear_before_reset)
    outs = b.node(op, node_inputs, outputs=len(onnx_states) + 1, hint=op.lower(),
                  node_name=f"{op}_layer{layer}", **attributes)
    y4 = outs[0]  # (T, D, B, H)
    y = b.node("Reshape", [b.node("Transpose", [y4], perm=[0, 2, 1, 3]), b.ints(0, 0, -1)])
    y = b.node("Where", [mask, y, b.constant(0.0)])
    finals = {}
    for s, out in zip(onnx_states, outs[1:]):  # a row of length 0 keeps its initial state
        finals[cell_state[s]] = b.node("Where", [empty, inits[s], out])
    return y, finals
