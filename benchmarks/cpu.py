"""CPU benchmark: lstmc against PyTorch in the same process, on the same inputs.

    python benchmarks/cpu.py            # the main table, GFLOP/s, compile times
    python benchmarks/cpu.py --variants # also every spec against lstmc's standard LSTM

Times are medians over repetitions (milliseconds, float32, this machine's threads);
ratios > 1 mean lstmc is faster."""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from eager import make_graph_runner, peephole_step  # noqa: E402

import lstmc  # noqa: E402

CASES = [  # (label, T, B, I=H, with backward)
    ("fwd+bwd (100, 32, 256)", 100, 32, 256, True),
    ("fwd (100, 1, 128)", 100, 1, 128, False),
    ("fwd (50, 64, 512)", 50, 64, 512, False),
]


def interleaved_medians(contenders: dict, repeat: int) -> dict[str, float]:
    """Median ms of each contender over `repeat` rounds; in each round every contender in
    turn (A B C, A B C, ...) is warmed up and then timed over a block of back-to-back
    runs, so a slow spell of the machine falls on all alike and every contender's own
    worker threads are awake and the others' have gone quiet."""
    inner = {}
    for name, fn in contenders.items():
        fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(0.02 / max(time.perf_counter() - start, 1e-6)))
    times = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            fn()
            fn()
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    # Let the previous contender's worker threads (OpenMP, OpenBLAS) stop spinning, so
    # that they do not steal cores from this one.
    time.sleep(0.3)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def lstmc_runner(name: str, T, B, H, backward: bool):
    cell = lstmc.compile(ROOT / "specs" / f"{name}.lstm", H, H, target="cpu")
    params = cell.init_params(0)
    packed = cell.pack_params(params)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    if not backward:
        return lambda: cell.forward(x, packed)

    def run():
        y, _, tape = cell.forward(x, params, train=True)
        tape.backward(np.ones_like(y))
    return run


def torch_lstm_runner(T, B, H, backward: bool, device: str = "cpu"):
    module = torch.nn.LSTM(H, H).to(device)
    x = torch.randn(T, B, H, device=device)
    if not backward:
        def run():
            with torch.no_grad():
                module(x)
        return run

    def run_backward():
        xx = x.clone().requires_grad_()
        y, _ = module(xx)
        y.sum().backward()
    return run_backward


