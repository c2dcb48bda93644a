"""ONNX export: every spec, random cells, stacks, directions and lengths exported, run by
onnxruntime and compared with lstmc's reference executor (the oracle); the models pass
onnx's full checks; import(export(standard cell)) gives the parameters back; the
`lstmc export` and `lstmc import-onnx` commands."""
import numpy as np
import pytest
from conftest import EXTRA_SIZES, SPEC_NAMES, spec_path
from hypothesis import HealthCheck, given, settings

import lstmc
from lstmc.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from test_random_cells import cells as random_cells  # noqa: E402

from lstmc.onnx import OnnxError, export, load  # noqa: E402

I, H, T, B = 3, 4, 5, 3
LENGTHS = np.array([5, 0, 2])  # a full row, an empty one, a short one
TOLERANCE = dict(rtol=2e-5, atol=2e-5)

# The shipped cells that are exactly an ONNX operator (README: ONNX), by hand.
NATIVE = {"lstm": "LSTM", "peephole_lstm": "LSTM", "greff/np": "LSTM",
          "greff/cifg": "LSTM", "gru": "GRU", "gru_cho": "GRU", "rnn_tanh": "RNN",
          "rnn_relu": "RNN"}


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the warning about overridable initializers
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def compile_cell(source, dtype="float32", **options):
    sizes = dict(EXTRA_SIZES.get(source, {})) if isinstance(source, str) else {}
    path = spec_path(source) if source in SPEC_NAMES else source
    return lstmc.compile(path, I, H, dtype=dtype, **sizes, **options)


def inputs(cell, seed=0, batch_first=False):
    """x, parameters and initial states (stacked layout) drawn at random."""
    rng = np.random.default_rng(seed)
    dtype = cell.dtype
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    params = {n: rng.uniform(-0.7, 0.7, s).astype(dtype) for n, s in cell.param_shapes.items()}
    count = getattr(cell, "num_layers", 1) * getattr(cell, "num_directions", 1)
    state = {n: (0.5 * rng.standard_normal((count, B, s))).astype(dtype)
             for n, s in cell.state_sizes.items()}
    return x, params, state


def reference(cell, x, params, state, lengths):
    """lstmc's reference executor; states in the stacked layout for a plain cell too."""
    if hasattr(cell, "num_layers"):
        return cell.forward(x, params, state, lengths=lengths)
    y, final = cell.forward(x, params, {n: v[0] for n, v in state.items()}, lengths=lengths)
    return y, {n: v[None] for n, v in final.items()}


def run_exported(model, x, state, lengths):
    feed = {"X": x, **{f"initial_{n}": v for n, v in state.items()}}
    if lengths is not None:
        feed["sequence_lens"] = lengths.astype(np.int32)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session(model).run(None, feed)))


def assert_same(cell, model, seed=0, lengths=LENGTHS, batch_first=False, tolerance=TOLERANCE):
    x, params, state = inputs(cell, seed, batch_first)
    want_y, want_final = reference(cell, x, params, state, lengths)
    got = run_exported(model(params) if callable(model) else model, x, state, lengths)
    np.testing.assert_allclose(got["Y"], want_y, **tolerance)
    for name, value in want_final.items():
        np.testing.assert_allclose(got[f"final_{name}"], value, **tolerance, err_msg=name)
    return params


def recurrent_ops(model):
    return sorted({n.op_type for n in model.graph.node if n.op_type in
                   ("LSTM", "GRU", "RNN", "Scan")})


LAYOUTS = {"one": {}, "stack": {"num_layers": 2, "bidirectional": True}}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_spec_exported_equals_the_reference(spec_name, layout):
    """Each shipped spec, one layer and a 2-layer bidirectional stack, with lengths (0
    included) and initial states; the native-operator specs also as Scan."""
    cell = compile_cell(spec_name, **LAYOUTS[layout])
    if cell.extra_inputs:  # phased_lstm's timestamps: refused, by name
        with pytest.raises(OnnxError, match="inputs after the first"):
            export(cell, cell.init_params(0))
        return
    x, params, _ = inputs(cell)
    forms = [True, False] if spec_name in NATIVE else [True]
    for native in forms:
        model = export(cell, params, native=native)
        onnx.checker.check_model(model, full_check=True)
        expected = [NATIVE[spec_name]] if native and spec_name in NATIVE else ["Scan"]
        assert recurrent_ops(model) == expected
        assert_same(cell, model)


def test_native_attributes_follow_the_cell():
    attrs = {}
    for name in ("greff/cifg", "gru", "gru_cho", "rnn_relu"):
        cell = compile_cell(name)
        node = next(n for n in export(cell, cell.init_params(0)).graph.node
                    if n.op_type in ("LSTM", "GRU", "RNN"))
        attrs[name] = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["greff/cifg"]["input_forget"] == 1
    assert attrs["gru"]["linear_before_reset"] == 1
    assert attrs["gru_cho"]["linear_before_reset"] == 0
    assert attrs["rnn_relu"]["activations"] == [b"Relu"]


