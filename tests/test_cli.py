"""The lstmc command: output, exit codes, and no tracebacks."""
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import ROOT, SPEC_NAMES, spec_path


def lstmc(*args):
    return subprocess.run([sys.executable, "-m", "lstmc.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_check_prints_one_line_per_cell():
    result = lstmc("check", *[spec_path(n) for n in SPEC_NAMES])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(SPEC_NAMES)
    lstm_line = next(line for line in lines if "cell lstm(" in line)
    assert "states h: H, c: H" in lstm_line
    assert "W_hi[H,H]" in lstm_line and "b_ho[H]" in lstm_line
    assert "recurrent products per step: 1 (4*HxH)" in lstm_line


def test_compile_emit_ir_shows_the_fused_step():
    result = lstmc("compile", spec_path("gru_cho"), "--emit", "ir")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hoisted #0: 3*H = [W_r[HxI], W_z[HxI], W_n[HxI]] @ x" in out
    assert "step (2 recurrent product(s))" in out
    assert out.count("-- product stage") == 2


def test_compile_emit_backward_and_sizes():
    result = lstmc("compile", spec_path("lstmp"), "--emit", "ir-backward",
                   "--input-size", "8", "--hidden-size", "16", "--size", "P=4")
    assert result.returncode == 0, result.stderr
    assert "; sizes: I=8, H=16, P=4" in result.stdout
    assert "matmul_t" in result.stdout and "backward step" in result.stdout


@pytest.mark.parametrize("name,target", [("lstm", "reference"), ("gru_cho", "reference"),
                                         ("layernorm_lstm", "reference"), ("lstmp", "cpu")])
def test_gradcheck_passes(name, target):
    extra = ["--size", "P=2"] if name == "lstmp" else []
    result = lstmc("gradcheck", spec_path(name), "--target", target, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worst relative error" in result.stdout and ": ok" in result.stdout


def test_gradcheck_fails_on_a_tolerance_nothing_can_meet():
    result = lstmc("gradcheck", spec_path("rnn_tanh"), "--tolerance", "1e-300")
    assert result.returncode == 1
    assert "FAILED" in result.stdout


def test_spec_error_is_reported_without_traceback(tmp_path):
    bad = tmp_path / "bad.lstm"
    bad.write_text("cell a(x: I) -> h: H {\n  param W\n  h' = tanh(W @ y)\n}\n")
    for command in (["check"], ["compile"], ["gradcheck"]):
        result = lstmc(*command, str(bad))
        assert result.returncode == 1
        assert result.stderr.startswith(f"{bad}:3:17: error: undefined name 'y'")
        assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.lstm"
    bad.write_text("cell a(x: I) -> h: H {\n")
    result = lstmc("--debug", "check", str(bad))
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_missing_size_is_an_error_not_a_traceback():
    result = lstmc("gradcheck", spec_path("lstmp"))
    assert result.returncode == 1
    assert result.stderr.strip() == "lstmc: error: no value for size P: give --size P=N"


def test_bad_size_option_is_a_usage_error():
    result = lstmc("gradcheck", spec_path("lstmp"), "--size", "P=zero")
    assert result.returncode == 2 and "expected NAME=N" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["compile", "--help"],
                                  ["gradcheck", "--help"]])
def test_help_everywhere(args):
    result = lstmc(*args)
    assert result.returncode == 0 and "usage: lstmc" in result.stdout


def test_no_command_is_a_usage_error():
    result = lstmc()
    assert result.returncode == 2 and "usage:" in result.stderr


def test_compile_emit_llvm_and_asm_to_stdout():
    result = lstmc("compile", spec_path("rnn_tanh"), "--emit", "llvm,asm", "--input-size", "3",
                   "--hidden-size", "4")
    assert result.returncode == 0, result.stderr
    assert "i32 @lstmc_forward(" in result.stdout  # the optimized IR
    assert "lstmc_backward:" in result.stdout  # the assembly's label


def test_compile_to_a_directory_and_errors(tmp_path):
    result = lstmc("compile", spec_path("mgu"), "-o", str(tmp_path / "a"), "--input-size", "3",
                   "--hidden-size", "4", "--dtype", "float64", "--emit", "ir")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'a'}/manifest.json"
    assert {"manifest.json", "cell.so", "cell.ir"} <= {p.name for p in (tmp_path / "a").iterdir()}
    missing = lstmc("compile", spec_path("mgu"), "-o", str(tmp_path / "b"))
    assert missing.returncode == 1
    assert ("no value for sizes H, I: give --hidden-size N, --input-size N"
            in missing.stderr)  # the command line's options, not the API's arguments
    bad_stage = lstmc("compile", spec_path("mgu"), "--emit", "ir,wasm")
    assert bad_stage.returncode == 2 and "unknown stage wasm" in bad_stage.stderr


