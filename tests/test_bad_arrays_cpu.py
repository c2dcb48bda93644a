"""Bad arrays given to a native cell: each is an error naming the argument, raised before
any native call; the process survives them all."""
import numpy as np
import pytest
from conftest import compile_spec, random_inputs

import lstmc


@pytest.fixture(scope="module")
def native():
    cell = compile_spec("lstm", dtype="float32", target="cpu")
    return (cell, *random_inputs(cell))


@pytest.mark.parametrize("mutate,message", [
    (lambda x, p, s: (x[0], p, s, None), r"x: expected shape \(\*, \*, 3\), got \(3, 3\)"),
    (lambda x, p, s: (x[None], p, s, None), r"x: expected shape \(\*, \*, 3\), got \(1, 4, 3, 3\)"),
    (lambda x, p, s: (np.zeros((4, 3, 7), np.float32), p, s, None), "got \\(4, 3, 7\\)"),
    (lambda x, p, s: (x.astype(np.float64), p, s, None), "x: expected dtype float32, got float64"),
    (lambda x, p, s: (x.astype(np.int32), p, s, None), "x: expected dtype float32, got int32"),
    (lambda x, p, s: (np.asfortranarray(x), p, s, None), "x: expected a C-contiguous array"),
    (lambda x, p, s: (x[:, ::2], p, {k: v[::2] for k, v in s.items()}, None),
     "x: expected a C-contiguous array"),
    (lambda x, p, s: (x[:0], p, s, None), "x: expected at least one step"),
    (lambda x, p, s: (x, {k: v for k, v in p.items() if k != "W_hg"}, s, None),
     "params: missing 'W_hg'"),
    (lambda x, p, s: (x, {**p, "W_extra": p["W_hg"]}, s, None), "params: unexpected 'W_extra'"),
    (lambda x, p, s: (x, {**p, "W_hg": p["W_hg"][:, :2]}, s, None),
     r"params\['W_hg'\]: expected shape \(5, 5\), got \(5, 2\)"),
    (lambda x, p, s: (x, {**p, "W_hg": p["W_hg"].T}, s, None),
     r"params\['W_hg'\]: expected a C-contiguous array"),
    (lambda x, p, s: (x, p, {"h": s["h"]}, None), "state: missing 'c'"),
    (lambda x, p, s: (x, p, {**s, "c": s["c"][:, :4]}, None), r"state\['c'\]: expected shape"),
    (lambda x, p, s: (x, p, s, [4, 4]), r"lengths: expected shape \(3,\)"),
    (lambda x, p, s: (x, p, s, [4, -1, 1]), "lengths: each must be between 0 and T=4, got -1 for row 1"),
    (lambda x, p, s: (x, p, s, [4, 5, 1]), "lengths: each must be between 0 and T=4, got 5 for row 1"),
    (lambda x, p, s: (x, p, s, [4.0, 2.0, 1.0]), "lengths: expected integers, got float64"),
])
def test_bad_input_raises_before_running(native, mutate, message):
    cell, x, params, state = native
    x, params, state, lengths = mutate(x, params, state)
    with pytest.raises(lstmc.ShapeError, match=message):
        cell.forward(x, params, state, lengths=lengths)


def test_bad_backward_arrays(native):
    cell, x, params, state = native
    y, final, tape = cell.forward(x, params, state, train=True)
    with pytest.raises(lstmc.ShapeError, match=r"dy: expected shape \(4, 3, 5\)"):
        tape.backward(y[:2])
    with pytest.raises(lstmc.ShapeError, match="dy: expected a C-contiguous"):
        tape.backward(np.asfortranarray(y))
    with pytest.raises(lstmc.ShapeError, match=r"dstate\['h'\]: expected dtype float32"):
        tape.backward(y, {"h": final["h"].astype(np.float16)})
    assert np.isfinite(tape.backward(y)["x"]).all()  # and the tape still works
