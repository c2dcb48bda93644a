"""CPU benchmark: lstmc against PyTorch in the same process, on the same inputs.

    python benchmarks/cpu.py            # the main table, GFLOP/s, compile times
    python benchmarks/cpu.py --variants # also every spec against lstmc's standard LSTM
    python benchmarks/cpu.py --latency  # small batches: one step, B=1, stacks, per-call cost
    python benchmarks/cpu.py --sweep --quick --out DIR  # ratio table + heat map (lab extra)

The sweep times forward and forward+backward over H in {64..1024}, B in {1..256}, T in
{10, 100, 1000} (--quick: a subset that runs in a few minutes) and writes sweep.md and
sweep.png (the ratio nn.LSTM time / lstmc time as a heat map) to --out.

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
from lstmc.backends.llvm import support  # noqa: E402

CASES = [  # (label, T, B, I=H, with backward)
    ("fwd+bwd (100, 32, 256)", 100, 32, 256, True),
    ("fwd (100, 1, 128)", 100, 1, 128, False),
    ("fwd (50, 64, 512)", 50, 64, 512, False),
]


class Timings(dict):
    """Median ms by contender, and the ms of each round (`rounds`) for paired ratios."""

    def __init__(self, rounds: dict[str, list[float]]):
        super().__init__({name: statistics.median(t) for name, t in rounds.items()})
        self.rounds = rounds

    def ratio(self, slower: str, faster: str) -> tuple[float, float, float]:
        """Time of `slower` / time of `faster`, per round (both ran in it, one just after
        the other, so a slow spell of this shared machine mostly falls on both): the
        median, lowest and highest of the rounds' ratios."""
        ratios = sorted(a / b for a, b in zip(self.rounds[slower], self.rounds[faster]))
        return statistics.median(ratios), ratios[0], ratios[-1]


def interleaved_medians(contenders: dict, repeat: int) -> Timings:
    """Median ms of each contender over `repeat` rounds (a Timings: each round's ms kept
    for paired ratios); in each round every contender in turn (A B C, A B C, ...) is
    warmed up and then timed over a block of back-to-back runs, so a slow spell of the
    machine falls on all alike and every contender's own worker threads are awake and
    the others' have gone quiet."""
    inner = {}
    for name, fn in contenders.items():
        fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(0.02 / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            fn()
            fn()
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - start) / inner[name] * 1e3)
    return Timings(times)


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


# -- small batches: latency ------------------------------------------------------------

def one_step_runners(H: int) -> dict:
    """One step (T=1, B=1) with the state carried from call to call, as a streaming
    model runs: lstmc's forward with packed weights, lstmc's bound cell (when this lstmc
    has one), and nn.LSTMCell."""
    cell = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, target="cpu")
    params = cell.init_params(0)
    packed = cell.pack_params(params)
    x = np.random.default_rng(0).standard_normal((1, 1, H)).astype(np.float32)
    state = [cell.zero_state(1)]

    def forward():
        state[0] = cell.forward(x, packed, state[0])[1]
    runners = {"lstmc forward": forward}
    if hasattr(cell, "bind"):
        bound = cell.bind(packed)
        runners["lstmc bound step"] = lambda: bound.step(x)
    module = torch.nn.LSTMCell(H, H)
    xt = torch.from_numpy(x[0])
    hc = [(torch.zeros(1, H), torch.zeros(1, H))]

    def torch_step():
        with torch.no_grad():
            hc[0] = module(xt, hc[0])
    runners["nn.LSTMCell"] = torch_step
    return runners


def stack_runners(T: int, B: int, H: int, backward: bool) -> dict:
    """2-layer bidirectional LSTM, parameters passed as a dict, and (forward) packed once
    with stack.pack_params."""
    stack = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, target="cpu", num_layers=2,
                          bidirectional=True)
    params = stack.init_params(0)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    module = torch.nn.LSTM(H, H, num_layers=2, bidirectional=True)
    xt = torch.from_numpy(x)
    if not backward:
        def torch_run():
            with torch.no_grad():
                module(xt)
        packed = stack.pack_params(params)
        return {"lstmc": lambda: stack.forward(x, params),
                "lstmc packed": lambda: stack.forward(x, packed), "nn.LSTM": torch_run}

    def run():
        y, _, tape = stack.forward(x, params, train=True)
        tape.backward(np.ones_like(y))

    def torch_backward():
        xx = xt.clone().requires_grad_()
        module(xx)[0].sum().backward()
    return {"lstmc": run, "nn.LSTM": torch_backward}