def test_check_reports_every_bad_spec_and_still_checks_the_good_ones(tmp_path):
    first, second = tmp_path / "one.lstm", tmp_path / "two.lstm"
    first.write_text("cell a(x: I) -> h: H {\n  h' = x2\n}\n")
    second.write_text("cell b(x: I) -> h: H {\n")
    result = lstmc("check", str(first), spec_path("gru"), str(second))
    assert result.returncode == 1
    assert f"{first}:2:8: error: undefined name 'x2'" in result.stderr
    assert f"{second}:1:23: error: unexpected end of file" in result.stderr
    assert "cell gru(" in result.stdout


SEVERAL = """cell sru(x: H) -> h: H {
  state c: H
  param W, W_f
  f = sigmoid(W_f @ x)
  c' = f * c + (1 - f) * (W @ x)
  h' = tanh(c') + x
}
cell elman(x: I) -> h: H {
  param W, U
  h' = tanh(W @ x + U @ h)
}
"""


def test_several_cells_name_the_flag(tmp_path):
    spec = tmp_path / "two.lstm"
    spec.write_text(SEVERAL)
    result = lstmc("gradcheck", str(spec))
    assert result.returncode == 1
    assert "choose one with --cell NAME" in result.stderr and "cell=" not in result.stderr


@pytest.mark.parametrize("args,sizes", [
    ([], "(H=4)"), (["--input-size", "5"], "(H=5)"), (["--hidden-size", "6"], "(H=6)"),
    (["--input-size", "2", "--hidden-size", "2"], "(H=2)")])
def test_gradcheck_honours_the_input_size_of_an_input_of_size_h(tmp_path, args, sizes):
    spec = tmp_path / "two.lstm"
    spec.write_text(SEVERAL)
    result = lstmc("gradcheck", str(spec), "--cell", "sru", *args)
    assert result.returncode == 0, result.stderr
    assert f"cell sru {sizes}: worst relative error" in result.stdout


def test_gradcheck_refuses_two_sizes_for_an_input_of_size_h(tmp_path):
    spec = tmp_path / "two.lstm"
    spec.write_text(SEVERAL)
    result = lstmc("gradcheck", str(spec), "--cell", "sru", "--input-size", "5",
                   "--hidden-size", "7")
    assert result.returncode == 1
    assert result.stderr.startswith("lstmc: error: --input-size 5 and --hidden-size 7, but "
                                    "the spec gives its input the size H (`x: H`)")
    elman = lstmc("gradcheck", str(spec), "--cell", "elman", "--input-size", "5")
    assert elman.returncode == 0 and "cell elman (I=5, H=4)" in elman.stdout


