"""Bad and unusual input to the lstmc command and to the artifact loader: usage errors
exit 2, user errors exit 1 with a message, never an internal error or a traceback; a
hostile artifact directory is an ArtifactError, never a hang, a crash or a raw OSError."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import lstmc_runtime
import pytest
from conftest import ROOT, spec_path

import lstmc


def lstmc_cli(*args, **options):
    return subprocess.run([sys.executable, "-m", "lstmc.cli", *args], text=True, cwd=ROOT,
                          timeout=300, **{"capture_output": True, **options})


def assert_no_crash_report(stderr: str) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr


# -- the command line -------------------------------------------------------------------

def test_an_empty_output_directory_is_a_usage_error(tmp_path):
    result = lstmc_cli("compile", spec_path("rnn_tanh"), "-o", "", "--input-size", "3",
                       "--hidden-size", "4")
    assert result.returncode == 2, result.stdout
    assert "-o/--output" in result.stderr
    assert result.stdout == ""  # not the IR, as if -o had not been given


@pytest.mark.parametrize("target,stage", [("cpu", "ir-unfused"), ("cpu", "cuda"),
                                          ("opencl", "llvm"), ("cuda", "asm")])
def test_a_stage_the_artifact_cannot_hold_is_a_usage_error(tmp_path, target, stage):
    out = tmp_path / "artifact"
    result = lstmc_cli("compile", spec_path("rnn_tanh"), "-o", str(out), "--target", target,
                       "--emit", f"ir,{stage}", "--input-size", "3", "--hidden-size", "4")
    assert result.returncode == 2, result.stderr
    assert "--emit" in result.stderr and stage in result.stderr
    assert not out.exists()  # refused before anything is written


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["check", spec_path("lstm")],
                                  ["compile", spec_path("rnn_tanh"), "--emit", "ir"]])
def test_a_full_stdout_is_an_error_of_the_output(args):
    with open("/dev/full", "w") as full:
        result = lstmc_cli(*args, stdout=full, stderr=subprocess.PIPE, capture_output=False)
    assert result.returncode == 1, result.stderr
    assert "cannot write to standard output" in result.stderr
    assert_no_crash_report(result.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="closes a POSIX descriptor")
def test_a_closed_stdout_is_an_error_of_the_output():
    result = lstmc_cli("check", spec_path("lstm"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, capture_output=False,
                       preexec_fn=lambda: os.close(1))
    assert result.returncode == 1, result.stderr
    assert "standard output" in result.stderr and "closed" in result.stderr
    assert_no_crash_report(result.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/stdin"), reason="needs /dev/stdin")
def test_gradcheck_reads_a_spec_from_a_pipe():
    spec = pathlib.Path(spec_path("rnn_tanh")).read_text()
    result = lstmc_cli("gradcheck", "/dev/stdin", input=spec)
    assert result.returncode == 0, result.stderr
    assert "cell rnn_tanh" in result.stdout and ": ok" in result.stdout


# -- loading hostile artifacts ----------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    lstmc.api.write_artifact_dir(spec_path("rnn_tanh"), str(base / "cpu"), 3, 4)
    return base / "cpu"


@pytest.fixture
def artifact(built, tmp_path):
    """A private copy of the built artifact, for a test to damage."""
    return pathlib.Path(shutil.copytree(built, tmp_path / "artifact"))


def _reseal(directory: pathlib.Path, edit) -> None:
    """Edit the manifest, then recompute its checksum of itself: an edit on purpose."""
    from lstmc_runtime.manifest import self_checksum

    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["manifest_sha256"] = self_checksum(manifest)
    path.write_text(json.dumps(manifest))


LOAD_IN_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway read fails fast
    import lstmc_runtime
    try:
        lstmc_runtime.load(sys.argv[1])
    except lstmc_runtime.ArtifactError as error:
        print("ArtifactError:", error)
    except BaseException as error:
        print("other:", type(error).__name__, error)
    else:
        print("loaded")
""")