def one_direction_stack_runners(T: int, B: int, H: int, layers: int = 2):
    """An LSTM stack of one direction, weights packed once, inference: stack.forward as it
    runs (at small batches its layers as a wavefront or one after the other, whichever
    measures faster), the layers one after the other (LSTMC_WAVEFRONT=0), and nn.LSTM;
    with the stack, its packed weights and the input."""
    stack = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, target="cpu",
                          num_layers=layers)
    packed = stack.pack_params(stack.init_params(0))
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    module = torch.nn.LSTM(H, H, num_layers=layers)
    xt = torch.from_numpy(x)

    def layer_by_layer():
        os.environ["LSTMC_WAVEFRONT"] = "0"
        try:
            return stack.forward(x, packed)[0]
        finally:
            del os.environ["LSTMC_WAVEFRONT"]

    def torch_run():
        with torch.no_grad():
            module(xt)
    runs = {"forward": lambda: stack.forward(x, packed), "layer by layer": layer_by_layer,
            "nn.LSTM": torch_run}
    return runs, stack, packed, x


def dict_params_runner(T: int, B: int, H: int):
    """Forward with the parameters as a dict of arrays (packed inside every call)."""
    cell = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, target="cpu")
    params = cell.init_params(0)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    return lambda: cell.forward(x, params)


def bf16_runner(T: int, B: int, H: int):
    """Inference with the weights packed once as bfloat16."""
    cell = lstmc.compile(ROOT / "specs" / "lstm.lstm", H, H, target="cpu")
    packed = cell.pack_params(cell.init_params(0), weights="bfloat16")
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    return lambda: cell.forward(x, packed)


def latency(repeat: int) -> tuple[list[tuple], list[str]]:
    """Rows (case, lstmc ms, PyTorch ms, what PyTorch ran, the paired ratio PyTorch /
    lstmc as Timings.ratio gives it) of the small-batch table, and notes under it."""
    rows: list[tuple] = []
    notes: list[str] = []

    def row(case: str, t: Timings, ours: str, theirs: str, what: str) -> None:
        rows.append((case, t[ours], t[theirs], what, t.ratio(theirs, ours)))

    T, B = 100, 1
    for H in (128, 256, 512):
        runners = {"packed": lstmc_runner("lstm", T, B, H, False)}
        if H == 128:
            runners["dict"] = dict_params_runner(T, B, H)
        runners["bf16"] = bf16_runner(T, B, H)
        runners["nn.LSTM"] = torch_lstm_runner(T, B, H, False)
        t = interleaved_medians(runners, repeat)
        row(f"forward ({T}, {B}, {H}), weights packed once", t, "packed", "nn.LSTM",
            "nn.LSTM")
        if "dict" in t:
            row(f"forward ({T}, {B}, {H}), parameters as a dict", t, "dict", "nn.LSTM",
                "nn.LSTM")
            middle, low, high = t.ratio("dict", "packed")
            notes.append(f"forward ({T}, {B}, {H}) with the parameters as a dict took "
                         f"{100 * (middle - 1):+.1f}% over packed weights (median of the "
                         f"rounds' ratios; {100 * (low - 1):+.1f}% to "
                         f"{100 * (high - 1):+.1f}%)")
        row(f"forward ({T}, {B}, {H}), bfloat16 weights packed once", t, "bf16", "nn.LSTM",
            "nn.LSTM")
    for H in (32, 128, 512):
        t = interleaved_medians(one_step_runners(H), repeat)
        row(f"one step (1, 1, {H}), state carried: forward", t, "lstmc forward",
            "nn.LSTMCell", "nn.LSTMCell")
        if "lstmc bound step" in t:
            row(f"one step (1, 1, {H}), state carried: bound.step", t, "lstmc bound step",
                "nn.LSTMCell", "nn.LSTMCell")
    for backward in (False, True):
        t = interleaved_medians(stack_runners(100, 1, 128, backward), repeat)
        what = "fwd+bwd" if backward else "fwd, parameters as a dict"
        row(f"2-layer bidirectional {what} (100, 1, 128)", t, "lstmc", "nn.LSTM", "nn.LSTM")
        if "lstmc packed" in t:
            row("2-layer bidirectional fwd (100, 1, 128), packed once", t, "lstmc packed",
                "nn.LSTM", "nn.LSTM")
    for B in (1, 4):
        t = interleaved_medians(one_direction_stack_runners(100, B, 128)[0], repeat)
        row(f"2-layer fwd (100, {B}, 128), packed once", t, "forward", "nn.LSTM", "nn.LSTM")
        row(f"2-layer fwd (100, {B}, 128), packed once, layers one after the other", t,
            "layer by layer", "nn.LSTM", "nn.LSTM")
    for backward in (False, True):
        t = interleaved_medians({"lstmc": lstmc_runner("peephole_lstm", 100, 1, 128, backward),
                                 "eager": eager_peephole_runner(100, 1, 128, backward)}, repeat)
        row(f"peephole {'fwd+bwd' if backward else 'fwd'} (100, 1, 128)", t, "lstmc",
            "eager", "eager cell loop")
    # A call's overhead: a training step of a cell too small for its math to count.
    t = interleaved_medians({"lstmc": lstmc_runner("lstm", 1, 1, 8, True),
                             "nn.LSTM": torch_lstm_runner(1, 1, 8, True)}, repeat)
    row("call overhead: fwd+bwd (1, 1, 8), parameters as a dict", t, "lstmc", "nn.LSTM",
        "nn.LSTM")
    for B, H in ((1, 128), (1, 256), (1, 512), (2, 256), (4, 256), (8, 256)):
        t = interleaved_medians({"lstmc": lstmc_runner("lstm", 100, B, H, True),
                                 "nn.LSTM": torch_lstm_runner(100, B, H, True)}, repeat)
        row(f"fwd+bwd (100, {B}, {H})", t, "lstmc", "nn.LSTM", "nn.LSTM")
    t = interleaved_medians({"lstmc": lstmc_runner("lstm", 50, 64, 512, False),
                             "nn.LSTM": torch_lstm_runner(50, 64, 512, False)}, repeat)
    row("forward (50, 64, 512)", t, "lstmc", "nn.LSTM", "nn.LSTM")
    return rows, notes


