"""Every kernel of every spec compiles as CUDA C: with NVRTC for sm_80 and sm_90 (the
ptxas report read for registers and spills), and as a standalone .cu file with nvcc."""
import shutil
import subprocess

import pytest
from conftest import EXTRA_SIZES, SPEC_NAMES, spec_path

from lstmc.api import bind_sizes, lower_bound
from lstmc.backends.gpu import nvrtc
from lstmc.backends.gpu.kernels import generate
from lstmc.driver import lower_spec

# The sizes the benchmarks use: registers do not depend on them, spills could.
DEFAULT_SIZES = {"input_size": 256, "hidden_size": 256}
DEFAULT_EXTRA = {"lstmp": {"P": 128}, "xlstm/slstm": {"NH": 4}}

needs_nvrtc = pytest.mark.skipif(not nvrtc.available(),
                                 reason="NVRTC not installed (pip install -e '.[test]')")


def kernels_of(name):
    program, sizes = lower_bound(spec_path(name), None, DEFAULT_SIZES["input_size"],
                                 DEFAULT_SIZES["hidden_size"], DEFAULT_EXTRA.get(name, {}))
    return generate(program, sizes)


def launched_kernels(plan) -> set:
    from lstmc_runtime.gpu.plan import RegionLaunch

    names = {"lstmc_gemm"}
    for entry in plan.modes.values():
        names |= {s.kernel for s in entry.steps if isinstance(s, RegionLaunch)}
        if entry.persistent:
            names.add(entry.persistent.kernel)
    for prologue in plan.prologues:
        names |= {k for kernels in prologue.kernels.values() for k in kernels}
    return names


@needs_nvrtc
@pytest.mark.parametrize("arch", nvrtc.ARCHES)
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_nvrtc_compiles_without_spills(name, arch):
    source, plan = kernels_of(name)
    compiled = nvrtc.compile_cuda(source, arch)
    assert set(compiled.kernels) == launched_kernels(plan)
    for kernel, report in compiled.kernels.items():
        assert 0 < report.registers <= 255, (kernel, report)
        assert report.spill_stores == 0 and report.spill_loads == 0, (kernel, report)
    assert compiled.cubin[:4] == b"\x7fELF"
    assert f".target {arch}" in compiled.ptx


@needs_nvrtc
def test_nvrtc_errors_carry_the_log():
    from lstmc.backends.gpu.dialect import PRELUDE
    from lstmc.errors import BackendError

    with pytest.raises(BackendError, match=r"identifier \"undefined_name\" is undefined"):
        nvrtc.compile_cuda(PRELUDE + "KERNEL k(int n) { undefined_name = n; }\n")


@needs_nvrtc
def test_spilling_kernel_is_reported():
    """The report parser sees spills when ptxas makes them (registers capped at 16)."""
    from lstmc.backends.gpu.dialect import PRELUDE

    source = PRELUDE + """
KERNEL __launch_bounds__(1024, 2) heavy(GLOBAL float* a) {
  float v[48];
  for (int i = 0; i < 48; ++i) v[i] = a[i * LSZ + LID];
  for (int r = 0; r < 8; ++r)
    for (int i = 0; i < 48; ++i) v[i] = v[i] * v[(i + r) % 48] + 1.0f;
  float s = 0.0f;
  for (int i = 0; i < 48; ++i) s += v[i];
  a[LID] = s;
}
"""
    compiled = nvrtc.compile_cuda(source.replace("KERNEL __launch_bounds__(1024, 2)",
                                                 'extern "C" __global__ void '
                                                 "__launch_bounds__(1024, 2)"), "sm_90")
    report = compiled.kernels["heavy"]
    assert report.registers <= 32
    assert report.spill_stores > 0 or report.stack_bytes > 0


NVCC = shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_artifact_cu_compiles_with_nvcc(name, tmp_path):
    from lstmc.api import write_artifact_dir

    write_artifact_dir(spec_path(name), str(tmp_path), 32, 64, target="cuda",
                       **EXTRA_SIZES.get(name, {}))
    result = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "-o", str(tmp_path / "k.cubin"),
                             str(tmp_path / "kernels.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


@needs_nvrtc
def test_every_function_compiles_for_cuda():
    """Every op of the language (log, sqrt, abs, min, max, masks, reductions, a size-1
    state) as CUDA C."""
    from test_every_function import SPEC

    program = lower_spec(SPEC)
    source, plan = generate(program, bind_sizes(program, 64, 128, {}))
    for arch in nvrtc.ARCHES:
        compiled = nvrtc.compile_cuda(source, arch)
        assert set(compiled.kernels) == launched_kernels(plan)
        assert all(r.spill_stores == 0 for r in compiled.kernels.values())


@pytest.mark.parametrize("name,partition", [
    ("lstm", "units"), ("peephole_lstm", "units"), ("gru", "units"), ("greff/fgr", "units"),
    ("rnn_tanh", "units"), ("gru_cho", "columns"), ("lstmp", "columns"), ("mgu", "columns"),
    ("layernorm_lstm", "columns")])
def test_persistent_partition(name, partition):
    """Cells whose gate math works unit by unit after one product stage get the
    one-barrier-per-step persistent kernel; two dependent products (gru_cho, lstmp, mgu)
    or reductions across units (layer norm) need a barrier between stages."""
    _, plan = kernels_of(name)
    for mode in ("infer", "train"):
        entry = plan.modes[mode].persistent
        assert entry.partition == partition
        assert (entry.units == 256) == (partition == "units")


@needs_nvrtc
@pytest.mark.parametrize("arch", nvrtc.ARCHES)
def test_nvrtc_compiles_every_function_of_the_language(arch):
    """The CUDA branch of the dialect's math (log1pf, expm1f, erff, powf, remainder, ...),
    which PoCL does not see: every function of the language, forward and backward."""
    from test_every_function import SPEC

    program = lower_spec(SPEC)
    source, plan = generate(program, bind_sizes(program, 3, 4, {}))
    compiled = nvrtc.compile_cuda(source, arch)
    assert set(compiled.kernels) == launched_kernels(plan)
