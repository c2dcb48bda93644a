"""Chain hoisting (passes/hoist_chains.py): a product whose operand is made from the inputs
alone leaves the time loop, after a prologue computes that operand for all T*B rows.
The printed program says so; the hoisted program computes what the unhoisted one does
(the long-tested path) and what central differences say, on the reference executor, the
cpu target (one thread, batch slices, threads sharing a step, lengths) and ONNX."""
import numpy as np
import pytest
from conftest import central_difference, needs_opencl, spec_path

import lstmc
from lstmc.api import lower_bound
from lstmc.driver import lower_spec
from lstmc.frontend.source import read_source

# Each a cell the pass rewrites: two levels with a reduction, a learned vector, the second
# input and x read in the prologue; an operand that is a hoisted product itself; an
# operand made of learned vectors only; a concat of two chains sliced across its parts.
CHAINS = {
    "two_levels": """
cell two_levels(x: I, dt: 1) -> h: H {
  state c: H
  param W_x: [H, I]
  param V: [H, H], R: [H, H]
  param U: [2*H, H]
  param b: H, a: H
  z = tanh(W_x @ x + b)
  e = V @ (z * dt) + a
  n = e - mean(e)
  g = U @ sigmoid(n)
  h' = tanh(R @ h + g[0:H] + z)
  c' = c * sigmoid(g[H:2*H]) + n * x[0:1]
}""",
    "product_of_product": """
cell product_of_product(x: I) -> h: H {
  param W0: [H, H], W1: [H, I], R: [H, H]
  h' = tanh(W0 @ W1 @ x + R @ h)
}""",
    "learned_operand": """
cell learned_operand(x: I) -> h: H {
  param W: [H, I], U: [H, H], R: [H, H], p: H
  h' = tanh(W @ x + U @ (2 * p) + R @ h)
}""",
    "sliced_concat": """
cell sliced_concat(x: I) -> h: H {
  param W: [H, I], V: [H, I], U: [H, H], R: [H, H]
  v = concat(tanh(W @ x), sigmoid(V @ x))[1:H + 1]
  h' = softsign(U @ v + R @ (v * h))
}""",
}
I, H = 3, 5


def cell(name, target="reference", dtype="float64", **options):
    return lstmc.compile(CHAINS[name], I, H, target=target, dtype=dtype, **options)


def data(c, T=6, B=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, c.input_size))
    inputs = {n: rng.standard_normal((T, B, s)) for n, s in c.extra_inputs.items()}
    params = {n: rng.uniform(-0.7, 0.7, s) for n, s in c.param_shapes.items()}
    state = {n: 0.5 * rng.standard_normal((B, s)) for n, s in c.state_sizes.items()}
    return x, inputs, params, state


def run(c, x, inputs, params, state, lengths=None, seed=1):
    """Forward values, and every gradient of a random projection of them."""
    cast = lambda d: {k: np.asarray(v, c.dtype) for k, v in d.items()}  # noqa: E731
    y, final, tape = c.forward(np.asarray(x, c.dtype), cast(params), cast(state), train=True,
                               lengths=lengths, inputs=cast(inputs))
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape).astype(c.dtype)
    dfinal = {n: rng.standard_normal(v.shape).astype(c.dtype) for n, v in final.items()}
    g = tape.backward(dy, dfinal)
    out = {"y": y, **{f"final {n}": v for n, v in final.items()}, "dx": g["x"]}
    out.update({f"d{n}": v for n, v in g.get("inputs", {}).items()})
    out.update({f"d{n}": v for n, v in g["params"].items()})
    out.update({f"dstate {n}": v for n, v in g["state"].items()})
    return out


def assert_same(got, want, **tol):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **tol)


