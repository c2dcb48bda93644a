"""Weights packed by the cell library's native functions (lstmc/backends/llvm/packing.py)
against the panel layout written out here element by element, and the pooled memory
packs live in."""
import gc

import numpy as np
import pytest
from conftest import compile_spec, random_inputs
from lstmc_runtime.packing import Packer
from lstmc_runtime.pool import POOL


def panels_oracle(matrix: np.ndarray, width: int) -> np.ndarray:
    """The K x N matrix's panels by the definition: panel p holds columns p*W .. p*W+W-1
    row by row (K x W), then the last N mod W columns row by row."""
    K, N = matrix.shape
    full = N // width
    out = []
    for p in range(full):
        for k in range(K):
            out.extend(matrix[k, p * width:(p + 1) * width])
    for k in range(K):
        out.extend(matrix[k, full * width:])
    return np.array(out, matrix.dtype)


@pytest.fixture(scope="module", params=["float32", "float64"])
def packer(request):
    cell = compile_spec("lstm", target="cpu", dtype=request.param)
    assert cell._packer.native  # the library exports the packing functions
    return cell._packer


@pytest.mark.parametrize("rows,columns", [
    ([128] * 4, 128), ([32, 32], 16), ([64, 64, 64], 70), ([5, 5, 5], 7), ([40, 40], 33),
    ([32, 7], 50), ([96], 13), ([64, 30], 100), ([16, 16], 1)])
def test_native_packs_are_the_panel_layout(packer, rows, columns):
    rng = np.random.default_rng(len(rows) * 1000 + columns)
    parts = [rng.standard_normal((r, columns)).astype(packer.dtype) for r in rows]
    stacked = np.concatenate(parts)
    transposed = packer.stacked(parts, transposed=True)
    plain = packer.stacked(parts, transposed=False)
    assert transposed.ctypes.data % 64 == 0 and plain.ctypes.data % 64 == 0
    np.testing.assert_array_equal(transposed, panels_oracle(stacked.T, packer.width))
    np.testing.assert_array_equal(plain, panels_oracle(stacked, packer.width))


@pytest.mark.parametrize("rows,columns", [
    ([128] * 4, 128), ([32, 32], 16), ([64, 64, 64], 70), ([5, 5, 5], 7), ([40, 40], 33),
    ([32, 0, 7], 50), ([64, 30], 100), ([16, 16], 1)])
@pytest.mark.parametrize("adjacent", ["all", "first two"])
def test_parts_adjacent_in_memory_pack_as_separate_ones_do(packer, rows, columns, adjacent):
    """Row blocks of one array (nn.LSTM's weight_ih: four gates), packed in one native
    call per run of blocks that follow one another in memory: the panel layout of the
    stack, as when each block is an array of its own."""
    rng = np.random.default_rng(sum(rows) + columns)
    whole = rng.standard_normal((sum(rows), columns)).astype(packer.dtype)
    bounds = np.cumsum([0] + rows)
    parts = [whole[r0:r1] for r0, r1 in zip(bounds[:-1], bounds[1:])]
    if adjacent == "first two" and len(parts) > 2:
        parts[2] = parts[2].copy()  # elsewhere in memory: a run of its own
    for transposed, oracle in ((True, whole.T), (False, whole)):
        np.testing.assert_array_equal(packer.stacked(parts, transposed),
                                      panels_oracle(oracle, packer.width))


def test_numpy_packs_equal_native_ones(packer):
    numpy_only = Packer(packer.width, packer.dtype)
    assert not numpy_only.native
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((64, 45)).astype(packer.dtype) for _ in range(3)]
    for transposed in (True, False):
        np.testing.assert_array_equal(packer.stacked(parts, transposed),
                                      numpy_only.stacked(parts, transposed))


def test_packs_of_other_dtypes_or_strides_are_packed_by_numpy(packer):
    rng = np.random.default_rng(2)
    other = np.float64 if packer.dtype == np.float32 else np.float32
    parts = [rng.standard_normal((64, 40)).astype(other)]
    np.testing.assert_array_equal(packer.stacked(parts, True),
                                  panels_oracle(parts[0].T, packer.width))
    strided = rng.standard_normal((64, 80)).astype(packer.dtype)[:, ::2]
    np.testing.assert_array_equal(packer.stacked([strided], False),
                                  panels_oracle(np.ascontiguousarray(strided), packer.width))


def test_packed_parameters_live_in_pooled_memory_given_back_when_dropped():
    cell = compile_spec("lstm", target="cpu", dtype="float32", input_size=128,
                        hidden_size=128)
    x, params, state = random_inputs(cell, T=3, B=2)
    expected = cell.forward(x, params, state)[0]
    POOL.release()
    packed = cell.pack_params(params)
    del packed
    gc.collect()
    held = POOL.held_bytes
    assert held >= 4 * 4 * 128 * 128 * 4  # four 256 KiB packs came back
    again = cell.pack_params(params)  # made in the recycled memory
    assert POOL.held_bytes < held
    np.testing.assert_array_equal(cell.forward(x, again, state)[0], expected)
    del again
    POOL.release()
