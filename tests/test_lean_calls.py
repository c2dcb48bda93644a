"""The lean inference call of native cells (lstmc_runtime.bound): bound cells, streaming
steps, and forward with cached checks, against the reference executor; checks cached by
shape never let a bad array through."""
import os
import threading

import numpy as np
import pytest
from conftest import compile_spec, exit_of_forked_child, random_inputs
from lstmc_runtime.packing import Packer, pack_panels

import lstmc

TOL = dict(rtol=1e-10, atol=1e-12)
MULTI_STAGE = ["lstm", "gru_cho", "lstmp", "layernorm_lstm", "peephole_lstm", "indrnn",
               "zoneout_lstm", "awd_lstm"]  # the last two: masks at their expectation


def both(name, **sizes):
    return compile_spec(name, **sizes), compile_spec(name, target="cpu", **sizes)


def assert_states(got, expected):
    assert got.keys() == expected.keys()
    for n in expected:
        np.testing.assert_allclose(got[n], expected[n], **TOL, err_msg=n)


@pytest.mark.parametrize("name", MULTI_STAGE)
def test_bound_calls_and_packed_forward_match_the_reference(name):
    reference, native = both(name)
    x, params, state = random_inputs(reference, T=6, B=2)
    y0, f0 = reference.forward(x, params, state)
    bound = native.bind(params)
    packed = native.pack_params(params)
    for _ in range(2):  # the second call runs on the cached plan
        for y, final in (bound(x, state), native.forward(x, packed, state),
                         native.forward(x, params, state)):
            np.testing.assert_allclose(y, y0, **TOL)
            assert_states(final, f0)
    y0, f0 = reference.forward(x, params)  # no state: zeros
    y, final = bound(x)
    np.testing.assert_allclose(y, y0, **TOL)
    assert_states(final, f0)


@pytest.mark.parametrize("name", MULTI_STAGE)
def test_steps_carry_the_state_as_one_long_forward(name):
    reference, native = both(name)
    x, params, state = random_inputs(reference, T=7, B=3)
    y0, f0 = reference.forward(x, params, state)
    bound = native.bind(params)
    assert bound.state is None
    bound.reset(state)
    pieces = [bound.step(x[t:t + 1]) for t in range(4)] + [bound.step(x[4:])]
    np.testing.assert_allclose(np.concatenate(pieces), y0, **TOL)
    assert_states(bound.state, f0)
    bound.reset()  # from zeros again, first step the ordinary way
    y0, _ = reference.forward(x[:2], params)
    np.testing.assert_allclose(np.concatenate([bound.step(x[:1]), bound.step(x[1:2])]), y0,
                               **TOL)


def test_a_reset_between_steps_of_one_shape_is_seen():
    """A step's fast path keeps the carried states' addresses per plan: a reset (new
    state buffers) between steps of the same shape must not run on the old ones."""
    reference, native = both("lstm")
    x, params, state = random_inputs(reference, T=3, B=2)
    y0, _ = reference.forward(x, params, state)
    bound = native.bind(params)
    for start in (state, {n: v + 0.5 for n, v in state.items()}, state):
        bound.reset(start)
        y = np.concatenate([bound.step(x[t:t + 1]) for t in range(3)])
        expected = y0 if start is state else reference.forward(x, params, start)[0]
        np.testing.assert_allclose(y, expected, **TOL)


def test_a_step_with_another_batch_asks_for_reset():
    native = compile_spec("lstm", target="cpu")
    x, params, _ = random_inputs(native, T=2, B=3)
    bound = native.bind(params)
    bound.step(x)
    with pytest.raises(lstmc.ShapeError, match="call reset"):
        bound.step(x[:, :2].copy())
    bound.reset()
    assert bound.step(x[:, :2].copy()).shape == (2, 2, 5)


def test_cached_checks_still_refuse_bad_arrays():
    """A shape seen before is validated once; an array that differs in strides, dtype or
    type, or bad states and parameters, still gets the full check's error."""
    native = compile_spec("lstm", dtype="float32", target="cpu")
    x, params, state = random_inputs(native, T=4, B=3)
    packed = native.pack_params(params)
    bound = native.bind(packed)
    for call in (lambda *a: native.forward(a[0], packed, *a[1:]),
                 lambda *a: native.forward(a[0], params, *a[1:]), bound):
        call(x, state)
        with pytest.raises(lstmc.ShapeError, match="x: expected a C-contiguous"):
            call(np.asfortranarray(x), state)
        with pytest.raises(lstmc.ShapeError, match="x: expected a C-contiguous"):
            call(np.zeros((4, 6, 3), np.float32)[:, ::2], state)
        with pytest.raises(lstmc.ShapeError, match="x: expected dtype float32"):
            call(x.astype(np.float64), state)
        with pytest.raises(lstmc.ShapeError, match="x: expected an array"):
            call(x.tolist(), state)
        with pytest.raises(lstmc.ShapeError, match="state: missing 'c'"):
            call(x, {"h": state["h"]})
        with pytest.raises(lstmc.ShapeError, match=r"state\['c'\]: expected dtype"):
            call(x, {**state, "c": state["c"].astype(np.float64)})
        with pytest.raises(lstmc.ShapeError, match=r"state\['h'\]: expected a C-contiguous"):
            call(x, {**state, "h": np.asfortranarray(np.zeros((3, 5), np.float32))})
    for bad, message in (({**params, "W_hg": params["W_hg"].T}, "expected a C-contiguous"),
                         ({**params, "W_hg": params["W_hg"][:, :2]}, "expected shape"),
                         ({k: v for k, v in params.items() if k != "b_ii"}, "missing 'b_ii'"),
                         ({**params, "b_ii": params["b_ii"].astype(np.float64)}, "dtype")):
        with pytest.raises(lstmc.ShapeError, match=message):
            native.forward(x, bad, state)


