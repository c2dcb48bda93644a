"""Would a stack of layers at B=1 gain from running as a wavefront (layer l at step t
while layer l+1 is at step t-1) instead of one layer after the other?

    python benchmarks/wavefront.py [--hidden 128] [--steps 100 1000] [--repeat 30]

A 2-layer LSTM stack, inference, B=1, float32, timed four ways in one process:
- `stack`: Stack.forward as it runs (each layer on every core, the threaded kernel
  where it measures faster than one thread);
- `one thread`: the same, on one thread (LSTMC_NUM_THREADS=1's path);
- `two at once`: two independent one-thread layers run concurrently, one per core. No
  wavefront can beat this: it is a wavefront with no waiting between the layers;
- `pipeline K`: a wavefront built of chunks of K steps (layer 0 on chunk k while layer 1
  is on chunk k-1, on two threads, one core each; layer 1's input projection a GEMM per
  chunk).

A wavefront pays where `two at once` beats `stack` by more than a pipeline's fill and
hand-offs cost."""
from __future__ import annotations

import argparse
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from lstmc_runtime.threads import threads_limited

import lstmc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu import median_ms  # noqa: E402


def contenders(H: int, T: int) -> dict:
    stack = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, num_layers=2, target="cpu")
    packed = stack.pack_params(stack.init_params(0))
    x = np.random.default_rng(0).standard_normal((T, 1, H)).astype(np.float32)
    lower, upper = stack.layers[0][0], stack.layers[1][0]
    weights = packed.per_cell[0][0], packed.per_cell[1][0]
    zeros = {n: np.zeros((1, s), np.float32) for n, s in lower.state_sizes.items()}
    between = lower.forward(x, weights[0], zeros)[0]
    helper = ThreadPoolExecutor(1)

    def alone(cell, params, inputs, state=zeros):
        with threads_limited(1):
            return cell.forward(inputs, params, state)

    def one_thread():
        with threads_limited(1):
            stack.forward(x, packed)

    def two_at_once():
        other = helper.submit(alone, upper, weights[1], between)
        alone(lower, weights[0], x)
        other.result()

    def pipeline(K: int):
        def run():
            low, up, pending, outputs = zeros, zeros, None, []
            for start in range(0, T, K):
                y, low = alone(lower, weights[0], x[start:start + K], low)
                if pending is not None:
                    y_up, up = pending.result()
                    outputs.append(y_up)
                pending = helper.submit(alone, upper, weights[1], y, up)
            y_up, up = pending.result()
            return np.concatenate(outputs + [y_up])
        return run

    expected = stack.forward(x, packed)[0]
    runs = {"stack": lambda: stack.forward(x, packed), "one thread": one_thread,
            "two at once": two_at_once}
    for K in sorted({max(1, T // 8), max(1, T // 4), max(1, T // 2)}):
        run = pipeline(K)
        np.testing.assert_allclose(run(), expected, rtol=1e-5, atol=1e-6)
        runs[f"pipeline K={K}"] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    print("| T | way | µs | vs stack |\n|---|---|---|---|")
    for T in args.steps:
        runs = contenders(args.hidden, T)
        times = {name: 1e3 * median_ms(fn, args.repeat) for name, fn in runs.items()}
        for name, us in times.items():
            print(f"| {T} | {name} | {us:.0f} | {times['stack'] / us:.2f}x |")


if __name__ == "__main__":
    main()
