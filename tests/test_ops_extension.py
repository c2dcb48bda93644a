"""An op added only to the registry, through its documented extension point
(`lstmc.ir.ops.register`), is a function of the spec language at once: the checker
accepts it, autodiff differentiates it, and the reference, cpu and opencl targets run it.
Oracles: a NumPy cell written here, and float64 finite differences."""
import numpy as np
import pytest
from conftest import needs_opencl

import lstmc
from lstmc.errors import SpecError
from lstmc.gradcheck import gradcheck
from lstmc.ir import ops

SPEC = """
cell cubic(x: I) -> h: H {
  param W, U, b
  h' = tanh(0.3 * cube(W @ x + U @ h + b))
}
"""


@pytest.fixture
def cube():
    op = ops.register(ops.Elementwise(
        name="cube", arity=1, function=True,
        semantics="z^3 (IEEE: inf for |z| > cbrt(max), NaN -> NaN). Derivative 3 z^2 dy.",
        reference=lambda z: z * z * z,
        derivative=lambda g, y, dy: [g.mul(dy, g.mul(g.const(3.0),
                                                     g.mul(y.inputs[0], y.inputs[0])))],
        llvm=lambda m, b, z: b.fmul(b.fmul(z, z), z),
        c="(({0}) * ({0}) * ({0}))",
    ))
    yield op
    ops.unregister("cube")


def _numpy_cell(x, p, h):
    """The same cell, in NumPy: the oracle."""
    for t in range(x.shape[0]):
        z = x[t] @ p["W"].T + h @ p["U"].T + p["b"]
        h = np.tanh(0.3 * z ** 3)
    return h


def _inputs(cell, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, cell.input_size)).astype(cell.dtype)
    params = {n: rng.uniform(-0.6, 0.6, s).astype(cell.dtype)
              for n, s in cell.param_shapes.items()}
    return x, params, {"h": np.zeros((3, cell.state_sizes["h"]), cell.dtype)}


def test_unknown_before_registration():
    with pytest.raises(SpecError, match="unknown function 'cube'"):
        lstmc.compile(SPEC, input_size=3, hidden_size=5)


def test_registered_op_is_checked_differentiated_and_run_by_the_reference(cube):
    with pytest.raises(SpecError, match="'cube' takes 1 argument"):
        lstmc.compile(SPEC.replace("cube(W @ x", "cube(b, W @ x"), input_size=3,
                      hidden_size=5)
    cell = lstmc.compile(SPEC, input_size=3, hidden_size=5, dtype="float64")
    x, params, state = _inputs(cell)
    _, final = cell.forward(x, params, state)
    np.testing.assert_allclose(final["h"], _numpy_cell(x, params, state["h"]), rtol=1e-12)
    result = gradcheck(cell, steps=3, batch=2, seed=1)
    assert result.passed(1e-6), result.errors


@pytest.mark.parametrize("target", ["cpu", "opencl"])
def test_registered_op_runs_on_compiled_targets(cube, target):
    if target == "opencl":
        needs_opencl()
    reference = lstmc.compile(SPEC, input_size=3, hidden_size=5, dtype="float32")
    compiled = lstmc.compile(SPEC, input_size=3, hidden_size=5, dtype="float32",
                             target=target)
    x, params, state = _inputs(reference)
    runs = []
    for cell in (reference, compiled):
        y, _, tape = cell.forward(x, params, state, train=True)
        runs.append((y, tape.backward(np.ones_like(y))))
    np.testing.assert_allclose(runs[1][0][-1], _numpy_cell(x, params, state["h"]), rtol=1e-5,
                               atol=1e-6)
    (y0, g0), (y1, g1) = runs
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1["x"], g0["x"], rtol=1e-4, atol=1e-5)
    for name in g0["params"]:
        np.testing.assert_allclose(g1["params"][name], g0["params"][name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_names_are_unique(cube):
    with pytest.raises(ValueError, match="already registered"):
        ops.register(cube)
