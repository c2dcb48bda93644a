"""Dropout and zoneout masks in native code: Philox-4x32-10 as LLVM IR.

The same function of (seed, step, row, unit, site) as `lstmc.ir.masks`, which defines
it; the reference executor and the GPU kernels compute it too, bit for bit.
"""
from __future__ import annotations

from llvmlite import ir

from ...ir import masks
from .irutil import I32, I64, PTR, element, for_range, i64


def emit_mask_fill(module: ir.Module, ftype) -> ir.Function:
    """`void lstmc_mask_fill(float *out, i64 n, i64 seed, i64 step, i64 row, i64 site,
    i64 threshold, float hit, float miss)`: out[j] = hit where the draw for unit j hits,
    else miss, for j < n."""
    fn_type = ir.FunctionType(ir.VoidType(), [PTR, I64, I64, I64, I64, I64, I64, ftype, ftype])
    fn = ir.Function(module, fn_type, "lstmc_mask_fill")
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    out, n, seed, step, row, site, threshold, hit, miss = fn.args
    out.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    c32 = lambda v: ir.Constant(I32, v)
    key0 = b.trunc(seed, I32)
    key1 = b.trunc(b.lshr(seed, i64(32)), I32)
    step32, row32, site32 = b.trunc(step, I32), b.trunc(row, I32), b.trunc(site, I32)
    limit = b.trunc(threshold, I32)
    m0, m1 = (ir.Constant(I64, m) for m in masks.MULTIPLIERS)
    with for_range(b, n, "unit") as j:
        c = [b.trunc(j, I32), row32, step32, site32]
        k0, k1 = key0, key1
        for r in range(masks.ROUNDS):
            if r:
                k0 = b.add(k0, c32(masks.WEYL[0]))
                k1 = b.add(k1, c32(masks.WEYL[1]))
            p0 = b.mul(b.zext(c[0], I64), m0)
            p1 = b.mul(b.zext(c[2], I64), m1)
            hi = lambda p: b.trunc(b.lshr(p, i64(32)), I32)
            c = [b.xor(b.xor(hi(p1), c[1]), k0), b.trunc(p1, I32),
                 b.xor(b.xor(hi(p0), c[3]), k1), b.trunc(p0, I32)]
        hits = b.icmp_unsigned("<", b.lshr(c[0], c32(8)), limit)
        b.store(b.select(hits, hit, miss), element(b, ftype, out, j))
    b.ret_void()
    return fn