@pytest.mark.parametrize("spec", ["lstm", "mgu"])
def test_batch_first_and_reverse_direction(spec):
    for options in ({"batch_first": True, "num_layers": 2},
                    {"direction": "reverse", "batch_first": True}):
        cell = compile_cell(spec, **options)
        x, params, _ = inputs(cell)
        model = export(cell, params)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
        assert_same(cell, model, batch_first=True)


def test_optional_inputs_default_to_full_lengths_and_zero_states():
    for spec in ("gru", "layernorm_lstm"):
        cell = compile_cell(spec, num_layers=2)
        x, params, _ = inputs(cell)
        model = export(cell, params)
        y, final = cell.forward(x, params)
        got = session(model).run(None, {"X": x})
        np.testing.assert_allclose(got[0], y, **TOLERANCE)
        np.testing.assert_allclose(got[1], final["h"], **TOLERANCE)


@pytest.mark.parametrize("native", [True, False])
def test_padding_reaches_nothing(native):
    """NaN and inf past a row's length change no output, as in lstmc."""
    cell = compile_cell("lstm", bidirectional=True)
    x, params, state = inputs(cell)
    model = export(cell, params, native=native)
    clean = run_exported(model, x, state, LENGTHS)
    x[2:, 2], x[:, 1] = np.nan, np.inf
    dirty = run_exported(model, x, state, LENGTHS)
    for name in clean:
        np.testing.assert_array_equal(dirty[name], clean[name])


def test_different_cells_per_direction():
    spec = ("cell fwd(x: I) -> h: H {\n  param W, U, b\n  h' = tanh(W @ x + U @ h + b)\n}\n"
            "cell back(x: I) -> h: H {\n  param W, U, b\n  h' = relu(W @ x + U @ h + b)\n}\n"
            "cell other(x: I) -> h: H {\n  param W, U\n  h' = softsign(W @ x) * tanh(U @ h)\n}\n")
    for reverse, ops in (("back", ["RNN"]), ("other", ["Scan"])):
        cell = lstmc.compile(spec, I, H, cell="fwd", bidirectional=True, reverse_cell=reverse,
                             num_layers=2)
        x, params, _ = inputs(cell)
        model = export(cell, params)
        assert recurrent_ops(model) == ops
        assert_same(cell, model)


EVERY_FUNCTION = """
cell every(x: I) -> h: H {
  state c: H
  param W, U, V: [H, H], b, k: 1
  z = W @ x + U @ h + b
  a = relu(z) + abs(z) * softsign(z) - exp(-abs(z))
  m = log(1 + sigmoid(z)) + sqrt(abs(z) + 1)
  n = min(a, m) + max(a, hard_sigmoid(z)) + clip(z, -0.5, 0.5)
  c' = layernorm(tanh(n) + c) * k + mean(z) - sum(c) / 8
  h' = tanh(V @ c') / (1 + mean(abs(c')))
}
"""


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_every_function_and_opsets(opset):
    cell = lstmc.compile(EVERY_FUNCTION, I, H, bidirectional=True)
    x, params, _ = inputs(cell)
    model = export(cell, params, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    assert_same(cell, model)


def test_float64_cells_export_as_scan():
    cell = compile_cell("lstm", dtype="float64", num_layers=2)
    x, params, _ = inputs(cell)
    model = export(cell, params)
    assert recurrent_ops(model) == ["Scan"]  # onnxruntime's LSTM is float32 only
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert_same(cell, model, tolerance=dict(rtol=1e-12, atol=1e-12))


def test_every_registry_op_has_an_onnx_form():
    from lstmc.ir import ops
    from lstmc.onnx.scan import ELEMENTWISE

    # an op added to the registry needs its ONNX form in lstmc/onnx/scan.py
    assert {op.name for op in ELEMENTWISE} == set(ops.BUILTIN)


FUNCTIONS_SPEC = """cell functions(x: I) -> h: H {
  state s: H
  param W, U, b
  z = W @ x + U @ h + b
  a = softplus(3 * z) + logsigmoid(z) + elu(z) + elu(z, 0.5) + selu(z) + gelu(z)
  c = gelu_tanh(z) + silu(z) + leaky_relu(z) + leaky_relu(z, -0.2) + erf(z) + sin(z)
  d = cos(z) + floor(2 * z) + mod(z, 0.3) + mod(z, -0.3) + z ** 2 + abs(z) ** 0.5
  s' = where(z > 0, a, c) + (z <= s) * d
  h' = tanh(a + c + d + s')
}"""


def test_the_language_functions_export():
    cell = compile_cell(FUNCTIONS_SPEC)
    assert_same(cell, export(cell, inputs(cell)[1]))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cells())
