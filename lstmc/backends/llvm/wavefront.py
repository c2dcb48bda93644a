"""`lstmc_wavefront`: the layers of a stack as a wavefront, layer l on chunk c of the
sequence while layer l + 1 is on chunk c - 1 (inference, one direction, small batches).

It has a threaded kernel's signature, so the parked workers run it like any other: its
`pointers` argument is the job table lstmc_runtime.wavefront lays out (`JOB_*`), naming
each layer's one-thread forward entry and, per chunk, its step count and buffer table.
Thread `tid` runs the layers l = tid, tid + threads, ..., each on chunk after chunk once
the layer below has finished that chunk: each layer raises its own flag (the chunks it
has done) in `sync`, one per FLAG_WORDS words, and the layer above waits on it. A layer
whose entry fails (status != 0) still raises its flag, so no thread waits forever; the
call returns the largest status."""
from __future__ import annotations

from llvmlite import ir
from lstmc_runtime.wavefront import FLAG_WORDS, JOB_CHUNKS, JOB_KERNELS, JOB_LAYERS, SYMBOL

from .irutil import I32, I64, PTR, for_range, i64, spin_until, store_release
from .workers import THREADED_KERNEL, declare

ENTRY = ir.FunctionType(I32, [I64, I64, PTR])  # a one-thread entry: T, B, buffers


def emit(module: ir.Module) -> None:
    sched_yield = declare(module, "sched_yield", ir.FunctionType(I32, []))
    fn = ir.Function(module, THREADED_KERNEL, SYMBOL)
    _T, B, job, tid, threads, sync, _arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    chunks = b.load(b.gep(job, [i64(JOB_CHUNKS)], source_etype=I64), typ=I64)
    layers = b.load(b.gep(job, [i64(JOB_LAYERS)], source_etype=I64), typ=I64)
    status = b.alloca(I32, name="status")
    b.store(ir.Constant(I32, 0), status)
    # this thread's layers: tid, tid + threads, ... below `layers`
    mine = b.sdiv(b.add(b.sub(layers, tid), b.sub(threads, i64(1))), threads)
    # Tick k: each of this thread's layers l on its chunk k - l (where there is one), so
    # a thread with several layers never waits on one while another of its own is ready.
    with for_range(b, b.add(chunks, b.sub(layers, i64(1))), "tick") as tick:
        with for_range(b, mine, "own") as own:
            layer = b.add(tid, b.mul(own, threads))
            chunk = b.sub(tick, layer)
            inside = b.and_(b.icmp_signed(">=", chunk, i64(0)),
                            b.icmp_signed("<", chunk, chunks))
            with b.if_then(inside):
                _layer_chunk(b, job, sync, layer, chunk, layers, chunks, B, status,
                             sched_yield)
    b.ret(b.load(status, typ=I32))


def _layer_chunk(b, job, sync, layer, chunk, layers, chunks, B, status, sched_yield) -> None:
    """Layer `layer` on chunk `chunk`, once the layer below has done it; then its flag."""
    def word(index) -> ir.Value:
        return b.load(b.gep(job, [index], source_etype=I64), typ=I64)

    done = b.add(chunk, i64(1))
    with b.if_then(b.icmp_signed(">", layer, i64(0))):
        below = b.gep(sync, [b.mul(b.sub(layer, i64(1)), i64(FLAG_WORDS))], source_etype=I64)
        spin_until(b, lambda b: b.icmp_signed(
            ">=", b.load_atomic(below, "acquire", 8, typ=I64), done), sched_yield, 1024,
            "below")
    kernel = b.inttoptr(word(b.add(i64(JOB_KERNELS), layer)), ir.PointerType(ENTRY))
    # this layer's chunk: (steps, buffer table), after the kernels
    slot = b.add(b.add(i64(JOB_KERNELS), layers),
                 b.mul(i64(2), b.add(b.mul(layer, chunks), chunk)))
    result = b.call(kernel, [word(slot), B, b.inttoptr(word(b.add(slot, i64(1))), PTR)])
    worst = b.load(status, typ=I32)
    b.store(b.select(b.icmp_signed(">", result, worst), result, worst), status)
    store_release(b, done, b.gep(sync, [b.mul(layer, i64(FLAG_WORDS))], source_etype=I64))
