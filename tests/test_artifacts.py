"""Compiled artifacts: written by the CLI, loaded by lstmc_runtime in a process where
lark, llvmlite and lstmc cannot be imported; damaged artifacts are errors, not crashes;
the on-disk cache hits, misses and rebuilds as it should."""
import json
import os
import pathlib
import shutil
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

    entries = [p for p in (tmp_path / "cache").iterdir()  # cells: not the shared code
               if not p.name.startswith(".") and p.is_dir()]
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


@pytest.mark.parametrize("intruder", ["file", "dangling link"])
def test_a_file_where_a_cache_entry_goes_is_replaced(tmp_path, cache_calls, intruder):
    """A plain file or a dangling symlink named as an entry: the next compile removes
    it and stores the entry (it used to rebuild every time, never repairing it)."""
    text = open(spec_path("rnn_tanh")).read()
    lstmc.compile(text, 3, 4, target="cpu")
    entry = next(p for p in (tmp_path / "cache").iterdir()
                 if not p.name.startswith(".") and p.is_dir())
    shutil.rmtree(entry)
    if intruder == "file":
        entry.write_text("not an entry")
    else:
        entry.symlink_to(tmp_path / "nowhere")
    lstmc.compile(text, 3, 4, target="cpu")
    assert entry.is_dir() and not entry.is_symlink()
    lstmc.compile(text, 3, 4, target="cpu")
    assert cache_calls == [False, False, True]  # rebuilt once, then a hit


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


# -- edited artifacts: their checksums recomputed, so only the loader's checks stand ------

LOAD_ELSEWHERE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway load fails fast
    import lstmc_runtime
    try:
        lstmc_runtime.load(sys.argv[1])
    except lstmc_runtime.ArtifactError as error:
        print("ArtifactError:", error)
    else:
        print("loaded")
""")


def _load_elsewhere(directory) -> str:
    """Load in a child process, where a crash (SIGBUS, SIGSEGV) or a runaway load
    cannot take pytest with it; what it printed, once it exited normally."""
    run = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, str(directory)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"rc={run.returncode}\n{run.stderr[-2000:]}"
    return run.stdout


def _reseal(directory, edit=None) -> None:
    """Apply `edit` to the manifest, then recompute every checksum it holds (of the files
    that exist) and its checksum of itself: an edit made on purpose."""
    from lstmc_runtime.artifact import sha256
    from lstmc_runtime.manifest import self_checksum

    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    if edit is not None:
        edit(manifest)
    for name in manifest.get("checksums") or {}:
        if (directory / name).is_file():
            manifest["checksums"][name] = sha256(str(directory / name))
    manifest["manifest_sha256"] = self_checksum(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One artifact of each kind, compiled once; tests edit copies (`fresh`)."""
    base = tmp_path_factory.mktemp("built")
    spec = spec_path("rnn_tanh")
    lstmc.api.write_artifact_dir(spec, str(base / "cpu"), 3, 4)
    lstmc.api.write_artifact_dir(spec, str(base / "opencl"), 3, 4, target="opencl")
    lstmc.api.write_artifact_dir(spec, str(base / "stack"), 3, 4, num_layers=2,
                                 bidirectional=True)
    return base


@pytest.fixture
def fresh(built, tmp_path):
    """fresh(kind): a private copy of the built artifact of that kind."""
    import shutil

    def copy(kind: str):
        return pathlib.Path(shutil.copytree(built / kind, tmp_path / kind))
    return copy