def test_random_cells(spec):
    cell = lstmc.compile(spec, I, H, num_layers=2, bidirectional=True)
    if cell.extra_inputs:  # random cells may read inputs after x: refused, by name
        with pytest.raises(OnnxError, match="inputs after the first"):
            export(cell, cell.init_params(0))
        return
    x, params, state = inputs(cell, seed=1)
    model = export(cell, params)
    onnx.checker.check_model(model, full_check=True)
    want_y, want_final = reference(cell, x, params, state, LENGTHS)
    got = run_exported(model, x, state, LENGTHS)
    scale = max(1.0, float(np.abs(want_y).max()))
    np.testing.assert_allclose(got["Y"], want_y, rtol=1e-4, atol=1e-5 * scale, err_msg=spec)
    for name, value in want_final.items():
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got[f"final_{name}"], value, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=spec)


# -- round trip: import(export(cell)) --------------------------------------------------

# ONNX's parameter names in the imported spec (nodespec) -> lstmc's standard specs' names.
LSTM_NAMES = {f"{p}_{g}": f"{q}_{r}{s}" for p, q, r in (("W", "W", "i"), ("R", "W", "h"),
                                                          ("Wb", "b", "i"), ("Rb", "b", "h"))
              for g, s in (("i", "i"), ("o", "o"), ("f", "f"), ("c", "g"))}
GRU_NAMES = {f"{p}_{g}": f"{q}_{r}{s}" for p, q, r in (("W", "W", "i"), ("R", "W", "h"),
                                                         ("Wb", "b", "i"), ("Rb", "b", "h"))
             for g, s in (("z", "z"), ("r", "r"), ("h", "n"))}
RNN_NAMES = {"W": "W_ih", "R": "W_hh", "Wb": "b_ih", "Rb": "b_hh"}


@pytest.mark.parametrize("spec,names", [("lstm", LSTM_NAMES), ("gru", GRU_NAMES),
                                        ("rnn_tanh", RNN_NAMES)])
def test_round_trip_gives_the_parameters_back(spec, names, tmp_path):
    cell = compile_cell(spec, bidirectional=True)
    x, params, state = inputs(cell)
    path = tmp_path / "model.onnx"
    export(cell, params, path)
    (node,) = load(path, target="reference")
    assert node.op == {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}[spec]
    assert set(node.params) == {f"{p}{n}" for p in ("l0.", "l0_reverse.") for n in names}
    for prefix in ("l0.", "l0_reverse."):
        for onnx_name, name in names.items():
            np.testing.assert_array_equal(node.params[prefix + onnx_name],
                                          params[prefix + name], err_msg=onnx_name)
    y, final = cell.forward(x, params, state, lengths=np.array([5, 1, 2]))
    Y, Y_h, _ = node.run(x, np.array([5, 1, 2]), state["h"], state.get("c"))
    np.testing.assert_allclose(Y.transpose(0, 2, 1, 3).reshape(y.shape), y, **TOLERANCE)
    np.testing.assert_allclose(Y_h, final["h"], **TOLERANCE)


# -- refusals --------------------------------------------------------------------------

def test_refusals_name_what_cannot_be_exported(tmp_path):
    from lstmc.ir import ops

    op = ops.register(ops.Elementwise(
        name="cube", arity=1, function=True, semantics="z^3.", reference=lambda z: z * z * z,
        derivative=lambda g, y, dy: [None], llvm=lambda m, b, z: b.fmul(b.fmul(z, z), z),
        c="(({0}) * ({0}) * ({0}))"))
    try:
        spec = "cell cubic(x: I) -> h: H {\n  param W, U\n  h' = tanh(cube(W @ x + U @ h))\n}\n"
        cell = lstmc.compile(spec, I, H)
        with pytest.raises(OnnxError, match="'cube', which has no ONNX form"):
            export(cell, cell.init_params(0))
    finally:
        ops.unregister(op.name)
    cell = compile_cell("lstm")
    params = cell.init_params(0)
    with pytest.raises(OnnxError, match="target='reference'"):
        export(compile_cell("lstm", target="cpu"), params)
    with pytest.raises(OnnxError, match="missing W_ii"):
        export(cell, {k: v for k, v in params.items() if k != "W_ii"})
    with pytest.raises(OnnxError, match=r"params\['b_io'\]: expected shape \(4,\)"):
        export(cell, dict(params, b_io=np.zeros(5)))
    with pytest.raises(OnnxError, match="opset must be"):
        export(cell, params, opset=9)
    with pytest.raises(OnnxError, match="compiled cell or stack"):
        export(spec_path("lstm"), params)


# -- the command line ------------------------------------------------------------------

