"""Small helpers for building LLVM IR with llvmlite: loops, pointers, constants."""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir
from lstmc_runtime.dtypes import DType

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()


LLVM_FLOATS = {"half": ir.HalfType, "float": ir.FloatType, "double": ir.DoubleType}
FLOAT_BYTES = {"half": 2, "float": 4, "double": 8}  # by the LLVM type's name


def float_type(dtype: DType) -> ir.Type:
    """The LLVM type a dtype computes in."""
    return LLVM_FLOATS[dtype.llvm]()


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def _open_loop(b: ir.IRBuilder, start, stop, carried, name: str):
    """Header (with the index and carried phis) and body blocks; the builder is left in
    the body. Returns what _close_loop needs."""
    pre = b.block
    header = b.append_basic_block(f"{name}.head")
    block = b.append_basic_block(f"{name}.body")
    after = b.append_basic_block(f"{name}.end")
    b.branch(header)
    b.position_at_end(header)
    index = b.phi(I64, name)
    index.add_incoming(start, pre)
    phis = [b.phi(v.type) for v in carried]
    for phi, value in zip(phis, carried):
        phi.add_incoming(value, pre)
    b.cbranch(b.icmp_signed("<", index, stop), block, after)
    b.position_at_end(block)
    return index, phis, header, after


def _close_loop(b: ir.IRBuilder, loop, step: int, updated, name: str) -> None:
    index, phis, header, after = loop
    end = b.block
    for phi, value in zip(phis, updated):
        phi.add_incoming(value, end)
    index.add_incoming(b.add(index, i64(step), name=f"{name}.next"), end)
    b.branch(header)
    b.position_at_end(after)


def carried_loop(b: ir.IRBuilder, start, stop, step: int, carried: list, body,
                 name: str) -> list:
    """`for (k = start; k < stop; k += step) carried = body(k, carried)`, the carried
    values in phis (registers); returns their final values."""
    loop = _open_loop(b, start, stop, carried, name)
    _close_loop(b, loop, step, body(loop[0], loop[1]), name)
    return loop[1]


@contextmanager
def for_range(b: ir.IRBuilder, count: ir.Value, name: str = "i"):
    """`for (i = 0; i < count; i++) { body }`; yields i (the body is the with-block)."""
    loop = _open_loop(b, i64(0), count, [], name)
    yield loop[0]
    _close_loop(b, loop, 1, [], name)


def store_release(b: ir.IRBuilder, value: ir.Value, pointer: ir.Value) -> None:
    """An atomic store of an i64 with release ordering (llvmlite's store_atomic wants a
    typed pointer; the instruction itself takes an opaque one)."""
    b._insert(ir.instructions.StoreAtomicInstr(b.block, value, pointer, "release", 8))


def element(b: ir.IRBuilder, ftype: ir.Type, base: ir.Value, index: ir.Value) -> ir.Value:
    return b.gep(base, [index], inbounds=True, source_etype=ftype)


def spin_until(b: ir.IRBuilder, ready, sched_yield: ir.Function, every: int,
               name: str = "spin") -> None:
    """Busy-wait until `ready(b)` (an i1 it emits; evaluated again each try) holds,
    giving the core away with sched_yield every `every` tries (a power of two); the
    builder continues after the loop. Every spin-wait of the native code is this one."""
    assert every > 0 and every & (every - 1) == 0, every
    pre = b.block
    head = b.append_basic_block(name)
    pause = b.append_basic_block(f"{name}.pause")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    tries = b.phi(I64)
    tries.add_incoming(i64(0), pre)
    b.cbranch(ready(b), done, pause)
    b.position_at_end(pause)
    more = b.add(tries, i64(1))
    with b.if_then(b.icmp_signed("==", b.and_(more, i64(every - 1)), i64(0))):
        b.call(sched_yield, [])
    tries.add_incoming(more, b.block)
    b.branch(head)
    b.position_at_end(done)
