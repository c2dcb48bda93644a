"""Targets as objects: what the compiler side of each target provides, in one table.

A target turns a lowered cell (a Program and its bound sizes) into something that runs:
a cell object in this process (`compile`), and, where it has them, artifact files that
`lstmc_runtime.load` runs elsewhere (`write_artifact`). It says which dtypes it computes
in and what its cache entries depend on. `lstmc.compile`, `lstmc compile -o` and the CLI's
choices read TARGETS; adding a target (Metal, Triton, a second CPU code generator) is one
subclass here plus its backend package.

The runtime side of a target is its cell class (NativeCell, GpuCell with a device:
lstmc_runtime/gpu/cuda.py, opencl.py), chosen by the manifest's target when an artifact
is loaded.
"""
from __future__ import annotations

import abc
import functools

from .errors import BackendError, CompileError


class Target(abc.ABC):
    name: str
    dtypes: tuple[str, ...]          # what it computes in
    artifacts: bool = False          # writes artifact directories (lstmc compile -o)
    summary: str = ""

    def check(self, dtype: str, cpu: str = "host") -> None:
        """Refuse what this target cannot do, before anything is compiled."""
        if dtype not in self.dtypes:
            raise CompileError(f"target '{self.name}' computes in {' or '.join(self.dtypes)}; "
                               f"got dtype {dtype}")
        if cpu != "host":
            raise CompileError(f"--cpu chooses the CPU the cpu target compiles for; target "
                               f"'{self.name}' has no use for it")

    @abc.abstractmethod
    def compile(self, lowered, dtype: str, key_parts: dict):
        """A runnable cell of `lowered()` (which returns (Program, sizes): called only when
        the target needs the IR, so a cache hit skips lowering). `key_parts` identifies
        the cell for a disk cache."""

    def write_artifact(self, directory: str, program, sizes: dict[str, int], dtype: str,
                       emit: frozenset[str], batch_first: bool, cpu: str) -> None:
        raise CompileError(f"artifacts are written for targets {', '.join(artifact_targets())}, "
                           f"not '{self.name}'")


class ReferenceTarget(Target):
    name, dtypes = "reference", ("float32", "float64")
    summary = "the NumPy reference executor (the oracle of the tests)"

    def compile(self, lowered, dtype, key_parts):
        import numpy as np

        from .api import Cell

        program, sizes = lowered()
        return Cell(program, sizes, np.dtype(dtype), self.name)


class CpuTarget(Target):
    name, dtypes, artifacts = "cpu", ("float32", "float64"), True
    summary = "native code through LLVM (cached on disk)"

    def check(self, dtype, cpu="host"):
        super().check(dtype)
        from .backends.llvm.toolchain import check_cpu_name

        check_cpu_name(cpu)

    def compile(self, lowered, dtype, key_parts):
        from lstmc_runtime.artifact import load_cell

        from .backends.cpu import jit
        from .backends.llvm.toolchain import find_linker
        from .cache import cache_key, cached

        try:
            find_linker()
        except BackendError:  # no C toolchain to link a library: JIT in process, uncached
            return jit(*lowered(), dtype)

        def build(directory: str) -> None:
            program, sizes = lowered()
            self.write_artifact(directory, program, sizes, dtype, frozenset(), False, "host")

        compiled, _ = cached(cache_key(dict(key_parts, dtype=dtype, target=self.name)), build,
                             load_cell)
        return compiled

    def write_artifact(self, directory, program, sizes, dtype, emit, batch_first, cpu):
        from .backends.cpu import write_artifact

        write_artifact(directory, program, sizes, dtype, emit, batch_first=batch_first,
                       cpu=cpu)


class GpuTarget(Target):
    """The generated GPU kernels: one kernel text (lstmc/backends/gpu), run by CuPy on
    CUDA or by pyopencl on any OpenCL device."""

    dtypes, artifacts = ("float32",), True

    def __init__(self, name: str, summary: str):
        self.name, self.summary = name, summary

    def compile(self, lowered, dtype, key_parts):
        from lstmc_runtime.gpu.executor import GpuCell

        from .backends.gpu.kernels import manifest_for

        if self.name == "cuda":  # say what is missing before compiling anything
            from lstmc_runtime.gpu.cuda import import_cupy

            import_cupy()
        kernels, manifest = manifest_for(*lowered(), self.name)
        return GpuCell(manifest, kernels)

    def write_artifact(self, directory, program, sizes, dtype, emit, batch_first, cpu):
        from .backends.gpu.artifact import write_artifact

        write_artifact(directory, program, sizes, dtype, emit, batch_first=batch_first,
                       target=self.name)


TARGETS: dict[str, Target] = {t.name: t for t in (
    ReferenceTarget(),
    CpuTarget(),
    GpuTarget("cuda", "CUDA kernels run by CuPy (CuPy arrays in and out)"),
    GpuTarget("opencl", "the same kernels through pyopencl on any OpenCL device"),
)}


def get_target(name) -> Target:
    target = TARGETS.get(name) if isinstance(name, str) else None
    if target is None:
        raise CompileError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    return target


@functools.cache
def artifact_targets() -> tuple[str, ...]:
    return tuple(n for n, t in TARGETS.items() if t.artifacts)
