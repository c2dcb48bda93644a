"""Every function of the spec language, through every executor: the reference executor
against finite differences, the LLVM backend against the reference (float64 and
float32). Arguments stay away from kinks (relu, min, max, abs, clip, elu, leaky_relu),
steps (floor, mod, comparisons, where) and outside the domains' edges (log, sqrt), so
finite differences are a sound oracle."""
import numpy as np
import pytest
from conftest import needs_opencl

import lstmc
from lstmc.gradcheck import gradcheck

SPEC = """
cell all_functions(x: I) -> h: H {
  state s: 1
  param W, U, V, b, p
  z  = W @ x + U @ h + b
  a  = sigmoid(z) + tanh(z) + relu(z) + softsign(z) + hard_sigmoid(z)
  e  = exp(-abs(z)) + log(1 + z * z) + sqrt(1 + h * h) - 2 / (3 + tanh(p * z))
  m  = min(z, p) + max(z, 0.5) + clip(z, -0.3, 0.7)
  n  = layernorm(V @ (a * e), 1e-3)
  k  = softplus(z) + logsigmoid(z) + elu(z) + elu(z, 0.7) + selu(z) + gelu(z) + gelu_tanh(z)
  l  = silu(z) + leaky_relu(z) + leaky_relu(z, -0.1) + sin(z) + cos(p * z) + erf(z)
       + floor(3 * z) + mod(z, 0.7) + mod(-z, -1 / 3)
  q  = z ** 2 + (1 + z * z) ** 0.5 + (1 + z * z) ** -1.5 + (z > 0.1) + (z <= p)
       + where(z >= 0, a, e) + where(p < 0, k, l)
  s' = tanh(mean(z) + sum(h) / 8 + 0.5 * s)
  h' = tanh(0.3 * a + 0.2 * e + 0.1 * m + 0.2 * n + s + 0.05 * k + 0.1 * l + 0.05 * q)
}
"""


def _inputs(cell, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 3, cell.input_size)).astype(cell.dtype)
    params = {n: rng.uniform(-0.7, 0.7, shape).astype(cell.dtype)
              for n, shape in cell.param_shapes.items()}
    state = {n: (0.5 * rng.standard_normal((3, s))).astype(cell.dtype)
             for n, s in cell.state_sizes.items()}
    return x, params, state


def test_reference_gradients_of_every_function():
    cell = lstmc.compile(SPEC, input_size=3, hidden_size=4, dtype="float64")
    result = gradcheck(cell, steps=4, batch=2, seed=3)
    assert result.passed(1e-6), result.errors


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 3e-5)])
def test_native_code_of_every_function(dtype, tol):
    reference = lstmc.compile(SPEC, input_size=3, hidden_size=4, dtype=dtype)
    native = lstmc.compile(SPEC, input_size=3, hidden_size=4, dtype=dtype, target="cpu")
    x, params, state = _inputs(reference)
    dy = np.random.default_rng(9).standard_normal((5, 3, 4)).astype(dtype)
    out = []
    for cell in (reference, native):
        y, final, tape = cell.forward(x, params, state, train=True)
        out.append((y, final, tape.backward(dy, {"s": np.ones((3, 1), dtype)})))
    _assert_same(*out, rtol=tol, atol=tol)


def _assert_same(expected, actual, **close):
    """(y, final states, gradients) of two runs agree."""
    (y0, f0, g0), (y1, f1, g1) = expected, actual
    np.testing.assert_allclose(y1, y0, **close)
    np.testing.assert_allclose(f1["s"], f0["s"], **close)
    np.testing.assert_allclose(g1["x"], g0["x"], **close)
    for name in g0["params"]:
        np.testing.assert_allclose(g1["params"][name], g0["params"][name], **close,
                                   err_msg=name)
    for name in g0["state"]:
        np.testing.assert_allclose(g1["state"][name], g0["state"][name], **close,
                                   err_msg=name)


@pytest.mark.parametrize("persistent", [False, True])
def test_gpu_kernels_of_every_function(persistent):
    """The GPU kernels (as OpenCL on PoCL, float32) against the float64 reference."""
    needs_opencl()
    reference = lstmc.compile(SPEC, input_size=3, hidden_size=4, dtype="float64")
    gpu = lstmc.compile(SPEC, input_size=3, hidden_size=4, target="opencl")
    gpu.persistent = persistent
    x, params, state = _inputs(reference)
    dy = np.random.default_rng(9).standard_normal((5, 3, 4))
    lengths = np.array([5, 1, 3])
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    y0, s0, t0 = reference.forward(x, params, state, train=True, lengths=lengths)
    y1, s1, t1 = gpu.forward(x.astype(np.float32), f32(params), f32(state), train=True,
                             lengths=lengths)
    g0 = t0.backward(dy, {"s": np.ones((3, 1))})
    g1 = t1.backward(dy.astype(np.float32), {"s": np.ones((3, 1), np.float32)})
    _assert_same((y0, s0, g0), (y1, s1, g1), rtol=1e-4, atol=1e-5)
