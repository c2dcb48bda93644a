"""Sequence plumbing shared by the modules: lengths, packed sequences, reversal.

Everything here is ordinary differentiable PyTorch, traceable by torch.compile."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import ShapeError


def check_lengths(lengths, steps: int, batch: int) -> Tensor | None:
    """Row lengths as an int64 CPU tensor of shape (B,), each in 1..T."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ShapeError(f"lengths: expected integers, got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ShapeError(f"lengths: expected shape ({batch},), one per batch row, got "
                         f"{tuple(lengths.shape)}")
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    if not torch.compiler.is_compiling():  # a data-dependent check: eager only
        bad = ((lengths < 1) | (lengths > steps)).nonzero()
        if bad.numel():
            row = int(bad[0, 0])
            raise ShapeError(f"lengths: each must be between 1 and T={steps}, got "
                             f"{int(lengths[row])} for row {row}")
    return lengths


def reverse(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Each row's first lengths[b] steps reversed (steps past its length stay): what the
    reverse direction reads, as PyTorch's packed sequences define it."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T).unsqueeze(1)
    L = lengths.unsqueeze(0)
    index = torch.where(t < L, L - 1 - t, t).to(x.device)
    return x.gather(0, index.unsqueeze(-1).expand(x.shape))


def unpack(sequence: PackedSequence) -> tuple[Tensor, Tensor]:
    """(padded (T, B, F) in the caller's batch order, lengths (B,) int64 on the CPU)."""
    padded, lengths = pad_packed_sequence(sequence, batch_first=False)
    return padded, lengths.to(torch.int64)


def repack(output: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """`output` (T, B, F), in the caller's batch order, packed as `like` is (same batch
    sizes and sorting), so it lines up with the input as nn.LSTM's output does."""
    order = like.sorted_indices
    if order is not None:
        output = output.index_select(1, order.to(output.device))
        lengths = lengths.index_select(0, order.to(lengths.device))
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
