"""Compiled artifacts: written by the CLI, loaded by lstmc_runtime in a process where
lark, llvmlite and lstmc cannot be imported; damaged artifacts are errors, not crashes;
the on-disk cache hits, misses and rebuilds as it should."""
import json
import os
import subprocess
import sys
import textwrap

import lstmc_runtime
import numpy as np
import pytest
from conftest import ROOT, random_inputs, spec_path

import lstmc

RUNNER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lark", "llvmlite", "lstmc"):
                raise ImportError(f"{name} is not available on this machine")
    sys.meta_path.insert(0, Block())
    import numpy as np, lstmc_runtime
    for banned in ("lark", "llvmlite", "lstmc"):
        try:
            __import__(banned)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{banned} was importable")
    artifact, inputs, output = sys.argv[1:4]
    data = np.load(inputs)
    cell = lstmc_runtime.load(artifact)
    params = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
    state = {k[2:]: data[k] for k in data.files if k.startswith("s_")}
    y, final, tape = cell.forward(data["x"], params, state, train=True,
                                  lengths=data["lengths"])
    grads = tape.backward(data["dy"])
    np.savez(output, y=y, dx=grads["x"], **{"g_" + k: v for k, v in grads["params"].items()},
             **{"f_" + k: v for k, v in final.items()})
