"""Import: every LSTM, GRU and RNN node of an ONNX model as an lstmc cell.

`load` reads the model with the onnx package, turns each node's attributes into spec
text (nodespec.py), its weights into parameters, and compiles the result; `run` takes and
returns arrays in ONNX's shapes and layout, so a node's test data goes in and out as is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from lstmc_runtime.stack import Stack

from .errors import OnnxError
from .nodespec import ATTRIBUTE_TYPES, GATES, NodeForm, node_form, spec_text, split_weights

OPS = ("LSTM", "GRU", "RNN")
# The node's inputs by position, as the operator documentation lists them.
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


@dataclass
class ImportedNode:
    """One recurrent node: its spec text, parameters and compiled cell (a Stack of one
    layer with the node's directions)."""

    form: NodeForm
    spec: str
    params: dict[str, np.ndarray]
    cell: Stack
    # the node's sequence_lens, initial_h and initial_c where the model holds them as
    # constants: run's defaults, so the node computes what the model does
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.form.op

    @property
    def name(self) -> str:
        return self.form.name

    def run(self, X, sequence_lens=None, initial_h=None, initial_c=None):
        """(Y, Y_h, Y_c) as the ONNX operator computes them, in its shapes: with layout 0
        X (T, B, I), Y (T, D, B, H), Y_h and Y_c (D, B, H); with layout 1 X (B, T, I),
        Y (B, T, D, H), Y_h and Y_c (B, D, H). Y_c is None for GRU and RNN. Left out,
        sequence_lens, initial_h and initial_c are the model's constants for them, if it
        holds any, else full lengths and zeros."""
        form, dtype = self.form, self.cell.dtype
        given = {"sequence_lens": sequence_lens, "initial_h": initial_h, "initial_c": initial_c}
        sequence_lens, initial_h, initial_c = (
            self.constants.get(k) if v is None else v for k, v in given.items())
        X = _real(form, "X", X)
        if X.ndim != 3:
            raise OnnxError(f"{form.where}: X must be 3-D, got shape {X.shape}")
        if form.layout == 1:
            X = X.transpose(1, 0, 2)
        X = np.ascontiguousarray(X, dtype=dtype)
        T, B = X.shape[:2]
        D, H = len(form.directions), form.hidden_size
        state = {}
        for name, given in (("h", initial_h), ("c", initial_c)):
            if name not in self.cell.state_sizes:
                if given is not None:
                    raise OnnxError(f"{form.where}: initial_c is an LSTM input")
                continue
            if given is None:
                state[name] = np.zeros((D, B, H), dtype)
                continue
            given = _real(form, f"initial_{name}", given)
            if form.layout == 1 and given.ndim == 3:
                given = given.transpose(1, 0, 2)
            if given.shape != (D, B, H):
                raise OnnxError(f"{form.where}: initial_{name} must have shape "
                                f"{(B, D, H) if form.layout else (D, B, H)}, got "
                                f"{np.asarray(initial_h if name == 'h' else initial_c).shape}")
            state[name] = np.ascontiguousarray(given, dtype=dtype)
        lengths = None
        if sequence_lens is not None:
            lengths = np.asarray(sequence_lens)
            if lengths.dtype.kind not in "iu":
                raise OnnxError(f"{form.where}: sequence_lens must hold integers, got "
                                f"{lengths.dtype}")
            lengths = lengths.astype(np.int64)
        y, final = self.cell.forward(X, self.params, state, lengths=lengths)
        if lengths is not None:
            # lstmc keeps the initial state of a row of length 0; onnxruntime zeroes it
            for value in final.values():
                value[:, lengths == 0] = 0
        Y = y.reshape(T, B, D, H).transpose(0, 2, 1, 3)  # (T, D, B, H)
        Y_h, Y_c = final["h"], final.get("c")
        if form.layout == 1:
            Y = Y.transpose(2, 0, 1, 3)
            Y_h = Y_h.transpose(1, 0, 2)
            Y_c = None if Y_c is None else Y_c.transpose(1, 0, 2)
        return (np.ascontiguousarray(Y), np.ascontiguousarray(Y_h),
                None if Y_c is None else np.ascontiguousarray(Y_c))


def _real(form: NodeForm, name: str, value) -> np.ndarray:
    """`value` as an array of real numbers (a complex or string one would be cast with its
    imaginary part dropped, or fail inside NumPy)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise OnnxError(f"{form.where}: {name} holds {array.dtype}, not real numbers")
    return array


def load(model, target: str = "cpu", dtype: str = "float32",
         inputs: dict[str, np.ndarray] | None = None) -> list[ImportedNode]:
    """One ImportedNode per LSTM, GRU and RNN node of `model` (a path or an
    onnx.ModelProto), in graph order. Weights (W, R, B, P) come from initializers or
    Constant nodes, or from `inputs` for weights the model takes as graph inputs."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        try:
            model = onnx.load(os.fspath(model))
        except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
            raise OnnxError(f"{os.fspath(model)}: cannot read an ONNX model: {exc}") from None
        except Exception as exc:  # protobuf's DecodeError and relatives: not a model
            raise OnnxError(f"{os.fspath(model)}: not an ONNX model ({exc})") from None
    if not isinstance(model, onnx.ModelProto):
        raise OnnxError(f"load takes a path or an onnx.ModelProto, got {type(model).__name__}")
    _check_opset(model)
    graph = model.graph
    known = {t.name: _tensor_value(t, f"initializer '{t.name}'") for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            known[node.output[0]] = _constant_value(node)
    known.update(inputs or {})
    nodes = [n for n in graph.node if n.op_type in OPS and n.domain in ("", "ai.onnx")]
    if not nodes:
        raise OnnxError("the model has no LSTM, GRU or RNN node")
    return [import_node(n, known, target, dtype, index)
            for index, n in enumerate(nodes)]


OLDEST_OPSET = 7  # LSTM, GRU and RNN as of opset 7 (before: output_sequence, other outputs)


def _check_opset(model) -> None:
    """The model's ai.onnx opset is one whose LSTM, GRU and RNN lstmc reads: 7 or newer
    (the operators' equations have not changed since), and no newer than this onnx
    package knows (a later opset may change them; onnxruntime refuses those too)."""
    import onnx

    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    newest = onnx.defs.onnx_opset_version()
    if not versions:
        raise OnnxError("the model imports no ai.onnx opset (its opset_import names "
                        "none), so its LSTM, GRU and RNN nodes have no defined meaning")
    version = versions[0]
    if version < OLDEST_OPSET:
        raise OnnxError(f"the model's ai.onnx opset is {version}; lstmc reads opsets "
                        f"{OLDEST_OPSET} to {newest}: convert it first with onnx."
                        f"version_converter.convert_version(model, {OLDEST_OPSET})")
    if version > newest:
        raise OnnxError(f"the model's ai.onnx opset is {version}, newer than this onnx "
                        f"package knows ({newest}): upgrade onnx, or export the model at "
                        f"opset {newest} or older")


def _constant_value(node) -> np.ndarray:
    """The array a Constant node holds, whichever of its value attributes it uses
    (`value`, a tensor; `value_floats`, `value_int` ...: plain numbers)."""
    from onnx import helper

    attr = node.attribute[0]
    where = f"Constant node '{node.name or node.output[0]}'"
    if attr.name == "value":
        return _tensor_value(attr.t, where)
    value = helper.get_attribute_value(attr)
    return np.asarray(value, dtype=np.float32 if "float" in attr.name else None)


def _tensor_value(tensor, where: str) -> np.ndarray:
    """The array a TensorProto holds; one whose dims disagree with its data (or that the
    onnx package cannot read) is an OnnxError naming it."""
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(tensor)
    except KeyError:  # the onnx package's tables have no such data type
        raise OnnxError(f"{where}: unknown tensor data type {tensor.data_type}") from None
    except (ValueError, TypeError) as exc:  # dims that disagree with the data, say
        raise OnnxError(f"{where}: its data does not fit its dims {list(tensor.dims)} "
                        f"({exc})") from None


def _attributes(node, where: str) -> dict:
    """The node's attributes by name; a known one of another type than the operator
    declares (a single float for activation_alpha, a string for layout) is an error."""
    from onnx import AttributeProto, helper

    out = {}
    for a in node.attribute:
        want = ATTRIBUTE_TYPES.get(a.name)
        got = AttributeProto.AttributeType.Name(a.type)
        if want is not None and got != want:
            raise OnnxError(f"{where}: attribute {a.name} must be of type {want}, got {got}")
        out[a.name] = helper.get_attribute_value(a)
    return out


def import_node(node, known: dict[str, np.ndarray], target: str, dtype: str,
                index: int = 0) -> ImportedNode:
    """Spec, parameters and compiled cell of one node."""
    import lstmc

    op = node.op_type
    name = node.name or f"{op.lower()}{index}"
    where = f"{op} node '{name}'"
    names = dict(zip(INPUTS, list(node.input) + [""] * len(INPUTS)))
    weights: dict[str, np.ndarray | None] = {}
    for key in ("W", "R", "B", "P"):
        source = names[key]
        if key == "P" and op != "LSTM":
            continue
        if not source:
            if key in ("W", "R"):
                raise OnnxError(f"{where}: input {key} is missing")
            weights[key] = None
            continue
        if source not in known:
            raise OnnxError(f"{where}: input {key} ('{source}') is neither an initializer "
                            f"nor a constant: pass its value in inputs={{'{source}': ...}}")
        value = np.asarray(known[source])
        if value.dtype.kind not in "fiu":
            raise OnnxError(f"{where}: input {key} ('{source}') holds {value.dtype}, not "
                            "numbers")
        weights[key] = value.astype(np.float64)
    attributes = _attributes(node, where)
    w, r = weights["W"], weights["R"]
    assert w is not None and r is not None  # a missing W or R is refused above
    form = node_form(op, name, attributes, {"W": w.shape, "R": r.shape},
                     weights.get("P") is not None)
    D, H = len(form.directions), form.hidden_size
    gates = len(GATES[op])
    expected = {"B": (D, 2 * gates * H), "P": (D, 3 * H)}
    for key, shape in expected.items():
        given = weights.get(key)
        if given is not None and given.shape != shape:
            raise OnnxError(f"{where}: input {key} must have shape {shape}, got "
                            f"{given.shape}")
    base = f"onnx_{op.lower()}"
    same = D == 1 or form.activations[0] == form.activations[1]
    cells = [base] * D if same else [f"{base}_{d}" for d in form.directions]
    text = "".join(spec_text(form, c, d) for d, c in enumerate(cells[:1] if same else cells))
    compile_text = partial(lstmc.compile, text, input_size=form.input_size, hidden_size=H,
                           target=target, dtype=dtype, cell=cells[0])
    if D == 2:
        compiled = compile_text(bidirectional=True, reverse_cell=cells[1])
    elif form.directions == ("reverse",):
        compiled = compile_text(direction="reverse")
    else:
        compiled = Stack([[compile_text()]])
    params = {}
    for d in range(D):
        for pname, value in split_weights(form, weights, d).items():
            params[compiled.prefix(0, d) + pname] = np.ascontiguousarray(value, dtype=dtype)
    constants = {key: known[names[key]] for key in ("sequence_lens", "initial_h", "initial_c")
                 if names[key] and names[key] in known}  # "": an input left out
    return ImportedNode(form, text, params, compiled, constants)
