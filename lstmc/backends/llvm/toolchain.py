"""From LLVM IR to machine code: one target machine per process (the host CPU and its
features), the new pass manager at -O3, object files for shared libraries, MCJIT for
in-process use. `llvm.initialize()` is never called: current llvmlite raises on it."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

import llvmlite
import llvmlite.binding as llvm

from ...errors import BackendError


@functools.lru_cache(maxsize=1)
def target_machine() -> llvm.TargetMachine:
    """The process's target machine for optimizing and emitting code."""
    return new_target_machine()


def new_target_machine() -> llvm.TargetMachine:
    """A target machine of its own: an MCJIT engine takes ownership of the one it is given
    and destroys it with itself, so the shared one must never be handed to an engine."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=3, codemodel="default", reloc="pic")


def host_description() -> str:
    """What the generated code depends on besides the source: part of the cache key."""
    target_machine()
    return (f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} "
            f"{llvm.get_host_cpu_features().flatten()} llvmlite {llvmlite.__version__} "
            f"llvm {'.'.join(map(str, llvm.llvm_version_info))}")


def optimize(ir_text: str) -> llvm.ModuleRef:
    """Parse, verify, optimize at -O3 (vectorizers on), verify again."""
    tm = target_machine()
    module = llvm.parse_assembly(ir_text)
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    module.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    options.loop_unrolling = True
    builder = llvm.create_pass_builder(tm, options)
    builder.getModulePassManager().run(module, builder)
    module.verify()
    return module


def emit_assembly(module: llvm.ModuleRef) -> str:
    return target_machine().emit_assembly(module)


def emit_object(module: llvm.ModuleRef) -> bytes:
    return target_machine().emit_object(module)


def find_linker() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BackendError("linking a shared library needs a C compiler driver (cc, gcc or clang) "
                       "on PATH; none was found (set CC to one)")


def link_shared(obj: bytes, path: str) -> None:
    """Turn an object file into a shared library at `path` (written atomically)."""
    linker = find_linker()
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        obj_path = os.path.join(tmp, "cell.o")
        lib_path = os.path.join(tmp, "cell.so")
        with open(obj_path, "wb") as f:
            f.write(obj)
        result = subprocess.run([linker, "-shared", "-o", lib_path, obj_path, "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BackendError(f"linking with {linker} failed: {result.stderr.strip()}")
        os.replace(lib_path, path)
