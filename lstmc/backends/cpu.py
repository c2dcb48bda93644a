"""The CPU target: a Program rendered by the LLVM backend, compiled for the host, and
run by lstmc_runtime's NativeCell.

An artifact's library embeds the contract hash of its manifest (lstmc_runtime.manifest),
so the runtime refuses a manifest edited after the library was built."""
from __future__ import annotations

import os

from lstmc_runtime.manifest import CONTRACT_SYMBOL, SCHEMA, contract_hash, entry_symbols
from lstmc_runtime.native import LIBRARY_HELPERS

from ..passes.pipeline import Program
from .llvm.codegen import ModuleBuilder
from .llvm.smallgemm import panel_width
from .llvm.support import support_object
from .llvm.toolchain import optimize

LIBRARY = "cell.so"


def manifest_for(program: Program, sizes: dict[str, int], dtype: str, mb: ModuleBuilder,
                 target: str = "cpu") -> dict:
    info = program.info
    return {
        "format": SCHEMA,
        "target": target,
        "cell": info.name,
        "dtype": dtype,
        "sizes": dict(sizes),
        "input_size": info.input[1].bind(sizes),
        **({"extra_inputs": {n: s.bind(sizes) for n, s in info.extra_inputs.items()}}
           if info.extra_inputs else {}),
        "output": info.output,
        "states": {n: s.bind(sizes) for n, s in info.states.items()},
        "params": {n: p.to_json() for n, p in info.param_specs(sizes).items()},
        "packed": [{"name": w.name, "segments": [[p, r] for p, r in w.segments],
                    "columns": w.columns} for w in mb.packed.values()],
        "panel_width": panel_width(dtype),
        "gradient_aliases": dict(mb.gradient_aliases),
        "step_weight_elements": sum(w.rows * w.columns for w in mb.packed.values()
                                    if any(mb.packed_weight(p.segments) is w
                                           for p in program.recurrent_products)),
        "hoisted": [{"index": h.index, "packed": mb.packed_weight(h.segments).name}
                    for h in program.hoisted],
        "products": [{"id": p.id, "packed": mb.packed_weight(p.segments).name,
                      "operand": f"saved:{p.inputs[0].id}"} for p in program.recurrent_products],
        "entries": {name: mb.entries[symbol].to_json()
                    for name, symbol in entry_symbols(dtype).items()},
    }


def generate(program: Program, sizes: dict[str, int], dtype: str) -> tuple[str, dict]:
    """LLVM IR text and the manifest describing its entry points."""
    mb = ModuleBuilder(program, sizes, dtype)
    module = mb.build()
    return str(module), manifest_for(program, sizes, dtype, mb)


def jit(program: Program, sizes: dict[str, int], dtype: str):
    """The cell compiled in process by LLVM's MCJIT: for machines without a C toolchain
    to link a shared library (then nothing is cached on disk)."""
    import llvmlite.binding as llvm
    from lstmc_runtime.native import NativeCell

    from .llvm.toolchain import new_target_machine

    ir_text, manifest = generate(program, sizes, dtype)
    engine = llvm.create_mcjit_compiler(optimize(ir_text), new_target_machine())
    engine.add_object_file(llvm.ObjectFileRef.from_data(support_object(dtype)))
    engine.finalize_object()
    symbols = [entry["symbol"] for entry in manifest["entries"].values()] + list(LIBRARY_HELPERS)
    functions = {symbol: engine.get_function_address(symbol) for symbol in symbols}
    return NativeCell(manifest, functions, keepalive=engine)


def write_artifact(directory: str, program: Program, sizes: dict[str, int], dtype: str,
                   emit: frozenset[str] = frozenset(), batch_first: bool = False,
                   cpu: str = "host") -> None:
    """A loadable artifact in `directory`: manifest.json and cell.so, plus the
    intermediate stages named in `emit` (ir: the fused IR; llvm: optimized LLVM IR;
    asm: the assembly; both of the cell's own code: the GEMM routines, packing and
    workers it links are llvm/support.py's). `cpu` is "host" or an LLVM CPU name
    (x86-64-v3, ...)."""
    from lstmc_runtime.artifact import write_file, write_manifest

    from .llvm.toolchain import emit_assembly, emit_object, link_shared, required_features

    ir_text, manifest = generate(program, sizes, dtype)
    manifest["cpu"] = {"name": cpu, "features": required_features(cpu)}
    manifest["library"] = LIBRARY
    manifest["batch_first"] = bool(batch_first)
    module = optimize(ir_text + embedded_string(CONTRACT_SYMBOL, contract_hash(manifest)), cpu)
    link_shared([emit_object(module, cpu), support_object(dtype, cpu)],
                os.path.join(directory, LIBRARY))
    files = [LIBRARY]
    if "ir" in emit:
        write_file(directory, "cell.ir", program.format(backward=True) + "\n")
    if "llvm" in emit:
        write_file(directory, "cell.ll", str(module))
    if "asm" in emit:
        write_file(directory, "cell.s", emit_assembly(module, cpu))
    write_manifest(directory, manifest, files)


def embedded_string(symbol: str, text: str) -> str:
    """LLVM IR of an exported constant holding `text` (ASCII), for the loader to read."""
    assert text.isascii() and '"' not in text and "\\" not in text
    return (f'\n@{symbol} = constant [{len(text)} x i8] c"{text}", align 1\n')
