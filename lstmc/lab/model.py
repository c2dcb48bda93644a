"""The model every trial trains: input layer -> `lstmc.nn.Recurrent` stack -> output layer.

The recurrent stack runs the variant's compiled kernels (lstmc's cpu target; cuda on a
GPU device). Tokens enter through an embedding, real vectors through a linear layer, both
of size H; the output layer reads every step (per-step tasks) or the last real step of
each sequence.
"""
from __future__ import annotations

import torch
from torch import nn

from .experiment import Variant
from .task import Task


class SequenceModel(nn.Module):
    """Input layer, a stack of `layers` recurrent layers of the variant's cell, output
    layer. `forward(x, lengths)` gives (B, T, out) or (B, out) (see the module doc)."""

    def __init__(self, task: Task, variant: Variant, hidden_size: int, layers: int = 1,
                 dropout: float = 0.0, input_noise: float = 0.0):
        super().__init__()
        from ..nn import Recurrent  # lstmc.nn: the variant's kernels as a torch module

        self.per_step = task.per_step
        self.tokens = task.vocab is not None
        self.input_noise = input_noise
        self.input: nn.Embedding | nn.Linear
        if task.vocab is not None:
            self.input = nn.Embedding(task.vocab, hidden_size)
        elif task.features is not None:
            self.input = nn.Linear(task.features, hidden_size)
        else:  # nn.Linear(None, ...) would raise this TypeError, less plainly
            raise TypeError(f"task '{task.name}' sets neither vocab nor features")
        self.recurrent = Recurrent(variant.text, hidden_size, hidden_size, num_layers=layers,
                                   batch_first=True, dropout=dropout if layers > 1 else 0.0,
                                   cell=variant.cell)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, task.output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        noisy = self.training and self.input_noise > 0
        if noisy and not self.tokens:
            x = x + self.input_noise * torch.randn_like(x)
        z = self.input(x)
        if noisy and self.tokens:
            z = z + self.input_noise * torch.randn_like(z)
        # Explicit zero initial states: lstmc.nn's backward mishandles state=None (an empty
        # state list) in its first cut; zeros are what state=None means anyway.
        layers = self.recurrent.num_layers * self.recurrent.num_directions
        state = {name: z.new_zeros(layers, z.shape[0], size)
                 for name, size in self.recurrent.state_sizes.items()}
        h, _ = self.recurrent(z, state, lengths=lengths)
        h = self.dropout(h)
        if not self.per_step:
            last = (lengths - 1) if lengths is not None else torch.full(
                (h.shape[0],), h.shape[1] - 1, dtype=torch.long, device=h.device)
            h = h[torch.arange(h.shape[0], device=h.device), last]
        return self.output(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
