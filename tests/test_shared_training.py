"""Training a batch too small for slices on several threads at once: the threaded training
forward and backward entries (forward_train_mt, backward_mt), where every step's products
and the weight-gradient GEMMs after the loop are shared out by columns and thread 0 runs
the elementwise code. Values and every gradient against the reference executor, for
every spec (masks, extra inputs, prologues, multi-stage steps), any thread count, on the
parked native workers, on PyTorch's OpenMP team and on Python's threads; and where a
step is unit by unit (units.py), the same entries split by units."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SPEC_NAMES, compile_spec, has_masks, random_extra_inputs, random_inputs

from lstmc.backends.llvm.smallgemm import panel_width
from lstmc.backends.llvm.units import backward_units, step_units, trains_by_units

TOL = dict(rtol=1e-9, atol=1e-11)
PANEL = panel_width("float64")  # 16 columns


@pytest.fixture
def shared(monkeypatch):
    """Every training call of one slice runs threaded; records the entries that ran."""
    from lstmc_runtime.native import NativeCell

    monkeypatch.setattr("lstmc_runtime.native.SHARED_TRAINING_WORK", 0)
    entries = []
    original = NativeCell._run_threaded
    monkeypatch.setattr(NativeCell, "_run_threaded",
                        lambda self, *a: entries.append(a[0]) or original(self, *a))
    return entries


def use_runner(monkeypatch, runner: str) -> list:
    """Run threaded kernels on `runner`; with "openmp", returns the statuses the team's
    native calls (lstmc_openmp_body) gave, None where it ran nothing."""
    ran: list = []
    if runner == "openmp":
        pytest.importorskip("torch")
        from lstmc_runtime import openmp, workers

        openmp.forget()
        if openmp.team() is None:
            pytest.skip("PyTorch has not loaded GNU OpenMP here")
        original = workers.run_kernel
        monkeypatch.setattr("lstmc_runtime.workers.run_kernel",
                            lambda *job: ran.append(original(*job)) or ran[-1])
        return ran
    monkeypatch.setattr("lstmc_runtime.workers.run_kernel", lambda *job: None)
    if runner == "python":
        monkeypatch.setenv("LSTMC_NATIVE_WORKERS", "0")
    return ran


def train(cell, x, params, state, lengths, inputs, seed, dy):
    y, final, tape = cell.forward(x, params, state, train=True, lengths=lengths,
                                  inputs=inputs, seed=seed)
    dstate = {n: np.full(v.shape, 0.5, v.dtype) for n, v in final.items()}
    return y, final, tape.backward(dy, dstate)


def assert_same(got, expected):
    (y1, f1, g1), (y0, f0, g0) = got, expected
    np.testing.assert_allclose(y1, y0, **TOL)
    for n in f0:
        np.testing.assert_allclose(f1[n], f0[n], **TOL, err_msg=f"final {n}")
    np.testing.assert_allclose(g1["x"], g0["x"], **TOL, err_msg="dx")
    for group in ("params", "state", "inputs"):
        assert set(g1.get(group, {})) == set(g0.get(group, {})), group
        for n in g0.get(group, {}):
            np.testing.assert_allclose(g1[group][n], g0[group][n], **TOL,
                                       err_msg=f"{group} {n}")


def check_spec(name: str, B: int, lengths, hidden_size: int = 37) -> list:
    """Native threaded training against the reference, H = 37 by default (column shares
    that divide neither by the threads nor by panels: no split by units), T = 9, masks
    drawn from one seed."""
    reference = compile_spec(name, hidden_size=hidden_size)
    native = compile_spec(name, hidden_size=hidden_size, target="cpu")
    x, params, state = random_inputs(reference, T=9, B=B, seed=3)
    inputs = random_extra_inputs(reference, T=9, B=B) or None
    seed = 11 if has_masks(reference) else None
    dy = np.random.default_rng(4).standard_normal((9, B, reference.state_sizes[
        reference.output])).astype(reference.dtype)
    lengths = None if lengths is None else np.array(lengths)
    expected = train(reference, x, params, state, lengths, inputs, seed, dy)
    assert_same(train(native, x, params, state, lengths, inputs, seed, dy), expected)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_spec_trains_threaded_as_the_reference(monkeypatch, shared, name):
    monkeypatch.setenv("LSTMC_NUM_THREADS", "3")
    use_runner(monkeypatch, "workers")
    check_spec(name, B=2, lengths=[9, 4])
    assert shared == ["forward_train_mt", "backward_mt"]


@pytest.mark.parametrize("runner", ["workers", "openmp", "python"])
@pytest.mark.parametrize("threads", ["2", "5"])
@pytest.mark.parametrize("name", ["lstm", "gru_cho", "minimal_rnn", "zoneout_lstm"])
def test_threads_and_runners(monkeypatch, shared, runner, threads, name):
    """One row (the B=1 case the threaded entries exist for), full length; more threads
    than the product has column panels (H = 37: two panels)."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    ran = use_runner(monkeypatch, runner)
    check_spec(name, B=1, lengths=None)
    assert shared == ["forward_train_mt", "backward_mt"]
    if runner == "openmp":  # both entries ran on the team, from native code
        assert ran == [0, 0]


