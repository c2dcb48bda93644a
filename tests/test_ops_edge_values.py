"""Every op of the registry on edge values (NaN, +-inf, +-0, huge, tiny, denormal, ties)
through every backend, value and gradient, against PyTorch: the same NaN placement, the
same saturation, the same split of gradients on ties. Also log(sigmoid(z)) down to
z = -1000, where sigmoid saturates to exactly 0.

One cell holds every op: op k reads states a0_k, a1_k, ... (carried unchanged) and
writes state o_k, so one compile per backend covers them all, and the gradient of the
initial a_i_k (with an incoming gradient of ones on o_k only) is d op_k / d operand i.
"""
import numpy as np
import pytest

import lstmc
from lstmc.ir import ops

torch = pytest.importorskip("torch")

# The oracle, written here, not taken from lstmc: how each op reads in a spec, and what
# PyTorch computes for it.
SPEC_FORM = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "neg": "-{0}",
    "sigmoid": "sigmoid({0})", "tanh": "tanh({0})", "relu": "relu({0})", "exp": "exp({0})",
    "log": "log({0})", "sqrt": "sqrt({0})", "abs": "abs({0})", "softsign": "softsign({0})",
    "min": "min({0}, {1})", "max": "max({0}, {1})", "clip": "clip({0}, {1}, {2})",
}
TORCH = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "neg": torch.neg, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
    "softsign": torch.nn.functional.softsign, "min": torch.minimum, "max": torch.maximum,
    "clip": torch.clamp,
}
MASKS = {"gt", "ge", "eq"}  # used inside derivative rules only; checked through them

BACKENDS = [("reference", "float32"), ("reference", "float64"), ("cpu", "float32"),
            ("cpu", "float64"), ("opencl", "float32")]


def edge_values(dtype) -> np.ndarray:
    finfo = np.finfo(dtype)
    big = {np.dtype("float32"): [88.5, -88.5, 89.0, -89.0, 104.0, -104.0],
           np.dtype("float64"): [709.5, -709.5, 710.0, -710.0, 745.5, -745.5]}[np.dtype(dtype)]
    values = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -3.0,
              finfo.max, -finfo.max, finfo.tiny, -finfo.tiny, 1e-30, 30.0, -30.0, *big]
    return np.array(values, dtype=dtype)


def _spec(names) -> str:
    states, lines = [], ["h' = x"]
    for name in names:
        op = ops.REGISTRY[name]
        operands = [f"a{i}_{name}" for i in range(op.arity)]
        states += [f"o_{name}: H"] + [f"{a}: H" for a in operands]
        lines.append(f"o_{name}' = " + SPEC_FORM[name].format(*operands))
        lines += [f"{a}' = {a}" for a in operands]
    return ("cell edges(x: H) -> h: H {\n  state " + ", ".join(states) + "\n  "
            + "\n  ".join(lines) + "\n}\n")


def _operands(arity: int, values: np.ndarray) -> list[np.ndarray]:
    """(B, H) = (n, n) grids: every pair of edge values meets in a binary op."""
    n = len(values)
    j, b = np.meshgrid(np.arange(n), np.arange(n))
    return [values[j], values[b], values[(b + 3 * j + 1) % n]][:arity]


def _assert_like_torch(actual, expected, dtype, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    nan = np.isnan(expected)
    bad = np.argwhere(np.isnan(actual) != nan)
    assert not len(bad), f"{what}: NaN placement differs at {bad[:5].tolist()}"
    inf = np.isinf(expected)
    np.testing.assert_array_equal(actual[inf], expected[inf], err_msg=f"{what}: infinities")
    assert not np.isinf(actual[~inf & ~nan]).any(), f"{what}: inf where torch is finite"
    rtol, atol = (2e-6, 1e-37) if np.dtype(dtype) == np.float32 else (1e-13, 1e-306)
    finite = ~nan & ~inf
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol,
                               err_msg=what)