@pytest.mark.parametrize("cut", [lambda n: n // 2, lambda n: n - 1, lambda n: 64],
                         ids=["half", "last-byte", "header-only"])
def test_truncated_library_with_matching_checksums_is_refused_before_dlopen(fresh, cut):
    """A library cut short, its checksum recomputed, is refused by the check of its ELF
    layout: dlopen would map segments past the end of the file and die of SIGBUS."""
    directory = fresh("cpu")
    library = directory / "cell.so"
    data = library.read_bytes()
    library.write_bytes(data[:cut(len(data))])
    _reseal(directory)
    out = _load_elsewhere(directory)
    assert "ArtifactError:" in out and "cell.so: not a loadable native library" in out, out


@pytest.mark.parametrize("offset,value,message", [
    (4, b"\x01", "ELF class 1"),          # 32-bit
    (5, b"\x02", "ELF class 2, data encoding 2"),  # big-endian
    (18, b"\x28\x00", "ELF machine 40"),            # 32-bit ARM
    (0, b"MZ\x90\x00", "no ELF header"),
], ids=["32-bit", "big-endian", "arm32", "not-elf"])
def test_library_not_of_the_elf_kind_lstmc_builds_is_refused(fresh, offset, value, message):
    """A library that is not a 64-bit little-endian x86-64/AArch64 ELF shared object is
    refused, naming the file and what it is, before dlopen is asked."""
    directory = fresh("cpu")
    library = directory / "cell.so"
    data = bytearray(library.read_bytes())
    data[offset:offset + len(value)] = value
    library.write_bytes(bytes(data))
    _reseal(directory)
    with pytest.raises(lstmc_runtime.ArtifactError, match=f"cell.so: not a loadable native "
                                                          f"library: {message}"):
        lstmc_runtime.load(directory)


def _with_deep_field(manifest: dict, depth: int) -> str:
    """The manifest's text with a field of arrays nested `depth` deep, sealed with its
    checksum of itself; built as text, since json.dumps of it would reach the recursion
    limit in the test itself."""
    import hashlib

    from lstmc_runtime.manifest import canonical

    deep = "[" * depth + "]" * depth
    placeholder = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    placeholder["deep"] = "DEEP"
    text = canonical(placeholder).decode().replace('"DEEP"', deep)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return text[:-1] + f',"manifest_sha256":"{digest}"}}'


@pytest.mark.parametrize("kind", ["cpu", "opencl", "stack"])
@pytest.mark.parametrize("text", [
    lambda m: "[" * 100000,
    lambda m: '{"a": ' * 100000,
    lambda m: _with_deep_field(m, 985),
    lambda m: _with_deep_field(m, 40),
], ids=["arrays", "objects", "a-field-near-the-recursion-limit", "a-field-40-deep"])
def test_deeply_nested_manifest_is_unreadable(fresh, kind, text):
    """JSON nested past Python's recursion limit, or deeper than any manifest lstmc
    writes (hashing it could reach that limit), is an unreadable manifest
    (ArtifactError), not a RecursionError."""
    directory = fresh(kind)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(text(manifest))
    with pytest.raises(lstmc_runtime.ArtifactError, match="unreadable manifest"):
        lstmc_runtime.load(directory)


def _set(path: str, value):
    """An edit of the manifest: the field at `path` ("layers.num_layers") set to value."""
    def edit(manifest):
        *parents, last = path.split(".")
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("cells", []), r"field 'cells' must be an object"),
    (_set("cells", {"layer0": "layer0"}), r"field 'cells' must name the cells layer0, upper"),
    (_set("cells", {"layer0": "layer0", "upper": "upper", "more": "upper"}),
     r"field 'cells' must name the cells layer0, upper"),
    (_set("cells", {"layer0": "/tmp/elsewhere", "upper": "upper"}),
     r"field 'cells' must give each cell a directory in the artifact"),
    (_set("cells", {"layer0": "../stack/layer0", "upper": "upper"}),
     r"field 'cells' must give each cell a directory in the artifact"),
    (_set("cells", {"layer0": "upper", "upper": "layer0"}),
     r"field 'layers' gives 2 direction\(s\), so layer0 outputs 8 units, but cell upper "
     r"takes inputs of size 3"),
    (_set("layers", None), r"field 'layers' must be an object"),
    (_set("layers.num_layers", "2"), r"layers: field 'num_layers' must be an integer"),
    (_set("layers.num_layers", True), r"layers: field 'num_layers' must be an integer"),
    (_set("layers.num_layers", 0), r"layers: field 'num_layers' must be in 1\.\."),
    (_set("layers.bidirectional", "no"), r"field 'bidirectional' must be true or false"),
    (_set("layers.bidirectional", False), r"field 'layers' gives 1 direction\(s\)"),
    (_set("layers.batch_first", 1), r"field 'batch_first' must be true or false"),
    (_set("layers.directions", 2), r"field 'layers' has unknown field\(s\) 'directions'"),
    (_set("dtype", "float64"), r"field 'dtype' is 'float64', but cell layer0 .* 'float32'"),
    (_set("dtype", "float16"), r"field 'dtype' names no supported dtype"),
    (_set("target", "cuda"), r"field 'target' is 'cuda', but cell layer0 .* 'cpu'"),
    (_set("target", None), r"field 'target' must be a string"),
    (_set("cell", "gru"), r"field 'cell' is 'gru', but cell layer0 .* 'rnn_tanh'"),
    (lambda m: m["checksums"].pop("upper/manifest.json"),
     r"field 'checksums' has no checksum for upper/manifest.json"),
], ids=["cells-list", "cells-missing-upper", "cells-extra", "cell-absolute", "cell-dotdot",
        "cells-swapped", "layers-null", "num_layers-string", "num_layers-bool", "num_layers-0",
        "bidirectional-string", "bidirectional-false", "batch_first-int", "layers-unknown",
        "dtype-float64", "dtype-float16", "target-cuda", "target-null", "cell-gru",
        "checksum-missing"])
