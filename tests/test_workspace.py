"""The CPU training workspace (lstmc_runtime/workspace.py): a training forward saves
straight into a caller's flat array, the backward reads it in place; results and
gradients as torch.nn.LSTM's; bad workspaces named; pooled memory given back."""
import gc

import numpy as np
import pytest
import torch
from conftest import compile_spec, needs_opencl, random_inputs, spec_path
from lstmc_runtime.errors import ShapeError, UsageError

import lstmc

T, B, I, H = 7, 16, 5, 6  # B=16: two batch slices with 2 threads


def torch_lstm_and_cell():
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H).double()
    cell = lstmc.compile(spec_path("lstm"), I, H, target="cpu", dtype="float64")
    return module, cell, lstmc.params_from_torch(cell, module)


@pytest.mark.parametrize("threads", [1, 2])
def test_workspace_forward_and_backward_match_torch(monkeypatch, threads):
    monkeypatch.setenv("LSTMC_NUM_THREADS", str(threads))  # 2: the batch cut into slices
    module, cell, params = torch_lstm_and_cell()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, H))
    flat = np.full(cell.workspace_size(T, B), np.nan)
    y, final, tape = cell.forward(x, params, train=True, workspace=flat)
    assert not np.isnan(flat).any()  # every element written: nothing read uninitialized
    assert flat[0] == threads  # the batch slices the forward ran
    grads = tape.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    yt, (ht, ct) = module(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final["c"], ct[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    expected = lstmc.params_from_torch(cell, {n: p.grad for n, p in module.named_parameters()})
    for name, g in expected.items():
        np.testing.assert_allclose(grads["params"][name], g, rtol=1e-9, atol=1e-11,
                                   err_msg=name)

    # The tape reads the workspace itself: a tape rebuilt from it gives the same gradients.
    again = cell.saved_from_workspace(flat, x, np.full(B, T, np.int64))
    dx, dparams, _ = cell._run_backward(again, cell._expand(params), dy,
                                        {n: np.zeros((B, s)) for n, s in
                                         cell.state_sizes.items()})
    np.testing.assert_allclose(dx, grads["x"], rtol=0, atol=0)


def test_bad_workspaces_are_named():
    _, cell, params = torch_lstm_and_cell()
    x = np.zeros((T, B, I))
    size = cell.workspace_size(T, B)
    with pytest.raises(ShapeError, match=rf"workspace: expected shape \({size}\)"):
        cell.forward(x, params, train=True, workspace=np.zeros(size - 1))
    with pytest.raises(ShapeError, match="workspace: expected dtype float64, got float32"):
        cell.forward(x, params, train=True, workspace=np.zeros(size, np.float32))
    frozen = np.zeros(size)
    frozen.flags.writeable = False
    with pytest.raises(ShapeError, match="workspace: expected a writable array"):
        cell.forward(x, params, train=True, workspace=frozen)
    with pytest.raises(UsageError, match="training forward"):
        cell.forward(x, params, workspace=np.zeros(size))
    with pytest.raises(Exception, match="batch slices"):  # not filled by a forward
        cell.saved_from_workspace(np.zeros(size), x, np.full(B, T, np.int64))


def test_gpu_target_cells_refuse_a_workspace():
    needs_opencl()
    cell = compile_spec("lstm", target="opencl", dtype="float32")
    x, params, _ = random_inputs(cell, T=3, B=2)
    with pytest.raises(UsageError, match="cpu target"):
        cell.forward(x, params, train=True, workspace=np.zeros(10, np.float32))


def test_pooled_workspace_memory_is_given_back():
    from lstmc_runtime.pool import POOL

    POOL.release()
    array = POOL.lease(1 << 20, np.float32)  # 4 MiB
    tensor = torch.from_numpy(array)
    del array
    gc.collect()
    assert POOL.held_bytes == 0  # the tensor still holds it
    del tensor
    gc.collect()
    assert 4 << 20 <= POOL.held_bytes <= (4 << 20) + 64  # and a cache line to align it
    again = POOL.lease(1 << 20, np.float32)
    assert POOL.held_bytes == 0 and again.size == 1 << 20
    del again
    POOL.release()


def test_a_view_of_a_pooled_array_keeps_its_memory_out_of_the_pool():
    from lstmc_runtime.pool import POOL

    POOL.release()
    array = POOL.lease(1 << 18, np.float32)
    assert array.ctypes.data % 64 == 0
    view = array.reshape(-1, 4)[1:]  # NumPy's views name the memory's owner, not `array`
    view[:] = 7.0
    del array
    gc.collect()
    assert POOL.held_bytes == 0
    other = POOL.lease(1 << 18, np.float32)  # not the memory `view` still reads
    other[:] = -1.0
    assert (view == 7.0).all()
    del view, other
    gc.collect()
    assert POOL.held_bytes >= 1 << 20
    POOL.release()


def test_a_lease_dying_inside_the_pools_lock_comes_back_without_a_deadlock():
    """The garbage collector may free a leased array while this thread holds the pool's
    lock (here by hand); its memory comes back through the same lock."""
    import threading

    from lstmc_runtime.pool import BufferPool

    pool = BufferPool()

    class Cycle:  # freed only by the garbage collector
        pass

    cycle = Cycle()
    cycle.me, cycle.array = cycle, pool.lease(1 << 16, np.float32)
    del cycle

    def collect_under_the_lock():
        with pool._lock:
            gc.collect()

    worker = threading.Thread(target=collect_under_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the pool deadlocked on its own lock"
    assert pool.held_bytes >= 1 << 18


def test_a_process_ends_with_leased_memory_still_held():
    """Leases that die while the interpreter shuts down go nowhere (a pool that started
    its reaper thread then would wait for it forever)."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom lstmc_runtime.pool import POOL\n"
            "kept = [POOL.lease(1 << 20, np.float32) for _ in range(3)]\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_results_handed_out_return_to_the_pool_when_dropped():
    """A kernel's large outputs (here y and the weight gradients) are leased: memory a
    caller dropped, or a tensor made from it, serves the next call without page faults."""
    from lstmc_runtime.pool import POOL

    cell = compile_spec("lstm", target="cpu", dtype="float32", input_size=128,
                        hidden_size=128)
    x, params, state = random_inputs(cell, T=300, B=1)
    y, _, tape = cell.forward(x, params, state, train=True)
    grads = tape.backward(np.ones_like(y))
    expected = grads["params"]["W_hi"].copy()
    POOL.release()
    assert y.nbytes >= 128 << 10 and grads["params"]["W_hi"].nbytes < 128 << 10
    dx = torch.from_numpy(grads["x"])  # 150 KiB: pooled
    del y, tape, grads
    gc.collect()
    held = POOL.held_bytes
    assert held >= 150 << 10  # y, and what the tape saved
    del dx
    gc.collect()
    assert POOL.held_bytes >= held + (150 << 10)
    y, _, tape = cell.forward(x, params, state, train=True)
    np.testing.assert_array_equal(tape.backward(np.ones_like(y))["params"]["W_hi"], expected)
    POOL.release()
