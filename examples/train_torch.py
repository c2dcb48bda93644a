"""Train a small sequence classifier whose recurrent layer is a custom cell, end to end
in PyTorch: lstmc.nn.Recurrent compiles the spec below into native code, and PyTorch's
autograd, optimizer and torch.compile use it like any layer.

    python examples/train_torch.py [--steps 200] [--compile]

The task: is the running sum of a sequence of +-1 steps ever above zero at the end
(a parity-like counting task an RNN must carry in its state)."""
from __future__ import annotations

import argparse
import time

import torch

import lstmc.nn as lnn

# A coupled-gate LSTM with peepholes on the forget gate and a learned state gain: a cell
# no framework ships, written as its equations.
SPEC = """
cell coupled_peephole(x: I) -> h: H {
  state c: H
  param W_f, W_g, W_o, U_f, U_g, U_o, p_f, b_f, b_g, b_o
  param gain = 1
  f  = sigmoid(W_f @ x + U_f @ h + p_f * c + b_f)
  g  = tanh(W_g @ x + U_g @ h + b_g)
  c' = f * c + (1 - f) * g
  o  = sigmoid(W_o @ x + U_o @ h + b_o)
  h' = o * tanh(gain * c')
}
"""


class Classifier(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = lnn.Recurrent(SPEC, 1, hidden, num_layers=2, batch_first=True,
                                 weight_dropout=0.1)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, lengths):
        _y, state = self.rnn(x, lengths=lengths)
        return self.head(state["h"][-1]).squeeze(-1)  # the last layer's final h


def batch(size: int, steps: int, generator: torch.Generator):
    x = torch.randint(0, 2, (size, steps, 1), generator=generator).float() * 2 - 1
    lengths = torch.randint(steps // 2, steps + 1, (size,), generator=generator)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    x = x * mask[..., None]
    return x, lengths, (x.sum(dim=(1, 2)) > 0).float()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile(fullgraph=True) the model first")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = Classifier(args.hidden)
    run = torch.compile(model, fullgraph=True) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, lengths, target = batch(64, 20, generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(run(x, lengths), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        x, lengths, target = batch(1000, 20, generator)
        accuracy = ((model(x, lengths) > 0).float() == target).float().mean().item()
    print(f"held-out accuracy {accuracy:.3f} after {args.steps} steps "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
