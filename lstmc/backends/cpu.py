"""The CPU target: a Program rendered by the LLVM backend, compiled for the host, and
run by lstmc_runtime's NativeCell."""
from __future__ import annotations

import llvmlite.binding as llvm

from lstmc_runtime.native import NativeCell

from ..passes.pipeline import Program
from .llvm.codegen import ModuleBuilder
from .llvm.toolchain import optimize, target_machine

ENTRIES = {"forward": "lstmc_forward", "forward_train": "lstmc_forward_train",
           "backward": "lstmc_backward"}


def manifest_for(program: Program, sizes: dict[str, int], dtype: str, mb: ModuleBuilder,
                 target: str = "cpu") -> dict:
    info = program.info
    return {
        "format": 1,
        "target": target,
        "cell": info.name,
        "dtype": dtype,
        "sizes": dict(sizes),
        "input_size": info.input[1].bind(sizes),
        "output": info.output,
        "states": {n: s.bind(sizes) for n, s in info.states.items()},
        "params": {n: {"shape": [d.bind(sizes) for d in info.param_shape(n)],
                       "init": p.init} for n, p in info.params.items()},
        "packed": [{"name": w.name, "segments": [[p, r] for p, r in w.segments],
                    "columns": w.columns} for w in mb.packed.values()],
        "entries": {name: mb.entries[symbol].to_json() for name, symbol in ENTRIES.items()},
    }


def generate(program: Program, sizes: dict[str, int], dtype: str) -> tuple[str, dict]:
    """LLVM IR text and the manifest describing its entry points."""
    mb = ModuleBuilder(program, sizes, dtype)
    module = mb.build()
    return str(module), manifest_for(program, sizes, dtype, mb)


def jit(program: Program, sizes: dict[str, int], dtype: str) -> NativeCell:
    ir_text, manifest = generate(program, sizes, dtype)
    module = optimize(ir_text)
    engine = llvm.create_mcjit_compiler(module, target_machine())
    engine.finalize_object()
    symbols = list(ENTRIES.values()) + ["lstmc_gemm"]
    functions = {s: engine.get_function_address(s) for s in symbols}
    return NativeCell(manifest, functions, keepalive=(engine, module))
