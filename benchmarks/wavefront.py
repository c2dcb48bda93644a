"""A stack's layers as a wavefront (layer l on chunk c while layer l+1 is on chunk c-1)
against one layer after the other, inference at small batches.

    python benchmarks/wavefront.py [--hidden 64 128 256] [--layers 2 3] [--batch 1 4 8]
                                   [--steps 100] [--repeat 7]

An LSTM stack, float32, weights packed once, timed in one process on the same inputs:
- `layer by layer`: each layer over the whole sequence before the next, each on every
  core (LSTMC_WAVEFRONT=0);
- `wavefront`: lstmc_runtime/wavefront.py, a layer per core;
- `forward`: stack.forward as it runs (whichever of the two measures faster);
- `bound` (2 layers): two independent one-thread layers run at once, one per core: a
  wavefront with no waiting between the layers, which no wavefront can beat;
- `nn.LSTM`: torch.nn.LSTM(num_layers=L) under torch.no_grad().
Ratios > 1 mean the wavefront is faster."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from lstmc_runtime.threads import threads_limited

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu import interleaved_medians, one_direction_stack_runners  # noqa: E402


def contenders(H: int, layers: int, T: int, B: int) -> dict:
    runs, stack, packed, x = one_direction_stack_runners(T, B, H, layers)
    zero = stack.zero_state(B)

    def wavefront():
        final = {n: np.empty(v.shape, v.dtype) for n, v in zero.items()}
        run = stack._wavefront(x, packed, packed, zero, final, None, {})
        if run is None:
            raise SystemExit("the wavefront does not apply here (one core?)")
        return run()

    np.testing.assert_allclose(wavefront(), runs["layer by layer"](), rtol=1e-5, atol=1e-6)
    runs["wavefront"] = wavefront
    if layers == 2:
        runs["bound"] = _bound(stack, packed, x, zero)
    return runs


def _bound(stack, packed, x, zero):
    lower, upper = stack.layers[0][0], stack.layers[1][0]
    weights = packed.per_cell[0][0], packed.per_cell[1][0]
    first = {n: v[0] for n, v in zero.items()}
    between = lower.forward(x, weights[0], first)[0]
    helper = ThreadPoolExecutor(1)

    def alone(cell, params, inputs):
        with threads_limited(1):
            return cell.forward(inputs, params, first)

    def two_at_once():
        other = helper.submit(alone, upper, weights[1], between)
        alone(lower, weights[0], x)
        other.result()
    return two_at_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, nargs="+", default=[100])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print("| L | T | B | H | layer by layer | wavefront | forward | bound | nn.LSTM | "
          "layer by layer / wavefront | nn.LSTM / forward |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for layers in args.layers:
        for T in args.steps:
            for B in args.batch:
                for H in args.hidden:
                    t = interleaved_medians(contenders(H, layers, T, B), args.repeat)
                    bound = f"{1e3 * t['bound']:.0f}" if "bound" in t else "-"
                    print(f"| {layers} | {T} | {B} | {H} | {1e3 * t['layer by layer']:.0f} | "
                          f"{1e3 * t['wavefront']:.0f} | {1e3 * t['forward']:.0f} | {bound} | "
                          f"{1e3 * t['nn.LSTM']:.0f} | "
                          f"{t['layer by layer'] / t['wavefront']:.2f}x | "
                          f"{t['nn.LSTM'] / t['forward']:.2f}x |", flush=True)
    print("\ntimes in µs (medians); ratios > 1: the wavefront / lstmc faster")


if __name__ == "__main__":
    main()
