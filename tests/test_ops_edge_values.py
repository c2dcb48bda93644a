"""Every op of the registry on edge values (NaN, +-inf, +-0, huge, tiny, denormal, ties)
through every backend, value and gradient, against PyTorch: the same NaN placement, the
same saturation, the same split of gradients on ties. Also log(sigmoid(z)) down to
z = -1000, where sigmoid saturates to exactly 0.

One cell holds every op: op k reads states a0_k, a1_k, ... (carried unchanged) and
writes state o_k, so one compile per backend covers them all, and the gradient of the
initial a_i_k (with an incoming gradient of ones on o_k only) is d op_k / d operand i.
"""
import re

import numpy as np
import pytest
from conftest import needs_opencl

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
    "softplus": "softplus({0})", "logsigmoid": "logsigmoid({0})", "elu": "elu({0})",
    "elu_alpha": "elu({0}, 0.5)", "selu": "selu({0})", "gelu": "gelu({0})",
    "gelu_tanh": "gelu_tanh({0})", "silu": "silu({0})", "leaky_relu": "leaky_relu({0})",
    "leaky_relu_slope": "leaky_relu({0}, -0.2)", "erf": "erf({0})", "sin": "sin({0})",
    "cos": "cos({0})", "floor": "floor({0})", "mod": "mod({0}, {1})",
    "where": "where({0}, {1}, {2})",
    "lt": "{0} < {1}", "le": "{0} <= {1}", "gt": "{0} > {1}", "ge": "{0} >= {1}",
    "pow_0": "{0} ** 0", "pow_2": "{0} ** 2", "pow_3": "{0} ** 3", "pow_half": "{0} ** 0.5",
    "pow_minus_half": "{0} ** -0.5", "pow_minus_1": "{0} ** -1", "pow_1_5": "{0} ** 1.5",
    "pow_minus_2": "{0} ** -2",
}
F = torch.nn.functional


def _compare(op):
    return lambda a, b: op(a, b).to(a.dtype)


def _power(c):
    return lambda a: torch.pow(a, c)
TORCH = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "neg": torch.neg, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
    "softsign": torch.nn.functional.softsign, "min": torch.minimum, "max": torch.maximum,
    "clip": torch.clamp,
    "softplus": F.softplus, "logsigmoid": F.logsigmoid, "elu": F.elu,
    "elu_alpha": lambda z: F.elu(z, alpha=0.5), "selu": F.selu, "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "silu": F.silu,
    "leaky_relu": F.leaky_relu, "leaky_relu_slope": lambda z: F.leaky_relu(z, -0.2),
    "erf": torch.erf, "sin": torch.sin, "cos": torch.cos, "floor": torch.floor,
    "mod": torch.remainder, "where": lambda c, a, b: torch.where(c != 0, a, b),
    "lt": _compare(torch.lt), "le": _compare(torch.le), "gt": _compare(torch.gt),
    "ge": _compare(torch.ge),
    "pow_0": _power(0), "pow_2": _power(2), "pow_3": _power(3), "pow_half": _power(0.5),
    "pow_minus_half": _power(-0.5), "pow_minus_1": _power(-1), "pow_1_5": _power(1.5),
    "pow_minus_2": _power(-2),
}
# The registry op each case exercises, where the case is not named after it.
OP_OF = {"elu_alpha": "elu", "leaky_relu_slope": "leaky_relu", "lt": "gt", "le": "ge",
         **{case: "pow" for case in SPEC_FORM if case.startswith("pow_")}}
# Used inside derivative rules only; checked through them (eq: min/max ties; floor_divide:
# mod's gradient).
HELPERS = {"eq", "floor_divide"}


def _arity(name: str) -> int:
    return len(set(re.findall(r"\{(\d)\}", SPEC_FORM[name])))

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
        operands = [f"a{i}_{name}" for i in range(_arity(name))]
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


# Where torch's float32 kernel is not the oracle: its vectorized float32 GELU gives NaN
# at +inf, where its scalar kernel and its float64 kernel give inf (the limit), and its
# gradient at -3 is 4e-8 (3.7e-6 relative, in the cancellation of Phi(z) + z phi(z))
# from the true value, where lstmc's is within 2e-9. torch in float64, rounded to
# float32, is the oracle instead.
FLOAT64_ORACLE = {"gelu"}
# Likewise torch's float32 tanh-GELU cancels in 1 + tanh(u) near z = -3 (1e-5 relative);
# lstmc's form does not. There torch's float64 values are the oracle where torch's float32
# result is finite, its float32 result (NaN where z^2 overflows) elsewhere.
FLOAT64_WHERE_FINITE = {"gelu_tanh"}
# Where torch's vectorized kernel is not the oracle: its vectorized remainder gives NaN
# where a / b overflows (remainder(1e308, 0.5)), its scalar kernel the exact fmod-based
# result (0, as Python's %). The scalar kernel, one element at a time, is the oracle.
SCALAR_KERNEL = {"mod"}


