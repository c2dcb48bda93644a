"""`lstmc_small_gemm` and `lstmc_small_gemm_acc`: C (M x N) = (or +=) A (M x K) . B (K x N).

Every GEMM of a compiled cell runs here: the products inside the time loop (M is the
batch, often small), and the whole-sequence ones (M or K is T*B). Element (i, k) of A is
at A[i*sam + k*sak], so A may be read transposed. B is read in column panels of NR: row
k of panel p starts at B[p*bp + k*bk]; columns past the last full panel start at
B[panels*bp + k*bt]. The runtime packs weight matrices into panels once per call
(`pack_panels`: bk = NR, bp = K*NR, bt = N mod NR) so the kernel streams them with unit
stride; a plain row-major B works too (bk = bt = ldb, bp = NR).

Register tiles of MR rows x NR columns (NR = two 512-bit vectors) keep every accumulator
in registers across the K loop: per k, two vector loads of B, MR broadcasts of A, 2*MR
fused multiply-adds. Tiles with few rows (down to a matrix-vector product at batch 1)
split K across several accumulator sets, so the adds do not wait on one another.

`lstmc_small_gemm_bf16` (float32 cells' inference with bfloat16 weights) reads B as
bfloat16 in the same panels, half the bytes: a panel row's 32 values as 16 32-bit lanes,
lane i holding column i in its low half and column 16 + i in its high half, so one load,
a shift and a mask give the row's two float32 vectors (a bfloat16 is the high half of a
float32). Columns past the last panel are plain bfloat16."""
from __future__ import annotations

from llvmlite import ir
from lstmc_runtime import dtypes

from .irutil import FLOAT_BYTES, I32, I64, PTR, carried_loop, element, for_range, i64
from .mathlib import FAST

I16 = ir.IntType(16)

MR = 8  # rows of a register tile
NV = 2  # vectors per tile row


VECTOR_BYTES = 64  # a tile row's vector: one cache line (an AVX-512 register)


def vector_width(ftype: ir.Type) -> int:
    """Elements of `ftype` in a tile row's vector."""
    return VECTOR_BYTES // FLOAT_BYTES[str(ftype)]


