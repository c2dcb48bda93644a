"""What dropout and zoneout inside the kernels cost on the cpu target.

    python benchmarks/dropout.py                     # (T, B, H) = (100, 32, 256) and (100, 8, 128)
    python benchmarks/dropout.py --sizes 50x16x512 --repeat 15

One training step (forward with train=True, then backward) of the same LSTM four ways:
without masks, with per-step dropout on the recurrent input h, with variational dropout
(one mask per sequence) on h, and with zoneout on c and h. The masks are drawn in the
kernels from Philox-4x32-10 and drawn again in the backward pass (never stored), so the
overhead is the cost of generating them twice. torch.nn.LSTM's training step on the same
sizes is timed in the same process for scale (it has no recurrent dropout in its fused
path). Times are medians over --repeat runs; the overhead is relative to the unmasked
lstmc cell.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lstmc  # noqa: E402

GATES = """
  i  = sigmoid(W_ii @ x + W_hi @ {h} + b_i)
  f  = sigmoid(W_if @ x + W_hf @ {h} + b_f)
  g  = tanh(W_ig @ x + W_hg @ {h} + b_g)
  o  = sigmoid(W_io @ x + W_ho @ {h} + b_o)
"""
HEAD = """cell lstm(x: I) -> h: H {
  state c: H
  param W_ii, W_if, W_ig, W_io, W_hi, W_hf, W_hg, W_ho, b_i, b_f, b_g, b_o
"""
VARIANTS = {
    "no masks": HEAD + GATES.format(h="h") + "  c' = f * c + i * g\n  h' = o * tanh(c')\n}",
    "dropout(h, 0.25)": HEAD + "  hd = dropout(h, 0.25)\n" + GATES.format(h="hd")
    + "  c' = f * c + i * g\n  h' = o * tanh(c')\n}",
    "variational_dropout(h, 0.25)": HEAD + "  hd = variational_dropout(h, 0.25)\n"
    + GATES.format(h="hd") + "  c' = f * c + i * g\n  h' = o * tanh(c')\n}",
    "zoneout(c 0.15, h 0.05)": HEAD + GATES.format(h="h")
    + "  cn = f * c + i * g\n  c' = zoneout(cn, c, 0.15)\n"
    "  h' = zoneout(o * tanh(cn), h, 0.05)\n}",
}


def median_times(steps: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each step, run in interleaved rounds (one of each per round),
    so that a change in the machine's load falls on every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm up: caches, page faults, pools
    for _ in range(repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def lstmc_step(source: str, T: int, B: int, H: int, directory: str):
    path = pathlib.Path(directory) / f"cell{abs(hash(source))}.lstm"
    path.write_text(source)
    cell = lstmc.compile(str(path), H, H, target="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    params = cell.pack_params(cell.init_params(0))
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)

    def step():
        _, _, tape = cell.forward(x, params, train=True, seed=1)
        tape.backward(dy)
    return step


def torch_step(T: int, B: int, H: int):
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    dy = torch.randn(T, B, H)

    def step():
        y, _ = lstm(x)
        y.backward(dy)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["100x32x256", "100x8x128"],
                        help="TxBxH cases (I = H)")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print("| T, B, H | variant | fwd+bwd ms | overhead vs no masks | torch.nn.LSTM / lstmc |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for text in args.sizes:
            T, B, H = (int(v) for v in text.split("x"))
            steps = {name: lstmc_step(source, T, B, H, directory)
                     for name, source in VARIANTS.items()}
            steps["torch"] = torch_step(T, B, H)
            medians = median_times(steps, args.repeat)
            reference, base = medians.pop("torch"), medians["no masks"]
            for name, seconds in medians.items():
                overhead = f"{100 * (seconds / base - 1):+.1f}%" if name != "no masks" else "-"
                print(f"| {T}, {B}, {H} | {name} | {1e3 * seconds:.2f} | {overhead} | "
                      f"{reference / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
