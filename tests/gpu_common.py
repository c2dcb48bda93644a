"""Helpers shared by the GPU tests: run a cell on a GPU target and on the float64
reference executor with the same inputs, and compare everything."""
import numpy as np
from conftest import EXTRA_SIZES, SIZES, compile_spec, random_extra_inputs, random_inputs

LENGTHS = np.array([5, 2, 4])
MASK_SEED = 20260  # both sides draw the same dropout and zoneout masks


def gpu_cell(name: str, target: str, **sizes):
    from conftest import spec_path

    import lstmc

    sizes = {**SIZES, **EXTRA_SIZES.get(name, {}), **sizes}
    return lstmc.compile(spec_path(name), target=target, **sizes)


def run_both(reference, gpu, x, params, state, lengths, seed=1, to_host=np.asarray,
             inputs=None):
    """Forward (training) and backward on both; returns two dicts of NumPy arrays.
    `inputs`: the inputs after the first, by name, of a cell that has several."""
    rng = np.random.default_rng(seed)
    results = []
    inputs = inputs or {}
    y64, _, _ = reference.forward(x.astype(np.float64),
                                  {k: v.astype(np.float64) for k, v in params.items()},
                                  {k: v.astype(np.float64) for k, v in state.items()},
                                  train=True, lengths=lengths, seed=MASK_SEED,
                                  inputs={k: v.astype(np.float64) for k, v in inputs.items()})
    dy = rng.standard_normal(y64.shape)
    dstate = {n: rng.standard_normal((x.shape[1], s)) for n, s in reference.state_sizes.items()}
    for cell, dtype in ((reference, np.float64), (gpu, np.float32)):
        cast = lambda a: np.asarray(a, dtype)  # noqa: E731
        y, final, tape = cell.forward(cast(x), {k: cast(v) for k, v in params.items()},
                                      {k: cast(v) for k, v in state.items()}, train=True,
                                      lengths=lengths, seed=MASK_SEED,
                                      inputs={k: cast(v) for k, v in inputs.items()})
        grads = tape.backward(cast(dy), {k: cast(v) for k, v in dstate.items()})
        results.append(flatten(y, final, grads, to_host))
    return results


def flatten(y, final, grads, to_host=np.asarray) -> dict:
    """A run's outputs, final states and gradients as one dict of host arrays."""
    out = {"y": to_host(y), "dx": to_host(grads["x"])}
    out.update({f"state {k}": to_host(v) for k, v in final.items()})
    out.update({f"d{k}": to_host(v) for k, v in grads["params"].items()})
    out.update({f"dstate {k}": to_host(v) for k, v in grads["state"].items()})
    out.update({f"dinput {k}": to_host(v) for k, v in grads.get("inputs", {}).items()})
    return out


def assert_close(expected: dict, actual: dict, rtol=2e-4, atol=2e-5):
    assert expected.keys() == actual.keys()
    for key in expected:
        scale = max(1.0, float(np.abs(expected[key]).max(initial=0)))
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol * scale,
                                   err_msg=key)


def compare_spec(name: str, target: str, persistent, T=5, seed=0, to_host=np.asarray, cell=None):
    reference = compile_spec(name)
    gpu = cell or gpu_cell(name, target)
    gpu.persistent = persistent
    x, params, state = random_inputs(reference, T=T, B=3, seed=seed)
    inputs = random_extra_inputs(reference, T=T, B=3, seed=seed)
    expected, actual = run_both(reference, gpu, x, params, state, LENGTHS[:3] if T >= 5 else None,
                                to_host=to_host, inputs=inputs)
    assert_close(expected, actual)