def print_latency(rows, notes) -> None:
    print("\nPyTorch / lstmc: the median of the rounds' ratios (in brackets: their range)")
    print("\n| case (T, B, H) | lstmc | PyTorch | PyTorch runs | PyTorch / lstmc |")
    print("|---|---|---|---|---|")
    for case, ours, theirs, what, (middle, low, high) in rows:
        print(f"| {case} | {_duration(ours)} | {_duration(theirs)} | {what} | "
              f"{middle:.2f}x ({low:.2f}-{high:.2f}) |")
    for note in notes:
        print(f"\n{note}")


def _duration(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.3f} ms"


# -- scaling sweep ---------------------------------------------------------------------

SWEEP = {"H": (64, 128, 256, 512, 1024), "B": (1, 4, 16, 64, 256), "T": (10, 100, 1000)}
QUICK = {"H": (64, 128, 256, 512), "B": (1, 4, 16, 64), "T": (10, 100)}


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def sweep_medians(contenders: dict, repeat: int, budget_s: float = 1.0) -> dict[str, float]:
    """interleaved_medians, with fewer rounds where one call is long (at least 3)."""
    start = time.perf_counter()
    next(iter(contenders.values()))()
    once = time.perf_counter() - start
    rounds = max(3, min(repeat, int(budget_s / max(once * len(contenders), 1e-9))))
    return interleaved_medians(contenders, rounds)


def sweep(grid: dict, repeat: int) -> list[tuple]:
    """Rows (T, B, H, backward, lstmc ms, nn.LSTM ms); a case whose buffers would not fit
    in a quarter of the free memory is left out (ms = nan)."""
    rows = []
    budget = _available_bytes() // 4
    for T in grid["T"]:
        for H in grid["H"]:
            for B in grid["B"]:
                for backward in (False, True):
                    # per contender: x, y, the (T, B, 4H) input projection, and for the
                    # backward its saved values and gradients (about 16 H per row)
                    need = 4 * T * B * H * (16 if backward else 6)
                    if need > budget:
                        rows.append((T, B, H, backward, float("nan"), float("nan")))
                        continue
                    t = sweep_medians({"lstmc": lstmc_runner("lstm", T, B, H, backward),
                                       "nn.LSTM": torch_lstm_runner(T, B, H, backward)},
                                      repeat)
                    rows.append((T, B, H, backward, t["lstmc"], t["nn.LSTM"]))
                    print(f"  T={T} B={B} H={H} {'fwd+bwd' if backward else 'fwd'}: "
                          f"lstmc {t['lstmc']:.3f} ms, nn.LSTM {t['nn.LSTM']:.3f} ms, "
                          f"{t['nn.LSTM'] / t['lstmc']:.2f}x", flush=True)
    return rows


