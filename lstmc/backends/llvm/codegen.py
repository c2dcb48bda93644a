"""Render a Program as an LLVM module with three kinds of entry point (each also as a
threaded twin, `*_mt`; float32 inference also on bfloat16 weights, `*_bf16`), each
running the time loop of a whole sequence (for a slice of the batch) in one call:

    int32 lstmc_forward(int64 T, int64 B, void **buffers)
    int32 lstmc_forward_train(...)      # also saves what the backward pass reads
    int32 lstmc_backward(...)

`buffers` is an array of pointers whose order and shapes the ABI lists. Batch rows never
interact, so the runtime may run slices of one batch on several cores at once, one call
each. Every product is lstmc_small_gemm on weights packed into panels: the input
projections as one GEMM over all T*B rows before the loop, the recurrent products inside
it, and the weight gradients as one GEMM over all T*B rows after it.

Here: the module (its math library, and declarations of the GEMM routines, which
`support.py` compiles once for every cell and links in) and its entry points, each twice
(alone, and `*_mt`, run by a team of threads on one slice).
`kernel.py` holds what every entry point shares, `forward.py` and `backward.py` the
two kinds.
"""
from __future__ import annotations

from llvmlite import ir
from lstmc_runtime import dtypes
from lstmc_runtime.manifest import PackedSpec

from ...ir.graph import Node, Op
from ...ir.program import Program
from .. import bind_packed, check_renderable
from .backward import BackwardKernel
from .forward import ForwardKernel
from .irutil import I32, I64, PTR, float_type
from .kernel import EntryAbi
from .mathlib import MathLib
from .philox import emit_mask_fill
from .regions import RegionEmitter
from .smallgemm import NV, vector_width
from .support import declare_gemms, has_bf16


class ModuleBuilder:
    def __init__(self, program: Program, sizes: dict[str, int], dtype: str):
        check_renderable(program)
        self.program, self.sizes = program, sizes
        self.dtype = dtypes.dtype(dtype)
        self.ftype = float_type(self.dtype)
        self.module = ir.Module(name=f"lstmc_{program.info.name}")
        self.math = MathLib(self.module, self.dtype)
        self.regions = RegionEmitter(self.module, self.math, "lstmc")
        # The packed matrices, bound, by name ("0", "1", ...: the manifest's names).
        self.packed = {str(w.index): bind_packed(w, sizes, str(w.index))
                       for w in program.packed_weights}
        self.entries: dict[str, EntryAbi] = {}
        self.gradient_aliases: dict[str, str] = {}  # parameter -> one with the same gradient
        self.small_gemm, self.small_gemm_acc, self.small_gemm_bf16 = declare_gemms(
            self.module, dtype)
        # float32 cells also run inference on bfloat16 weights (lstmc_runtime.bfloat16)
        self.bf16 = has_bf16(dtype)
        self.malloc = ir.Function(self.module, ir.FunctionType(PTR, [I64]), "malloc")
        self.free = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), "free")
        self.sched_yield = ir.Function(self.module, ir.FunctionType(I32, []), "sched_yield")
        self.panel = NV * vector_width(self.ftype)
        self.mask_fill = None  # emitted for cells with dropout or zoneout
        if any(n.op == Op.MASK for n in program.graph.nodes):
            self.mask_fill = emit_mask_fill(self.module, self.ftype)

    def size(self, node_or_size) -> int:
        size = node_or_size.size if isinstance(node_or_size, Node) else node_or_size
        return size.bind(self.sizes)

    def packed_weight(self, segments) -> PackedSpec:
        return self.packed[str(self.program.packed_weight(segments).index)]

    def build(self) -> ir.Module:
        for threaded in (False, True):  # each entry twice: alone, and run by a team
            ForwardKernel(self, train=False, threaded=threaded).emit()
            ForwardKernel(self, train=True, threaded=threaded).emit()
            BackwardKernel(self, threaded=threaded).emit()
            if self.bf16:
                ForwardKernel(self, train=False, threaded=threaded, bf16=True).emit()
        return self.module
