"""Hardening (issue 10): artifacts cannot be broken by editing them, the cache rebuilds what
it cannot load and works around an unusable directory, packed parameters are immutable,
the buffer pool is bounded and released, and odd input gets a named error. Each test is a
finding of the issue, turned into a regression test."""
import json
import shutil
import warnings

import lstmc_runtime
import numpy as np
import pytest
from conftest import spec_path
from lstmc_runtime import dtypes
from lstmc_runtime.errors import ArtifactError, UsageError
from lstmc_runtime.manifest import CpuManifest, self_checksum

import lstmc
from lstmc.cli import main


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """One float64 rnn_tanh artifact (I=3, H=4), copied by each test that edits it."""
    directory = tmp_path_factory.mktemp("artifact") / "rnn"
    lstmc.api.write_artifact_dir(spec_path("rnn_tanh"), str(directory), 3, 4, dtype="float64")
    return directory


def _copy(artifact, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(artifact, target)
    return target


def _edit(directory, change, reseal=True):
    """Apply `change` to the manifest's JSON; `reseal` recomputes the manifest's checksum
    of itself, as someone editing it on purpose would."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    if reseal:
        data["manifest_sha256"] = self_checksum(data)
    path.write_text(json.dumps(data))


def _buffer(data, entry, name):
    return next(b for b in data["entries"][entry]["buffers"] if b["name"] == name)


def _swap_symbols(data):
    e = data["entries"]
    e["forward"]["symbol"], e["backward"]["symbol"] = (e["backward"]["symbol"],
                                                       e["forward"]["symbol"])


MANIFEST_EDITS = {  # the edits of the issue, each refused with a message naming it
    "y (T, B, 1)": (lambda d: _buffer(d, "forward", "y").update(shape=["T", "B", 1]),
                    "buffer y has shape"),
    "float64 relabelled float32": (lambda d: d.update(dtype="float32"),  # lacks the bf16
                                   "entry points must be exactly .*forward_bf16_mt; got"),
    "scratch size zeroed": (lambda d: d["entries"]["forward_mt"].update(arena_elements=0),
                            "does not describe the library"),
    "forward and backward swapped": (_swap_symbols, "must be symbol lstmc_forward"),
    "entry symbol abort": (lambda d: d["entries"]["forward"].update(symbol="abort"),
                           "must be symbol lstmc_forward"),
    "unknown entry": (lambda d: d["entries"].update(extra=d["entries"]["forward"]),
                      "entry points must be exactly"),
    "state size": (lambda d: d["states"].update(h=5), "has shape"),
    "library outside": (lambda d: d.update(library="../cell.so"), "must be a file name in the artifact"),
    "field missing": (lambda d: d.pop("entries"), "field 'entries' is missing"),
    "saved shape": (lambda d: [b.update(shape=["T", "B", 1]) for b in
                               d["entries"]["backward"]["buffers"]
                               if b["name"].startswith("saved:")],
                    "another entry gives it"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_each_manifest_edit_is_refused(artifact, tmp_path, edit):
    change, message = MANIFEST_EDITS[edit]
    directory = _copy(artifact, tmp_path)
    _edit(directory, change, reseal=False)
    with pytest.raises(ArtifactError, match="does not match its own checksum"):
        lstmc_runtime.load(directory)
    _edit(directory, lambda d: None)  # now resealed: the contents themselves are judged
    with pytest.raises(ArtifactError, match=message):
        lstmc_runtime.load(directory)


def test_old_schema_is_refused_saying_so(artifact, tmp_path):
    directory = _copy(artifact, tmp_path)
    _edit(directory, lambda d: d.update(format=1))
    with pytest.raises(ArtifactError, match="schema 1 was written by an older lstmc"):
        lstmc_runtime.load(directory)


def test_manifest_round_trips_through_its_dataclass(artifact):
    data = json.loads((artifact / "manifest.json").read_text())
    typed = CpuManifest.from_json(data)
    again = typed.to_json()
    for key in ("entries", "packed", "params", "states", "sizes", "dtype", "cpu", "library",
                "checksums", "gradient_aliases", "step_weight_elements"):
        assert again[key] == data[key], key
    assert typed.cell.dtype == "float64" and typed.cell.states == {"h": 4}


def test_library_without_the_manifest_hash_is_refused(artifact, tmp_path):
    """A library from another build (here: another artifact's) does not match."""
    other = tmp_path / "other"
    lstmc.api.write_artifact_dir(spec_path("rnn_relu"), str(other), 3, 4, dtype="float64")
    directory = _copy(artifact, tmp_path)
    shutil.copy(other / "cell.so", directory / "cell.so")
    from lstmc_runtime.artifact import sha256

    _edit(directory, lambda d: d["checksums"].update({"cell.so": sha256(directory /
                                                                          "cell.so")}))
    with pytest.raises(ArtifactError, match="does not describe the library"):
        lstmc_runtime.load(directory)


@pytest.mark.parametrize("damage", ["resealed edit", "field removed", "garbage"])
def test_cache_entry_that_fails_to_load_is_rebuilt(tmp_path, cache_calls, damage):
    calls = cache_calls
    with open(spec_path("rnn_tanh")) as f:
        text = f.read()
    cell = lstmc.compile(text, 3, 4, target="cpu", dtype="float64")
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    if damage == "resealed edit":
        _edit(entry, lambda d: _buffer(d, "forward", "y").update(shape=["T", "B", 1]))
    elif damage == "field removed":
        _edit(entry, lambda d: d.pop("states"), reseal=False)
    else:
        (entry / "manifest.json").write_text("{]")
    again = lstmc.compile(text, 3, 4, target="cpu", dtype="float64")
    assert calls == [False, False]  # the damaged entry was rebuilt, not loaded
    third = lstmc.compile(text, 3, 4, target="cpu", dtype="float64")
    assert calls[2] is True
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    params = cell.init_params()
    np.testing.assert_array_equal(again.forward(x, params)[0], cell.forward(x, params)[0])
    np.testing.assert_array_equal(third.forward(x, params)[0], cell.forward(x, params)[0])


@pytest.mark.parametrize("kind", ["a file", "below a file"])
def test_unusable_cache_directory_falls_back_with_a_warning(tmp_path, monkeypatch, kind):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    root = blocker if kind == "a file" else blocker / "cache"
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(root))
    from lstmc.cache import CacheWarning

    with pytest.warns(CacheWarning) as record:
        cell = lstmc.compile(spec_path("rnn_tanh"), 3, 4, target="cpu")
    message = str(record[0].message)
    assert str(root) in message and "LSTMC_CACHE_DIR" in message
    x = np.ones((2, 1, 3), np.float32)
    reference = lstmc.compile(spec_path("rnn_tanh"), 3, 4)
    params = reference.init_params()
    np.testing.assert_allclose(cell.forward(x, params)[0], reference.forward(x, params)[0],
                               rtol=1e-5)


def test_cli_with_an_unusable_cache_directory_is_not_an_internal_error(tmp_path, monkeypatch,
                                                                       capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(blocker))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(["gradcheck", spec_path("rnn_tanh"), "--target", "cpu"])
    assert status == 0, capsys.readouterr().err


def test_packed_params_are_an_immutable_snapshot():
    cell = lstmc.compile(spec_path("rnn_tanh"), 3, 4, target="cpu")
    params = cell.init_params()
    packed = cell.pack_params(params)
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    before = cell.forward(x, packed)[0]
    for change in (lambda: packed.__setitem__("b_ih", params["b_ih"] * 2),
                   lambda: packed.update(b_ih=params["b_ih"]),
                   lambda: packed.pop("b_ih"), lambda: packed.clear(),
                   lambda: packed.__delitem__("b_ih")):
        with pytest.raises(UsageError, match="pack the changed parameters again"):
            change()
    with pytest.raises(ValueError):  # the owned arrays are read-only
        packed["b_ih"][0] = 1.0
    for value in params.values():  # the caller's arrays are not the snapshot's
        value[...] = 0
    np.testing.assert_array_equal(cell.forward(x, packed)[0], before)
    assert dict(packed).keys() == packed.keys()
    # its packs and their addresses too: the kernels read them sized by the cell, so a
    # swapped array would be read past its end
    name = next(iter(packed.packs))
    for table, value in ((packed.packs, np.zeros(1, np.float32)), (packed.addresses, 0)):
        with pytest.raises(TypeError):
            table[name] = value
    np.testing.assert_array_equal(cell.forward(x, packed)[0], before)


def test_the_native_forward_takes_the_arguments_of_every_cell():
    """Inference's fast path once took any keyword: a misspelt one ran without it, and a
    workspace (training only) was ignored."""
    cell = lstmc.compile(spec_path("rnn_tanh"), 3, 4, target="cpu")
    params = cell.init_params()
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(TypeError, match="lenghts"):
        cell.forward(x, params, lenghts=[1, 2])
    with pytest.raises(UsageError, match="workspace= is for a training forward"):
        cell.forward(x, params, workspace=np.zeros(cell.workspace_size(4, 2), np.float32))


def test_array_likes_and_damaged_workspaces_are_named_errors():
    """Objects with a shape and a dtype but no memory of their own (an h5py dataset, say)
    are refused by name, as is a workspace whose first element is not a slice count,
    and a state of the wrong rank given to a bound cell."""
    class Dataset:
        shape, dtype = (4, 2, 3), np.dtype(np.float32)

    cell = lstmc.compile(spec_path("rnn_tanh"), 3, 4, target="cpu")
    params = cell.init_params()
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(lstmc.ShapeError, match=r"x: expected an array .*got Dataset "
                                               r"\(a NumPy array: np.asarray makes one\)"):
        cell.forward(Dataset(), params)
    with pytest.raises(lstmc.ShapeError, match=r"params\['b_ih'\]: expected an array.*Dataset"):
        cell.forward(x, dict(params, b_ih=Dataset()))
    workspace = np.full(cell.workspace_size(4, 2), np.nan, np.float32)
    with pytest.raises(lstmc.BackendError, match="nan batch slices for batch 2"):
        cell.saved_from_workspace(workspace, x, np.full(2, 4))
    with pytest.raises(lstmc.ShapeError, match=r"state\['h'\]: expected shape \(B, 4\), "
                                               r"got \(4,\)"):
        cell.bind(params).reset({"h": np.zeros(4, np.float32)})


def test_tape_from_another_cell_is_a_usage_error():
    one = lstmc.compile(spec_path("rnn_tanh"), 3, 4, target="cpu")
    other = lstmc.compile(spec_path("rnn_tanh"), 3, 5, target="cpu")
    x = np.zeros((2, 1, 3), np.float32)
    _, _, tape = one.forward(x, one.init_params(), train=True)
    forged = lstmc.Tape(other, other.init_params(), tape.saved, tape.x_shape)
    with pytest.raises(UsageError, match="not recorded by"):
        forged.backward(np.zeros((2, 1, 5), np.float32))
    tape.cell = other
    with pytest.raises(UsageError, match="this tape was recorded by"):
        tape.backward(np.zeros((2, 1, 5), np.float32))


def test_buffer_pool_limit_idle_release_and_release_memory(monkeypatch):
    import time

    from lstmc_runtime.pool import BufferPool

    monkeypatch.setenv("LSTMC_POOL_BYTES", "0")
    pool = BufferPool()
    pool.put([np.empty(1 << 20, np.float32)])
    assert pool.held_bytes == 0  # a limit of 0 keeps nothing

    monkeypatch.setenv("LSTMC_POOL_BYTES", str(8 << 20))
    monkeypatch.setenv("LSTMC_POOL_IDLE_S", "0.2")
    pool = BufferPool()
    pool.put([np.empty(1 << 20, np.float32) for _ in range(3)])  # 12 MiB offered
    assert pool.held_bytes == 8 << 20
    deadline = time.monotonic() + 30
    while pool.held_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.held_bytes == 0  # given back once idle

    monkeypatch.setenv("LSTMC_POOL_IDLE_S", "0")  # never by itself
    pool = BufferPool()
    pool.put([np.empty(1 << 20, np.float32)])
    assert pool.release() == 4 << 20 and pool.held_bytes == 0
    assert isinstance(lstmc.release_memory(), int)


def test_bad_pool_setting_warns_and_uses_the_default(monkeypatch):
    from lstmc_runtime.pool import DEFAULT_POOL_BYTES, BufferPool

    monkeypatch.setenv("LSTMC_POOL_BYTES", "lots")
    with pytest.warns(RuntimeWarning, match="LSTMC_POOL_BYTES"):
        pool = BufferPool()
    assert pool.limit == DEFAULT_POOL_BYTES


def test_unknown_cpu_name_is_an_error_and_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["compile", spec_path("rnn_tanh"), "-o", str(out), "--input-size", "3",
                   "--hidden-size", "4", "--cpu", "no-such-cpu"])
    err = capsys.readouterr().err
    assert status == 1 and "unknown CPU name 'no-such-cpu'" in err, err
    assert not out.exists()


