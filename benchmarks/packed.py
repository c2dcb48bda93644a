"""The LSTM on PyTorch's stacked weights (specs/lstm_packed.lstm, one [4*H, I] matrix
split by slices) against the split form (specs/lstm.lstm) on the cpu target: one
training step each (forward with train=True, then backward), interleaved, medians over
--repeat runs. They compile to the same fused step, so the ratio should be 1.

    python benchmarks/packed.py                   # (T, B, I, H) = (100, 32, 256, 256)
    python benchmarks/packed.py --sizes 50x8x128x128 --repeat 15
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lstmc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100x32x256x256", help="TxBxIxH")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    T, B, I, H = (int(v) for v in args.sizes.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    runs = {}
    for name in ("lstm", "lstm_packed"):
        cell = lstmc.compile(ROOT / "specs" / f"{name}.lstm", I, H, target="cpu")
        params = cell.init_params(0)
        state = {n: np.zeros((B, s), np.float32) for n, s in cell.state_sizes.items()}
        runs[name] = (cell, params, state)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat + 1):  # the first round warms up, then is dropped
        for name, (cell, params, state) in runs.items():
            start = time.perf_counter()
            y, _, tape = cell.forward(x, params, state, train=True)
            tape.backward(np.ones_like(y))
            times[name].append(time.perf_counter() - start)
    split, packed = (statistics.median(times[n][1:]) for n in ("lstm", "lstm_packed"))
    print(f"(T, B, I, H) = ({T}, {B}, {I}, {H}), training step, median of {args.repeat}")
    print(f"  lstm.lstm         {split * 1e3:8.1f} ms")
    print(f"  lstm_packed.lstm  {packed * 1e3:8.1f} ms   ratio {packed / split:.3f}")


if __name__ == "__main__":
    main()
