"""The code every cell shares (GEMM, packing, workers) is compiled once, cached on disk
with its digest, and linked into each cell's library: a damaged cache file is rebuilt,
never linked, and a library loads in a process that never imported the compiler."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import exit_of_forked_child, spec_path
from oracles import lstm as lstm_step

import lstmc
from lstmc.api import write_artifact_dir
from lstmc.backends.llvm import support, toolchain


def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(support, "_objects", {})


def test_the_shared_code_is_built_once_per_process_and_read_from_disk_after(
        monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    built = []
    optimize = toolchain.optimize
    monkeypatch.setattr(toolchain, "optimize", lambda text, cpu="host": built.append(
        text.split("\n", 1)[0]) or optimize(text, cpu))
    first = support.support_object("float64")
    assert support.support_object("float64") is first  # kept in process
    assert built == ['; ModuleID = "lstmc_support_float64"']
    files = [f for f in os.listdir(tmp_path) if f.startswith("support-")]
    assert len(files) == 1
    monkeypatch.setattr(support, "_objects", {})  # as a new process would
    assert support.support_object("float64") == first
    assert built == ['; ModuleID = "lstmc_support_float64"']  # from disk


def test_a_damaged_cached_object_is_built_again_not_linked(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    good = support.support_object("float64")
    (name,) = [f for f in os.listdir(tmp_path) if f.startswith("support-")]
    path = tmp_path / name
    for damage in (b"", path.read_bytes()[:1000], b"\x00" * 64 + good[64:]):
        path.write_bytes(damage)
        monkeypatch.setattr(support, "_objects", {})
        assert support.support_object("float64") == good
        data = path.read_bytes()  # written again, whole
        assert data[support.DIGEST:] == good
    # and a cell linked after the damage computes what NumPy computes
    path.write_bytes(b"garbage")
    monkeypatch.setattr(support, "_objects", {})
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu", dtype="float64")
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) * 0.3 for k, s in cell.param_shapes.items()}
    x = rng.standard_normal((5, 2, 3))
    y, _ = cell.forward(x, params)
    state = {"h": np.zeros((2, 4)), "c": np.zeros((2, 4))}
    for t in range(5):
        state = lstm_step(params, x[t], state)
        np.testing.assert_allclose(y[t], state["h"], rtol=1e-10, atol=1e-12)


def test_a_cell_library_holds_the_shared_code_itself(tmp_path):
    """Loaded by lstmc_runtime alone (no compiler imported), it packs, runs its GEMMs
    and its threaded entries."""
    out = tmp_path / "cell"
    write_artifact_dir(spec_path("lstm"), str(out), 8, 64, target="cpu")
    child = f"""
import sys, numpy as np, lstmc_runtime
cell = lstmc_runtime.load({str(out)!r})
assert "lstmc" not in sys.modules
from lstmc_runtime.native import LIBRARY_HELPERS
missing = [s for s in LIBRARY_HELPERS if not cell._functions.get(s)]
assert not missing, missing
rng = np.random.default_rng(1)
params = {{k: (rng.standard_normal(s) * 0.1).astype(np.float32)
          for k, s in cell.param_shapes.items()}}
y, _ = cell.forward(rng.standard_normal((4, 3, 8)).astype(np.float32), params)
print(float(np.abs(y).sum()))
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_shared_code_builds_builds_its_own():
    """A fork while another thread builds the shared code (its lock held): the child
    gets the shared code instead of waiting for that thread."""
    expected = support.support_object("float32")
    check = lambda: support.support_object("float32") == expected  # noqa: E731
    assert exit_of_forked_child(check, [support._lock]) == 0