TWO_CELLS = ("# first\ncell a(x: I) -> h: H {\n  param W, U\n  h' = tanh(W @ x + U @ h) # ok\n}\n"
             "cell b(x: I) -> h: H {\n  param W\n  h' = tanh(W @ x) + gg\n}\n")


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_every_line_ending_reaches_the_second_cell(tmp_path, ending, capsys):
    spec = tmp_path / "two.lstm"
    spec.write_bytes(TWO_CELLS.replace("\n", ending).encode())
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:8:" in err and "undefined name 'gg'" in err, err
    assert "h' = tanh(W @ x) + gg" in err


@pytest.mark.parametrize("odd", ["\u2028", "\x0c", "\x85", "\x0b"])
def test_odd_line_breaks_in_comments_quote_the_right_line(tmp_path, odd, capsys):
    spec = tmp_path / "odd.lstm"
    spec.write_text(TWO_CELLS.replace("# first", f"# fir{odd}st"), encoding="utf-8")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:8:" in err and "\n      h' = tanh(W @ x) + gg\n" in err, err


def test_spec_file_name_with_braces_is_read_as_a_file(tmp_path, capsys):
    spec = tmp_path / "spec{v2}.lstm"
    shutil.copy(spec_path("rnn_tanh"), spec)
    assert main(["check", str(spec)]) == 0, capsys.readouterr().err
    assert lstmc.compile(str(spec), 3, 4).name == "rnn_tanh"


