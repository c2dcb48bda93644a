"""GPU artifacts: the kernel source (prelude included, so `nvcc -c kernels.cu` builds
it standalone), the manifest with the launch plan, and where NVRTC is installed, cubin
and PTX for each architecture in nvrtc.ARCHES."""
from __future__ import annotations

from dataclasses import replace

from ...errors import CompileError
from ...ir.program import Program
from . import nvrtc
from .kernels import manifest_for

SOURCE = {"cuda": "kernels.cu", "opencl": "kernels.cl"}


def write_artifact(directory: str, program: Program, sizes: dict[str, int], dtype: str,
                   emit: frozenset[str] = frozenset(), batch_first: bool = False,
                   cpu: str = "host", target: str = "cuda") -> None:
    from lstmc_runtime.artifact import write_file, write_manifest
    from lstmc_runtime.gpu.plan import GpuBinary
    from lstmc_runtime.manifest import GPU_CONTRACT_PREFIX, gpu_contract_hash

    if dtype != "float32":
        raise CompileError(f"target '{target}' computes in float32, not {dtype}")
    source, manifest = manifest_for(program, sizes, target)
    manifest = replace(manifest, cell=replace(manifest.cell, batch_first=bool(batch_first)),
                       source=SOURCE[target])
    # The source names the plan it was generated with: an edited plan is refused on load
    # (the runtime sizes device buffers from it), as a CPU library embeds its manifest's.
    source += f"{GPU_CONTRACT_PREFIX}{gpu_contract_hash(manifest.to_json())} */\n"
    files = [SOURCE[target]]
    write_file(directory, SOURCE[target], source)
    if target == "cuda" and nvrtc.available():
        binaries = {}
        for arch in nvrtc.ARCHES:
            compiled = nvrtc.compile_cuda(source, arch)
            cubin, ptx = f"kernels.{arch}.cubin", f"kernels.{arch}.ptx"
            write_file(directory, cubin, compiled.cubin)
            write_file(directory, ptx, compiled.ptx)
            files += [cubin, ptx]
            binaries[arch] = GpuBinary(
                cubin, ptx, registers={k: r.registers for k, r in compiled.kernels.items()},
                spill_bytes={k: r.spill_stores for k, r in compiled.kernels.items()})
        manifest = replace(manifest, binaries=binaries)
    if "ir" in emit:
        write_file(directory, "cell.ir", program.format(backward=True) + "\n")
    write_manifest(directory, manifest.to_json(), files)
