"""Every shipped spec, on the reference executor, against an oracle written independently
in tests/oracles.py: forward values, and every gradient (input, each parameter, each
initial state) against central finite differences of that oracle in float64."""
import numpy as np
import pytest
from conftest import (
    SPEC_NAMES,
    central_difference,
    compile_spec,
    random_extra_inputs,
    random_inputs,
)
from oracles import STEPS, run


def test_every_spec_has_an_oracle():
    assert sorted(STEPS) == SPEC_NAMES


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_forward_matches_oracle(spec_name, dtype, tol):
    cell = compile_spec(spec_name, dtype=dtype)
    x, params, state = random_inputs(cell, seed=1)
    inputs = random_extra_inputs(cell, *x.shape[:2], seed=1)
    y, final = cell.forward(x, params, state, inputs=inputs)
    as64 = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    y_ref, final_ref = run(STEPS[spec_name], as64(params), x.astype(np.float64), as64(state),
                           inputs=as64(inputs))
    assert y.dtype == np.dtype(dtype) and y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    assert set(final) == set(final_ref)
    for name in final:
        np.testing.assert_allclose(final[name], final_ref[name], rtol=tol, atol=tol)


def test_gradients_match_finite_differences_of_oracle(spec_name):
    cell = compile_spec(spec_name)
    x, params, state = random_inputs(cell, T=3, B=2, seed=2)
    inputs = random_extra_inputs(cell, T=3, B=2, seed=2)
    rng = np.random.default_rng(3)
    seed = 2**63 + 12345  # masks of cells with dropout or zoneout: the oracle draws them too
    y, final, tape = cell.forward(x, params, state, train=True, seed=seed, inputs=inputs)
    dy = rng.standard_normal(y.shape)
    dstate = {n: rng.standard_normal(v.shape) for n, v in final.items()}
    grads = tape.backward(dy, dstate)
    step = STEPS[spec_name]

    def loss():
        y, final = run(step, params, x, state, seed=seed, inputs=inputs)
        return np.sum(dy * y) + sum(np.sum(dstate[n] * final[n]) for n in final)

    arrays = [("x", x, grads["x"])]
    arrays += [(f"input {n}", inputs[n], grads["inputs"][n]) for n in inputs]
    arrays += [(f"param {n}", params[n], grads["params"][n]) for n in params]
    arrays += [(f"state {n}", state[n], grads["state"][n]) for n in state]
    for label, value, analytic in arrays:
        numeric = central_difference(loss, value)
        np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{spec_name}: gradient of {label}")