def test_minimal_rnn_keeps_one_product_in_its_step():
    program = lower_spec(spec_path("minimal_rnn"))
    assert program.products_per_step() == 1
    assert [(h.level, h.operand, [s for s, _ in h.segments]) for h in program.hoisted] == [
        (0, "x", ["W_x"]), (1, "$0", ["U_z"])]
    text = program.format()
    assert "prologue 1: elementwise over all T*B rows" in text
    assert "hoisted #1: H = [U_z[HxH]] @ $0  (one GEMM over all T*B rows)" in text
    assert "matmul [U_h[HxH]]" in text and "matmul [U_z" not in text
    unhoisted = lower_spec(spec_path("minimal_rnn"), hoist_chains=False)
    assert unhoisted.products_per_step() == 2 and not unhoisted.prologues


def test_nested_chains_take_one_round_each():
    program, _ = lower_bound(read_source(CHAINS["two_levels"]), None, I, H, {})
    assert [p.info.states for p in program.prologues] and len(program.prologues) == 2
    assert [(h.level, h.operand) for h in program.hoisted] == [(0, "x"), (1, "$0"), (2, "$1")]
    assert program.products_per_step() == 1  # R @ h


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_the_hoisted_reference_matches_the_unhoisted_and_finite_differences(name):
    hoisted = cell(name)
    program, sizes = lower_bound(read_source(CHAINS[name]), None, I, H, {}, hoist_chains=False)
    plain = lstmc.api.Cell(program, sizes, np.dtype("float64"), "reference")
    assert hoisted.program.prologues and not plain.program.prologues
    x, inputs, params, state = data(hoisted)
    lengths = np.array([6, 2, 4])
    got = run(hoisted, x, inputs, params, state, lengths)
    assert_same(got, run(plain, x, inputs, params, state, lengths), rtol=1e-12, atol=1e-13)

    x, inputs, params, state = data(hoisted, T=3, B=2, seed=3)
    rng = np.random.default_rng(4)
    y, final, tape = hoisted.forward(x, params, state, train=True, inputs=inputs)
    dy = rng.standard_normal(y.shape)
    grads = tape.backward(dy)

    def loss():
        return np.sum(dy * hoisted.forward(x, params, state, inputs=inputs)[0])

    arrays = [("x", x, grads["x"])] + [(n, params[n], grads["params"][n]) for n in params]
    arrays += [(n, inputs[n], grads["inputs"][n]) for n in inputs]
    for label, value, analytic in arrays:
        np.testing.assert_allclose(analytic.reshape(-1), central_difference(loss, value),
                                   rtol=1e-6, atol=1e-7, err_msg=label)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_native_code_runs_the_prologues_as_the_reference(name):
    reference, native = cell(name), cell(name, target="cpu")
    assert native.contract.hoisted.keys() == {h.index for h in reference.program.hoisted}
    x, inputs, params, state = data(reference)
    for lengths in (None, np.array([6, 2, 4])):
        want = run(reference, x, inputs, params, state, lengths)
        assert_same(run(native, x, inputs, params, state, lengths), want,
                    rtol=1e-11, atol=1e-12)
        y, final = native.forward(x, params, state, lengths=lengths, inputs=inputs)  # infer
        np.testing.assert_allclose(y, want["y"], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["two_levels", "sliced_concat"])
def test_native_batch_slices_and_threads_sharing_a_step_run_the_prologues(monkeypatch, name):
    from lstmc_runtime.native import NativeCell

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    entries = []
    original = NativeCell._call
    monkeypatch.setattr(NativeCell, "_call", lambda self, entry, T, bounds, *a, **k:
                        entries.append((entry, len(bounds) - 1))
                        or original(self, entry, T, bounds, *a, **k))
    reference, native = cell(name), cell(name, target="cpu")
    x, inputs, params, state = data(reference, T=5, B=32)
    assert_same(run(native, x, inputs, params, state), run(reference, x, inputs, params, state),
                rtol=1e-11, atol=1e-12)
    assert ("forward_train", 2) in entries and ("backward", 2) in entries
    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)  # always threaded
    threaded = []
    run_threaded = NativeCell._run_threaded
    monkeypatch.setattr(NativeCell, "_run_threaded",
                        lambda self, *a: threaded.append(a[0]) or run_threaded(self, *a))
    x, inputs, params, state = data(reference, T=9, B=3)
    lengths = np.array([9, 4, 7])
    y, _ = native.forward(x, params, state, inputs=inputs, lengths=lengths)
    assert threaded == ["forward_mt"]
    want = reference.forward(x, params, state, inputs=inputs, lengths=lengths)[0]
    np.testing.assert_allclose(y, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["product_of_product", "learned_operand", "sliced_concat"])