# Where torch's own gradient is not the oracle: softsign is composite in torch
# (x / (1 + |x|) through autograd), whose rule cancels (off by about eps * |z| for large
# |z|, NaN at +-inf). The exact derivative, in float64, is the oracle instead.
EXACT_GRADIENT = {
    "softsign": lambda z: 1.0 / (1.0 + np.abs(z.astype(np.float64))) / (1.0 + np.abs(z)),
}


def _torch_oracle(name, operands, dtype):
    tensors = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True)
               for a in operands]
    out = TORCH[name](*tensors)
    out.backward(torch.ones_like(out))
    if name in EXACT_GRADIENT:
        return out.detach().numpy(), [EXACT_GRADIENT[name](*operands).astype(dtype)]
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def test_every_registered_op_has_an_oracle_here():
    assert set(ops.BUILTIN) == set(SPEC_FORM) | MASKS
    assert set(SPEC_FORM) == set(TORCH)


@pytest.mark.parametrize("target,dtype", BACKENDS)
def test_edge_values_against_torch(target, dtype):
    if target == "opencl":
        pytest.importorskip("pyopencl")
    names = sorted(SPEC_FORM)
    values = edge_values(dtype)
    n = len(values)
    cell = lstmc.compile(_spec(names), input_size=n, hidden_size=n, target=target, dtype=dtype)
    state = {s: np.zeros((n, n), dtype) for s in cell.state_sizes}
    for name in names:
        for i, a in enumerate(_operands(ops.REGISTRY[name].arity, values)):
            state[f"a{i}_{name}"] = a
    x = np.zeros((1, n, n), dtype)
    with np.errstate(all="ignore"):
        _, final, tape = cell.forward(x, {}, state, train=True)
        dstate = {s: (np.ones if s.startswith("o_") else np.zeros)((n, n), dtype)
                  for s in cell.state_sizes}
        grads = tape.backward(np.zeros((1, n, n), dtype), dstate)
    for name in names:
        operands = [state[f"a{i}_{name}"] for i in range(ops.REGISTRY[name].arity)]
        value, gradients = _torch_oracle(name, operands, dtype)
        _assert_like_torch(final[f"o_{name}"], value, dtype, f"{target} {dtype} {name}")
        for i, g in enumerate(gradients):
            _assert_like_torch(grads["state"][f"a{i}_{name}"], g, dtype,
                               f"{target} {dtype} d{name}/d operand {i}")


LOG_SIGMOID = "cell log_sigmoid(x: H) -> h: H {\n  h' = log(sigmoid(x))\n}\n"


@pytest.mark.parametrize("target,dtype", BACKENDS)
def test_log_sigmoid_down_to_minus_1000(target, dtype):
    """Finite and right where torch's is, -inf exactly where torch's is; the gradient
    likewise (finite wherever torch's is)."""
    if target == "opencl":
        pytest.importorskip("pyopencl")
    z = np.linspace(-1000.0, 30.0, 2062).astype(dtype).reshape(1, 2, 1031)
    cell = lstmc.compile(LOG_SIGMOID, input_size=1031, hidden_size=1031, target=target,
                         dtype=dtype)
    with np.errstate(all="ignore"):
        y, _, tape = cell.forward(z, {}, {"h": np.zeros((2, 1031), dtype)}, train=True)
        dx = tape.backward(np.ones_like(y))["x"]
    zt = torch.tensor(z, requires_grad=True)
    expected = torch.log(torch.sigmoid(zt))
    expected.backward(torch.ones_like(expected))
    _assert_like_torch(y, expected.detach().numpy(), dtype, f"{target} {dtype} log(sigmoid)")
    _assert_like_torch(dx, zt.grad.numpy(), dtype, f"{target} {dtype} d log(sigmoid)")
    # Where torch is finite (down to -88.5 in float32, -709.5 in float64): so are we.
    assert np.isfinite(y[z >= {"float32": -88.5, "float64": -709.5}[dtype]]).all()
