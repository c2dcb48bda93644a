"""The Python API: compile options, array validation, tapes."""
import numpy as np
import pytest
from conftest import compile_spec, random_inputs, spec_path

import lstmc


def test_spec_may_be_given_as_text():
    text = open(spec_path("rnn_tanh")).read()
    cell = lstmc.compile(text, input_size=3, hidden_size=5)
    assert cell.name == "rnn_tanh" and cell.param_shapes["W_ih"] == (5, 3)


def test_path_objects_are_accepted():
    import pathlib
    cell = lstmc.compile(pathlib.Path(spec_path("indrnn")), 2, 3)
    assert cell.param_shapes == {"W": (3, 2), "u": (3,), "b": (3,)}


def test_named_sizes_are_keyword_arguments():
    cell = lstmc.compile(spec_path("lstmp"), input_size=3, hidden_size=6, P=2)
    assert cell.state_sizes == {"h": 2, "c": 6}
    assert cell.param_shapes["W_hr"] == (2, 6) and cell.param_shapes["W_hi"] == (6, 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_size=3, hidden_size=5), "no value for size P: pass P=..."),
    (dict(input_size=3, hidden_size=5, P=2, Q=3), "unknown size 'Q'"),
    (dict(input_size=3, hidden_size=0, P=2), "size H must be a positive integer"),
    (dict(input_size=3, hidden_size=5, P=2, target="tpu"), "unknown target 'tpu'"),
    (dict(input_size=3, hidden_size=5, P=2, dtype="int8"), "unsupported dtype 'int8'"),
    (dict(input_size=3, hidden_size=5, P=2, cell="other"), "the spec has no cell 'other'"),
])
def test_compile_errors(kwargs, message):
    with pytest.raises(lstmc.CompileError, match=message):
        lstmc.compile(spec_path("lstmp"), **kwargs)


def test_a_spec_with_several_cells_needs_a_choice():
    text = open(spec_path("rnn_tanh")).read() + open(spec_path("rnn_relu")).read()
    with pytest.raises(lstmc.CompileError, match="several cells"):
        lstmc.compile(text, 3, 5)
    assert lstmc.compile(text, 3, 5, cell="rnn_relu").name == "rnn_relu"


def test_default_state_is_zeros():
    cell = compile_spec("lstm")
    x, params, _ = random_inputs(cell)
    y1, s1 = cell.forward(x, params)
    zeros = {name: np.zeros((x.shape[1], size), x.dtype)
             for name, size in cell.state_sizes.items()}
    y2, s2 = cell.forward(x, params, zeros)
    np.testing.assert_array_equal(y1, y2)
    for name, value in cell.zero_state(x.shape[1]).items():
        np.testing.assert_array_equal(value, zeros[name])


def test_state_carries_across_calls():
    cell = compile_spec("gru")
    x, params, state = random_inputs(cell, T=6)
    y, final = cell.forward(x, params, state)
    y1, mid = cell.forward(x[:3], params, state)
    y2, end = cell.forward(x[3:], params, mid)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=1e-13)
    np.testing.assert_allclose(end["h"], final["h"], rtol=1e-13)


def test_backward_without_dstate_and_twice():
    cell = compile_spec("lstm")
    x, params, state = random_inputs(cell)
    y, final, tape = cell.forward(x, params, state, train=True)
    dy = np.ones_like(y)
    g1 = tape.backward(dy)
    g2 = tape.backward(dy, {"c": np.zeros_like(final["c"])})
    np.testing.assert_array_equal(g1["x"], g2["x"])
    assert set(g1) == {"x", "params", "state", "inputs"} and g1["inputs"] == {}
    assert g1["x"].shape == x.shape and set(g1["state"]) == {"h", "c"}


def _inputs():
    cell = compile_spec("lstm", dtype="float32")
    x, params, state = random_inputs(cell)
    return cell, x, params, state


