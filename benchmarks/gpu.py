"""GPU benchmark: lstmc's GPU kernels against PyTorch in the same process.

    python benchmarks/gpu.py                    # CUDA: lstmc vs cuDNN nn.LSTM (needs a GPU)
    python benchmarks/gpu.py --variants         # also every spec against lstmc's LSTM
    python benchmarks/gpu.py --target opencl    # the same kernels as OpenCL (PoCL on the
                                                # CPU here) against PyTorch on the CPU

Cases: T=100, batch 1, 32 and 256, hidden 256, 512 and 1024 (input = hidden), float32,
forward and forward+backward. Contenders: lstmc's standard LSTM (persistent kernel where
the runtime picks it, batch <= 8), the same forced step by step, lstmc's peephole LSTM,
PyTorch's nn.LSTM (cuDNN on CUDA), an eager PyTorch peephole cell. Medians of blocks of
warm runs, contenders interleaved; ratios > 1 mean lstmc is faster."""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu import eager_peephole_runner, interleaved_medians, torch_lstm_runner  # noqa: E402

import lstmc  # noqa: E402

CUDA_CASES = [(100, b, h) for h in (256, 512, 1024) for b in (1, 32, 256)]
OPENCL_CASES = [(20, 1, 128), (20, 32, 128)]
VARIANT_CASE = (100, 32, 256)


class Target:
    def __init__(self, name: str):
        self.name = name
        if name == "cuda":
            import cupy
            self.xp, self.device = cupy, "cuda"
            self.sync = lambda: (cupy.cuda.Device().synchronize(), torch.cuda.synchronize())
        else:
            self.xp, self.device, self.sync = np, "cpu", lambda: None

    def timed(self, fn):
        def run():
            fn()
            self.sync()
        return run


def lstmc_runner(target: Target, spec: str, T, B, H, backward: bool, persistent="auto"):
    cell = lstmc.compile(ROOT / "specs" / f"{spec}.lstm", H, H, target=target.name,
                         **({"P": H // 2} if spec == "lstmp" else {}))
    cell.persistent = persistent
    xp = target.xp
    params = {k: xp.asarray(v) for k, v in cell.init_params(0).items()}
    x = xp.asarray(np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32))
    if not backward:
        return target.timed(lambda: cell.forward(x, params))

    def run():
        y, _, tape = cell.forward(x, params, train=True)
        tape.backward(xp.ones_like(y))
    return target.timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["cuda", "opencl"], default="cuda")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--cases", metavar="T,B,H;...", help="override the cases")
    args = parser.parse_args()
    if args.target == "cuda":
        from lstmc_runtime.gpu.cuda import import_cupy
        try:
            import_cupy()
        except lstmc.BackendError as error:
            sys.exit(f"benchmarks/gpu.py: {error}")
        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu.py: PyTorch sees no CUDA device (a CPU-only build?)")
    target = Target(args.target)
    cases = CUDA_CASES if args.target == "cuda" else OPENCL_CASES
    if args.cases:
        cases = [tuple(int(v) for v in c.split(",")) for c in args.cases.split(";")]
    baseline = "cuDNN nn.LSTM" if args.target == "cuda" else "nn.LSTM (CPU)"
    print(f"target {args.target}, torch {torch.__version__}, medians of {args.repeat}, ms")
    print(f"| case (T, B, H) | lstmc lstm | lstmc lstm steps | lstmc peephole | {baseline} "
          f"| eager peephole | {baseline} / lstmc lstm | steps / persistent "
          f"| eager / lstmc peephole | peephole / lstm |")
    print("|---" * 10 + "|")
    for backward in (False, True):
        for T, B, H in cases:
            contenders = {
                "lstm": lstmc_runner(target, "lstm", T, B, H, backward),
                "steps": lstmc_runner(target, "lstm", T, B, H, backward, persistent=False),
                "peephole": lstmc_runner(target, "peephole_lstm", T, B, H, backward),
                "torch": target.timed(torch_lstm_runner(T, B, H, backward, target.device)),
                "eager": target.timed(eager_peephole_runner(T, B, H, backward,
                                                            device=target.device)),
            }
            ms = interleaved_medians(contenders, args.repeat)
            label = f"{'fwd+bwd' if backward else 'fwd'} ({T}, {B}, {H})"
            print(f"| {label} | {ms['lstm']:.3f} | {ms['steps']:.3f} | {ms['peephole']:.3f} "
                  f"| {ms['torch']:.3f} | {ms['eager']:.3f} | {ms['torch'] / ms['lstm']:.2f}x "
                  f"| {ms['steps'] / ms['lstm']:.2f}x | {ms['eager'] / ms['peephole']:.2f}x "
                  f"| {ms['peephole'] / ms['lstm']:.2f}x |", flush=True)
    if args.variants:
        T, B, H = VARIANT_CASE if args.target == "cuda" else OPENCL_CASES[-1]
        specs = sorted(str(p.relative_to(ROOT / "specs").with_suffix(""))
                       for p in (ROOT / "specs").rglob("*.lstm"))
        runners = {s: lstmc_runner(target, s, T, B, H, True) for s in specs}
        ms = interleaved_medians(runners, args.repeat)
        print(f"\nevery spec, fwd+bwd ({T}, {B}, {H}), relative to lstmc's lstm "
              f"({ms['lstm']:.3f} ms):")
        print(", ".join(f"{s} {ms[s] / ms['lstm']:.2f}" for s in specs))


if __name__ == "__main__":
    main()
