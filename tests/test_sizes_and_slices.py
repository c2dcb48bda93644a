"""Size arithmetic in declarations (`[4*H, I]`, `state c: 2*H`) and slices `v[a:b]`:
PyTorch's stacked LSTM weights used as PyTorch stores them (specs/lstm_packed.lstm)
against torch.nn.LSTM itself, and a cell of overlapping slices against a NumPy step
written here, on every target, values and every gradient."""
import numpy as np
import pytest
from conftest import needs_opencl, opencl_usable, spec_path

import lstmc
from lstmc.gradcheck import gradcheck

torch = pytest.importorskip("torch")

TARGETS = [("reference", "float64", 1e-10), ("cpu", "float64", 1e-10), ("cpu", "float32", 2e-5),
           ("opencl", "float32", 2e-5)]


def _needs(target):
    if target == "opencl":
        needs_opencl()


@pytest.mark.parametrize("target,dtype,tol", TARGETS)
def test_lstm_packed_is_torch_lstm(target, dtype, tol):
    """nn.LSTM's own weight_ih_l0 / weight_hh_l0 / bias_ih_l0 / bias_hh_l0, unchanged."""
    _needs(target)
    I, H, T, B = 3, 5, 6, 4
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    y, (hn, cn) = module(x, (h0, c0))
    dy, dh, dc = (torch.randn_like(v) for v in (y, hn, cn))
    torch.autograd.backward([y, hn, cn], [dy, dh, dc])

    cell = lstmc.compile(spec_path("lstm_packed"), I, H, target=target, dtype=dtype)
    params = {name.removesuffix("_l0"): p.detach().numpy().astype(dtype)
              for name, p in module.named_parameters()}
    state = {"h": h0[0].detach().numpy().astype(dtype), "c": c0[0].detach().numpy().astype(dtype)}
    ours, final, tape = cell.forward(x.detach().numpy().astype(dtype), params, state, train=True)
    grads = tape.backward(dy.numpy().astype(dtype), {"h": dh[0].numpy().astype(dtype),
                                                     "c": dc[0].numpy().astype(dtype)})
    close = dict(rtol=tol, atol=tol)
    np.testing.assert_allclose(ours, y.detach().numpy(), **close)
    np.testing.assert_allclose(final["c"], cn[0].detach().numpy(), **close)
    np.testing.assert_allclose(grads["x"], x.grad.numpy(), **close)
    np.testing.assert_allclose(grads["state"]["h"], h0.grad[0].numpy(), **close)
    np.testing.assert_allclose(grads["state"]["c"], c0.grad[0].numpy(), **close)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(grads["params"][name.removesuffix("_l0")], p.grad.numpy(),
                                   **close, err_msg=name)


SLICED = """
cell sliced(x: I) -> h: H {
  state c: 2*H
  param W: [2*H, I], U: [2*H, H], b: 2*H, p: H + 1
  z  = W @ x + U @ h + b
  c' = tanh(z) + 0.5 * c
  h' = sigmoid(z[0:H]) * tanh(c[H:2*H]) + 0.1 * z[1:H + 1] * p[1:H + 1] + c'[H:2*H] * p[0:1]
}
"""


def _sliced_step(P, x, h, c):
    """The cell above, by hand: H units, slices written out as NumPy slices."""
    H = h.shape[-1]
    z = x @ P["W"].T + h @ P["U"].T + P["b"]
    c2 = np.tanh(z) + 0.5 * c
    sig = 1 / (1 + np.exp(-z[:, :H]))
    h2 = (sig * np.tanh(c[:, H:]) + 0.1 * z[:, 1:H + 1] * P["p"][1:H + 1]
          + c2[:, H:] * P["p"][0:1])
    return h2, c2


@pytest.mark.parametrize("target,dtype,tol", TARGETS)
def test_overlapping_slices_and_compound_sizes(target, dtype, tol):
    _needs(target)
    I, H, T, B = 3, 4, 5, 2
    cell = lstmc.compile(SLICED, I, H, target=target, dtype=dtype)
    assert cell.param_shapes == {"W": (2 * H, I), "U": (2 * H, H), "b": (2 * H,), "p": (H + 1,)}
    assert cell.state_sizes == {"h": H, "c": 2 * H}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    params = {n: rng.uniform(-0.7, 0.7, s).astype(dtype) for n, s in cell.param_shapes.items()}
    state = {n: rng.standard_normal((B, s)).astype(dtype) for n, s in cell.state_sizes.items()}
    y, final = cell.forward(x, params, state)
    h, c = state["h"].astype(np.float64), state["c"].astype(np.float64)
    for t in range(T):
        h, c = _sliced_step(params, x[t].astype(np.float64), h, c)
        np.testing.assert_allclose(y[t], h, rtol=tol, atol=tol)
    np.testing.assert_allclose(final["c"], c, rtol=tol, atol=tol)


