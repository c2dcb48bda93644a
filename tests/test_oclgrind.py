"""Oclgrind's data-race detector over the kernels of the standard LSTM and the GRU.
Oclgrind exits 0 whatever it finds, so the test reads its log; a kernel with a missing
barrier shows that the log does report races."""
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, spec_path

OCLGRIND = shutil.which("oclgrind")
pytestmark = pytest.mark.skipif(OCLGRIND is None,
                                reason="oclgrind not installed (apt-get install oclgrind)")

RACY = """
import numpy as np, pyopencl as cl, pyopencl.array as cla
context = cl.create_some_context(interactive=False)
queue = cl.CommandQueue(context)
program = cl.Program(context, '''__kernel void k(__global float* a) {
  __local float s[64]; int i = get_local_id(0);
  s[i] = i; a[i] = s[63 - i]; }''').build()
a = cla.empty(queue, 64, np.float32)
program.k(queue, (64,), (64,), a.data)
queue.finish()
"""


def run_under_oclgrind(tmp_path, args):
    log = tmp_path / "oclgrind.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), POCL_CACHE_DIR=str(tmp_path))
    result = subprocess.run([OCLGRIND, "--data-races", "--log", str(log), sys.executable]
                            + args, capture_output=True, text=True, timeout=600, env=env)
    return result, (log.read_text() if log.exists() else "")


def test_a_missing_barrier_is_reported(tmp_path):
    result, log = run_under_oclgrind(tmp_path, ["-c", RACY])
    assert result.returncode == 0, result.stderr
    assert "data race" in log


def test_lstm_and_gru_kernels_have_no_races(tmp_path):
    result, log = run_under_oclgrind(tmp_path, [str(ROOT / "tests" / "oclgrind_run.py"),
                                                spec_path("lstm"), spec_path("gru")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ran on Oclgrind") == 2, result.stdout + result.stderr
    assert log.strip() == "", log[:4000]