def panel_width(dtype: str) -> int:
    return NV * (VECTOR_BYTES // dtypes.dtype(dtype).itemsize)


def small_gemm_type() -> ir.FunctionType:
    # M, N, K, A, sam, sak, B, bk, bp, bt, C, ldc
    return ir.FunctionType(ir.VoidType(), [I64, I64, I64, PTR, I64, I64, PTR, I64, I64, I64,
                                           PTR, I64])


KC = 256  # a block of K: one panel's block (KC x NR) stays in L1 across row tiles
MC = 128  # a block of rows: A's block (MC x KC) stays in L2 across panels


def emit_small_gemm(module: ir.Module, ftype: ir.Type, accumulate: bool,
                    bf16: bool = False) -> ir.Function:
    """lstmc_small_gemm(_acc), or with `bf16` (float32 only) lstmc_small_gemm_bf16."""
    vw = vector_width(ftype)
    nr = NV * vw
    vtype = ir.VectorType(ftype, vw)
    if bf16 and (str(ftype) != "float" or NV != 2):
        raise ValueError("bfloat16 weights are for float32 GEMMs")
    wtype = I16 if bf16 else ftype  # of B's elements
    suffix = ("_acc" if accumulate else "") + ("_bf16" if bf16 else "")
    store_tiles = _tiles(module, ftype, vtype, False, bf16)
    add_tiles = _tiles(module, ftype, vtype, True, bf16)

    fn = ir.Function(module, small_gemm_type(), f"lstmc_small_gemm{suffix}")
    fn.attributes.add("nounwind")
    M, N, K, A, sam, sak, B, bk, bp, bt, C, ldc = fn.args
    for arg in (A, B, C):
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    panels = b.sdiv(N, i64(nr))
    k_blocks = b.sdiv(b.add(K, i64(KC - 1)), i64(KC))
    m_blocks = b.sdiv(b.add(M, i64(MC - 1)), i64(MC))
    with for_range(b, k_blocks, "kb") as kb:
        k0 = b.mul(kb, i64(KC))
        kc = b.select(b.icmp_signed("<", b.sub(K, k0), i64(KC)), b.sub(K, k0), i64(KC))
        a_k = element(b, ftype, A, b.mul(k0, sak))
        # The first block of K stores (unless accumulating), later ones add.
        first = b.icmp_signed("==", kb, i64(0))
        overwrite = b.and_(first, ir.Constant(ir.IntType(1), 0 if accumulate else 1))
        with for_range(b, m_blocks, "mb") as mb:
            mstart = b.mul(mb, i64(MC))
            rows = b.sub(M, mstart)
            mc = b.select(b.icmp_signed("<", rows, i64(MC)), rows, i64(MC))
            a_block = element(b, ftype, a_k, b.mul(mstart, sam))
            c_block = element(b, ftype, C, b.mul(mstart, ldc))
            with for_range(b, panels, "panel") as p:
                n0 = b.mul(p, i64(nr))
                panel = element(b, wtype, B, b.add(b.mul(p, bp), b.mul(k0, bk)))
                full = b.sdiv(mc, i64(MR))
                rest = b.srem(mc, i64(MR))
                with b.if_else(overwrite) as (store, add):
                    for tiles, branch in ((store_tiles, store), (add_tiles, add)):
                        with branch:
                            with for_range(b, full, "mtile") as mt:
                                _call_tile(b, tiles[MR], b.mul(mt, i64(MR)), n0, kc, a_block,
                                           sam, sak, panel, bk, c_block, ldc, ftype)
                            m0 = b.mul(full, i64(MR))
                            for mr in range(1, MR):
                                with b.if_then(b.icmp_signed("==", rest, i64(mr))):
                                    _call_tile(b, tiles[mr], m0, n0, kc, a_block, sam, sak,
                                               panel, bk, c_block, ldc, ftype)
        # Columns past the last full panel.
        start = b.mul(panels, i64(nr))
        tail = element(b, wtype, B, b.add(b.mul(panels, bp), b.mul(k0, bt)))
        with for_range(b, b.sub(N, start), "ncol") as dn, for_range(b, M, "mrow") as m:
            total = _scalar_dot(b, ftype, kc, a_k, sam, sak, m, tail, bt, dn, bf16)
            c_ptr = element(b, ftype, C, b.add(b.mul(m, ldc), b.add(start, dn)))
            old = b.select(overwrite, ir.Constant(ftype, 0.0), b.load(c_ptr, typ=ftype))
            b.store(b.fadd(old, total), c_ptr)
    b.ret_void()
    return fn


def _tile_name(mr: int, accumulate: bool, bf16: bool) -> str:
    return f"lstmc_gemm_tile{mr}{'_acc' if accumulate else ''}{'_bf16' if bf16 else ''}"


def _tiles(module, ftype, vtype, accumulate: bool, bf16: bool) -> dict:
    if _tile_name(MR, accumulate, bf16) in module.globals:
        return {mr: module.globals[_tile_name(mr, accumulate, bf16)]
                for mr in range(1, MR + 1)}
    return {mr: _emit_tile(module, ftype, vtype, mr, accumulate, bf16)
            for mr in range(1, MR + 1)}


def widen_bf16(b: ir.IRBuilder, value: ir.Value, ftype: ir.Type) -> ir.Value:
    """A bfloat16 (i16) as the float32 it is the high half of."""
    return b.bitcast(b.shl(b.zext(value, I32), ir.Constant(I32, 16)), ftype)


def _call_tile(b, tile, m0, n0, K, A, sam, sak, panel, bk, C, ldc, ftype) -> None:
    a = element(b, ftype, A, b.mul(m0, sam))
    c = element(b, ftype, C, b.add(b.mul(m0, ldc), n0))
    b.call(tile, [K, a, sam, sak, panel, bk, c, ldc])


def _scalar_dot(b, ftype, K, A, sam, sak, m, B, ldb, n, bf16: bool = False) -> ir.Value:
    """sum_k A[m, k] * B[k, n]."""
    def body(k, carried):
        av = b.load(element(b, ftype, A, b.add(b.mul(m, sam), b.mul(k, sak))), typ=ftype)
        if bf16:
            bv = widen_bf16(b, b.load(element(b, I16, B, b.add(b.mul(k, ldb), n)), typ=I16),
                            ftype)
        else:
            bv = b.load(element(b, ftype, B, b.add(b.mul(k, ldb), n)), typ=ftype)
        return [b.fadd(carried[0], b.fmul(av, bv, flags=FAST), flags=FAST)]

    return carried_loop(b, i64(0), K, 1, [ir.Constant(ftype, 0.0)], body, "dot")[0]


def _emit_tile(module, ftype, vtype, mr, accumulate, bf16) -> ir.Function:
    """C[0:mr, 0:NR] (+)= A[0:mr, :] . panel, row k of the panel at P + k*bk."""
    vw = vtype.count
    sets = {1: 4, 2: 2}.get(mr, 1)  # independent accumulator sets for short tiles
    fn_type = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, I64, PTR, I64, PTR, I64])
    fn = ir.Function(module, fn_type, _tile_name(mr, accumulate, bf16))
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    K, A, sam, sak, P, bk, C, ldc = fn.args
    for arg in (A, P, C):
        arg.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(vtype, [0.0] * vw)
    splat_mask = ir.Constant(ir.VectorType(I32, vw), [0] * vw)
    undef = ir.Constant(vtype, ir.Undefined)
    lane_type = ir.VectorType(I32, vw)
    shift = ir.Constant(lane_type, [16] * vw)
    high = ir.Constant(lane_type, [-65536] * vw)  # 0xffff0000

    def update(k, accs: list, which: int) -> list:
        """Add row k's contribution to accumulator set `which`; accs is flat
        [set][row][vector]."""
        accs = list(accs)
        if bf16:  # 16 lanes: columns i (low halves) and 16 + i (high halves)
            lanes = b.load(element(b, I16, P, b.mul(k, bk)), typ=lane_type, align=4)
            bvecs = [b.bitcast(b.shl(lanes, shift), vtype),
                     b.bitcast(b.and_(lanes, high), vtype)]
        else:
            row = element(b, ftype, P, b.mul(k, bk))
            bvecs = [b.load(element(b, ftype, row, i64(v * vw)), typ=vtype, align=4)
                     for v in range(NV)]
        a_k = element(b, ftype, A, b.mul(k, sak))
        for i in range(mr):
            a = b.load(element(b, ftype, a_k, b.mul(i64(i), sam)), typ=ftype)
            splat = b.shuffle_vector(b.insert_element(undef, a, i64(0)), undef, splat_mask)
            for v in range(NV):
                index = (which * mr + i) * NV + v
                accs[index] = b.fadd(accs[index], b.fmul(splat, bvecs[v], flags=FAST),
                                     flags=FAST)
        return accs

    accs = [zero] * (sets * mr * NV)
    main_end = b.sub(K, b.srem(K, i64(sets)))

    def unrolled(k, carried):
        for s in range(sets):
            carried = update(b.add(k, i64(s)), carried, s)
        return carried

    accs = carried_loop(b, i64(0), main_end, sets, accs, unrolled, "k")
    if sets > 1:
        accs = carried_loop(b, main_end, K, 1, accs, lambda k, c: update(k, c, 0), "krest")
    for i in range(mr):
        c_row = element(b, ftype, C, b.mul(i64(i), ldc))
        for v in range(NV):
            total = accs[i * NV + v]
            for s in range(1, sets):
                total = b.fadd(total, accs[(s * mr + i) * NV + v], flags=FAST)
            c_ptr = element(b, ftype, c_row, i64(v * vw))
            if accumulate:
                total = b.fadd(b.load(c_ptr, typ=vtype, align=4), total)
            b.store(total, c_ptr, align=4)
    b.ret_void()
    return fn