def _torch_oracle(name, operands, dtype):
    """(value, gradient of each operand) that lstmc must reproduce."""
    if name in SCALAR_KERNEL:
        return _per_element(name, operands, dtype)
    if name in EXACT_GRADIENT:
        return _torch(name, operands, dtype)[0], [EXACT_GRADIENT[name](*operands).astype(dtype)]
    if dtype == "float64" or name not in FLOAT64_ORACLE | FLOAT64_WHERE_FINITE:
        return _torch(name, operands, dtype)
    value, grads = _torch(name, [a.astype(np.float64) for a in operands], "float64")
    value, grads = value.astype(dtype), [g.astype(dtype) for g in grads]
    if name in FLOAT64_WHERE_FINITE:
        value32, grads32 = _torch(name, operands, dtype)
        value = np.where(np.isfinite(value32), value, value32)
        grads = [np.where(np.isfinite(g32), g, g32) for g, g32 in zip(grads, grads32)]
    return value, grads


def _torch(name, operands, dtype):
    """torch's value and gradients (zero for an operand that gets none)."""
    tensors = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True)
               for a in operands]
    out = TORCH[name](*tensors)
    if out.requires_grad:  # comparisons have no gradient at all
        out.backward(torch.ones_like(out))
    return out.detach().numpy(), [np.zeros_like(a) if t.grad is None else t.grad.numpy()
                                  for a, t in zip(operands, tensors)]


def _per_element(name, operands, dtype):
    """torch's scalar kernel: one element at a time."""
    value = np.empty_like(operands[0])
    grads = [np.empty_like(a) for a in operands]
    for index in np.ndindex(value.shape):
        v, g = _torch(name, [a[index].reshape(1) for a in operands], dtype)
        value[index] = v[0]
        for grad, d in zip(grads, g):
            grad[index] = d[0]
    return value, grads


def test_every_registered_op_has_an_oracle_here():
    assert set(ops.BUILTIN) == {OP_OF.get(case, case) for case in SPEC_FORM} | HELPERS
    assert set(SPEC_FORM) == set(TORCH)


@pytest.mark.parametrize("target,dtype", BACKENDS)
def test_edge_values_against_torch(target, dtype):
    if target == "opencl":
        needs_opencl()
    values = edge_values(dtype)
    all_names = sorted(SPEC_FORM)
    # A few ops per cell: LLVM's time grows faster than a cell's size (one cell of every
    # op compiled in 78 s, cells of 11 in 13.5 s each)
    for names in (all_names[k:k + OPS_PER_CELL]
                  for k in range(0, len(all_names), OPS_PER_CELL)):
        _check_edge_values(names, values, target, dtype)


OPS_PER_CELL = 6


def _check_edge_values(names, values, target, dtype):
    n = len(values)
    cell = lstmc.compile(_spec(names), input_size=n, hidden_size=n, target=target, dtype=dtype)
    state = {s: np.zeros((n, n), dtype) for s in cell.state_sizes}
    for name in names:
        for i, a in enumerate(_operands(_arity(name), values)):
            state[f"a{i}_{name}"] = a
    x = np.zeros((1, n, n), dtype)
    with np.errstate(all="ignore"):
        _, final, tape = cell.forward(x, {}, state, train=True)
        dstate = {s: (np.ones if s.startswith("o_") else np.zeros)((n, n), dtype)
                  for s in cell.state_sizes}
        grads = tape.backward(np.zeros((1, n, n), dtype), dstate)
    for name in names:
        operands = [state[f"a{i}_{name}"] for i in range(_arity(name))]
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
        needs_opencl()
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


STABLE = "cell stable(x: H) -> h: H {\n  state s: H\n  h' = softplus(x)\n  s' = logsigmoid(x)\n}\n"


@pytest.mark.parametrize("target,dtype", BACKENDS)
def test_softplus_and_logsigmoid_never_overflow(target, dtype):
    """From -1000 to 1000: finite everywhere, as torch's, values and gradients (the
    naive log(1 + exp(z)) is inf above 88.7 in float32)."""
    if target == "opencl":
        needs_opencl()
    z = np.linspace(-1000.0, 1000.0, 2062).astype(dtype).reshape(1, 2, 1031)
    cell = lstmc.compile(STABLE, input_size=1031, hidden_size=1031, target=target, dtype=dtype)
    zero = np.zeros((2, 1031), dtype)
    y, final, tape = cell.forward(z, {}, {"h": zero, "s": zero}, train=True)
    dx = tape.backward(np.zeros_like(y), {"h": np.ones_like(zero), "s": 2 * np.ones_like(zero)})["x"]
    zt = torch.tensor(z, requires_grad=True)
    softplus, logsigmoid = F.softplus(zt), F.logsigmoid(zt)
    (softplus + 2 * logsigmoid).backward(torch.ones_like(zt))
    for name, ours, theirs in [("softplus", final["h"], softplus), ("logsigmoid", final["s"], logsigmoid),
                               ("d", dx, zt.grad)]:
        assert np.isfinite(ours).all(), f"{target} {dtype} {name}"
        _assert_like_torch(ours, theirs.detach().numpy().reshape(np.shape(ours)), dtype,
                           f"{target} {dtype} {name}")