def test_read_only_inputs_and_fresh_outputs():
    reference, native = both("gru")
    x, params, state = random_inputs(reference, T=3, B=2)
    for array in (x, *state.values()):
        array.flags.writeable = False
    y0, f0 = reference.forward(x, params, state)
    packed = native.pack_params(params)
    first = native.forward(x, packed, state)
    second = native.forward(x, packed, state)
    assert first[0] is not second[0] and first[1]["h"] is not second[1]["h"]
    np.testing.assert_allclose(first[0], y0, **TOL)
    assert_states(first[1], f0)
    np.testing.assert_array_equal(first[0], second[0])


def test_long_sequences_take_work_buffers_from_the_pool():
    """Work buffers over a megabyte are not kept by the plan."""
    reference, native = both("lstm", hidden_size=64)
    x, params, state = random_inputs(reference, T=1100, B=1)
    y0, f0 = reference.forward(x, params, state)
    bound = native.bind(params)
    for _ in range(2):
        y, final = bound(x, state)
        np.testing.assert_allclose(y, y0, **TOL)
        assert_states(final, f0)
    (plan,) = native.plans._plans.values()
    assert plan.pooled and all(array.nbytes <= 1 << 20 for array in plan.keep)


def test_a_plan_is_made_for_the_threads_a_call_may_use():
    """A call inside threads_limited(1) (a stack's direction run beside the other) gets
    a plan of its own, without the threaded kernel; the same shape with every core
    keeps its own plan, which may measure the threaded kernel."""
    from lstmc_runtime.threads import thread_count, threads_limited

    reference, native = both("lstm", input_size=64, hidden_size=64)
    x, params, state = random_inputs(reference, T=3, B=1)
    y0, _ = reference.forward(x, params, state)
    with threads_limited(1):
        y1, _ = native.forward(x, params, state)
    y2, _ = native.forward(x, params, state)
    for y in (y1, y2):
        np.testing.assert_allclose(y, y0, **TOL)
    plans = native.plans._plans
    limited = [plan for key, plan in plans.items() if key[-1] == 1]
    assert len(limited) == 1 and limited[0].threaded is None
    if thread_count() > 1:
        assert len(plans) == 2
        everything = [plan for key, plan in plans.items() if key[-1] is None]
        assert everything[0].threaded is not None


def test_calls_from_several_threads_at_once():
    """One caller at a time takes the lean path; the others run the ordinary way."""
    reference, native = both("lstm", hidden_size=16)
    packed = None
    cases = []
    for seed in range(4):
        x, params, state = random_inputs(reference, T=5, B=2, seed=seed)
        if packed is None:
            packed = native.pack_params(params)
            first = params
        cases.append((x, state, reference.forward(x, first, state)))
    errors = []

    def run(case):
        x, state, (y0, f0) = case
        try:
            for _ in range(200):
                y, final = native.forward(x, packed, state)
                np.testing.assert_allclose(y, y0, **TOL)
                assert_states(final, f0)
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(case,)) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_step_steps_on():
    """A fork while another thread is inside `bound.step` (its kernel runs without the
    GIL, so forks land there) copies the step's locks held, and the thread holding them
    does not exist in the child: the child's steps must neither wait forever nor lose
    the lean path."""
    reference, native = both("lstm", hidden_size=16)
    x, params, state = random_inputs(reference, T=3, B=2)
    bound = native.bind(params)
    bound.reset(state)
    bound.step(x[:1])  # the lean path's plan exists
    expected = reference.forward(x[1:], params, bound.state)[0]

    def check():
        lean = native.plans.lock.acquire(False)
        if lean:
            native.plans.lock.release()
        return lean and np.allclose(bound.step(x[1:]), expected, **TOL)

    assert exit_of_forked_child(check, [bound._lock, native.plans.lock]) == 0


@pytest.mark.parametrize("rows,columns,width", [
    ([128] * 4, 128, 32), ([5, 5, 5], 7, 32), ([40, 40], 33, 32), ([64, 64, 64], 100, 16),
    ([32, 7], 50, 32), ([7, 32], 50, 8)])
def test_packing_from_the_parts_matches_packing_the_stack(rows, columns, width):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((r, columns)).astype(np.float32) for r in rows]
    stacked = np.concatenate(parts)
    numpy_packer = Packer(width, np.float32)  # no library functions: NumPy alone
    np.testing.assert_array_equal(numpy_packer.stacked(parts, transposed=True),
                                  pack_panels(stacked.T, width))
    np.testing.assert_array_equal(numpy_packer.stacked(parts, transposed=False),
                                  pack_panels(stacked, width))