def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_export_with_params_and_import(tmp_path, capsys):
    cell = compile_cell("mgu", num_layers=2, batch_first=True)
    x, params, state = inputs(cell, batch_first=True)
    np.savez(tmp_path / "p.npz", **params)
    model_path = tmp_path / "mgu.onnx"
    status, out, err = cli(capsys, "export", spec_path("mgu"), "-o", model_path,
                           "--input-size", I, "--hidden-size", H, "--num-layers", 2,
                           "--batch-first", "--params", tmp_path / "p.npz")
    assert status == 0, err
    assert "as Scan" in out
    assert_same(cell, onnx.load(str(model_path)), batch_first=True)

    status, out, err = cli(capsys, "export", spec_path("lstm"), "-o", tmp_path / "l.onnx",
                           "--input-size", I, "--hidden-size", H, "--bidirectional")
    assert status == 0, err
    assert "the LSTM operator" in out
    status, out, err = cli(capsys, "import-onnx", tmp_path / "l.onnx", "-o", tmp_path / "out")
    assert status == 0, err
    spec_file, params_file = tmp_path / "out" / "LSTM_layer0.lstm", tmp_path / "out" / \
        "LSTM_layer0.npz"
    assert str(spec_file) in out and "--bidirectional" in out
    imported = lstmc.compile(spec_file, I, H, bidirectional=True)
    with np.load(params_file) as data:
        imported_params = dict(data)
    original = compile_cell("lstm", bidirectional=True)
    x, params, state = inputs(original)
    params = original.init_params(0)  # what `lstmc export` wrote without --params
    want = original.forward(x, params, state, lengths=LENGTHS)
    got = imported.forward(x, imported_params, state, lengths=LENGTHS)
    np.testing.assert_allclose(got[0], want[0], **TOLERANCE)


def test_cli_bad_input(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    np.save(tmp_path / "one.npy", np.zeros(3))
    cases = [
        (["import-onnx", tmp_path / "junk.onnx", "-o", tmp_path / "o"], "not an ONNX model"),
        (["import-onnx", tmp_path / "missing.onnx", "-o", tmp_path / "o"], "cannot read"),
        (["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--input-size", I,
          "--hidden-size", H, "--params", tmp_path / "one.npy"], "an .npz file"),
        (["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--input-size", I,
          "--hidden-size", H, "--params", tmp_path / "nope.npz"], "cannot read it"),
        (["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--hidden-size", H],
         "no value for size I: give --input-size N"),
        (["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--input-size", I,
          "--hidden-size", H, "--opset", 7], "opset must be"),
    ]
    for args, message in cases:
        status, out, err = cli(capsys, *args)
        assert status == 1 and message in err and "Traceback" not in err, (args, err)
        assert err.startswith("lstmc: error: ")
    for args in (["export", spec_path("lstm")],  # usage errors: argparse's status 2
                 ["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--input-size", I,
                  "--hidden-size", H, "--seed", -1]):  # init_params takes 0..2**64-1
        with pytest.raises(SystemExit) as exit_info:
            cli(capsys, *args)
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_cli_without_onnx_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx fails
    for args in (["export", spec_path("lstm"), "-o", tmp_path / "m.onnx", "--input-size", I,
                  "--hidden-size", H], ["import-onnx", tmp_path / "m.onnx", "-o", tmp_path]):
        status, out, err = cli(capsys, *args)
        assert status == 1 and "pip install lstmc[onnx]" in err, err


def test_imported_node_exports_back_as_the_same_computation():
    """An ONNX LSTM with clip and peepholes (no exported form: it becomes a Scan),
    imported and exported again, computes what onnxruntime computes for the original."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = {"W": rng.uniform(-1, 1, (2, 4 * H, I)), "R": rng.uniform(-1, 1, (2, 4 * H, H)),
               "B": rng.uniform(-1, 1, (2, 8 * H)), "P": rng.uniform(-1, 1, (2, 3 * H))}
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "sequence_lens", "", "", "P"],
                            ["Y", "Y_h", "Y_c"], hidden_size=H, clip=0.6,
                            direction="bidirectional")
    original = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
                      helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h",
                                                                             "Y_c")],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    x = (2 * rng.standard_normal((T, B, I))).astype(np.float32)
    lengths = np.array([5, 1, 3], np.int32)
    Y, Y_h, Y_c = session(original).run(None, {"X": x, "sequence_lens": lengths})
    (imported,) = load(original, target="reference")
    model = export(imported.cell, imported.params)
    assert recurrent_ops(model) == ["Scan"]
    got = run_exported(model, x, {}, lengths)
    np.testing.assert_allclose(got["Y"], Y.transpose(0, 2, 1, 3).reshape(T, B, 2 * H),
                               **TOLERANCE)
    np.testing.assert_allclose(got["final_h"], Y_h, **TOLERANCE)
    np.testing.assert_allclose(got["final_c"], Y_c, **TOLERANCE)
