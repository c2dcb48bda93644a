"""Small helpers for building LLVM IR with llvmlite: loops, pointers, constants."""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


@contextmanager
def for_range(b: ir.IRBuilder, count: ir.Value, name: str = "i"):
    """`for (i = 0; i < count; i++) { body }`; yields i."""
    pre = b.block
    header = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    after = b.append_basic_block(f"{name}.end")
    b.branch(header)
    b.position_at_end(header)
    index = b.phi(I64, name)
    index.add_incoming(i64(0), pre)
    b.cbranch(b.icmp_signed("<", index, count), body, after)
    b.position_at_end(body)
    yield index
    step = b.add(index, i64(1), name=f"{name}.next")
    index.add_incoming(step, b.block)
    b.branch(header)
    b.position_at_end(after)


def element(b: ir.IRBuilder, ftype: ir.Type, base: ir.Value, index: ir.Value) -> ir.Value:
    return b.gep(base, [index], inbounds=True, source_etype=ftype)
