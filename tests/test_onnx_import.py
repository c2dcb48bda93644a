"""ONNX LSTM/GRU/RNN nodes imported as lstmc cells, judged by the onnx package's own node
tests and by onnxruntime on nodes with random weights, lengths and initial states."""
import importlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lstmc.onnx import OnnxError, load  # noqa: E402


def node_tests():
    import onnx.backend.test.case.node as cases
    for module in ("lstm", "gru", "rnn"):  # importing a module runs its exports
        importlib.import_module(f"onnx.backend.test.case.node.{module}")
    return [c for c in cases._NodeTestCases
            if c.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN")]


NODE_TESTS = node_tests()


def test_at_least_18_node_tests():
    assert len(NODE_TESTS) >= 18, [c.name for c in NODE_TESTS]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", NODE_TESTS, ids=[c.name for c in NODE_TESTS])
def test_onnx_node_test(case, dtype):
    node = case.model.graph.node[0]
    inputs, expected = case.data_sets[0]
    named = dict(zip([n for n in node.input if n], inputs))
    weights = {k: v for k, v in named.items() if k in ("W", "R", "B", "P")}
    imported = load(case.model, target="reference", dtype=dtype, inputs=weights)[0]
    result = imported.run(named["X"], named.get("sequence_lens"), named.get("initial_h"),
                          named.get("initial_c"))
    got = [r for r, name in zip(result, list(node.output) + [""] * 3) if name]
    for value, want in zip(got, expected):
        np.testing.assert_allclose(value, want, rtol=case.rtol, atol=max(case.atol, 1e-6))


def random_model(rng, op, attrs, H=4, I=3, peepholes=False):
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    weights = {"W": rng.uniform(-1, 1, (D, G * H, I)), "R": rng.uniform(-1, 1, (D, G * H, H)),
               "B": rng.uniform(-1, 1, (D, 2 * G * H))}
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"]
    if op == "LSTM":
        names.append("initial_c")
        if peepholes:
            weights["P"] = rng.uniform(-1, 1, (D, 3 * H))
            names.append("P")
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outputs, hidden_size=H, **attrs)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, None)]
    graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                     for n in names if n.startswith("initial")]
    graph = helper.make_graph(
        [node], "g", graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]), D


RANDOM_NODES = [
    ("LSTM", {}, False), ("LSTM", {"input_forget": 1}, False), ("LSTM", {"clip": 0.7}, True),
    ("LSTM", {"direction": "reverse"}, True),
    ("LSTM", {"direction": "bidirectional", "clip": 0.5, "input_forget": 1}, True),
    ("GRU", {"linear_before_reset": 1, "clip": 0.9}, False),
    ("GRU", {"direction": "bidirectional",
             "activations": ["Sigmoid", "Tanh", "HardSigmoid", "Softsign"]}, False),
    ("RNN", {"activations": ["Affine"], "activation_alpha": [0.3],
             "activation_beta": [0.4]}, False),
    ("RNN", {"activations": ["ScaledTanh"]}, False),  # onnxruntime: alpha, beta default 0
    ("RNN", {"activations": ["LeakyRelu"]}, False), ("RNN", {"activations": ["Elu"]}, False),
    ("RNN", {"activations": ["Softplus"], "direction": "reverse"}, False),
    ("RNN", {"activations": ["ThresholdedRelu"]}, False),  # onnxruntime: alpha 0
    ("RNN", {"activations": ["ThresholdedRelu"], "activation_alpha": [-0.3]}, False),
    ("LSTM", {"clip": float("inf")}, True),  # onnxruntime: bounds nothing
]


@pytest.mark.parametrize("op,attrs,peepholes", RANDOM_NODES,
                         ids=[f"{o}-{a}" for o, a, _ in RANDOM_NODES])