def test_edited_stack_manifest_is_refused(fresh, edit, message):
    """Every field of a stack's top-level manifest is checked for its type, its value
    and against the cells it names (their cell, target, dtype, and the sizes chaining
    from layer to layer); an edit, even resealed, is an ArtifactError naming the field,
    never a raw exception or a stack other than the one compiled."""
    directory = fresh("stack")
    _reseal(directory, edit)
    with pytest.raises(lstmc_runtime.ArtifactError, match=message):
        lstmc_runtime.load(directory)


def test_stack_manifest_of_a_billion_layers_is_refused_at_once(fresh):
    """num_layers is bounded before any layer is laid out: a huge count is refused, not
    a load that runs out of time or memory."""
    directory = fresh("stack")
    _reseal(directory, _set("layers.num_layers", 10**9))
    out = _load_elsewhere(directory)
    assert "ArtifactError:" in out and "field 'num_layers' must be in 1.." in out, out


@pytest.mark.parametrize("edit,message", [
    (_set("source", "nope.cl"), r"no checksum for its kernel source nope\.cl"),
    (_set("source", "."), r"kernel source must be a file name in the artifact, got '\.'"),
    (_set("source", "../opencl/kernels.cl"), r"kernel source must be a file name in the "
                                             r"artifact"),
    (_set("source", "sub/kernels.cl"), r"kernel source must be a file name in the artifact"),
    (_set("source", 7), r"kernel source must be a file name in the artifact, got 7"),
    (lambda m: m.pop("source"), r"kernel source must be a file name in the artifact, "
                                r"got None"),
], ids=["missing-file", "dot", "dotdot", "subdirectory", "number", "absent"])
def test_gpu_artifact_naming_no_kernel_source_file_is_refused(fresh, edit, message):
    """A GPU artifact's kernel source is a plain file name in the artifact with a
    checksum, as a CPU artifact's library: anything else is an ArtifactError, not
    FileNotFoundError or IsADirectoryError."""
    directory = fresh("opencl")
    (directory / "sub").mkdir()
    (directory / "sub" / "kernels.cl").write_bytes((directory / "kernels.cl").read_bytes())
    _reseal(directory, edit)
    with pytest.raises(lstmc_runtime.ArtifactError, match=message):
        lstmc_runtime.load(directory)


def test_gpu_kernel_source_that_is_not_text_is_refused(fresh):
    """Kernel source bytes that are not UTF-8, resealed, are an ArtifactError naming the
    file, not a UnicodeDecodeError."""
    directory = fresh("opencl")
    (directory / "kernels.cl").write_bytes(b"\xff\xfe")
    _reseal(directory)
    with pytest.raises(lstmc_runtime.ArtifactError,
                       match=r"kernels\.cl: the kernel source is not UTF-8 text"):
        lstmc_runtime.load(directory)


def test_cuda_binaries_are_files_of_the_artifact(tmp_path, monkeypatch):
    """A CUDA artifact's cubins reach the device as files of the artifact with checksums;
    one named in a subdirectory is refused (the device is replaced: no GPU needed)."""
    from lstmc_runtime.gpu import executor

    from lstmc.backends.gpu import nvrtc

    if not nvrtc.available():
        pytest.skip("no NVRTC: the artifact has no cubins")
    directory = tmp_path / "cuda"
    lstmc.api.write_artifact_dir(spec_path("rnn_tanh"), str(directory), 3, 4, target="cuda")
    seen = {}
    monkeypatch.setattr(executor, "GpuCell",
                        lambda typed, source, binaries: seen.update(binaries) or "cell")
    assert lstmc_runtime.load(directory) == "cell"
    assert seen and all(os.path.dirname(p) == str(directory) for p in seen.values())

    (directory / "sub").mkdir()
    arch, binary = next(iter(json.loads((directory / "manifest.json").read_text())
                             ["binaries"].items()))
    (directory / "sub" / binary["cubin"]).write_bytes((directory / binary["cubin"]).read_bytes())
    _reseal(directory, _set(f"binaries.{arch}.cubin", "sub/" + binary["cubin"]))
    with pytest.raises(lstmc_runtime.ArtifactError,
                       match=f"the manifest's {arch} binary must be a file name"):
        lstmc_runtime.load(directory)