def _load_in_child(directory) -> str:
    """Load in a child process: a hang is a timeout there, not a stuck test run."""
    run = subprocess.run([sys.executable, "-c", LOAD_IN_CHILD, str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _fifo(path: pathlib.Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: pathlib.Path) -> None:
    path.symlink_to("/dev/zero")


def _huge_sparse_file(path: pathlib.Path) -> None:
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # no disk used; more than the child may allocate


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("make", [_fifo, _dev_zero, _huge_sparse_file],
                         ids=["fifo", "dev-zero", "huge-file"])
def test_a_manifest_that_is_no_small_regular_file_is_refused(artifact, make):
    (artifact / "manifest.json").unlink()
    make(artifact / "manifest.json")
    output = _load_in_child(artifact)
    assert output.startswith("ArtifactError:") and "manifest.json" in output, output


def _make_unreadable(path: pathlib.Path) -> None:
    """A file the loader cannot read: no permission, or (for root, who reads anything)
    a link to /proc/self/mem, whose first page is unmapped (EIO)."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("root, and no /proc/self/mem to make an unreadable file with")
    path.unlink()
    path.symlink_to("/proc/self/mem")


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_an_unreadable_file_of_an_artifact_is_an_artifact_error(artifact):
    _make_unreadable(artifact / "cell.so")
    with pytest.raises(lstmc_runtime.ArtifactError, match="cannot read cell.so"):
        lstmc_runtime.load(artifact)


@pytest.mark.parametrize("features", [5, None, "avx2", {"avx2": True}])
def test_cpu_features_that_are_no_list_are_refused(artifact, features):
    _reseal(artifact, lambda m: m["cpu"].__setitem__("features", features))
    with pytest.raises(lstmc_runtime.ArtifactError, match="cpu features"):
        lstmc_runtime.load(artifact)


@pytest.mark.parametrize("target", [["b_hh"], {"b_hh": 1}])  # unhashable
def test_a_gradient_alias_to_no_parameter_name_is_refused(artifact, target):
    def edit(manifest):
        manifest["gradient_aliases"] = {"b_ih": target}
    _reseal(artifact, edit)
    with pytest.raises(lstmc_runtime.ArtifactError, match="gradient alias b_ih"):
        lstmc_runtime.load(artifact)


# -- writing artifacts ------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_compiling_over_linked_files_leaves_the_linked_files_alone(tmp_path):
    """Every file of an artifact is written by rename: a link there is replaced."""
    linked = ["manifest.json", "cell.ir", "cell.ll", "cell.s"]
    out = tmp_path / "artifact"
    out.mkdir()
    for k, name in enumerate(linked):
        (tmp_path / f"notes{k}.json").write_text(f'{{"mine": {k}}}\n')
        (out / name).symlink_to(tmp_path / f"notes{k}.json")
    result = lstmc_cli("compile", spec_path("rnn_tanh"), "-o", str(out), "--input-size", "3",
                       "--hidden-size", "4", "--emit", "ir,llvm,asm")
    assert result.returncode == 0, result.stderr
    for k, name in enumerate(linked):
        assert (tmp_path / f"notes{k}.json").read_text() == f'{{"mine": {k}}}\n'
        assert not (out / name).is_symlink()
    assert lstmc_runtime.load(out).input_size == 3
    assert sorted(os.listdir(out)) == ["cell.ir", "cell.ll", "cell.s", "cell.so",
                                       "manifest.json"]  # no temporary left


def test_load_takes_a_bytes_path_and_names_what_it_takes(built):
    """os.fsdecode's paths, as open() takes them; anything else is a UsageError."""
    assert lstmc_runtime.load(os.fsencode(built)).hidden_size == 4
    with pytest.raises(lstmc_runtime.UsageError, match="a directory path .* got int"):
        lstmc_runtime.load(3)


def test_a_spec_of_dash_is_read_from_standard_input(tmp_path):
    """`-` is standard input for every command that takes a SPEC, as compilers read it;
    errors name <stdin> with the line and caret."""
    text = pathlib.Path(spec_path("rnn_tanh")).read_text()
    checked = lstmc_cli("check", "-", input=text)
    assert checked.returncode == 0 and checked.stdout.startswith("-: cell rnn_tanh("), \
        checked.stderr
    printed = lstmc_cli("compile", "-", "--emit", "ir", input=text)
    assert printed.returncode == 0 and "cell rnn_tanh(x: I) -> h" in printed.stdout
    out = tmp_path / "artifact"
    wrote = lstmc_cli("compile", "-", "-o", str(out), "--input-size", "3",
                      "--hidden-size", "4", input=text)
    assert wrote.returncode == 0, wrote.stderr
    assert lstmc_runtime.load(out).hidden_size == 4
    graded = lstmc_cli("gradcheck", "-", input=text)
    assert graded.returncode == 0 and ": ok (tolerance" in graded.stdout, graded.stderr
    bad = lstmc_cli("check", "-", input=text.replace("W_hh @ h", "W_hx @ h"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("<stdin>:4:"), bad.stderr
    assert "undefined name 'W_hx'" in bad.stderr
    assert_no_crash_report(bad.stderr)
