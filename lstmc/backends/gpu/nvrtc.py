"""CUDA compilation without a GPU: NVRTC (through cuda-bindings) turns the kernel source
into PTX and cubin for a given architecture, and its ptxas report gives each kernel's
registers and spills. Works on machines with no device or driver."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import BackendError

ARCHES = ("sm_80", "sm_90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass
class KernelReport:
    registers: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class Compiled:
    arch: str
    cubin: bytes
    ptx: str
    log: str
    kernels: dict[str, KernelReport] = field(default_factory=dict)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as error:
        raise BackendError("compiling CUDA kernels needs NVRTC: pip install "
                           "'nvidia-cuda-nvrtc==13.0.*' cuda-bindings") from error
    return nvrtc


def _value(result: tuple, what: str, log: str = ""):
    """cuda-bindings calls return (status, *values): the value, or a BackendError."""
    status = result[0]
    if int(status) != 0:
        raise BackendError(f"NVRTC {what} failed ({status.name})" + (f":\n{log}" if log else ""))
    return result[1] if len(result) > 1 else None


def available() -> bool:
    try:
        nvrtc = _nvrtc()
        return int(nvrtc.nvrtcVersion()[0]) == 0
    except (BackendError, RuntimeError, OSError):
        return False


def compile_cuda(source: str, arch: str = "sm_90", name: str = "kernels.cu",
                 fail_on_spills: bool = False) -> Compiled:
    """PTX and cubin of `source` for `arch`, with ptxas's per-kernel report."""
    nvrtc = _nvrtc()
    program = _value(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                     "program creation")
    try:
        options = [f"-arch={arch}", "-std=c++17", "-Xptxas=-v", "-Xptxas=-warn-spills"]
        if fail_on_spills:
            options.append("-Xptxas=-Werror")
        status = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        size = _value(nvrtc.nvrtcGetProgramLogSize(program), "log size")
        buffer = b" " * size
        nvrtc.nvrtcGetProgramLog(program, buffer)
        log = buffer.rstrip(b"\0 ").decode(errors="replace")
        _value(status, f"compilation for {arch}", log)
        ptx_size = _value(nvrtc.nvrtcGetPTXSize(program), "PTX size")
        ptx = b" " * ptx_size
        nvrtc.nvrtcGetPTX(program, ptx)
        cubin_size = _value(nvrtc.nvrtcGetCUBINSize(program), "cubin size")
        cubin = b" " * cubin_size
        nvrtc.nvrtcGetCUBIN(program, cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return Compiled(arch, cubin, ptx.rstrip(b"\0").decode(), log, parse_report(log))


def parse_report(log: str) -> dict[str, KernelReport]:
    kernels: dict[str, KernelReport] = {}
    current = None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = kernels.setdefault(entry.group(1), KernelReport())
            continue
        if current is None:
            continue
        spills = _SPILLS.search(line)
        if spills:
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, spills.groups())
        registers = _REGISTERS.search(line)
        if registers:
            current.registers = int(registers.group(1))
    return kernels
