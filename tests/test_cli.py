"""The lstmc command: output, exit codes, and no tracebacks."""
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
    result = lstmc("gradcheck", spec_path("rnn_tanh"), "--tolerance", "0")
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
    assert result.stderr.strip() == "lstmc: error: no value for size P: pass P=..."


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
    assert "no value for sizes H, I: pass hidden_size=..., input_size=..." in missing.stderr
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