def sweep_markdown(rows, grid: dict) -> str:
    """One table per (T, direction): rows H, columns B, cells 'ratio (lstmc ms)'."""
    by_key = {(T, B, H, bwd): (ours, theirs) for T, B, H, bwd, ours, theirs in rows}
    out = ["ratio = nn.LSTM time / lstmc time (> 1: lstmc is faster); lstmc ms in brackets",
           ""]
    for backward in (False, True):
        for T in grid["T"]:
            out.append(f"**{'forward+backward' if backward else 'forward'}, T={T}**")
            out.append("")
            out.append("| H \\ B | " + " | ".join(str(B) for B in grid["B"]) + " |")
            out.append("|---" * (len(grid["B"]) + 1) + "|")
            for H in grid["H"]:
                cells = []
                for B in grid["B"]:
                    ours, theirs = by_key[(T, B, H, backward)]
                    cells.append("—" if ours != ours else f"{theirs / ours:.2f}x ({ours:.3g})")
                out.append(f"| {H} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def sweep_heatmap(rows, grid: dict, path: pathlib.Path) -> None:
    """The ratio as a heat map: one panel per (direction, T), H down, B across."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is missing (pip install 'lstmc[lab]'): no heat map written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    by_key = {(T, B, H, bwd): theirs / ours for T, B, H, bwd, ours, theirs in rows}
    Ts, Bs, Hs = grid["T"], grid["B"], grid["H"]
    fig, axes = plt.subplots(2, len(Ts), figsize=(3.6 * len(Ts) + 1.5, 7), squeeze=False,
                             layout="constrained")
    norm = LogNorm(vmin=0.25, vmax=4.0)  # 1 in the middle: 2x faster and 2x slower alike
    image = None
    for r, backward in enumerate((False, True)):
        for c, T in enumerate(Ts):
            ax = axes[r][c]
            ratio = np.array([[by_key[(T, B, H, backward)] for B in Bs] for H in Hs])
            image = ax.imshow(np.clip(ratio, 0.25, 4.0), cmap="RdBu", norm=norm,
                              aspect="auto")
            for i in range(len(Hs)):
                for j in range(len(Bs)):
                    if ratio[i, j] == ratio[i, j]:
                        ax.text(j, i, f"{ratio[i, j]:.2f}", ha="center", va="center",
                                fontsize=8)
            ax.set_xticks(range(len(Bs)), [str(B) for B in Bs])
            ax.set_yticks(range(len(Hs)), [str(H) for H in Hs])
            ax.set_xlabel("batch B")
            ax.set_ylabel("hidden H")
            ax.set_title(f"{'fwd+bwd' if backward else 'forward'}, T={T}")
    bar = fig.colorbar(image, ax=axes, label="nn.LSTM time / lstmc time", shrink=0.8)
    bar.set_ticks([0.25, 0.5, 1, 2, 4], labels=["0.25", "0.5", "1", "2", "4"])
    bar.minorticks_off()
    fig.suptitle("lstmc vs nn.LSTM on this CPU (> 1: lstmc faster)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", action="store_true",
                        help="also time every spec against the standard LSTM and an eager loop")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--latency", action="store_true",
                        help="only the small-batch table (one step, B=1, stacks)")
    parser.add_argument("--sweep", action="store_true",
                        help="only the scaling sweep over H, B, T (long; see --quick)")
    parser.add_argument("--quick", action="store_true", help="the sweep's small subset")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                        help="folder for sweep.md and sweep.png")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy "
          f"{np.__version__}; lstmc {lstmc.__version__}; float32; medians of {args.repeat}")
    if args.latency:
        print_latency(*latency(args.repeat))
        return
    if args.sweep:
        grid = QUICK if args.quick else SWEEP
        rows = sweep(grid, args.repeat)
        text = sweep_markdown(rows, grid)
        print("\n" + text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.md").write_text(text + "\n", encoding="utf-8")
        sweep_heatmap(rows, grid, args.out / "sweep.png")
        print(f"\nwritten: {args.out / 'sweep.md'}, {args.out / 'sweep.png'}")
        return

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
        support._objects.clear()  # as in a new process, on a machine that compiled nothing
        spec = ROOT / "specs" / "peephole_lstm.lstm"
        start = time.perf_counter()
        lstmc.compile(spec, 256, 256, target="cpu")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        lstmc.compile(ROOT / "specs" / "gru.lstm", 256, 256, target="cpu")
        second = time.perf_counter() - start
        start = time.perf_counter()
        lstmc.compile(spec, 256, 256, target="cpu")
        warm = time.perf_counter() - start
    print(f"\ncompile (I=H=256, float32): peephole_lstm cold {cold:.2f} s (with the code every "
          f"cell shares), then gru cold {second:.2f} s, peephole_lstm cached {warm * 1e3:.1f} ms")

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
