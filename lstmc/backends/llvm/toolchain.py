"""From LLVM IR to machine code: one target machine per process (the host CPU and its
features), the new pass manager at -O3, object files for shared libraries, MCJIT for
in-process use. `llvm.initialize()` is never called: current llvmlite raises on it."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile

import llvmlite.binding as llvm

from ...errors import BackendError, CompileError

# Instruction-set features a library may need, as LLVM names them and as Linux's
# /proc/cpuinfo does: the runtime refuses a library whose CPU lacks one (else: SIGILL).
CHECKED_FEATURES = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma",
    "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f",
    "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512cd": "avx512cd", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
}
GENERIC_X86 = {  # the x86-64 micro-architecture levels, for portable artifacts
    "x86-64": [],
    "x86-64-v2": ["sse4.1", "sse4.2"],
    "x86-64-v3": ["sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "bmi", "bmi2"],
    "x86-64-v4": ["sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "bmi", "bmi2",
                  "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"],
}


# Asks LLVM, in a process of its own, to compile for a CPU name: LLVM answers an unknown
# name by printing "not a recognized processor" and then ending the process.
_PROBE = """
import sys, llvmlite.binding as llvm
llvm.initialize_native_target(); llvm.initialize_native_asmprinter()
target = llvm.Target.from_triple(llvm.get_process_triple())
tm = target.create_target_machine(cpu=sys.argv[1], features="", opt=0, reloc="pic")
tm.emit_object(llvm.parse_assembly("define i32 @f() { ret i32 0 }"))
"""


@functools.lru_cache(maxsize=16)
def check_cpu_name(cpu: str) -> None:
    """Raise CompileError unless `cpu` is "host" or a CPU name LLVM knows for this
    machine's target (asked in a subprocess, since LLVM ends the process on an unknown
    one); the x86-64 levels are known without asking."""
    if cpu == "host" or (cpu in GENERIC_X86 and llvm.get_process_triple().startswith("x86_64")):
        return
    if not cpu or not all(c.isalnum() or c in "-_." for c in cpu):
        raise CompileError(f"unknown CPU name {cpu!r}: use host, or an LLVM CPU name such as "
                           "x86-64-v3")
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, cpu], check=False,
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"cannot ask LLVM about CPU {cpu!r}: {exc}") from None
    if probe.returncode != 0 or "not a recognized processor" in probe.stderr:
        raise CompileError(f"unknown CPU name {cpu!r}: LLVM does not know it for "
                           f"{llvm.get_process_triple()} (use host, or a name such as "
                           f"{', '.join(GENERIC_X86)})")


@functools.lru_cache(maxsize=4)
def target_machine(cpu: str = "host") -> llvm.TargetMachine:
    """The process's target machine for `cpu` ("host": this CPU and all its features;
    or an LLVM CPU name such as x86-64-v3), for optimizing and emitting code."""
    return new_target_machine(cpu)


def new_target_machine(cpu: str = "host") -> llvm.TargetMachine:
    """A target machine of its own: an MCJIT engine takes ownership of the one it is given
    and destroys it with itself, so the shared one must never be handed to an engine."""
    check_cpu_name(cpu)
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    if cpu == "host":
        name, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    else:
        name, features = cpu, ""
    return target.create_target_machine(cpu=name, features=features, opt=3,
                                        codemodel="default", reloc="pic")


def required_features(cpu: str = "host") -> list[str]:
    """The checked instruction-set features code for `cpu` may use, /proc/cpuinfo names."""
    if cpu == "host":
        enabled = [f[1:] for f in llvm.get_host_cpu_features().flatten().split(",")
                   if f.startswith("+")]
    else:
        enabled = GENERIC_X86.get(cpu, [])
    return sorted(CHECKED_FEATURES[f] for f in enabled if f in CHECKED_FEATURES)


def optimize(ir_text: str, cpu: str = "host") -> llvm.ModuleRef:
    """Parse, verify, optimize at -O3 (vectorizers on), verify again."""
    tm = target_machine(cpu)
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


def emit_assembly(module: llvm.ModuleRef, cpu: str = "host") -> str:
    return target_machine(cpu).emit_assembly(module)


def emit_object(module: llvm.ModuleRef, cpu: str = "host") -> bytes:
    return target_machine(cpu).emit_object(module)


def find_linker() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise BackendError("linking a shared library needs a C compiler driver (cc, gcc or clang) "
                       "on PATH; none was found (set CC to one)")


def link_shared(objects: list[bytes], path: str) -> None:
    """Link object files into a shared library at `path` (written atomically). A failure
    to write stays an OSError (the disk cache falls back on it), naming `path` or its
    directory rather than the temporary files in between."""
    linker = find_linker()
    directory = os.path.dirname(os.path.abspath(path))
    try:
        scratch = tempfile.TemporaryDirectory(dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.path.dirname(path) or ".") from None
    with scratch as tmp:
        obj_paths = [os.path.join(tmp, f"part{i}.o") for i in range(len(objects))]
        lib_path = os.path.join(tmp, "cell.so")
        for obj, obj_path in zip(objects, obj_paths):
            with open(obj_path, "wb") as f:
                f.write(obj)
        result = subprocess.run([linker, "-shared", "-o", lib_path, *obj_paths, "-lm"],
                                check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise BackendError(f"linking with {linker} failed: {result.stderr.strip()}")
        try:
            os.replace(lib_path, path)
        except OSError as exc:  # e.g. a directory at `path`: name it, not the temporary
            raise OSError(exc.errno, exc.strerror, path) from None
