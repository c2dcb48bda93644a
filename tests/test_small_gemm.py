"""lstmc_small_gemm(_acc), called directly through ctypes, against NumPy's product in
float64: B in packed panels (row stride NR) and plain row-major (including a row stride
that happens to equal NR), for batch-like M (1, 2, 3: the short tiles), full and partial
register tiles, one and two blocks of K, and columns past the last full panel."""
import ctypes

import numpy as np
import pytest

import lstmc

I64, PTR = ctypes.c_int64, ctypes.c_void_p


@pytest.fixture(scope="module", params=["float32", "float64"])
def gemm(request):
    """(dtype, NR, {"store": fn, "acc": fn}) from a compiled cell's library."""
    cell = lstmc.compile("specs/lstm.lstm", 8, 8, target="cpu", dtype=request.param)
    library = cell._keepalive
    functions = {}
    for kind, symbol in (("store", "lstmc_small_gemm"), ("acc", "lstmc_small_gemm_acc")):
        fn = getattr(library, symbol)
        fn.restype = None
        fn.argtypes = [I64, I64, I64, PTR, I64, I64, PTR, I64, I64, I64, PTR, I64]
        functions[kind] = fn
    nr = 64 // np.dtype(request.param).itemsize * 2  # two 512-bit vectors of columns
    return np.dtype(request.param), nr, functions


def panels(b: np.ndarray, nr: int) -> np.ndarray:
    """B (K x N) as the runtime packs it: panel p's row k at p*K*NR + k*NR, the columns
    past the last full panel after them, row k at panels*K*NR + k*(N mod NR)."""
    K, N = b.shape
    full = N // nr
    parts = [b[:, p * nr:(p + 1) * nr].reshape(-1) for p in range(full)]
    parts.append(b[:, full * nr:].reshape(-1))
    return np.ascontiguousarray(np.concatenate(parts))


def call(fn, a, b_flat, bk, bp, bt, c, M, N, K, sam, sak):
    fn(M, N, K, a.ctypes.data, sam, sak, b_flat.ctypes.data, bk, bp, bt, c.ctypes.data,
       c.strides[0] // c.itemsize)


@pytest.mark.parametrize("M", [1, 2, 3, 8, 9, 17, 130])
@pytest.mark.parametrize("K", [1, 5, 256, 300])
@pytest.mark.parametrize("extra", [0, 8])  # columns past the last full panel
@pytest.mark.parametrize("layout", ["panels", "rows"])
def test_small_gemm_matches_numpy(gemm, M, K, extra, layout):
    dtype, nr, functions = gemm
    N = 2 * nr + extra
    rng = np.random.default_rng(M * 1000 + K)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    if layout == "panels":
        flat, bk, bp, bt = panels(b, nr), nr, K * nr, extra
    else:
        flat, bk, bp, bt = np.ascontiguousarray(b).reshape(-1), N, nr, N
    exact = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    c = np.full((M, N), np.nan, dtype)  # every element must be written
    call(functions["store"], a, flat, bk, bp, bt, c, M, N, K, K, 1)
    np.testing.assert_allclose(c, exact, rtol=tol, atol=tol * np.sqrt(K))
    start = rng.standard_normal((M, N)).astype(dtype)
    c = start.copy()
    call(functions["acc"], a, flat, bk, bp, bt, c, M, N, K, K, 1)
    np.testing.assert_allclose(c, start + exact, rtol=tol, atol=tol * np.sqrt(K))


@pytest.mark.parametrize("M", [1, 4, 11])
def test_small_gemm_reads_a_transposed_and_rows_one_panel_wide(gemm, M):
    """A read through its strides (A^T stored), and a row-major B exactly NR columns
    wide (its row stride equals a panel's)."""
    dtype, nr, functions = gemm
    K, N = 37, nr
    rng = np.random.default_rng(M)
    at = rng.standard_normal((K, M)).astype(dtype)  # A = at.T, element (i, k) at k*M + i
    b = rng.standard_normal((K, N)).astype(dtype)
    c = np.full((M, N), np.nan, dtype)
    call(functions["store"], at, np.ascontiguousarray(b).reshape(-1), N, nr, N, c, M, N, K,
         1, M)
    exact = at.T.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, exact, rtol=tol, atol=tol * np.sqrt(K))
