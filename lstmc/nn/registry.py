"""Compiled cells by key: the string that names a cell inside lstmc's custom ops.

A torch.library op takes tensors and plain values, not Python objects, so every op call
names its cell by a key: the JSON of everything that determines the compiled code (the
spec's text, cell name, sizes) plus how the op's weight tensors map onto the spec's
parameters (the `layout`). A key is self-contained: a process that has never seen it (a
DDP worker, a program that loads an exported graph) compiles the cell from it, and
lstmc's disk cache makes that a load. The dtype and target are not part of the key: they
follow the tensors of each call (float32/float64; CPU tensors run target "cpu", CUDA
tensors "cuda"), unless the key fixes the target ("opencl" runs CPU tensors through the
OpenCL kernels, for testing).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from lstmc_runtime.forksafe import fork_safe_lock

from ..errors import CompileError

TARGETS = ("auto", "cpu", "opencl", "cuda")


@dataclass(frozen=True)
class CellKey:
    """What the ops need to find (or build) a compiled cell.

    `layout` has one entry per spec parameter, in the cell's parameter order:
    [index, row0, row1] takes rows row0:row1 of the op's weight tensor `index` (the
    whole tensor when row0 is None), and None means the parameter is a constant zero
    (nn.LSTM's bias=False)."""

    source: str
    cell: str | None
    input_size: int
    hidden_size: int | None
    sizes: tuple[tuple[str, int], ...]
    target: str
    layout: tuple

    def text(self) -> str:
        return json.dumps({"source": self.source, "cell": self.cell,
                           "input_size": self.input_size, "hidden_size": self.hidden_size,
                           "sizes": [list(s) for s in self.sizes], "target": self.target,
                           "layout": [list(e) if e is not None else None for e in self.layout]},
                          sort_keys=True)

    @staticmethod
    def parse(text: str) -> CellKey:
        try:
            d = json.loads(text)
            return CellKey(d["source"], d["cell"], d["input_size"], d["hidden_size"],
                           tuple((n, v) for n, v in d["sizes"]), d["target"],
                           tuple(tuple(e) if e is not None else None for e in d["layout"]))
        except (ValueError, KeyError, TypeError) as error:
            raise CompileError(f"not an lstmc cell key: {text[:80]!r} ({error})") from None


# held while a cell compiles (seconds, the GIL released); a forked child compiles anew
_lock = fork_safe_lock(sys.modules[__name__], "_lock")
_keys: dict[str, CellKey] = {}
_cells: dict[tuple[str, str, str], object] = {}


def key_of(text: str) -> CellKey:
    key = _keys.get(text)
    if key is None:
        key = _keys[text] = CellKey.parse(text)
    return key


def target_for(key: CellKey, device_type: str) -> str:
    """The lstmc target that runs tensors of `device_type` for this key."""
    if key.target == "auto":
        if device_type == "cuda":
            return "cuda"
        if device_type == "cpu":
            return "cpu"
    elif key.target in ("cpu", "opencl") and device_type == "cpu":
        return key.target
    elif key.target == "cuda" and device_type == "cuda":
        return "cuda"
    raise CompileError(f"lstmc target '{key.target}' cannot run {device_type} tensors "
                       "(cpu and opencl take CPU tensors, cuda takes CUDA tensors)")


def compiled(text: str, dtype: str, target: str):
    """The cell of key `text` compiled for (dtype, target); compiled once per process."""
    slot = (text, dtype, target)
    cell = _cells.get(slot)
    if cell is not None:
        return cell
    with _lock:
        cell = _cells.get(slot)
        if cell is None:
            import lstmc

            key = key_of(text)
            # mypy lets **sizes stand for compile's other keywords too; a key's sizes are
            # the spec's size names, which Recurrent passed to compile the same way
            cell = lstmc.compile(key.source, key.input_size, key.hidden_size, target=target,
                                 dtype=dtype, cell=key.cell,
                                 **dict(key.sizes))  # type: ignore[arg-type]
            _cells[slot] = cell
    return cell