@pytest.mark.parametrize("args,status,message", [
    (["gradcheck", "SPEC", "--steps", "-1"], 2, "expected an integer in 1.."),
    (["gradcheck", "SPEC", "--batch", "-2"], 2, "expected an integer in 1.."),
    (["gradcheck", "SPEC", "--hidden-size", "3000000000"], 2, "expected an integer in 1.."),
    (["gradcheck", "SPEC", "--size", f"H={2**63 - 1}"], 2, "expected an integer in 1.."),
    (["gradcheck", "SPEC", "--hidden-size", "4", "--size", "H=5"], 1, "given twice"),
    (["gradcheck", "SPEC", "--size", "H=5", "--size", "H=6"], 1, "given twice"),
    (["compile", "SPEC", "--num-layers", "0", "-o", "OUT"], 2, "expected an integer in 1.."),
])
def test_cli_bad_numbers_are_named_errors(args, status, message, capsys, tmp_path):
    args = [spec_path("rnn_tanh") if a == "SPEC" else str(tmp_path / "o") if a == "OUT"
            else a for a in args]
    with pytest.raises(SystemExit) if status == 2 else _nothing() as exit_info:
        code = main(args)
    code = exit_info.value.code if status == 2 else code
    err = capsys.readouterr().err
    assert code == status and message in err and "internal error" not in err, err


