"""Padding past `lengths` never reaches an output or a gradient; a row of length 0 keeps
its initial state; a reverse-only direction matches a NumPy oracle."""
import numpy as np
import pytest
from conftest import needs_opencl, spec_path
from oracles import lstm as lstm_step

import lstmc


def _cuda_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# The GPU targets compute in float32; the CPU ones are checked in float64.
TARGETS = [
    pytest.param("reference", "float64", id="reference"),
    pytest.param("cpu", "float64", id="cpu"),
    pytest.param("opencl", "float32", id="opencl"),
    pytest.param("cuda", "float32", id="cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")]),
]
TOLERANCE = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 2e-5, "atol": 2e-6}}


def host(a):
    """A NumPy array from any target's array (CuPy's included)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _compile(name, target, dtype, **options):
    if target == "opencl":
        needs_opencl()
    return lstmc.compile(spec_path(name), 3, 4, target=target, dtype=dtype, **options)


def run(cell, x, params, state, lengths, dy):
    y, final, tape = cell.forward(x, params, state, train=True, lengths=lengths)
    g = tape.backward(dy, {n: np.ones(v.shape, v.dtype) for n, v in final.items()})
    to_host = {"x": host(g["x"]), "params": {k: host(v) for k, v in g["params"].items()},
               "state": {k: host(v) for k, v in g["state"].items()}}
    return host(y), {k: host(v) for k, v in final.items()}, to_host


@pytest.mark.parametrize("target,dtype", TARGETS)
def test_nan_padding_and_zero_lengths(target, dtype):
    cell = _compile("lstm", target, dtype)
    rng = np.random.default_rng(0)
    params = cell.init_params(0)
    x = rng.standard_normal((5, 3, 3)).astype(dtype)
    state = {n: rng.standard_normal((3, 4)).astype(dtype) for n in cell.state_sizes}
    lengths = np.array([5, 0, 2])
    dy = rng.standard_normal((5, 3, 4)).astype(dtype)
    clean = run(cell, x, params, state, lengths, dy)
    dirty_x, dirty_dy = x.copy(), dy.copy()
    dirty_x[2:, 2], dirty_x[:, 1] = np.nan, np.inf
    dirty_dy[2:, 2], dirty_dy[:, 1] = np.inf, np.nan
    dirty = run(cell, dirty_x, params, state, lengths, dirty_dy)
    for a, b in zip(clean[:2], dirty[:2]):
        for k in (a if isinstance(a, dict) else {"": a}):
            np.testing.assert_array_equal((a[k] if k else a), (b[k] if k else b))
    for name in params:
        np.testing.assert_array_equal(clean[2]["params"][name], dirty[2]["params"][name])
        assert np.isfinite(dirty[2]["params"][name]).all()
    np.testing.assert_array_equal(clean[2]["x"], dirty[2]["x"])
    y, final, g = clean
    assert not y[:, 1].any() and not g["x"][:, 1].any() and not g["x"][2:, 2].any()
    for name in state:  # length 0: the final state is the initial one, its gradient passes
        np.testing.assert_array_equal(final[name][1], state[name][1])
        np.testing.assert_array_equal(g["state"][name][1], np.ones(4))


@pytest.mark.parametrize("target,dtype", TARGETS)
def test_reverse_direction_against_numpy(target, dtype):
    cell = _compile("lstm", target, dtype, direction="reverse")
    rng = np.random.default_rng(1)
    params = cell.init_params(1)
    x = rng.standard_normal((5, 3, 3)).astype(dtype)
    lengths = np.array([5, 0, 3])
    y, final = cell.forward(x, params, lengths=lengths)
    y, final = host(y), {k: host(v) for k, v in final.items()}
    p = {k.split(".", 1)[1]: host(v).astype(np.float64) for k, v in params.items()}
    for b in range(3):
        s = {"h": np.zeros((1, 4)), "c": np.zeros((1, 4))}
        want = np.zeros((5, 4))
        for t in reversed(range(lengths[b])):
            s = lstm_step(p, x[t, b][None], s)
            want[t] = s["h"][0]
        np.testing.assert_allclose(y[:, b], want, **TOLERANCE[dtype])
        np.testing.assert_allclose(final["h"][0, b], s["h"][0], **TOLERANCE[dtype])


def test_bidirectional_with_a_different_reverse_cell():
    text = open(spec_path("rnn_tanh")).read() + open(spec_path("rnn_relu")).read()
    stack = lstmc.compile(text, 3, 4, dtype="float64", bidirectional=True, cell="rnn_tanh",
                          reverse_cell="rnn_relu")
    assert [c.name for c in stack.layers[0]] == ["rnn_tanh", "rnn_relu"]
    with pytest.raises(lstmc.CompileError, match="bidirectional"):
        lstmc.compile(text, 3, 4, cell="rnn_tanh", reverse_cell="rnn_relu")
    with pytest.raises(lstmc.CompileError, match="direction"):
        lstmc.compile(text, 3, 4, cell="rnn_tanh", direction="sideways")