def peephole_params(H, requires_grad, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    k = 1 / H ** 0.5
    shapes = {f"W_{n}": (H, H) for n in "ifgo"} | {f"U_{n}": (H, H) for n in "ifgo"}
    shapes |= {f"p_{n}": (H,) for n in "ifo"} | {f"b_{n}": (H,) for n in "ifgo"}
    return {n: ((torch.rand(s, generator=g) * 2 - 1) * k).to(device)
            .requires_grad_(requires_grad) for n, s in shapes.items()}


def eager_peephole_runner(T, B, H, backward: bool, step=None, device: str = "cpu"):
    params = peephole_params(H, backward, device)
    x = torch.randn(T, B, H, device=device)
    h0, c0 = torch.zeros(B, H, device=device), torch.zeros(B, H, device=device)

    def sequence():
        gates = [x @ params[f"W_{g}"].T for g in "ifgo"]
        h, c, outputs = h0, c0, []
        for t in range(T):
            h, c = (step or peephole_step)(params, [g[t] for g in gates], h, c)
            outputs.append(h)
        return torch.stack(outputs)

    if not backward:
        def run():
            with torch.no_grad():
                sequence()
        return run
    return lambda: sequence().sum().backward()


def numpy_sgemm_peak() -> float:
    n = 2048
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    ms = median_ms(lambda: a @ b, repeat=5)
    return 2 * n ** 3 / (ms * 1e-3) / 1e9


def lstm_gflop(T, B, H, backward: bool) -> float:
    forward = 2 * T * B * (4 * H * H) * 2  # input and recurrent products
    return forward * (3 if backward else 1) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", action="store_true",
                        help="also time every spec against the standard LSTM and an eager loop")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy "
          f"{np.__version__}; lstmc {lstmc.__version__}; float32; medians of {args.repeat}")

    compiled_step = None
    if not args.no_compile:
        compiled_step = torch.compile(peephole_step, dynamic=False)

    rows = []
    for label, T, B, H, backward in CASES:
        contenders = {
            "lstmc lstm": lstmc_runner("lstm", T, B, H, backward),
            "lstmc peephole": lstmc_runner("peephole_lstm", T, B, H, backward),
            "nn.LSTM": torch_lstm_runner(T, B, H, backward),
            "eager peephole": eager_peephole_runner(T, B, H, backward),
        }
        if compiled_step is not None:
            contenders["compiled peephole"] = eager_peephole_runner(T, B, H, backward,
                                                                    compiled_step)
        rows.append((label, T, B, H, backward, interleaved_medians(contenders, args.repeat)))

    names = list(rows[0][5])
    print("\n| case (T, B, I=H) | " + " | ".join(f"{n} ms" for n in names)
          + " | nn.LSTM / lstmc lstm | eager / lstmc peephole | compiled / lstmc peephole |"
          + " lstmc peephole / lstmc lstm |")
    print("|---" * (len(names) + 5) + "|")
    for label, T, B, H, backward, t in rows:
        ratios = [t["nn.LSTM"] / t["lstmc lstm"], t["eager peephole"] / t["lstmc peephole"],
                  t.get("compiled peephole", float("nan")) / t["lstmc peephole"],
                  t["lstmc peephole"] / t["lstmc lstm"]]
        print(f"| {label} | " + " | ".join(f"{t[n]:.3f}" for n in names) + " | "
              + " | ".join(f"{r:.2f}x" for r in ratios) + " |")

    peak = numpy_sgemm_peak()
    print(f"\nNumPy SGEMM (2048^3) peak: {peak:.0f} GFLOP/s")
    for label, T, B, H, backward, t in rows:
        flops = lstm_gflop(T, B, H, backward)
        print(f"  {label}: lstmc lstm {flops / (t['lstmc lstm'] * 1e-3):.0f} GFLOP/s, "
              f"nn.LSTM {flops / (t['nn.LSTM'] * 1e-3):.0f} GFLOP/s")

    with tempfile.TemporaryDirectory() as cache:
        os.environ["LSTMC_CACHE_DIR"] = cache
        spec = ROOT / "specs" / "peephole_lstm.lstm"
        start = time.perf_counter()
        lstmc.compile(spec, 256, 256, target="cpu")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        lstmc.compile(spec, 256, 256, target="cpu")
        warm = time.perf_counter() - start
    print(f"\ncompile peephole_lstm (I=H=256): cold {cold:.2f} s, cached {warm * 1e3:.1f} ms")

    if args.variants:
        T, B, H = 100, 32, 256
        base = median_ms(lstmc_runner("lstm", T, B, H, True), args.repeat)
        print(f"\nevery spec, fwd+bwd ({T}, {B}, {H}); lstmc standard LSTM: {base:.1f} ms")
        print("| spec | lstmc ms | / lstmc lstm | eager loop ms | eager / lstmc |")
        print("|---|---|---|---|---|")
        for path in sorted((ROOT / "specs").rglob("*.lstm")):
            name = str(path.relative_to(ROOT / "specs").with_suffix(""))
            sizes = {"P": H // 2} if name == "lstmp" else {}
            cell = lstmc.compile(path, H, H, target="cpu", **sizes)
            params = cell.init_params(0)
            x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)

            def run():
                y, _, tape = cell.forward(x, params, train=True)
                tape.backward(np.ones_like(y))
            ms = median_ms(run, args.repeat)
            runner = make_graph_runner(str(path), dict(cell.sizes))
            tparams = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
            tx = torch.tensor(x)
            tstate = {n: torch.zeros(B, s) for n, s in cell.state_sizes.items()}
            eager = median_ms(lambda: runner(tparams, tx, tstate)[0].sum().backward(),
                              max(3, args.repeat // 2), warmup=1)
            print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {eager:.1f} | {eager / ms:.2f}x |")


if __name__ == "__main__":
    main()