def test_a_closed_pipe_ends_quietly():
    """`lstmc check specs/*.lstm | head -1`: the reader leaves after one line; lstmc stops
    without a traceback or an 'internal error' (output well beyond a pipe's buffer)."""
    process = subprocess.Popen([sys.executable, "-m", "lstmc.cli", "check",
                                *[spec_path("lstm")] * 600],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` exits
    stderr = process.stderr.read().decode()
    status = process.wait(timeout=120)
    assert b"cell lstm(" in first
    assert stderr == "", stderr
    assert status in (0, 141)


# (what stands in the artifact's way, relative to the output directory, is it a directory,
#  the options that make lstmc write there)
CONFLICTS = [
    ("cell.so", True, []),
    ("manifest.json", True, []),
    ("layer0", False, ["--num-layers", "2"]),
    ("layer0/manifest.json", True, ["--num-layers", "2"]),
    ("cell.ll", True, ["--emit", "llvm"]),
]


@pytest.mark.parametrize("entry,is_directory,options", CONFLICTS,
                         ids=[c[0] for c in CONFLICTS])
def test_compile_names_an_entry_of_the_output_directory_it_cannot_write(
        tmp_path, entry, is_directory, options):
    """`lstmc compile -o DIR` where DIR already holds something in the way of the artifact
    (a directory where a file goes, a file where a directory goes): an error naming that
    path, never an internal error."""
    output = tmp_path / "out"
    conflict = output / entry
    if is_directory:
        conflict.mkdir(parents=True)
    else:
        conflict.parent.mkdir(parents=True, exist_ok=True)
        conflict.touch()
    result = lstmc("compile", spec_path("lstm"), "-o", str(output), "--input-size", "3",
                   "--hidden-size", "4", *options)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("lstmc: error: cannot write "), result.stderr
    assert str(conflict) in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("option,value", [
    ("--seed", "-1"), ("--seed", str(1 << 64)), ("--seed", "one"),
    ("--tolerance", "nan"), ("--tolerance", "inf"), ("--tolerance", "-1"),
    ("--tolerance", "0"), ("--tolerance", "tight"),
])
def test_gradcheck_refuses_a_bad_seed_or_tolerance_as_usage(option, value):
    """A seed outside [0, 2**64) and a tolerance that is not a finite positive number are
    usage errors naming the option, before anything is compiled."""
    result = lstmc("gradcheck", spec_path("lstm"), option, value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: lstmc gradcheck" in result.stderr
    assert f"argument {option}: " in result.stderr and value in result.stderr
    assert "internal error" not in result.stderr and "FAILED" not in result.stdout


def test_gradcheck_takes_the_largest_seed():
    result = lstmc("gradcheck", spec_path("rnn_tanh"), "--seed", str((1 << 64) - 1))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok" in result.stdout


@pytest.mark.parametrize("args,sizes", [
    (["--size", "H=8"], {"I=3", "H=8"}), (["--size", "I=5"], {"I=5", "H=4"}),
    (["--size", "I=5", "--size", "H=6"], {"I=5", "H=6"}),
])
def test_gradcheck_size_option_replaces_the_default(args, sizes):
    """`--size H=8` is the one value of H: gradcheck's default (4) gives way to it, as it
    does to --hidden-size, instead of making H "given twice"."""
    result = lstmc("gradcheck", spec_path("rnn_tanh"), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = result.stdout.split("cell rnn_tanh (", 1)[1].split("): worst relative error")[0]
    assert set(shown.split(", ")) == sizes


def test_gradcheck_size_h_replaces_the_default_of_an_input_of_size_h(tmp_path):
    spec = tmp_path / "two.lstm"
    spec.write_text(SEVERAL)
    result = lstmc("gradcheck", str(spec), "--cell", "sru", "--size", "H=6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cell sru (H=6): worst relative error" in result.stdout


def test_a_size_too_large_for_the_runtime_is_a_spec_error_everywhere(tmp_path):
    """A size literal beyond what the runtime takes is refused by `check` itself, at the
    literal, and by every command that reads the spec: no internal error downstream."""
    spec = tmp_path / "big.lstm"
    spec.write_text("cell a(x: I) -> h: H {\n  state c: 99999999999999999999*H\n"
                    "  param W, U\n  c' = U @ x\n  h' = tanh(W @ x)\n}\n")
    for command in (["check"], ["gradcheck"], ["compile", "--input-size", "3",
                                                "--hidden-size", "4", "--emit", "llvm"]):
        result = lstmc(*command, str(spec))
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr.startswith(f"{spec}:2:12: error: size 99999999999999999999*H "
                                        "is too large"), result.stderr
        assert "internal error" not in result.stderr


def test_a_spec_from_a_closed_standard_input_is_an_input_error():
    result = subprocess.run([sys.executable, "-m", "lstmc.cli", "check", "-"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert result.returncode == 1, result.stderr
    assert "cannot read the spec from standard input: it is closed" in result.stderr
    assert "internal error" not in result.stderr


def test_an_endless_spec_file_is_refused_not_read_into_memory():
    result = lstmc("check", "/dev/zero")
    assert result.returncode == 1
    assert "'/dev/zero' is larger than 16 MiB" in result.stderr


def test_an_error_on_a_long_line_shows_a_window_around_the_column(tmp_path):
    spec = tmp_path / "long.lstm"
    spec.write_text("cell long(x: H) -> h: H {\n  h' = tanh(x)" + " + x" * 30000
                    + " + y" + " + x" * 30000 + "\n}\n")
    result = lstmc("check", str(spec))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert ":2:120018: error: undefined name 'y'" in lines[0]
    excerpt, caret = lines[1], lines[2]
    assert len(excerpt) < 200 and excerpt.strip().startswith("...")
    assert excerpt.endswith("...") and caret.strip() == "^"
    assert excerpt[len(caret) - 1] == "y"  # the caret under the name it names


def test_an_interrupted_compile_leaves_no_directory_behind(tmp_path, monkeypatch):
    """Ctrl-C (or a failure) while an artifact is written: the directory lstmc made for
    it is removed again; one that was there before stays."""
    from lstmc.api import write_artifact_dir
    from lstmc.targets import CpuTarget

    def interrupted(self, directory, *args):
        (pathlib.Path(directory) / "cell.so").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(CpuTarget, "write_artifact", interrupted)
    fresh = tmp_path / "fresh"
    for options in ({}, {"num_layers": 2}):
        with pytest.raises(KeyboardInterrupt):
            write_artifact_dir(spec_path("lstm"), str(fresh), 3, 4, target="cpu", **options)
        assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_artifact_dir(spec_path("lstm"), str(kept), 3, 4, target="cpu")
    assert kept.is_dir()
