"""lstmc.nn in PyTorch training, against PyTorch, in one process on the same inputs.

    python benchmarks/torch_training.py                # every table
    python benchmarks/torch_training.py --quick        # small sizes, few repeats
    python benchmarks/torch_training.py --no-compile   # skip torch.compile (slow to build)
    python benchmarks/torch_training.py --small-batch  # table 1 at B = 1 and 4 only

1. One training step (forward, MSE loss on a linear head, backward, Adam) of a 2-layer
   model at (T, B, H) = (100, 32, 256) and (100, 64, 512): lstmc.nn.LSTM against
   torch.nn.LSTM (oneDNN); lstmc.nn.Recurrent(peephole_lstm) against the same cell as an
   eager PyTorch loop and that loop under torch.compile. With --small-batch: (100, 1, 128),
   (100, 1, 256) and (100, 4, 256) instead, where the module's per-call work (packing the
   weights, PyTorch's custom-op dispatch) weighs most.
2. Module overhead: lstmc.nn.LSTM's forward + backward against the raw lstmc calls
   (cell.forward(train=True) + tape.backward) for one layer at B=32, and the weight
   packing a forward does when the parameters changed.
3. Streaming: one step at B=1, H=128, no grad: lstmc.nn.RecurrentCell(lstm) against
   nn.LSTMCell, and lstmc.nn.LSTM against nn.LSTM on one step and on 100 steps, in
   microseconds.

Times are medians (float32, this machine's threads); ratios > 1 mean lstmc is faster.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from cpu import interleaved_medians  # noqa: E402

import lstmc  # noqa: E402
import lstmc.nn as lnn  # noqa: E402

PEEPHOLE = str(ROOT / "specs" / "peephole_lstm.lstm")


class PeepholeLoop(torch.nn.Module):
    """The peephole LSTM written the way researchers write it today: a Python loop."""

    def __init__(self, input_size: int, hidden: int, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for layer in range(layers):
            m = torch.nn.Module()
            m.W = torch.nn.Linear(input_size if layer == 0 else hidden, 4 * hidden)
            m.U = torch.nn.Linear(hidden, 4 * hidden, bias=False)
            m.p = torch.nn.Parameter(0.1 * torch.randn(3, hidden))
            self.layers.append(m)

    def forward(self, x):
        for m in self.layers:
            B, H = x.shape[1], m.U.in_features
            h = c = x.new_zeros(B, H)
            wx = m.W(x)
            out = []
            for t in range(x.shape[0]):
                z = wx[t] + m.U(h)
                zi, zf, zg, zo = z.chunk(4, dim=-1)
                i = torch.sigmoid(zi + m.p[0] * c)
                f = torch.sigmoid(zf + m.p[1] * c)
                c = f * c + i * torch.tanh(zg)
                o = torch.sigmoid(zo + m.p[2] * c)
                h = o * torch.tanh(c)
                out.append(h)
            x = torch.stack(out)
        return x, None


def training_step(rnn, head, x, target):
    params = list(rnn.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        y, _ = rnn(x)
        loss = torch.nn.functional.mse_loss(head(y[-1]), target)
        loss.backward()
        optimizer.step()
    return step


def table_training(sizes, repeat, compile_loops):
    print("\n1. one training step of a 2-layer model (ms; ratio = other / lstmc)")
    for T, B, H in sizes:
        x, target = torch.randn(T, B, H), torch.randn(B, 1)
        head = torch.nn.Linear(H, 1)
        contenders = {
            "lstmc.nn.LSTM": training_step(lnn.LSTM(H, H, num_layers=2), head, x, target),
            "torch.nn.LSTM": training_step(torch.nn.LSTM(H, H, num_layers=2), head, x, target),
            "lstmc.nn.Recurrent(peephole)": training_step(
                lnn.Recurrent(PEEPHOLE, H, H, num_layers=2), head, x, target),
            "peephole eager loop": training_step(PeepholeLoop(H, H, 2), head, x, target),
        }
        if compile_loops:
            start = time.perf_counter()
            compiled = torch.compile(PeepholeLoop(H, H, 2))
            step = training_step(compiled, head, x, target)
            step()
            print(f"   torch.compile of the peephole loop took {time.perf_counter() - start:.0f} s"
                  " to build")
            contenders["peephole torch.compile"] = step
        ms = interleaved_medians(contenders, repeat)
        print(f"   (T, B, H) = ({T}, {B}, {H})")
        print(f"     {'lstmc.nn.LSTM':30s} {ms['lstmc.nn.LSTM']:9.2f}   torch.nn.LSTM "
              f"{ms['torch.nn.LSTM']:9.2f}   ratio {ms['torch.nn.LSTM'] / ms['lstmc.nn.LSTM']:.2f}")
        ours = ms["lstmc.nn.Recurrent(peephole)"]
        line = f"     {'lstmc.nn.Recurrent(peephole)':30s} {ours:9.2f}"
        for name in ("peephole eager loop", "peephole torch.compile"):
            if name in ms:
                line += f"   {name.split()[1]} {ms[name]:9.2f} ratio {ms[name] / ours:.2f}"
        print(line)


def table_overhead(H, repeat):
    print("\n2. module overhead at T=100, B=32, one layer (ms)")
    T, B = 100, 32
    torch.manual_seed(0)
    module = lnn.LSTM(H, H)
    cell = lstmc.compile(lnn.specs.SPECS["lstm"], H, H, target="cpu")
    params = lstmc.params_from_torch(cell, torch.nn.LSTM(H, H))
    x = torch.randn(T, B, H, requires_grad=True)
    xn = x.detach().numpy()

    def raw():
        y, _, tape = cell.forward(xn, params, train=True)
        tape.backward(np.ones_like(y))

    def wrapped():  # as a training loop's step: gradients set to None, then computed
        module.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = module(x)
        y.backward(torch.ones_like(y))

    def pack():
        cell.pack_params(params)

    ms = interleaved_medians({"raw": raw, "module": wrapped, "pack": pack}, repeat)
    print(f"   raw lstmc forward+backward {ms['raw']:8.2f}   lstmc.nn.LSTM {ms['module']:8.2f}"
          f"   overhead {100 * (ms['module'] / ms['raw'] - 1):+.1f}%")
    print(f"   packing the weights once (H={H}): {ms['pack']:.3f} ms "
          f"({100 * ms['pack'] / ms['module']:.1f}% of a step; reused while unchanged)")


def table_streaming(repeat):
    print("\n3. streaming: B=1, H=128, no grad (µs per call)")
    H = 128
    torch.manual_seed(0)
    ours = lnn.RecurrentCell(lnn.specs.SPECS["lstm"], H, H)
    theirs = torch.nn.LSTMCell(H, H)
    x = torch.randn(1, H)
    state = {"h": torch.zeros(1, H), "c": torch.zeros(1, H)}
    hc = (torch.zeros(1, H), torch.zeros(1, H))

    def run_ours():
        ours(x, state)

    def run_theirs():
        theirs(x, hc)

    with torch.no_grad():
        ms = interleaved_medians({"ours": run_ours, "theirs": run_theirs}, repeat)
    print(f"   lstmc.nn.RecurrentCell {1e3 * ms['ours']:8.1f}   nn.LSTMCell "
          f"{1e3 * ms['theirs']:8.1f}   ratio {ms['theirs'] / ms['ours']:.2f}")
    ours_seq, theirs_seq = lnn.LSTM(H, H), torch.nn.LSTM(H, H)
    ours_seq.load_state_dict(theirs_seq.state_dict())
    for T in (1, 100):
        xs = torch.randn(T, 1, H)
        hx = (torch.zeros(1, 1, H), torch.zeros(1, 1, H))
        with torch.no_grad():
            ms = interleaved_medians({"ours": lambda: ours_seq(xs, hx),
                                      "theirs": lambda: theirs_seq(xs, hx)}, repeat)
        label = f"lstmc.nn.LSTM, T={T}"
        print(f"   {label:22s} {1e3 * ms['ours']:8.1f}   nn.LSTM     "
              f"{1e3 * ms['theirs']:8.1f}   ratio {ms['theirs'] / ms['ours']:.2f}")
    # two layers: a wavefront (a layer per core) or one after the other, as measured
    ours_seq, theirs_seq = lnn.LSTM(H, H, num_layers=2), torch.nn.LSTM(H, H, num_layers=2)
    ours_seq.load_state_dict(theirs_seq.state_dict())
    xs = torch.randn(100, 1, H)
    with torch.no_grad():
        ms = interleaved_medians({"ours": lambda: ours_seq(xs),
                                  "theirs": lambda: theirs_seq(xs)}, repeat)
    label = "2 layers, T=100"
    print(f"   {label:22s} {1e3 * ms['ours']:8.1f}   nn.LSTM     "
          f"{1e3 * ms['theirs']:8.1f}   ratio {ms['theirs'] / ms['ours']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--small-batch", action="store_true",
                        help="only the training step, at B = 1 and 4")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7
    sizes = [(20, 32, 128)] if args.quick else [(100, 32, 256), (100, 64, 512)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.small_batch:
        table_training([(100, 1, 128), (100, 1, 256), (100, 4, 256)], repeat,
                       not args.no_compile)
        return
    table_training(sizes, repeat, not args.no_compile)
    table_overhead(128 if args.quick else 256, repeat)
    table_streaming(repeat * 3)


if __name__ == "__main__":
    main()
