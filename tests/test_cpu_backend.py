"""The CPU target (LLVM) against the reference executor: every spec, forward and
backward, float32 and float64, with and without variable lengths."""
import os

import numpy as np
import pytest
from conftest import compile_spec, has_masks, random_extra_inputs, random_inputs

TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}


def run_both(name, dtype, lengths=None, T=5, B=3, seed=0, **sizes):
    reference = compile_spec(name, dtype=dtype, **sizes)
    native = compile_spec(name, dtype=dtype, target="cpu", **sizes)
    x, params, state = random_inputs(reference, T=T, B=B, seed=seed)
    inputs = random_extra_inputs(reference, T=T, B=B, seed=seed)  # phased_lstm's ts
    results = []
    rng = np.random.default_rng(seed + 1)
    dy = rng.standard_normal((T, B, reference.state_sizes[reference.output])).astype(dtype)
    dstate = {n: rng.standard_normal((B, s)).astype(dtype)
              for n, s in reference.state_sizes.items()}
    for cell in (reference, native):
        y, final, tape = cell.forward(x, params, state, train=True, lengths=lengths, seed=99,
                                      inputs=inputs)
        y_eval, final_eval = cell.forward(x, params, state, lengths=lengths, inputs=inputs)
        if not has_masks(reference):  # training computes the same, dropout aside
            np.testing.assert_allclose(y, y_eval, **TOLERANCE[dtype])
        results.append((y, final, tape.backward(dy, dstate)))
    return results


