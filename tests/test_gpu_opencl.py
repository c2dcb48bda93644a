"""The GPU kernels run as OpenCL C on PoCL: every spec, forward and backward, on the
step-by-step path and on the persistent kernel, against the float64 reference executor;
stacks, directions, lengths, artifacts and bad inputs."""

import numpy as np
import pytest
from conftest import SPEC_NAMES, compile_spec, needs_opencl, random_inputs, spec_path
from gpu_common import assert_close, compare_spec, flatten, gpu_cell, run_both

needs_opencl()

import lstmc  # noqa: E402
from lstmc.errors import BackendError, CompileError, ShapeError  # noqa: E402

_cells = {}


def opencl_cell(name):
    if name not in _cells:
        _cells[name] = gpu_cell(name, "opencl")
    return _cells[name]


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("path", ["steps", "persistent"])
def test_spec_matches_reference(name, path):
    cell = opencl_cell(name)
    cell.persistent_groups = None
    compare_spec(name, "opencl", persistent=(path == "persistent"), cell=cell)


def test_many_tiles_and_tails():
    """Sizes that leave partial GEMM tiles (64) in every dimension and several groups."""
    reference = lstmc.compile(spec_path("lstm"), 67, 70, dtype="float64")
    cell = lstmc.compile(spec_path("lstm"), 67, 70, target="opencl")
    cell.persistent = False
    rng = np.random.default_rng(3)
    x, params, state = random_inputs(reference, T=3, B=66, seed=3)
    expected, actual = run_both(reference, cell, x, params, state,
                                rng.integers(1, 4, size=66))
    assert_close(expected, actual, rtol=1e-3)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_persistent_groups_and_batches(groups, batch):
    """Column slices that do not divide evenly, rows fewer or more than groups."""
    reference = lstmc.compile(spec_path("gru"), 4, 7, dtype="float64")
    cell = lstmc.compile(spec_path("gru"), 4, 7, target="opencl")
    cell.persistent, cell.persistent_groups = True, groups
    x, params, state = random_inputs(reference, T=6, B=batch, seed=batch)
    expected, actual = run_both(reference, cell, x, params, state, None)
    assert_close(expected, actual)


def test_persistent_kernel_is_chosen_for_small_batches(monkeypatch):
    cell = opencl_cell("lstm")
    cell.persistent = "auto"
    launched = []
    original = cell._launch_persistent
    monkeypatch.setattr(cell, "_launch_persistent",
                        lambda *a, **k: (launched.append(a[2]), original(*a, **k)))
    x, params, _ = random_inputs(cell, T=3, B=cell.persistent_batch)
    cell.forward(x, params)
    x9, _, _ = random_inputs(cell, T=3, B=cell.persistent_batch + 1)
    cell.forward(x9, params)
    assert launched == [cell.persistent_batch]


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_stack_with_lengths(name, batch_first):
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=batch_first)
    reference = lstmc.compile(spec_path(name), 3, 5, dtype="float64", **kwargs)
    stack = lstmc.compile(spec_path(name), 3, 5, target="opencl", **kwargs)
    rng = np.random.default_rng(7)
    T, B = 6, 4
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    params = reference.init_params(seed=2)
    state = {n: rng.standard_normal(v.shape) for n, v in reference.zero_state(B).items()}
    lengths = np.array([6, 3, 1, 5])
    dy_shape = (B, T, 10) if batch_first else (T, B, 10)
    dy = rng.standard_normal(dy_shape)
    results = []
    for cell, dtype in ((reference, np.float64), (stack, np.float32)):
        cast = lambda a: np.asarray(a, dtype)  # noqa: E731
        y, final, tape = cell.forward(cast(x), {k: cast(v) for k, v in params.items()},
                                      {k: cast(v) for k, v in state.items()}, train=True,
                                      lengths=lengths)
        grads = tape.backward(cast(dy))
        results.append(flatten(y, final, grads))
    assert_close(*results)


def test_artifact_round_trip(tmp_path):
    import lstmc_runtime

    from lstmc.api import write_artifact_dir

    write_artifact_dir(spec_path("peephole_lstm"), str(tmp_path), 3, 5, target="opencl")
    loaded = lstmc_runtime.load(str(tmp_path))
    assert loaded.target == "opencl"
    reference = compile_spec("peephole_lstm")
    x, params, state = random_inputs(reference, T=4, B=2)
    expected, actual = run_both(reference, loaded, x, params, state, None)
    assert_close(expected, actual)


def test_bad_inputs_are_named():
    cell = opencl_cell("lstm")
    x, params, state = random_inputs(cell, T=2, B=2)
    with pytest.raises(ShapeError, match=r"x: expected dtype float32, got float64"):
        cell.forward(x.astype(np.float64), params)
    with pytest.raises(ShapeError, match=r"params\['W_hi'\]: expected shape \(5, 5\)"):
        cell.forward(x, dict(params, W_hi=np.zeros((5, 3), np.float32)))
    with pytest.raises(ShapeError, match=r"state\['c'\]: expected shape \(2, 5\)"):
        cell.forward(x, params, dict(state, c=np.zeros((3, 5), np.float32)))
    with pytest.raises(ShapeError, match="lengths"):
        cell.forward(x, params, lengths=np.array([3, 1]))
    with pytest.raises(CompileError, match="float32"):
        lstmc.compile(spec_path("lstm"), 3, 5, target="opencl", dtype="float64")


def test_cuda_target_without_gpu_says_what_is_missing():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CUDA device is present")
    except Exception:
        pass
    with pytest.raises(BackendError, match=r"target 'cuda'.*(CuPy|device|driver)"):
        lstmc.compile(spec_path("lstm"), 3, 5, target="cuda")


@pytest.mark.parametrize("case", ["plain", "transposed_a", "broadcast_a", "accumulate",
                                  "offsets"])
def test_cuda_library_gemm_contract(case):
    """The CUDA target's whole-sequence products (cuBLAS through CuPy) follow lstmc_gemm's
    strided contract; checked here with NumPy standing in for CuPy."""
    from lstmc_runtime.gpu.cuda import strided_gemm

    rng = np.random.default_rng(0)
    M, N, K = 5, 7, 3
    A = rng.standard_normal(64).astype(np.float32)
    Bm = rng.standard_normal(64).astype(np.float32)
    C = rng.standard_normal(80).astype(np.float32)
    a_off, b_off, c_off, ldc = (2, 3, 4, 9) if case == "offsets" else (0, 0, 0, N)
    sam, sak = {"transposed_a": (1, M), "broadcast_a": (0, 1)}.get(case, (K, 1))
    sbk, sbn = (1, K) if case == "transposed_a" else (N, 1)
    expected = C.copy()
    for m in range(M):
        for n in range(N):
            value = sum(A[a_off + m * sam + k * sak] * Bm[b_off + k * sbk + n * sbn]
                        for k in range(K))
            index = c_off + m * ldc + n
            expected[index] = expected[index] + value if case == "accumulate" else value
    strided_gemm(np, np.lib.stride_tricks.as_strided, M, N, K, A, a_off, sam, sak, Bm, b_off,
                 sbk, sbn, C, c_off, ldc, case == "accumulate")
    np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)