def test_overlapping_slices_gradients():
    """The reference executor against finite differences; the compiled targets against
    it (the slice gradients that do not tile their value are placed between zeros)."""
    cell = lstmc.compile(SLICED, 3, 4, dtype="float64")
    assert gradcheck(cell, steps=4, batch=2, seed=2).passed(1e-7)
    reference_grads = _grads(cell)
    for target, dtype, tol in TARGETS[1:]:
        if target == "opencl" and not opencl_usable():
            continue
        grads = _grads(lstmc.compile(SLICED, 3, 4, target=target, dtype=dtype))
        for key in ("x",):
            np.testing.assert_allclose(grads[key], reference_grads[key], rtol=tol * 10, atol=tol * 10)
        for group in ("params", "state"):
            for name, value in reference_grads[group].items():
                np.testing.assert_allclose(grads[group][name], value, rtol=tol * 10,
                                           atol=tol * 10, err_msg=f"{target} {dtype} {name}")


def _grads(cell):
    rng = np.random.default_rng(3)
    dtype = cell.dtype
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    params = {n: rng.uniform(-0.7, 0.7, s).astype(dtype) for n, s in cell.param_shapes.items()}
    state = {n: rng.standard_normal((2, s)).astype(dtype) for n, s in cell.state_sizes.items()}
    y, _, tape = cell.forward(x, params, state, train=True)
    return tape.backward(rng.standard_normal(y.shape).astype(dtype))


def _step_outline(program):
    """The fused step with the names left out: the hoisted GEMMs' rows, the recurrent
    products, each stage's kind and its ops (op and size; slices aside, which only say
    where a value is read), and what the backward step saves."""
    from lstmc.ir.graph import Op

    def stages(step):
        return [(s.kind, sorted(f"{n.op.value}:{n.size}" for n in s.nodes if n.op != Op.SLICE))
                for s in step]
    return {"hoisted": [str(h.rows) for h in program.hoisted],
            "products": [f"{p.size}x{p.attr.in_size}" for p in program.recurrent_products],
            "forward": stages(program.forward), "backward": stages(program.backward),
            "saved": [str(n.size) for n in program.saved]}


def test_lstm_packed_compiles_to_the_step_of_lstm():
    """PyTorch's stacked form and the split form are one fused step: one input GEMM of
    4*H rows, one 4*H x H recurrent product, one elementwise region doing the same ops, the
    same values saved; the GPU persistent kernel partitions both by units."""
    from lstmc.api import bind_sizes
    from lstmc.backends.gpu.kernels import generate
    from lstmc.driver import lower_spec

    split, packed = lower_spec(spec_path("lstm")), lower_spec(spec_path("lstm_packed"))
    assert _step_outline(packed) == _step_outline(split)
    assert [s.kind for s in packed.forward] == ["product", "elementwise"]
    for program in (split, packed):
        plan = generate(program, bind_sizes(program, 8, 16, {}))[1]
        assert plan.modes["train"].persistent.partition == "units"


JOINED = """
cell joined(x: I) -> h: H {
  state c: 2*H + 1
  param W: [H, I], U: [2*H + 1, 2*H + 1]
  a  = tanh(W @ x)
  c' = tanh(U @ concat(a, h, 1) + 0.5 * c)
  h' = c'[0:H] * c'[H:2*H] + mean(concat(x, c'[2*H:2*H + 1], 0.5)) - sum(a) / H + I / (H + 1)
}
"""


def _joined_step(P, x, h, c):
    H, I = h.shape[-1], x.shape[-1]
    a = np.tanh(x @ P["W"].T)
    ones = np.ones((x.shape[0], 1))
    c2 = np.tanh(np.concatenate([a, h, ones], -1) @ P["U"].T + 0.5 * c)
    tail = np.concatenate([x, c2[:, 2 * H:], 0.5 * ones], -1).mean(-1, keepdims=True)
    h2 = c2[:, :H] * c2[:, H:2 * H] + tail - a.sum(-1, keepdims=True) / H + I / (H + 1)
    return h2, c2


@pytest.mark.parametrize("target,dtype,tol", TARGETS)
def test_concat_and_sizes_as_numbers(target, dtype, tol):
    """concat of vectors, a state and numbers; H and I as numbers in expressions."""
    _needs(target)
    I, H, T, B = 3, 4, 5, 2
    cell = lstmc.compile(JOINED, I, H, target=target, dtype=dtype)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    params = {n: rng.uniform(-0.7, 0.7, s).astype(dtype) for n, s in cell.param_shapes.items()}
    state = {n: rng.standard_normal((B, s)).astype(dtype) for n, s in cell.state_sizes.items()}
    y, final, tape = cell.forward(x, params, state, train=True)
    h, c = state["h"].astype(np.float64), state["c"].astype(np.float64)
    for t in range(T):
        h, c = _joined_step(params, x[t].astype(np.float64), h, c)
        np.testing.assert_allclose(y[t], h, rtol=tol, atol=tol)
    np.testing.assert_allclose(final["c"], c, rtol=tol, atol=tol)
    if target == "reference":
        assert gradcheck(lstmc.compile(JOINED, I, H, dtype="float64"), seed=5).passed(1e-7)
    else:
        reference = lstmc.compile(JOINED, I, H, dtype=dtype)
        _, _, tape0 = reference.forward(x, params, state, train=True)
        dy = rng.standard_normal(y.shape).astype(dtype)
        g0, g1 = tape0.backward(dy), tape.backward(dy)
        np.testing.assert_allclose(g1["x"], g0["x"], rtol=10 * tol, atol=10 * tol)
        for name in g0["params"]:
            np.testing.assert_allclose(g1["params"][name], g0["params"][name], rtol=10 * tol,
                                       atol=10 * tol, err_msg=name)