def assert_same(expected, got, dtype, name):
    tol = TOLERANCE[dtype]
    (y0, f0, g0), (y1, f1, g1) = expected, got
    np.testing.assert_allclose(y1, y0, **tol, err_msg=f"{name}: y")
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **tol, err_msg=f"{name}: state {n}")
    np.testing.assert_allclose(g1["x"], g0["x"], **tol, err_msg=f"{name}: dx")
    assert g1["inputs"].keys() == g0["inputs"].keys()
    for n in g0["inputs"]:
        np.testing.assert_allclose(g1["inputs"][n], g0["inputs"][n], **tol,
                                   err_msg=f"{name}: d{n}")
    for n in g0["params"]:
        np.testing.assert_allclose(g1["params"][n], g0["params"][n], **tol,
                                   err_msg=f"{name}: d{n}")
    for n in g0["state"]:
        np.testing.assert_allclose(g1["state"][n], g0["state"][n], **tol,
                                   err_msg=f"{name}: dstate {n}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_matches_reference(spec_name, dtype):
    expected, got = run_both(spec_name, dtype)
    assert got[0].dtype == np.dtype(dtype)
    assert_same(expected, got, dtype, spec_name)


@pytest.mark.parametrize("name", ["lstm", "gru_cho", "lstmp", "layernorm_lstm", "indrnn",
                                  "phased_lstm"])
def test_cpu_matches_reference_with_lengths(name):
    lengths = np.array([5, 2, 4, 1])
    expected, got = run_both(name, "float64", lengths=lengths, B=4)
    assert_same(expected, got, "float64", name)
    y = got[0]
    assert np.all(y[2:, 1] == 0) and np.all(y[1:, 3] == 0)


def test_lengths_keep_the_state_at_each_rows_length():
    cell = compile_spec("lstm", target="cpu")
    x, params, state = random_inputs(cell, T=6, B=2)
    y, final = cell.forward(x, params, state, lengths=[6, 3])
    y_short, final_short = cell.forward(np.ascontiguousarray(x[:3, 1:]), params,
                                        {n: v[1:] for n, v in state.items()})
    np.testing.assert_allclose(y[:3, 1], y_short[:, 0], rtol=1e-12)
    for n in final:
        np.testing.assert_allclose(final[n][1], final_short[n][0], rtol=1e-12)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_register_tiles_panels_and_batch_slices(monkeypatch, threads, dtype):
    """Sizes that exercise full register tiles and their remainders (B = 8 + 8 + 9 rows,
    4H = 160 columns: full panels and a tail), on one thread or on three batch slices."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    expected, got = run_both("lstm", dtype, T=4, B=25, hidden_size=40)
    assert_same(expected, got, dtype, "lstm")


def test_float32_math_is_accurate_over_a_wide_range():
    """The vectorizable float32 exp/tanh/sigmoid against NumPy, through a cell that
    applies them elementwise to its input."""
    import lstmc

    spec = ("cell m(x: I) -> h: I {\n  state e: I, s: I\n"
            "  h' = tanh(x)\n  e' = exp(x)\n  s' = sigmoid(x)\n}\n")
    cell = lstmc.compile(spec, input_size=7, target="cpu")
    x = np.linspace(-100, 90, 7 * 4001, dtype=np.float32).reshape(4001, 1, 7)
    y, final = cell.forward(x, {})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, np.tanh(x64), rtol=3e-7, atol=1e-7)
    small = np.linspace(-80, 80, 7 * 100, dtype=np.float32).reshape(100, 1, 7)
    _, final = cell.forward(small[-1:], {})
    np.testing.assert_allclose(final["e"], np.exp(small[-1:, 0].astype(np.float64)), rtol=3e-7)
    np.testing.assert_allclose(final["s"], 1 / (1 + np.exp(-small[-1:, 0].astype(np.float64))),
                               rtol=3e-7, atol=1e-30)


@pytest.mark.parametrize("name", ["lstm", "gru_cho", "lstmp", "indrnn", "layernorm_lstm",
                                  "greff/fgr"])
@pytest.mark.parametrize("threads", ["2", "3"])
def test_small_batches_share_each_step_across_threads(monkeypatch, name, threads):
    """Inference with a batch too small to cut runs every step on several threads, each
    taking a share of every product's columns (and H = 40: panels and a tail)."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    monkeypatch.setattr("lstmc_runtime.native.THREADED_STEP_WEIGHTS", 0)  # always threaded
    from lstmc_runtime.native import NativeCell

    calls = []
    original = NativeCell._run_threaded
    monkeypatch.setattr(NativeCell, "_run_threaded",
                        lambda self, *a: calls.append(a[0]) or original(self, *a))
    reference = compile_spec(name, hidden_size=40)
    native = compile_spec(name, hidden_size=40, target="cpu")
    x, params, state = random_inputs(reference, T=9, B=3)
    lengths = np.array([9, 2, 5])
    y0, f0 = reference.forward(x, params, state, lengths=lengths)
    y1, f1 = native.forward(x, params, state, lengths=lengths)
    assert calls == ["forward_mt"]
    np.testing.assert_allclose(y1, y0, **TOLERANCE["float64"])
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **TOLERANCE["float64"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_runs_native_cells(monkeypatch):
    """Worker threads do not survive a fork; the child must get its own, not hang."""
    import multiprocessing

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    cell = compile_spec("gru", dtype="float32", target="cpu")
    x, params, state = random_inputs(cell, T=3, B=16)
    expected, _ = cell.forward(x, params, state)  # the parent's pool now has threads
    _FORKED.update(cell=cell, x=x, params=params, state=state)  # inherited, not pickled
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        got = pool.apply_async(_forward_in_child).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


_FORKED: dict = {}


def _forward_in_child():
    case = _FORKED
    return case["cell"].forward(case["x"], case["params"], case["state"])[0]


def test_without_a_c_toolchain_the_cell_is_jit_compiled_in_process(monkeypatch):
    import lstmc
    from lstmc.backends.llvm import toolchain

    def no_linker():
        raise lstmc.BackendError("no C compiler driver")

    monkeypatch.setattr(toolchain, "find_linker", no_linker)
    expected, got = run_both("gru_cho", "float64", T=4, B=2)
    assert_same(expected, got, "float64", "gru_cho")
    for hidden in (3, 4, 5):  # engines come and go without taking shared state with them
        cell = compile_spec("gru", target="cpu", hidden_size=hidden)
        x, params, state = random_inputs(cell, T=2, B=2)
        assert np.isfinite(cell.forward(x, params, state)[0]).all()
        del cell
        import gc
        gc.collect()


def test_a_small_training_batch_shares_each_step_across_threads(monkeypatch):
    """B=4 at H=256, two threads: the training forward and the backward each run as one
    threaded entry (every step's products and the weight-gradient GEMMs shared by
    columns); values and gradients as torch.nn.LSTM's (the oracle)."""
    torch = pytest.importorskip("torch")
    from lstmc_runtime.native import NativeCell

    import lstmc

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    calls = []
    original = NativeCell._run_threaded
    monkeypatch.setattr(NativeCell, "_run_threaded",
                        lambda self, *a: calls.append(a[0]) or original(self, *a))
    T, B, H = 9, 4, 256
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(H, H).double()
    cell = lstmc.compile("specs/lstm.lstm", H, H, target="cpu", dtype="float64")
    params = lstmc.params_from_torch(cell, theirs)
    x = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(T, B, H, dtype=torch.float64)
    y, _, tape = cell.forward(x.detach().numpy(), params, train=True)
    grads = tape.backward(dy.numpy())
    y_ref, _ = theirs(x)
    y_ref.backward(dy)
    np.testing.assert_allclose(y, y_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["x"], x.grad.numpy(), rtol=1e-9, atol=1e-11)
    ours = lstmc.params_to_torch(cell, grads["params"])
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours[name].numpy(), p.grad.numpy(), rtol=1e-9,
                                   atol=1e-10, err_msg=name)
    assert calls == ["forward_train_mt", "backward_mt"]
