"""Matrices computed from parameters on the left of '@' (`(W - W.T - g * eye(H)) @ h`,
`W.T @ h`) and identity initialization: values and gradients against PyTorch and NumPy
written here, on every target; the artifact and module paths; the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import central_difference, needs_opencl, spec_path

import lstmc
from lstmc.errors import SpecError

TARGETS = [("reference", "float64"), ("cpu", "float64"), ("cpu", "float32"),
           ("opencl", "float32")]
TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-4, atol=2e-5)}

torch = pytest.importorskip("torch")


def compile_text(text, tmp_path, target="reference", dtype="float64", I=3, H=4):
    if target == "opencl":
        needs_opencl()
    path = tmp_path / "cell.lstm"
    path.write_text(text)
    return lstmc.compile(str(path), I, H, target=target, dtype=dtype)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def torch_antisymmetric(P, x, h):
    W = P["W"]
    A = W - W.T - 0.01 * torch.eye(W.shape[0], dtype=W.dtype)
    ys = []
    for t in range(x.shape[0]):
        h = h + 0.01 * torch.tanh(h @ A.T + x[t] @ P["V"].T + P["b"])
        ys.append(h)
    return torch.stack(ys)


@pytest.mark.parametrize("target, dtype", TARGETS)
def test_antisymmetric_rnn_matches_pytorch(target, dtype):
    if target == "opencl":
        needs_opencl()
    cell = lstmc.compile(spec_path("antisymmetric_rnn"), 3, 5, target=target, dtype=dtype)
    assert sorted(cell.param_shapes) == ["V", "W", "b"]  # the derived matrix is not passed
    rng = np.random.default_rng(0)
    T, B = 7, 4
    params = {n: rng.uniform(-1, 1, s).astype(dtype) for n, s in cell.param_shapes.items()}
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    h0 = rng.standard_normal((B, 5)).astype(dtype)
    dy = rng.standard_normal((T, B, 5)).astype(dtype)
    y, _, tape = cell.forward(x, params, {"h": h0}, train=True)
    g = tape.backward(dy)

    P = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in params.items()}
    X = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    H0 = torch.tensor(h0, dtype=torch.float64, requires_grad=True)
    ys = torch_antisymmetric(P, X, H0)
    (ys * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(host(y), ys.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(host(g["x"]), X.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(host(g["state"]["h"]), H0.grad.numpy(), **TOL[dtype])
    for n in params:
        np.testing.assert_allclose(host(g["params"][n]), P[n].grad.numpy(), **TOL[dtype],
                                   err_msg=n)


FORMS = {
    # spec body -> the matrix NumPy builds from W (H x H) and U (H x H)
    "W.T @ h": lambda W, U: W.T,
    "(0.5 * W + U / 4) @ h": lambda W, U: 0.5 * W + U / 4,
    "(W.T - 2 * U + eye(H)) @ h": lambda W, U: W.T - 2 * U + np.eye(W.shape[0]),
    "(-(W - U.T)) @ h": lambda W, U: -(W - U.T),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("target, dtype", [("reference", "float64"), ("cpu", "float64")])
def test_matrix_forms_against_numpy_and_finite_differences(form, target, dtype, tmp_path):
    uses_u = "U" in form
    text = ("cell m(x: H) -> h: H {\n  param W: [H, H], U: [H, H]\n"
            f"  h' = tanh({form} + x{' + 0 * (U @ x)' if not uses_u else ''})\n}}\n")
    cell = compile_text(text, tmp_path, target, dtype, I=4, H=4)
    rng = np.random.default_rng(1)
    params = {n: rng.uniform(-0.7, 0.7, s) for n, s in cell.param_shapes.items()}
    x = rng.standard_normal((5, 2, 4))
    A = FORMS[form](params["W"], params["U"])
    h, ys = np.zeros((2, 4)), []
    for t in range(5):
        h = np.tanh(h @ A.T + x[t])
        ys.append(h)
    y, _, tape = cell.forward(x, params, train=True)
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-12)
    w = rng.standard_normal(y.shape)
    g = tape.backward(w)
    indices = [(0, 0), (1, 3), (3, 2)]
    for name in ("W", "U"):
        numeric = central_difference(lambda: np.sum(cell.forward(x, params)[0] * w),
                                     params[name], indices)
        for index, d in zip(indices, numeric):
            assert abs(g["params"][name][index] - d) < 1e-6 * max(1, abs(d)), (name, index)


def test_identity_initialization(tmp_path):
    cell = compile_text("cell e(x: H) -> h: H {\n  param U: [H, H] = eye, b = 0.5\n"
                        "  h' = tanh(U @ h + x + b)\n}\n", tmp_path, "cpu", "float32", 4, 4)
    params = cell.init_params(seed=3)
    np.testing.assert_array_equal(params["U"], np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(params["b"], np.full(4, 0.5, np.float32))
    import lstmc.nn as lnn

    module = lnn.Recurrent(str(tmp_path / "cell.lstm"), 4, 4)
    torch.testing.assert_close(module.U.detach(), torch.eye(4))


def test_the_module_trains_the_parameters_behind_a_derived_matrix():
    import lstmc.nn as lnn

    module = lnn.Recurrent(spec_path("antisymmetric_rnn"), 3, 4, dtype=torch.float64)
    assert sorted(n for n, _ in module.named_parameters()) == ["V", "W", "b"]
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: module(x)[0], (x, *module.parameters()))


def test_artifact_with_a_derived_matrix_round_trips_and_refuses_edits(tmp_path):
    import lstmc_runtime
    from lstmc_runtime.errors import ArtifactError
    from lstmc_runtime.manifest import self_checksum

    from lstmc.api import write_artifact_dir

    out = tmp_path / "a"
    write_artifact_dir(spec_path("antisymmetric_rnn"), str(out), 3, 4)
    cell = lstmc_runtime.load(str(out))
    reference = lstmc.compile(spec_path("antisymmetric_rnn"), 3, 4)
    params = reference.init_params(seed=2)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(cell.forward(x, params)[0], reference.forward(x, params)[0],
                               rtol=1e-5, atol=1e-6)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    derived = next(p for p in manifest["params"].values() if "derived" in p)
    derived["derived"][1][0] = 1.0  # W + W.T: a symmetric matrix instead
    manifest["manifest_sha256"] = self_checksum(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError):
        lstmc_runtime.load(str(out))


def test_onnx_export_computes_the_derived_matrix():
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from lstmc.onnx import export

    cell = lstmc.compile(spec_path("antisymmetric_rnn"), 3, 4)
    params = cell.init_params(seed=4)
    model = export(cell, params)
    x = np.random.default_rng(2).standard_normal((6, 2, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    name = session.get_inputs()[0].name
    y = session.run(None, {name: x})[0]
    np.testing.assert_allclose(y, cell.forward(x, params)[0], rtol=1e-5, atol=1e-6)


HEADER = "cell bad(x: H) -> h: H {\n  state s: H\n  param W: [H, H], U: [H, H], v: H\n"


@pytest.mark.parametrize("body, message", [
    ("  h' = (W - h) @ x + 0 * (U @ x) + v\n  s' = s", "combines parameters, but 'h' is"),
    ("  h' = (W * U) @ x + v\n  s' = s", "combines parameters"),
    ("  h' = (2 * eye(H)) @ x + 0 * (W @ x) + 0 * (U @ x) + v\n  s' = s", "holds no parameter"),
    ("  h' = tanh(W.T) + 0 * (U @ x) + v\n  s' = s", "W.T is a matrix"),
    ("  h' = (W - v.T) @ x + 0 * (U @ x)\n  s' = s", "used as a matrix"),
    ("  h' = (W + s') @ x + 0 * (U @ x) + v\n  s' = s", "is a new state value"),
    ("  h' = (W + eye(h)) @ x + 0 * (U @ x) + v\n  s' = s", "eye takes one size"),
])
def test_bad_matrix_expressions_are_located_errors(body, message):
    with pytest.raises(SpecError, match=message) as info:
        lstmc.check_spec(HEADER + body + "\n}\n")
    assert info.value.location is not None


def test_bad_initial_values():
    with pytest.raises(SpecError, match="unknown initial value 'ones'"):
        lstmc.check_spec("cell c(x: H) -> h: H {\n  param U: [H, H] = ones\n  h' = U @ x\n}\n")
    with pytest.raises(SpecError, match="eye initializes matrices"):
        lstmc.check_spec("cell c(x: H) -> h: H {\n  param U, v: H = eye\n"
                         "  h' = U @ x + v\n}\n")


def test_nonsquare_shapes_that_disagree_are_errors():
    text = ("cell c(x: I) -> h: H {\n  param W: [H, I], U: [H, H]\n"
            "  h' = (W - U.T) @ x\n}\n")
    with pytest.raises(SpecError):
        lstmc.compile(text, 3, 4)