class _nothing:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_output_naming_an_existing_file_is_an_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    status = main(["compile", spec_path("rnn_tanh"), "-o", str(target), "--input-size", "3",
                   "--hidden-size", "4"])
    err = capsys.readouterr().err
    assert status == 1 and "exists and is not a directory" in err, err
    assert target.read_text() == "keep me"


def test_closed_pipe_exits_quietly(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, SPECS_DIR

    specs = " ".join(str(p) for p in sorted(SPECS_DIR.glob("*.lstm")))
    run = subprocess.run(f"{sys.executable} -m lstmc.cli check {specs} | head -c 1",
                         check=False, shell=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.stderr == "" and len(run.stdout) == 1


def test_dtype_objects():
    assert dtypes.dtype("float32") is dtypes.FLOAT32
    assert dtypes.dtype(np.float64) is dtypes.FLOAT64
    assert dtypes.dtype(np.dtype("float32")).llvm == "float"
    assert dtypes.FLOAT64.c_name == "double" and dtypes.FLOAT32.literal_suffix == "f"
    with pytest.raises(UsageError, match="unsupported dtype 'int8'"):
        dtypes.dtype("int8")
    with pytest.raises(lstmc.CompileError, match="unsupported dtype 'float16'"):
        lstmc.compile(spec_path("rnn_tanh"), 3, 4, dtype="float16")


def test_every_cell_describes_itself():
    reference = lstmc.compile(spec_path("lstmp"), 3, 4, P=2)
    native = lstmc.compile(spec_path("lstmp"), 3, 4, P=2, target="cpu")
    assert native.description.target == "cpu" and reference.description.target == "reference"
    for field in ("name", "dtype", "sizes", "input_size", "output", "states", "params"):
        assert getattr(native.description, field) == getattr(reference.description, field)


BAD_HELPER_CALLS = [  # (call, args, error, message, layers: a stack has no workspace_size)
    ("zero_state", (-1,), UsageError, "batch: expected an integer >= 0, got -1", (1, 2)),
    ("zero_state", (2.0,), UsageError, "batch: expected an integer, got float", (1, 2)),
    ("zero_state", (2 ** 62,), lstmc.ShapeError, "do not fit in memory", (1, 2)),
    ("init_params", (-1,), UsageError, "seed: expected an integer >= 0, got -1", (1, 2)),
    ("init_params", ("a",), UsageError, "seed: expected an integer, got str", (1, 2)),
    ("workspace_size", (-1, 3), UsageError, "T: expected an integer >= 0, got -1", (1,)),
    ("workspace_size", (4, 1.5), UsageError, "B: expected an integer, got float", (1,)),
]


@pytest.mark.parametrize("call,args,error,message,layers", [
    (call, args, error, message, layers) for call, args, error, message, counts
    in BAD_HELPER_CALLS for layers in counts])
def test_helpers_refuse_bad_counts_and_seeds_by_name(layers, call, args, error, message):
    """The helpers around forward check their arguments as forward does: a clear error,
    not NumPy's (or a negative workspace size)."""
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu", num_layers=layers)
    with pytest.raises(error, match=message):
        getattr(cell, call)(*args)


def test_a_tape_for_another_shape_than_its_forward_is_refused():
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu")
    x = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    params = cell.init_params(0)
    y, _, tape = cell.forward(x, params, train=True)
    retold = lstmc_runtime.Tape(cell, params, tape.saved, (1, 3, 3))
    with pytest.raises(UsageError, match=r"ran \(T, B\) = \(5, 3\), x_shape says \(1, 3\)"):
        retold.backward(np.ones((1, 3, 4), np.float32))