def training_split(name: str, hidden_size: int = 64) -> tuple[bool, bool]:
    """Whether the training forward and the backward of a spec split by units."""
    cell = compile_spec(name, hidden_size=hidden_size)
    program, sizes, states = cell.program, cell.sizes, cell.state_sizes
    forward = step_units(program, sizes, states, PANEL) is not None and trains_by_units(
        program)
    return forward, backward_units(program, sizes, states, PANEL) is not None


def test_which_training_steps_split_by_units():
    for name in ("lstm", "gru", "peephole_lstm", "minimal_rnn", "rnn_tanh", "greff/cifg"):
        assert training_split(name) == (True, True), name
    for name in ("gru_cho", "mgu", "indrnn"):  # staged forward, a backward by units
        assert training_split(name) == (False, True), name
    assert training_split("zoneout_lstm") == (False, False)  # masks
    assert training_split("layernorm_lstm") == (False, False)  # reductions
    assert training_split("lstmp") == (False, False)  # states of two sizes
    assert training_split("lstm", 40) == (False, False)  # units are not whole panels


# What neither splits (masks, reductions, two state sizes) the H=37 test above covers.
UNIT_SPLIT = [n for n in SPEC_NAMES
              if n not in ("awd_lstm", "zoneout_lstm", "layernorm_lstm", "lstmp")]


@pytest.mark.parametrize("name", UNIT_SPLIT)
def test_every_spec_trains_split_by_units_as_the_reference(monkeypatch, shared, name):
    """H = 64: four panels of units, three threads split them unevenly; lengths."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", "3")
    use_runner(monkeypatch, "workers")
    check_spec(name, B=3, lengths=[9, 2, 5], hidden_size=64)
    assert shared == ["forward_train_mt", "backward_mt"]


@pytest.mark.parametrize("threads", ["2", "5"])
@pytest.mark.parametrize("name", ["lstm", "gru_cho"])  # both split; the backward only
def test_training_split_by_units_with_any_thread_count(monkeypatch, shared, name, threads):
    """Two threads (one meeting per backward step), and five: one thread has no units."""
    monkeypatch.setenv("LSTMC_NUM_THREADS", threads)
    use_runner(monkeypatch, "workers")
    check_spec(name, B=1, lengths=None, hidden_size=64)
    assert shared == ["forward_train_mt", "backward_mt"]


@pytest.mark.parametrize("hidden", [37, 64])
def test_a_stack_trains_threaded_as_the_reference(monkeypatch, shared, hidden):
    """Two bidirectional layers at B=1: each direction of each layer threaded (H = 64:
    split by units)."""
    from conftest import spec_path

    import lstmc

    monkeypatch.setenv("LSTMC_NUM_THREADS", "2")
    use_runner(monkeypatch, "workers")
    options = dict(num_layers=2, bidirectional=True, dtype="float64")
    reference = lstmc.compile(spec_path("lstm"), 4, hidden, **options)
    native = lstmc.compile(spec_path("lstm"), 4, hidden, target="cpu", **options)
    params = reference.init_params(seed=2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 1, 4))
    dy = rng.standard_normal((10, 1, 2 * hidden))
    assert_same(train(native, x, params, None, None, None, None, dy),
                train(reference, x, params, None, None, None, None, dy))
    assert shared.count("forward_train_mt") == 4 and shared.count("backward_mt") == 4


@pytest.mark.parametrize("limit", ["1", ""])
def test_a_team_smaller_than_asked_runs_none_of_the_threads(limit):
    """Threads that meet at barriers must all run at once: where OpenMP gives fewer
    (OMP_THREAD_LIMIT=1), run_kernel runs none of them and says so (None: the caller
    then uses its own threads) instead of running them one after another into a
    deadlock; a full team runs the kernel (status 0). Either way a shared training
    call gives the one-thread result."""
    pytest.importorskip("torch")
    code = ("import ctypes, numpy as np, torch, lstmc\n"
            "from lstmc_runtime import native, openmp, wavefront\n"
            "cell = lstmc.compile('specs/lstm.lstm', 3, 33, target='cpu', dtype='float64')\n"
            "assert openmp.team() is not None\n"
            "job = np.zeros(8, np.int64)  # the wavefront driver with no layers: a no-op\n"
            "sync = np.zeros(16, np.int64)\n"
            "print(openmp.run_kernel(cell._functions[openmp.BODY_SYMBOL],\n"
            "      cell._functions[wavefront.SYMBOL], 1, 1, job.ctypes.data, 2,\n"
            "      sync.ctypes.data, 0), openmp.team().map(lambda i: i, 2))\n"
            "x = np.random.default_rng(0).standard_normal((12, 1, 3))\n"
            "params = cell.init_params(0)\n"
            "def grads():\n"
            "    y, _, tape = cell.forward(x, params, train=True)\n"
            "    return [y, *tape.backward(np.ones_like(y))['params'].values()]\n"
            "alone = grads()\n"
            "native.SHARED_TRAINING_WORK = 0\n"
            "shared = grads()\n"
            "print(all(np.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(alone, shared)))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    if limit:
        env["OMP_THREAD_LIMIT"] = limit
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    status = "None" if limit else "0"
    assert out.stdout.split() == [status, "[0,", "1]", "True"]
