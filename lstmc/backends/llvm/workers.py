"""Persistent worker threads for the threaded kernels, parked in native code.

Threads are made once per process (by the runtime) and each spends its whole life inside
`lstmc_workers_loop`; a call wakes them through shared memory, never through Python:
the caller publishes the job, bumps a generation word (workers spinning on it see it at
once; those that slept on it, a futex, are woken with one system call), runs thread 0's
share itself and waits until every worker has acknowledged the job. Every worker
acknowledges every job, so none can read the next job's fields for the previous one.

The shared state is an int64 array (`STATE_WORDS`), its words named by `SLOTS`. The
functions read nothing else of their module: a pool built from any cell's library can
run any cell's threaded kernel (the job names the kernel by address)."""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from lstmc_runtime.workers import STATE_WORDS, SYMBOLS

from .irutil import I32, I64, PTR, i64, spin_until

SLOTS = ("generation", "pending", "status", "sleepers", "stop", "ready",
         "fn", "T", "B", "pointers", "threads", "sync", "arena")
assert len(SLOTS) <= STATE_WORDS and SLOTS.index("stop") == 4 and SLOTS.index("ready") == 5
# Spins (each a load, every 256th a sched_yield) before a worker sleeps on the futex:
# about 1 ms (measured on a 2-core VM: 2^15 spins took 37 µs). Waking a sleeping worker
# costs ~190 µs there, so a worker must still be spinning when calls come back to back
# (a stream of one-step calls, a loop over batches); after 1 ms idle it goes quiet.
SPINS_BEFORE_SLEEP = 1 << 20
FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 128, 129
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
THREADED_KERNEL = ir.FunctionType(I32, [I64, I64, PTR, I64, I64, PTR, PTR])
KERNEL_POINTER = ir.PointerType(THREADED_KERNEL)  # typed: an indirect call needs the type


def futex_syscall() -> int | None:
    """The futex system call's number on this machine, None where workers are not built
    (not Linux on x86-64 or AArch64: the runtime then runs threaded kernels itself)."""
    triple = llvm.get_process_triple()
    if "linux" not in triple:
        return None
    return SYS_FUTEX.get(triple.split("-")[0])


def declare(module: ir.Module, name: str, ftype: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    if existing is not None:
        assert isinstance(existing, ir.Function)
        return existing
    return ir.Function(module, ftype, name)


def emit(module: ir.Module) -> bool:
    """Add lstmc_workers_loop and lstmc_workers_run to `module`; False where this machine
    has no futex to park workers on (nothing added)."""
    number = futex_syscall()
    if number is None:
        return False
    sched_yield = declare(module, "sched_yield", ir.FunctionType(I32, []))
    syscall = declare(module, "syscall", ir.FunctionType(I64, [I64], var_arg=True))
    _emit_loop(module, number, sched_yield, syscall)
    _emit_run(module, number, sched_yield, syscall)
    return True


def _words(b: ir.IRBuilder, state) -> dict[str, ir.Value]:
    return {name: b.gep(state, [i64(k)], source_etype=I64) for k, name in enumerate(SLOTS)}


def _emit_loop(module, number: int, sched_yield, syscall) -> None:
    """i32 lstmc_workers_loop(i64* state, i64 tid): wait for a job, run thread `tid`'s
    share when the job has that many threads, acknowledge, again; returns once `stop`
    is set."""
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, I64]), SYMBOLS[0])
    state, tid = fn.args
    entry = fn.append_basic_block("entry")
    loop, wait, idle, spin, sleep, got, work, call, record, ack, leave = (
        fn.append_basic_block(n) for n in ("loop", "wait", "idle", "spin", "sleep", "got",
                                           "work", "call", "record", "ack", "leave"))
    b = ir.IRBuilder(entry)
    w = _words(b, state)
    first = b.load_atomic(w["generation"], "acquire", 8, typ=I64)
    b.atomic_rmw("add", w["ready"], i64(1), "seq_cst")
    b.branch(loop)

    b.position_at_end(loop)
    seen = b.phi(I64, "seen")
    seen.add_incoming(first, entry)
    b.branch(wait)

    b.position_at_end(wait)
    tries = b.phi(I64, "tries")
    tries.add_incoming(i64(0), loop)
    now = b.load_atomic(w["generation"], "acquire", 8, typ=I64)
    b.cbranch(b.icmp_signed("!=", now, seen), got, idle)

    b.position_at_end(idle)
    more = b.add(tries, i64(1))
    b.cbranch(b.icmp_signed("<", more, i64(SPINS_BEFORE_SLEEP)), spin, sleep)

    b.position_at_end(spin)
    with b.if_then(b.icmp_signed("==", b.and_(more, i64(255)), i64(0))):
        b.call(sched_yield, [])
    tries.add_incoming(more, b.block)
    b.branch(wait)

    b.position_at_end(sleep)
    b.atomic_rmw("add", w["sleepers"], i64(1), "seq_cst")
    # Sleeps only while the generation's low 32 bits still read `seen` (else returns).
    b.call(syscall, [i64(number), w["generation"], i64(FUTEX_WAIT_PRIVATE),
                     b.and_(seen, i64(0xFFFFFFFF)), i64(0), i64(0), i64(0)])
    b.atomic_rmw("sub", w["sleepers"], i64(1), "seq_cst")
    tries.add_incoming(i64(0), sleep)
    b.branch(wait)

    b.position_at_end(got)
    stop = b.load_atomic(w["stop"], "acquire", 8, typ=I64)
    b.cbranch(b.icmp_signed("!=", stop, i64(0)), leave, work)

    b.position_at_end(work)
    threads = b.load(w["threads"], typ=I64)
    b.cbranch(b.icmp_signed("<", tid, threads), call, ack)

    b.position_at_end(call)
    kernel = b.inttoptr(b.load(w["fn"], typ=I64), KERNEL_POINTER)
    status = b.call(kernel, [b.load(w["T"], typ=I64), b.load(w["B"], typ=I64),
                             b.inttoptr(b.load(w["pointers"], typ=I64), PTR), tid, threads,
                             b.inttoptr(b.load(w["sync"], typ=I64), PTR),
                             b.inttoptr(b.load(w["arena"], typ=I64), PTR)])
    b.cbranch(b.icmp_signed("!=", status, ir.Constant(I32, 0)), record, ack)

    b.position_at_end(record)
    b.atomic_rmw("max", w["status"], b.sext(status, I64), "seq_cst")
    b.branch(ack)

    b.position_at_end(ack)
    b.atomic_rmw("sub", w["pending"], i64(1), "seq_cst")
    seen.add_incoming(now, ack)
    b.branch(loop)

    b.position_at_end(leave)
    b.atomic_rmw("sub", w["pending"], i64(1), "seq_cst")
    b.ret(ir.Constant(I32, 0))