def test_random_node_against_onnxruntime(op, attrs, peepholes):
    """Random weights per gate, real lengths (0 included) and initial states: a swapped
    gate, an ignored clip, input_forget, sequence_lens or initial state fails here."""
    rng = np.random.default_rng(len(str(attrs)))
    model, D = random_model(rng, op, attrs, peepholes=peepholes)
    T, B = 5, 3
    feed = {"X": rng.standard_normal((T, B, 3)).astype(np.float32) * 2,
            "sequence_lens": np.array([5, 0, 2], np.int32),
            "initial_h": rng.standard_normal((D, B, 4)).astype(np.float32)}
    if op == "LSTM":
        feed["initial_c"] = rng.standard_normal((D, B, 4)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feed)
    imported = load(model, target="reference", dtype="float64")[0]
    got = imported.run(feed["X"], feed["sequence_lens"], feed["initial_h"],
                       feed.get("initial_c"))
    for value, want in zip(got, expected):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


def test_refusals_name_the_attribute():
    rng = np.random.default_rng(0)
    model, _ = random_model(rng, "RNN", {"activations": ["Swish"]})
    with pytest.raises(OnnxError, match="unknown activation 'Swish'"):
        load(model, target="reference")
    model, _ = random_model(rng, "RNN", {"direction": "sideways"})
    with pytest.raises(OnnxError, match="direction"):
        load(model, target="reference")


@pytest.mark.parametrize("dims", [[1, 33, 4], [2, 16, 3]])
def test_an_initializer_whose_dims_disagree_with_its_data_is_named(dims):
    """An initializer whose dims promise more (or other) values than its data holds is
    refused as an OnnxError naming the initializer and its dims."""
    model, _ = random_model(np.random.default_rng(0), "LSTM", {})
    weight = next(t for t in model.graph.initializer if t.name == "W")
    del weight.dims[:]
    weight.dims.extend(dims)
    with pytest.raises(OnnxError, match=r"initializer 'W'") as info:
        load(model, target="reference")
    assert str(dims) in str(info.value)


def test_a_model_with_a_damaged_initializer_is_an_error_on_the_command_line(tmp_path):
    """`lstmc import-onnx` on such a model: `lstmc: error:` naming the initializer, not an
    internal error."""
    import subprocess
    import sys

    model, _ = random_model(np.random.default_rng(0), "LSTM", {})
    weight = next(t for t in model.graph.initializer if t.name == "R")
    del weight.dims[:]
    weight.dims.extend([1, 33, 4])
    path = tmp_path / "damaged.onnx"
    onnx.save(model, str(path))
    result = subprocess.run([sys.executable, "-m", "lstmc.cli", "import-onnx", str(path),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("lstmc: error: initializer 'R'"), result.stderr
    assert "internal error" not in result.stderr


def import_on_the_command_line(capsys, tmp_path, model):
    from lstmc.cli import main

    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    status = main(["import-onnx", str(path), "-o", str(tmp_path / "out")])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("name, value, declared", [
    ("activation_alpha", 0.5, "FLOATS"),  # one float, where the operator takes a list
    ("clip", [1, 2], "FLOAT"),
    ("layout", "batch", "INT"),
    ("direction", 1, "STRING"),
    ("activations", "Tanh", "STRINGS"),  # a string is not a list of one name
])
def test_an_attribute_of_the_wrong_type_is_named(capsys, tmp_path, name, value, declared):
    model, _ = random_model(np.random.default_rng(0), "RNN", {})
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute(name, value))
    status, err = import_on_the_command_line(capsys, tmp_path, model)
    assert status == 1, err
    assert err.startswith(f"lstmc: error: RNN node 'rnn0': attribute {name} must be of type "
                          f"{declared}"), err


@pytest.mark.parametrize("attrs, message", [
    ({"activations": ["LeakyRelu"], "activation_alpha": [float("nan")]},
     "attribute activation_alpha gives LeakyRelu the value nan"),
    ({"activations": ["Affine"], "activation_alpha": [1.0], "activation_beta": [float("-inf")]},
     "attribute activation_beta gives Affine the value -inf"),
    ({"activations": [b"\xff"]}, "unknown activation"),  # not UTF-8
])
def test_unusable_attribute_values_are_named(capsys, tmp_path, attrs, message):
    model, _ = random_model(np.random.default_rng(0), "RNN", attrs)
    status, err = import_on_the_command_line(capsys, tmp_path, model)
    assert status == 1, err
    assert err.startswith(f"lstmc: error: RNN node 'rnn0': {message}"), err


def test_weights_that_are_not_numbers_are_named(capsys, tmp_path):
    model, _ = random_model(np.random.default_rng(0), "GRU", {})
    weight = next(t for t in model.graph.initializer if t.name == "R")
    weight.CopyFrom(helper.make_tensor("R", TensorProto.STRING, [1], [b"x"]))
    status, err = import_on_the_command_line(capsys, tmp_path, model)
    assert status == 1, err
    assert err.startswith("lstmc: error: GRU node 'gru0': input R ('R') holds object"), err


def test_weights_from_a_constant_of_plain_numbers_are_read():
    """A Constant node's `value_floats` (not only its `value` tensor) is a constant: B of
    the wrong rank is then named as such, not as an input that is no constant."""
    model, _ = random_model(np.random.default_rng(0), "RNN", {})
    bias = next(t for t in model.graph.initializer if t.name == "B")
    values = numpy_helper.to_array(bias).ravel().tolist()
    model.graph.initializer.remove(bias)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["B"], value_floats=values))
    with pytest.raises(OnnxError, match=r"input B must have shape \(1, 8\), got \(8,\)"):
        load(model, target="reference")


