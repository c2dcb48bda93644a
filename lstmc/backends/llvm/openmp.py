"""`lstmc_openmp_body`: the body of a GNU OpenMP parallel region that runs a threaded
kernel (or the wavefront driver) on the process's OpenMP team, in native code.

The runtime hands GOMP_parallel this function and a job (lstmc_runtime.openmp's
`JOB_SLOTS`: the kernel and its arguments, the team's omp_get_thread_num and
omp_get_num_threads, and two words for the result). Each thread of the team calls the
kernel as thread omp_get_thread_num() of omp_get_num_threads(). No thread enters Python:
a Python body made every thread of the team take the GIL in turn, which cost ~28 µs a
call and started the threads that far apart (their first barrier waited for it).

Threads that meet at barriers must all run at once: a team smaller than the kernel's
thread count (OMP_THREAD_LIMIT, a nested region) runs none of them and sets `short`,
and the caller runs the kernel another way."""
from __future__ import annotations

from llvmlite import ir
from lstmc_runtime.openmp import BODY_SYMBOL, JOB_SLOTS

from .irutil import I32, I64, PTR, i64, store_release
from .workers import KERNEL_POINTER

TEAM_QUERY = ir.PointerType(ir.FunctionType(I32, []))  # omp_get_thread_num and _num_threads


def emit(module: ir.Module) -> None:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), BODY_SYMBOL)
    fn.attributes.add("nounwind")
    job = fn.args[0]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = {name: b.gep(job, [i64(k)], source_etype=I64) for k, name in enumerate(JOB_SLOTS)}

    def word(name: str) -> ir.Value:
        return b.load(slot[name], typ=I64)

    def ask(name: str) -> ir.Value:
        return b.sext(b.call(b.inttoptr(word(name), TEAM_QUERY), []), I64)

    threads = word("threads")
    with b.if_else(b.icmp_signed("<", ask("num_threads"), threads)) as (short, full):
        with short:
            store_release(b, i64(1), slot["short"])
        with full:
            kernel = b.inttoptr(word("kernel"), KERNEL_POINTER)
            status = b.call(kernel, [word("T"), word("B"), b.inttoptr(word("table"), PTR),
                                     ask("thread_num"), threads,
                                     b.inttoptr(word("sync"), PTR),
                                     b.inttoptr(word("arena"), PTR)])
            with b.if_then(b.icmp_signed("!=", status, ir.Constant(I32, 0))):
                b.atomic_rmw("max", slot["status"], b.sext(status, I64), "seq_cst")
    b.ret_void()