@pytest.mark.parametrize("mutate,message", [
    (lambda x, p, s: (x[0], p, s), r"x: expected shape \(\*, \*, 3\), got \(3, 3\)"),
    (lambda x, p, s: (x[..., :2], p, s), r"x: expected shape \(\*, \*, 3\), got \(4, 3, 2\)"),
    (lambda x, p, s: (x.astype(np.float64), p, s), "x: expected dtype float32, got float64"),
    (lambda x, p, s: (x.tolist(), p, s), "x: expected an array"),
    (lambda x, p, s: (x[:0], p, s), "x: expected at least one step"),
    (lambda x, p, s: (x, {k: v for k, v in p.items() if k != "b_hi"}, s),
     "params: missing 'b_hi'"),
    (lambda x, p, s: (x, {**p, "b_extra": p["b_hi"]}, s), "params: unexpected 'b_extra'"),
    (lambda x, p, s: (x, {**p, "W_hi": p["W_hi"].T[:, :4]}, s),
     r"params\['W_hi'\]: expected shape \(5, 5\), got \(5, 4\)"),
    (lambda x, p, s: (x, {**p, "b_ii": p["b_ii"].astype(np.float16)}, s),
     r"params\['b_ii'\]: expected dtype float32, got float16"),
    (lambda x, p, s: (x, p, {"h": s["h"]}), "state: missing 'c'"),
    (lambda x, p, s: (x, p, {**s, "c": s["c"][:2]}), r"state\['c'\]: expected shape \(3, 5\)"),
    (lambda x, p, s: (x, p, [s["h"], s["c"]]), "state: expected a dict"),
])
def test_bad_arrays_are_named(mutate, message):
    cell, x, params, state = _inputs()
    x, params, state = mutate(x, params, state)
    with pytest.raises(lstmc.ShapeError, match=message):
        cell.forward(x, params, state)


def test_bad_backward_arrays_are_named():
    cell, x, params, state = _inputs()
    y, final, tape = cell.forward(x, params, state, train=True)
    with pytest.raises(lstmc.ShapeError, match=r"dy: expected shape \(4, 3, 5\), got \(4, 3, 4\)"):
        tape.backward(y[..., :4])
    with pytest.raises(lstmc.ShapeError, match="dstate: unexpected 'z'"):
        tape.backward(y, {"z": final["h"]})
    with pytest.raises(lstmc.ShapeError, match=r"dstate\['c'\]: expected dtype float32"):
        tape.backward(y, {"c": final["c"].astype(np.float64)})


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_numpy_integer_sizes_are_sizes(target):
    """Sizes that come out of NumPy (np.int64(16), a shape's entry) are accepted as the
    ints they hold, on every target (the cpu target keys its disk cache by them)."""
    cell = lstmc.compile(spec_path("lstmp"), np.int32(3), np.int64(6), target=target,
                         P=np.int64(2))
    plain = lstmc.compile(spec_path("lstmp"), 3, 6, target=target, P=2)
    assert cell.state_sizes == plain.state_sizes and cell.param_shapes == plain.param_shapes
    assert all(type(v) is int for v in cell.state_sizes.values())


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_cell_too_large_for_the_runtime_is_refused_before_code_generation(
        target, monkeypatch):
    """H=32768 is a valid size, but the LSTM's stacked recurrent weights (4H x H) would
    have 2^32 elements, beyond what the runtime's buffers take: a CompileError naming the
    weight and the runtime's limit, raised before any code is generated."""
    from lstmc_runtime.manifest import MAX_SIZE

    import lstmc.backends.cpu

    def no_codegen(*args, **kwargs):
        raise AssertionError("code was generated for a cell too large to run")

    monkeypatch.setattr(lstmc.backends.cpu, "generate", no_codegen)
    with pytest.raises(lstmc.CompileError) as info:
        lstmc.compile(spec_path("lstm"), 8, 32768, target=target)
    message = str(info.value)
    assert "too large" in message and "W_hi" in message
    assert str(4 * 32768 * 32768) in message and str(MAX_SIZE) in message


def test_a_stack_whose_upper_layers_are_too_large_is_refused(tmp_path):
    """The upper layers of a bidirectional stack read 2H units: their input weights may
    pass the limit where the first layer's do not. `lstmc compile -o` refuses such a stack
    before it writes anything, the first layer included."""
    from lstmc.api import write_artifact_dir

    with pytest.raises(lstmc.CompileError, match="too large"):
        write_artifact_dir(spec_path("rnn_tanh"), str(tmp_path / "a"), 1, 40000,
                           num_layers=2, bidirectional=True)
    assert not (tmp_path / "a").exists()
