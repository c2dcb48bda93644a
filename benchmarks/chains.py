"""What hoisting a chain of input-only products buys on the cpu target.

    python benchmarks/chains.py                 # (T, B, H) = (100, 1, 128), (100, 8, 256), (100, 32, 256)
    python benchmarks/chains.py --sizes 50x4x512 --repeat 15

specs/minimal_rnn.lstm (Chen 2017) multiplies U_z with z = tanh(W_x @ x + b_z), a value
made from the input alone. lstmc hoists that product out of the time loop (a prologue
computes z for all T*B rows, then one GEMM); the same cell lowered without chain hoisting
(`lower(..., hoist_chains=False)`, what the GPU targets get) keeps it as a second product
inside every step. Both are timed, forward (inference) and forward+backward, with the
same cell written as an eager PyTorch loop in the same process for scale. Medians over
--repeat interleaved runs.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lstmc  # noqa: E402
from lstmc.api import lower_bound  # noqa: E402
from lstmc.backends.cpu import jit  # noqa: E402
from lstmc.frontend.source import read_source  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu import interleaved_medians as medians  # noqa: E402

SPEC = ROOT / "specs" / "minimal_rnn.lstm"


def torch_loop(params, x):
    import torch

    p = {k: torch.from_numpy(v) for k, v in params.items()}
    xt = torch.from_numpy(x)

    def run(backward: bool):
        weights = [v.requires_grad_(backward) for v in p.values()]
        h = torch.zeros(x.shape[1], p["U_h"].shape[0])
        z_all = torch.tanh(xt @ p["W_x"].T + p["b_z"])  # hoisted by hand, as a user would
        zu = z_all @ p["U_z"].T
        out = []
        for t in range(x.shape[0]):
            u = torch.sigmoid(h @ p["U_h"].T + zu[t] + p["b_u"])
            h = u * h + (1 - u) * z_all[t]
            out.append(h)
        y = torch.stack(out)
        if backward:
            y.sum().backward()
            for w in weights:
                w.grad = None
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["100x1x128", "100x8x256", "100x32x256"])
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}; times in ms, medians of {args.repeat}; "
          "ratio = other / hoisted")
    print(f"{'(T, B, H)':>14} {'pass':>9} {'hoisted':>9} {'in step':>9} {'ratio':>6} "
          f"{'torch eager':>12} {'ratio':>6}")
    for text in args.sizes:
        T, B, H = (int(v) for v in text.split("x"))
        hoisted = lstmc.compile(SPEC, H, H, target="cpu")
        program, sizes = lower_bound(read_source(SPEC), None, H, H, {}, hoist_chains=False)
        in_step = jit(program, sizes, "float32")
        params = hoisted.init_params(0)
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        loop = torch_loop(params, x)

        def train(cell):
            def run():
                y, _, tape = cell.forward(x, params, train=True)
                tape.backward(np.ones_like(y))
            return run

        packed = {name: cell.pack_params(params) for name, cell in
                  (("hoisted", hoisted), ("in step", in_step))}
        forward = medians({"hoisted": lambda: hoisted.forward(x, packed["hoisted"]),
                           "in step": lambda: in_step.forward(x, packed["in step"]),
                           "torch": lambda: loop(False)}, args.repeat)
        both = medians({"hoisted": train(hoisted), "in step": train(in_step),
                        "torch": lambda: loop(True)}, args.repeat)
        for label, ms in (("forward", forward), ("fwd+bwd", both)):
            print(f"{str((T, B, H)):>14} {label:>9} {ms['hoisted']:9.3f} {ms['in step']:9.3f} "
                  f"{ms['in step'] / ms['hoisted']:6.2f} {ms['torch']:12.3f} "
                  f"{ms['torch'] / ms['hoisted']:6.2f}")


if __name__ == "__main__":
    main()
