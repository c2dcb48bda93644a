"""`lstmc cache`: where the cache is, what it holds, and clearing it, which removes
lstmc's own entries only (whatever else the directory holds stays) and leaves a build
that may still be running alone."""
import os
import time

from conftest import spec_path

import lstmc
from lstmc.backends.llvm import support
from lstmc.cli import main


def _run(capsys, *argv):
    status = main(["cache", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_info_dir_and_clear(monkeypatch, tmp_path, capsys):
    root = tmp_path / "cache"
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(root))
    monkeypatch.setattr(support, "_objects", {})  # as in a new process: written to disk
    status, out, _ = _run(capsys)  # no directory yet: an empty cache, not an error
    assert status == 0 and "compiled cells: 0 (0.0 MiB)" in out

    lstmc.compile(spec_path("lstm"), 3, 4, target="cpu")
    lstmc.compile(spec_path("gru"), 3, 4, target="cpu")
    (root / "notes.txt").write_text("mine")  # not lstmc's: never counted nor removed
    (root / "mine").mkdir()
    young = root / (".%s.staging" % ("a" * 40))  # a build that may still be running
    young.mkdir()
    old = root / ("support-%s.o.123.ab12cd34.tmp" % ("b" * 40))  # a crash's, 2 hours old
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 7200,) * 2)

    status, out, _ = _run(capsys, "info")
    assert status == 0
    assert f"cache directory: {root}" in out
    assert "compiled cells: 2 (" in out
    assert "shared code:    1 (" in out  # one float32 object serves both cells
    assert "left by interrupted builds: 2" in out

    assert _run(capsys, "dir")[1] == f"{root}\n"

    status, out, _ = _run(capsys, "clear")
    assert status == 0 and out.startswith("removed 4 entries (")
    assert sorted(os.listdir(root)) == sorted(["notes.txt", "mine", young.name])

    # the next compile builds the cell again, and it runs
    cell = lstmc.compile(spec_path("lstm"), 3, 4, target="cpu")
    assert "compiled cells: 1 (" in _run(capsys)[1]
    assert cell.forward(*_inputs(cell))[0].shape == (2, 1, 4)


def _inputs(cell):
    import numpy as np

    params = {k: np.zeros(s, np.float32) for k, s in cell.param_shapes.items()}
    return np.zeros((2, 1, 3), np.float32), params


def test_a_cache_path_that_is_a_file_is_an_error(monkeypatch, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    monkeypatch.setenv("LSTMC_CACHE_DIR", str(path))
    for action in ("info", "clear"):
        status, out, err = _run(capsys, action)
        assert status == 1 and out == ""
        assert err == f"lstmc: error: the cache directory {path} is not a directory\n"
    assert path.read_text() == "x"