def test_run_refuses_inputs_that_are_not_real_numbers():
    """A complex X (or state) would lose its imaginary part in the cast, silently."""
    model, _ = random_model(np.random.default_rng(0), "LSTM", {})
    node = load(model, target="reference")[0]
    X = np.ones((2, 1, 3))
    with pytest.raises(OnnxError, match="X holds complex128, not real numbers"):
        node.run(X + 1j)
    with pytest.raises(OnnxError, match="initial_h holds <U1, not real numbers"):
        node.run(X, initial_h=np.full((1, 1, 4), "a"))


@pytest.mark.parametrize("model", [123, b"\x08\x07"])
def test_load_names_what_it_takes(model):
    with pytest.raises(OnnxError, match="a path or an onnx.ModelProto, got"):
        load(model, target="reference")


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_initial_states_and_lengths_held_by_the_model_are_run_defaults(op, capsys, tmp_path):
    """sequence_lens, initial_h and initial_c as initializers of the model: run(X) alone
    computes what onnxruntime computes, and import-onnx says they are not carried."""
    rng = np.random.default_rng(3)
    model, D = random_model(rng, op, {"direction": "bidirectional"})
    T, B = 5, 3
    held = {"sequence_lens": np.array([5, 0, 2], np.int32),
            "initial_h": rng.standard_normal((D, B, 4)).astype(np.float32)}
    if op == "LSTM":
        held["initial_c"] = rng.standard_normal((D, B, 4)).astype(np.float32)
    inputs = [i for i in model.graph.input if i.name not in held]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in held.items())
    X = rng.standard_normal((T, B, 3)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"X": X})
    got = load(model, target="reference", dtype="float64")[0].run(X)
    for value, want in zip(got, expected):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)
    from lstmc.cli import main

    onnx.save(model, str(tmp_path / "model.onnx"))
    assert main(["import-onnx", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "o")]) == 0
    assert f"holds the node's {', '.join(held)} as constants" in capsys.readouterr().out


@pytest.mark.parametrize("opset,message", [
    (1, "opset is 1; lstmc reads opsets 7 to"),
    (6, "convert it first with onnx.version_converter.convert_version(model, 7)"),
    (onnx.defs.onnx_opset_version() + 1, "newer than this onnx package knows"),
    (None, "imports no ai.onnx opset")])
def test_a_model_of_an_opset_lstmc_does_not_read_is_refused(opset, message):
    """Before opset 7 LSTM/GRU/RNN had other attributes and outputs; a later opset than
    the onnx package knows may change them (onnxruntime refuses those as well)."""
    model, _ = random_model(np.random.default_rng(0), "LSTM", {})
    del model.opset_import[:]
    if opset is not None:
        model.opset_import.append(helper.make_opsetid("", opset))
    else:
        model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OnnxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(model, target="reference")


@pytest.mark.parametrize("opset", [7, 14, 22])
def test_models_of_opsets_7_to_the_newest_are_read(opset):
    model, _ = random_model(np.random.default_rng(0), "LSTM", {})
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx", opset))
    assert len(load(model, target="reference")) == 1
