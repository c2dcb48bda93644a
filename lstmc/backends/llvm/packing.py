"""Native packing of weight matrices into lstmc_small_gemm's panels, exported by every
cell library for the runtime (lstmc_runtime/packing.py) to call.

A call whose parameters are a plain dict, and every training step, packs the weights
again; NumPy's strided copies did that at a third of the memory's speed (an LSTM at
H=128: ~70 µs per forward, a quarter of a 100-step forward at B=1). Here the panels over
a matrix's rows (its transpose) are made from VxV blocks (V elements per 64-byte vector)
transposed in registers by two-source shuffles, log2(V) rounds; panels over its columns
are plain vector copies.

    void lstmc_pack_panels_t(src, rows, K, ld, dst)
        rows (a multiple of the panel width W) x K, row stride ld  ->  rows/W panels,
        each K x W: dst[p*K*W + k*W + j] = src[(p*W + j)*ld + k]
    void lstmc_pack_panels(src, rows, K, ld, dst, stride)
        rows x K  ->  K/W panels `stride` elements apart (whole panels only):
        dst[q*stride + n*W + j] = src[n*ld + q*W + j]"""
from __future__ import annotations

from llvmlite import ir
from lstmc_runtime.packing import SYMBOLS

from .irutil import FLOAT_BYTES, I32, I64, PTR, element, for_range, i64
from .smallgemm import NV, VECTOR_BYTES


def emit(module: ir.Module, ftype: ir.Type) -> None:
    """Add both packing functions for elements of `ftype` to `module`."""
    _emit_transposed(module, ftype)
    _emit_copied(module, ftype)


def _function(module: ir.Module, name: str, extra: int) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64, I64, PTR]
                                             + [I64] * extra), name)
    fn.attributes.add("nounwind")
    fn.args[0].add_attribute("noalias")
    fn.args[4].add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def transpose_rounds(width: int) -> list[tuple[int, list[int], list[int]]]:
    """The shuffles that transpose a width x width block held as `width` row vectors:
    per round (distance d), rows i and i+d (bit d of i clear) swap their off-diagonal
    d-blocks; the masks pick, from the pair (row i, row i+d), the new rows i and i+d."""
    rounds, d = [], width // 2
    while d:
        low = [width + c - d if c & d else c for c in range(width)]
        high = [width + c if c & d else c + d for c in range(width)]
        rounds.append((d, low, high))
        d //= 2
    return rounds


def _emit_transposed(module: ir.Module, ftype: ir.Type) -> None:
    fn, b = _function(module, SYMBOLS[0], 0)
    src, rows, K, ld, dst = fn.args
    V = VECTOR_BYTES // FLOAT_BYTES[str(ftype)]
    W = NV * V
    vtype = ir.VectorType(ftype, V)
    masks = [(d, ir.Constant(ir.VectorType(I32, V), low), ir.Constant(ir.VectorType(I32, V),
                                                                      high))
             for d, low, high in transpose_rounds(V)]
    blocks = b.sdiv(K, i64(V))  # whole V-column blocks of each panel's rows
    panel_size = b.mul(K, i64(W))
    with for_range(b, b.sdiv(rows, i64(W)), "panel") as p:
        s_panel = element(b, ftype, src, b.mul(b.mul(p, i64(W)), ld))
        d_panel = element(b, ftype, dst, b.mul(p, panel_size))
        with for_range(b, blocks, "block") as blk:
            k0 = b.mul(blk, i64(V))
            for j0 in range(0, W, V):
                vecs = [b.load(element(b, ftype, s_panel, b.add(b.mul(i64(j0 + j), ld), k0)),
                               typ=vtype, align=FLOAT_BYTES[str(ftype)]) for j in range(V)]
                for d, low, high in masks:
                    for i in range(V):
                        if not i & d:
                            a, c = vecs[i], vecs[i + d]
                            vecs[i] = b.shuffle_vector(a, c, low)
                            vecs[i + d] = b.shuffle_vector(a, c, high)
                for k in range(V):
                    at = b.add(b.mul(b.add(k0, i64(k)), i64(W)), i64(j0))
                    b.store(vecs[k], element(b, ftype, d_panel, at),
                            align=FLOAT_BYTES[str(ftype)])
        # the last K % V columns, element by element
        with for_range(b, b.sub(K, b.mul(blocks, i64(V))), "kr") as r:
            k = b.add(b.mul(blocks, i64(V)), r)
            with for_range(b, i64(W), "j") as j:
                value = b.load(element(b, ftype, s_panel, b.add(b.mul(j, ld), k)), typ=ftype)
                b.store(value, element(b, ftype, d_panel, b.add(b.mul(k, i64(W)), j)))
    b.ret_void()


def _emit_copied(module: ir.Module, ftype: ir.Type) -> None:
    fn, b = _function(module, SYMBOLS[1], 1)
    src, rows, K, ld, dst, stride = fn.args
    V = VECTOR_BYTES // FLOAT_BYTES[str(ftype)]
    W = NV * V
    vtype = ir.VectorType(ftype, V)
    align = FLOAT_BYTES[str(ftype)]
    with for_range(b, b.sdiv(K, i64(W)), "panel") as q:
        d_panel = element(b, ftype, dst, b.mul(q, stride))
        s_panel = element(b, ftype, src, b.mul(q, i64(W)))
        with for_range(b, rows, "row") as n:
            s_row = element(b, ftype, s_panel, b.mul(n, ld))
            d_row = element(b, ftype, d_panel, b.mul(n, i64(W)))
            for v in range(NV):
                value = b.load(element(b, ftype, s_row, i64(v * V)), typ=vtype, align=align)
                b.store(value, element(b, ftype, d_row, i64(v * V)), align=align)
    b.ret_void()