def _emit_run(module, number: int, sched_yield, syscall) -> None:
    """i32 lstmc_workers_run(i64* state, i64 workers, fn, T, B, pointers, threads, sync,
    arena): the job on the caller (thread 0) and threads 1..threads-1 of the `workers`
    parked ones; returns the largest status of its threads. workers = 0 with stop set
    beforehand tells every worker to leave (the caller then waits for none)."""
    args = [PTR, I64, I64, I64, I64, I64, I64, I64, I64]
    fn = ir.Function(module, ir.FunctionType(I32, args), SYMBOLS[1])
    state, workers, kernel_address, T, B, pointers, threads, sync, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    w = _words(b, state)
    for name, value in (("fn", kernel_address), ("T", T), ("B", B), ("pointers", pointers),
                        ("threads", threads), ("sync", sync), ("arena", arena)):
        b.store(value, w[name])
    b.atomic_rmw("xchg", w["status"], i64(0), "seq_cst")
    b.atomic_rmw("xchg", w["pending"], workers, "seq_cst")
    b.atomic_rmw("add", w["generation"], i64(1), "seq_cst")  # publishes the fields above
    sleepers = b.load_atomic(w["sleepers"], "seq_cst", 8, typ=I64)
    with b.if_then(b.icmp_signed(">", sleepers, i64(0))):
        b.call(syscall, [i64(number), w["generation"], i64(FUTEX_WAKE_PRIVATE),
                         i64(0x7FFFFFFF), i64(0), i64(0), i64(0)])
    own, join = fn.append_basic_block("own"), fn.append_basic_block("join")
    before = b.block
    b.cbranch(b.icmp_signed(">", threads, i64(0)), own, join)
    b.position_at_end(own)
    kernel = b.inttoptr(kernel_address, KERNEL_POINTER)
    mine = b.call(kernel, [T, B, b.inttoptr(pointers, PTR), i64(0), threads,
                           b.inttoptr(sync, PTR), b.inttoptr(arena, PTR)])
    b.branch(join)
    b.position_at_end(join)
    status = b.phi(I32)
    status.add_incoming(mine, own)
    status.add_incoming(ir.Constant(I32, 0), before)
    # wait for every worker's acknowledgement (spinning; yielding now and then)
    spin_until(b, lambda b: b.icmp_signed(
        "<=", b.load_atomic(w["pending"], "acquire", 8, typ=I64), i64(0)), sched_yield, 256,
        "wait")
    theirs = b.trunc(b.load_atomic(w["status"], "acquire", 8, typ=I64), I32)
    b.ret(b.select(b.icmp_signed(">", status, theirs), status, theirs))

