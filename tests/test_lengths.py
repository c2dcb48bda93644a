"""Padding past `lengths` never reaches an output or a gradient; a row of length 0 keeps
its initial state; a reverse-only direction matches a NumPy oracle."""
import numpy as np
import pytest
from conftest import spec_path
from oracles import lstm as lstm_step

import lstmc

TARGETS = ["reference", "cpu"]


def run(cell, x, params, state, lengths, dy):
    y, final, tape = cell.forward(x, params, state, train=True, lengths=lengths)
    g = tape.backward(dy, {n: np.ones_like(v) for n, v in final.items()})
    return y, final, g


@pytest.mark.parametrize("target", TARGETS)
def test_nan_padding_and_zero_lengths(target):
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target=target, dtype="float64")
    rng = np.random.default_rng(0)
    params = cell.init_params(0)
    x = rng.standard_normal((5, 3, 3))
    state = {n: rng.standard_normal(v.shape) for n, v in cell.zero_state(3).items()}
    lengths = np.array([5, 0, 2])
    dy = rng.standard_normal((5, 3, 4))
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


@pytest.mark.parametrize("target", TARGETS)
def test_reverse_direction_against_numpy(target):
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target=target, dtype="float64",
                         direction="reverse")
    rng = np.random.default_rng(1)
    params = cell.init_params(1)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 0, 3])
    y, final = cell.forward(x, params, lengths=lengths)
    p = {k.split(".", 1)[1]: v for k, v in params.items()}
    for b in range(3):
        s = {"h": np.zeros((1, 4)), "c": np.zeros((1, 4))}
        want = np.zeros((5, 4))
        for t in reversed(range(lengths[b])):
            s = lstm_step(p, x[t, b][None], s)
            want[t] = s["h"][0]
        np.testing.assert_allclose(y[:, b], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(final["h"][0, b], s["h"][0], rtol=1e-10, atol=1e-12)


def test_bidirectional_with_a_different_reverse_cell():
    text = open(spec_path("rnn_tanh")).read() + open(spec_path("rnn_relu")).read()
    stack = lstmc.compile(text, 3, 4, dtype="float64", bidirectional=True, cell="rnn_tanh",
                          reverse_cell="rnn_relu")
    assert [c.name for c in stack.layers[0]] == ["rnn_tanh", "rnn_relu"]
    with pytest.raises(lstmc.CompileError, match="bidirectional"):
        lstmc.compile(text, 3, 4, cell="rnn_tanh", reverse_cell="rnn_relu")
    with pytest.raises(lstmc.CompileError, match="direction"):
        lstmc.compile(text, 3, 4, cell="rnn_tanh", direction="sideways")