""")


def lstmc_cli(*args):
    return subprocess.run([sys.executable, "-m", "lstmc.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("name,extra", [("peephole_lstm", []), ("lstmp", ["--size", "P=3"])])
def test_artifact_runs_in_a_process_without_the_compiler(tmp_path, name, extra):
    artifact = tmp_path / "artifact"
    result = lstmc_cli("compile", spec_path(name), "-o", str(artifact), "--target", "cpu",
                       "--input-size", "3", "--hidden-size", "5", "--dtype", "float64",
                       "--emit", "ir,llvm,asm", *extra)
    assert result.returncode == 0, result.stderr
    assert {"manifest.json", "cell.so", "cell.ir", "cell.ll", "cell.s"} <= set(os.listdir(artifact))

    sizes = {"P": 3} if name == "lstmp" else {}
    reference = lstmc.compile(spec_path(name), 3, 5, dtype="float64", **sizes)
    x, params, state = random_inputs(reference, T=5, B=3)
    lengths = np.array([5, 2, 4])
    dy = np.random.default_rng(0).standard_normal((5, 3, reference.state_sizes["h"]))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=x, lengths=lengths, dy=dy, **{"p_" + k: v for k, v in params.items()},
             **{"s_" + k: v for k, v in state.items()})
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH="")
    run = subprocess.run([sys.executable, str(script), str(artifact), str(inputs),
                          str(tmp_path / "out.npz")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = np.load(tmp_path / "out.npz")

    y, final, tape = reference.forward(x, params, state, train=True, lengths=lengths)
    grads = tape.backward(dy)
    np.testing.assert_allclose(out["y"], y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["dx"], grads["x"], rtol=1e-10, atol=1e-12)
    for k in params:
        np.testing.assert_allclose(out["g_" + k], grads["params"][k], rtol=1e-10, atol=1e-12)
    for k in final:
        np.testing.assert_allclose(out["f_" + k], final[k], rtol=1e-10, atol=1e-12)


def test_stack_artifact_loads_with_lstmc_load(tmp_path):
    result = lstmc_cli("compile", spec_path("gru"), "-o", str(tmp_path / "a"),
                       "--input-size", "3", "--hidden-size", "4", "--num-layers", "2",
                       "--bidirectional", "--batch-first")
    assert result.returncode == 0, result.stderr
    stack = lstmc.load(tmp_path / "a")
    same = lstmc.compile(spec_path("gru"), 3, 4, num_layers=2, bidirectional=True,
                         batch_first=True)
    params = same.init_params()
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(stack.forward(x, params)[0], same.forward(x, params)[0],
                               rtol=2e-5, atol=1e-6)


def _artifact(tmp_path):
    directory = tmp_path / "art"
    lstmc.api.write_artifact_dir(spec_path("rnn_tanh"), str(directory), 3, 4)
    return directory


def test_damaged_library_is_refused(tmp_path):
    directory = _artifact(tmp_path)
    library = directory / "cell.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(lstmc.BackendError, match="does not match its checksum"):
        lstmc_runtime.load(directory)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "cell.so").unlink(), "artifact is incomplete: cell.so is missing"),
    (lambda d: (d / "manifest.json").write_text('{"format": 1, "tar'), "unreadable manifest"),
    (lambda d: (d / "manifest.json").unlink(), "not an lstmc artifact"),
    (lambda d: (d / "manifest.json").write_text(json.dumps({"format": 99})),
     "unsupported artifact format 99"),
])
def test_damaged_artifacts_are_errors(tmp_path, damage, message):
    directory = _artifact(tmp_path)
    damage(directory)
    with pytest.raises(lstmc.BackendError, match=message):
        lstmc_runtime.load(directory)


def test_cache_hits_misses_and_rebuilds(tmp_path, cache_calls):
    calls = cache_calls
    text = open(spec_path("rnn_tanh")).read()
    lstmc.compile(text, 3, 4, target="cpu")
    lstmc.compile(text, 3, 4, target="cpu")
    assert calls == [False, True]  # a miss, then a hit
    lstmc.compile(text.replace("tanh(", "relu("), 3, 4, target="cpu")
    lstmc.compile(text, 3, 5, target="cpu")
    assert calls[2:] == [False, False]  # a changed spec or size is a miss

    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 3
    first = next(p for p in entries if (p / "manifest.json").exists())
    for entry in entries:  # damage every entry: each is detected and rebuilt
        library = entry / "cell.so"
        library.write_bytes(library.read_bytes()[:100])
    cell = lstmc.compile(text, 3, 4, target="cpu")
    assert calls[-1] is False
    x = np.ones((2, 1, 3), np.float32)
    assert np.isfinite(cell.forward(x, cell.init_params())[0]).all()
    assert first.exists()


def test_partially_written_cache_entry_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(tmp_path / "cache"))
    from lstmc.cache import cache_key  # noqa: F401
    text = open(spec_path("indrnn")).read()
    cell = lstmc.compile(text, 3, 4, target="cpu")
    entry = next(p for p in (tmp_path / "cache").iterdir())
    (entry / "manifest.json").write_text((entry / "manifest.json").read_text()[:50])
    again = lstmc.compile(text, 3, 4, target="cpu")  # rebuilt, not loaded
    x = np.ones((2, 1, 3), np.float32)
    params = cell.init_params()
    np.testing.assert_array_equal(again.forward(x, params)[0], cell.forward(x, params)[0])


def test_portable_artifact_for_a_generic_cpu(tmp_path):
    result = lstmc_cli("compile", spec_path("gru"), "-o", str(tmp_path / "a"), "--cpu",
                       "x86-64-v2", "--input-size", "3", "--hidden-size", "4",
                       "--dtype", "float64")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["cpu"] == {"name": "x86-64-v2", "features": ["sse4_1", "sse4_2"]}
    cell = lstmc_runtime.load(tmp_path / "a")
    reference = lstmc.compile(spec_path("gru"), 3, 4, dtype="float64")
    x, params, state = random_inputs(reference)
    np.testing.assert_allclose(cell.forward(x, params, state)[0],
                               reference.forward(x, params, state)[0], rtol=1e-10)


def test_artifact_for_a_cpu_with_missing_instructions_is_refused(tmp_path):
    directory = _artifact(tmp_path)
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("the check reads /proc/cpuinfo")
    manifest["cpu"]["features"] = ["sse4_2", "instructions_from_the_future"]
    from lstmc_runtime.manifest import self_checksum

    manifest["manifest_sha256"] = self_checksum(manifest)  # judged by what it says
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(lstmc.BackendError,
                       match="compiled for a CPU with instructions_from_the_future"):
        lstmc_runtime.load(directory)
