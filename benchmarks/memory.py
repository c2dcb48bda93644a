"""Training memory: lstmc against torch.nn.LSTM, on the same problem.

    python benchmarks/memory.py                    # T=2000, B=32, I=H=256, float32
    python benchmarks/memory.py --T 500 --B 8 --H 64

Each contender runs in a fresh process: it compiles (or builds) the LSTM, makes its
parameters, input x (T, B, I) and output gradient dy, then notes its resident memory and
runs one training step (forward, then backward giving dx and every parameter gradient),
while a thread samples the resident set every half millisecond. "Extra" is the peak
during the step less the memory before it: what training this sequence costs on top of
the model and the data. The ratio is lstmc's extra over nn.LSTM's (< 1: lstmc needs less).
After the step lstmc's buffer pool is released (`lstmc.release_memory()`), and the memory
still held over the starting point is printed too."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """The largest resident set seen while it runs (sampled; ctypes and PyTorch release
    the GIL inside their kernels, so the sampler keeps running during them)."""

    def __init__(self, period: float = 0.0005):
        self.period, self.peak, self._stop = period, rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def run_lstmc(T: int, B: int, H: int) -> dict:
    import numpy as np

    import lstmc

    cell = lstmc.compile(str(ROOT / "specs" / "lstm.lstm"), H, H, target="cpu")
    params = cell.init_params(seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    lstmc.release_memory()
    before = rss()
    with PeakSampler() as sampler:
        y, _, tape = cell.forward(x, params, train=True)
        grads = tape.backward(dy)
        del y, tape, grads
    lstmc.release_memory()
    return {"before": before, "peak": sampler.peak, "after": rss()}


def run_torch(T: int, B: int, H: int) -> dict:
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    dy = torch.randn(T, B, H)
    before = rss()
    with PeakSampler() as sampler:
        y, _ = lstm(x)
        y.backward(dy)
        del y
    return {"before": before, "peak": sampler.peak, "after": rss()}


def measure(which: str, T: int, B: int, H: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--run", which, "--T", str(T), "--B",
                             str(B), "--H", str(H)], check=True, capture_output=True,
                            text=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=2000)
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--run", choices=["lstmc", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one contender, in this (fresh) process
        runner = run_lstmc if args.run == "lstmc" else run_torch
        print(json.dumps(runner(args.T, args.B, args.H)))
        return
    T, B, H = args.T, args.B, args.H
    print(f"training memory, LSTM T={T} B={B} I=H={H} float32, threads "
          f"{os.environ.get('LSTMC_NUM_THREADS', 'all')}")
    saved_floats = 7 * T * B * H  # what a 7-values-per-unit forward saves, for scale
    print(f"(7 saved values per unit per step would be {saved_floats * 4 / MIB:.0f} MiB)")
    results = {name: measure(name, T, B, H) for name in ("torch", "lstmc")}
    for name, r in results.items():
        extra = (r["peak"] - r["before"]) / MIB
        held = (r["after"] - r["before"]) / MIB
        print(f"  {name:6s} extra peak {extra:8.1f} MiB   still held after {held:7.1f} MiB")
    ratio = ((results["lstmc"]["peak"] - results["lstmc"]["before"])
             / max(results["torch"]["peak"] - results["torch"]["before"], 1))
    print(f"  lstmc / nn.LSTM extra peak: {ratio:.2f}x")


if __name__ == "__main__":
    main()