def test_onnx_export_computes_the_prologues_before_the_scan(name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lstmc.onnx import export

    c = cell(name, dtype="float32", num_layers=2, bidirectional=True)
    x, _, params, _ = data(c)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    model = export(c, params)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    lengths = np.array([6, 2, 4])
    got = session.run(None, {"X": x.astype(np.float32), "sequence_lens": lengths.astype(np.int32)})
    want, _ = c.forward(x.astype(np.float32), params, lengths=lengths)
    np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("persistent", ["0", "1"])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_opencl_runs_the_prologues_as_the_reference(monkeypatch, name, persistent):
    """The GPU kernels (through pyopencl, where it has a device): the prologue's region
    kernels over all T*B rows, before the step kernels or the persistent kernel."""
    needs_opencl()
    monkeypatch.setenv("LSTMC_PERSISTENT", persistent)
    gpu = cell(name, target="opencl", dtype="float32")
    assert gpu.plan.prologues and any(h.level for h in gpu.plan.hoisted)
    reference = cell(name)
    x, inputs, params, state = data(reference)
    for lengths in (None, np.array([6, 2, 4])):
        assert_same(run(gpu, x, inputs, params, state, lengths),
                    run(reference, x, inputs, params, state, lengths), rtol=2e-4, atol=2e-5)


def test_nvrtc_compiles_the_prologue_kernels():
    from lstmc.backends.gpu import nvrtc
    from lstmc.backends.gpu.kernels import generate

    if not nvrtc.available():
        pytest.skip("NVRTC is not installed")
    program, sizes = lower_bound(read_source(CHAINS["two_levels"]), None, I, H, {})
    source, plan = generate(program, sizes)
    compiled = nvrtc.compile_cuda(source, nvrtc.ARCHES[0])
    prologue_kernels = {k for p in plan.prologues for ks in p.kernels.values() for k in ks}
    assert len(prologue_kernels) >= 6 and prologue_kernels <= set(compiled.kernels)


def test_a_torch_module_of_a_chained_cell_trains_as_autograd_says():
    """lstmc.nn.Recurrent(minimal_rnn) on the cpu target (its prologue's saved values in
    the op's workspace) against the same cell written in PyTorch: values and every
    gradient, float64, two layers, lengths."""
    torch = pytest.importorskip("torch")
    import lstmc.nn as lnn

    torch.manual_seed(0)
    module = lnn.Recurrent(spec_path("minimal_rnn"), 3, 5, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 3, 5, 1])
    y, final = module(x, lengths=lengths)
    weights = dict(module.named_parameters())

    def theirs(x):
        layer_in, finals = x, []
        for layer in range(2):
            p = {n: weights[f"l{layer}_{n}"] for n in ("W_x", "U_h", "U_z", "b_z", "b_u")}
            h = torch.zeros(x.shape[1], 5, dtype=torch.float64)
            out = []
            for t in range(x.shape[0]):
                z = torch.tanh(layer_in[t] @ p["W_x"].T + p["b_z"])
                u = torch.sigmoid(h @ p["U_h"].T + z @ p["U_z"].T + p["b_u"])
                new = u * h + (1 - u) * z
                alive = (t < lengths).unsqueeze(1)
                h = torch.where(alive, new, h)
                out.append(torch.where(alive, new, torch.zeros_like(new)))
            layer_in = torch.stack(out)
            finals.append(h)
        return layer_in, torch.stack(finals)

    want_y, want_h = theirs(x)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final["h"], want_h, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(y)
    ours = torch.autograd.grad((y * probe).sum(), [x, *weights.values()])
    expected = torch.autograd.grad((want_y * probe).sum(), [x, *weights.values()])
    for name, got, want in zip(["x", *weights], ours, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
