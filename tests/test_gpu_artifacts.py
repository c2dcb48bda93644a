"""`lstmc compile --target cuda|opencl`: the files written, what the CLI says, and what
loading says without a GPU."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, needs_opencl, spec_path

from lstmc.backends.gpu import nvrtc


def lstmc(*args):
    return subprocess.run([sys.executable, "-m", "lstmc.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _cuda_device() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def test_cuda_artifact_files_and_manifest(tmp_path):
    out = tmp_path / "gru"
    result = lstmc("compile", spec_path("gru"), "-o", str(out), "--target", "cuda",
                   "--input-size", "16", "--hidden-size", "32")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "cuda" and manifest["source"] == "kernels.cu"
    source = (out / "kernels.cu").read_text()
    assert "#ifdef __OPENCL_VERSION__" in source and 'extern "C" __global__' in source
    # every kernel opens with a comment giving its arguments' shapes
    assert " * x (T, B, 16)" in source and " * st_h (2, B, 32)" in source
    if nvrtc.available():
        assert set(manifest["binaries"]) == set(nvrtc.ARCHES)
        for arch, files in manifest["binaries"].items():
            assert (out / files["cubin"]).read_bytes()[:4] == b"\x7fELF"
            assert f".target {arch}" in (out / files["ptx"]).read_text()
            assert set(files["spill_bytes"].values()) == {0}
        assert "sm_90: kernels.sm_90.cubin, kernels.sm_90.ptx; registers: " in result.stdout
        assert "no spills" in result.stdout and "lstmc_gemm" in result.stdout
    assert set(manifest["checksums"]) >= {"kernels.cu"}


@pytest.mark.skipif(_cuda_device(), reason="a CUDA device is present")
def test_loading_a_cuda_artifact_without_gpu_says_so(tmp_path):
    import lstmc_runtime

    assert lstmc("compile", spec_path("lstm"), "-o", str(tmp_path), "--target", "cuda",
                 "--input-size", "4", "--hidden-size", "8").returncode == 0
    with pytest.raises(lstmc_runtime.BackendError, match=r"target 'cuda'.*(CuPy|device)"):
        lstmc_runtime.load(str(tmp_path))


def test_emit_cuda_prints_the_kernels():
    result = lstmc("compile", spec_path("mgu"), "--emit", "cuda", "--input-size", "4",
                   "--hidden-size", "8")
    assert result.returncode == 0, result.stderr
    assert "KERNEL lstmc_gemm(" in result.stdout
    assert "KERNEL infer_persistent(" in result.stdout and "KERNEL backward_r" in result.stdout


def test_gpu_target_rejects_float64_cleanly(tmp_path):
    result = lstmc("compile", spec_path("lstm"), "-o", str(tmp_path), "--target", "opencl",
                   "--dtype", "float64", "--input-size", "4", "--hidden-size", "8")
    assert result.returncode == 1
    assert "float32" in result.stderr and "Traceback" not in result.stderr


def test_opencl_stack_artifact(tmp_path):
    needs_opencl()
    import lstmc_runtime
    import numpy as np

    import lstmc as lstmc_api

    result = lstmc("compile", spec_path("gru"), "-o", str(tmp_path), "--target", "opencl",
                   "--input-size", "4", "--hidden-size", "6", "--num-layers", "2")
    assert result.returncode == 0, result.stderr
    stack = lstmc_runtime.load(str(tmp_path))
    reference = lstmc_api.compile(spec_path("gru"), 4, 6, num_layers=2)
    params = reference.init_params(seed=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    y_ref, _ = reference.forward(x, params)
    y, _ = stack.forward(x, params)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC not installed")
def test_cuda_stack_artifact_reports_each_layer(tmp_path):
    result = lstmc("compile", spec_path("gru"), "-o", str(tmp_path), "--target", "cuda",
                   "--input-size", "4", "--hidden-size", "8", "--num-layers", "2")
    assert result.returncode == 0, result.stderr
    assert "  layer0/sm_90: kernels.sm_90.cubin" in result.stdout
    assert "  upper/sm_90: kernels.sm_90.cubin" in result.stdout
    assert "NVRTC is not installed" not in result.stdout


def _resealed(directory, edit):
    """Edit an artifact's manifest and recompute its own checksum, as a deliberate edit
    would: only the contract with the kernel source can catch it."""
    from lstmc_runtime.manifest import self_checksum

    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["manifest_sha256"] = self_checksum(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", [
    lambda m: m["plan"]["modes"]["train"]["buffers"][0].update(width=1),
    lambda m: m["plan"]["threads"].update(region=4096),
    lambda m: m.update(states={k: 1 for k in m["states"]}),
], ids=["buffer width", "threads", "state sizes"])
def test_an_edited_gpu_plan_is_refused(tmp_path, edit):
    needs_opencl()
    import lstmc_runtime
    from lstmc_runtime.errors import ArtifactError

    result = lstmc("compile", spec_path("gru"), "-o", str(tmp_path), "--target", "opencl",
                   "--input-size", "4", "--hidden-size", "6")
    assert result.returncode == 0, result.stderr
    lstmc_runtime.load(str(tmp_path))  # as written: loads
    _resealed(tmp_path, edit)
    with pytest.raises(ArtifactError, match="launch plan is not the one"):
        lstmc_runtime.load(str(tmp_path))


def test_an_opencl_compiler_too_old_for_the_cpu_is_named(monkeypatch):
    """PoCL 3.0 (LLVM 14) on a newer CPU fails every build with clang's "unknown target
    CPU": the error says that, not that lstmc's kernels were rejected."""
    cl = pytest.importorskip("pyopencl")
    import lstmc as lstmc_api
    from lstmc.errors import BackendError

    class TooOld:
        def __init__(self, context, source):
            pass

        def build(self, options=()):
            raise cl.RuntimeError("clBuildProgram failed: BUILD_PROGRAM_FAILURE\n"
                                  "error: unknown target CPU 'generic'")

    monkeypatch.setattr(cl, "Program", TooOld)
    with pytest.raises(BackendError, match="cannot build for this CPU") as raised:
        lstmc_api.compile(spec_path("lstm"), 3, 5, target="opencl")
    assert "LSTMC_OPENCL_DEVICE" in str(raised.value)
    assert "rejected the kernels" not in str(raised.value)
