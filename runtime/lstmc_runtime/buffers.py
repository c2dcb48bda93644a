"""The names of the buffers a CPU entry point takes: the one place they are made and read.

The code generator names each buffer of an entry point's ABI with these functions and the
runtime fills them by the same names, so the two cannot drift apart. A name is
`kind:key` (or a bare kind); `parse` splits one back."""
from __future__ import annotations

X, Y, DX, DY, LENGTHS = "x", "y", "dx", "dy", "lengths"
# int64 (seed, first batch row of the call, draw: 0 or 1): what dropout and zoneout masks
# are drawn from (the training forward and the backward of cells that have masks)
RNG = "rng"


def param(name: str) -> str:
    """A parameter as given (vectors: biases, peepholes)."""
    return f"param:{name}"


def dparam(name: str) -> str:
    return f"dparam:{name}"


def panels(packed: str) -> str:
    """Packed weight `packed` as the backward reads it (W, in column panels)."""
    return f"panels:{packed}"


def panels_t(packed: str) -> str:
    """Packed weight `packed` as the forward reads it (W^T, in column panels)."""
    return f"panelsT:{packed}"


def panels_t_bf16(packed: str) -> str:
    """panels_t in bfloat16 (bfloat16.pack_panels_bf16): the bf16 inference forward's."""
    return f"panelsT16:{packed}"


def dpacked(packed: str) -> str:
    return f"dpacked:{packed}"


def state_in(name: str) -> str:
    return f"state_in:{name}"


def state_out(name: str) -> str:
    return f"state_out:{name}"


def dstate_in(name: str) -> str:
    return f"dstate_in:{name}"


def dstate_out(name: str) -> str:
    return f"dstate_out:{name}"


def saved(node: int | str) -> str:
    """A value the training forward saves for every step, for the backward."""
    return f"saved:{node}"


def hoisted(index: int) -> str:
    """The input projection of hoisted product `index`, over all steps."""
    return f"hoisted:{index}"


def dhoisted(index: int) -> str:
    return f"dhoisted:{index}"


def dproduct(node: int) -> str:
    return f"dproduct:{node}"


def derived(name: str) -> str:
    """Derived value `name` ($k) over all steps, made before the loop by a prologue (an
    inference forward's: the training forward saves it as saved(name))."""
    return f"derived:{name}"


def dderived(name: str) -> str:
    return f"dderived:{name}"


def prologue_saved(level: int, node: int) -> str:
    """A value prologue `level` saves for its backward (over all T*B rows)."""
    return saved(f"{level}.{node}")


def prologue_work(level: int, node: int) -> str:
    """Scratch of prologue `level` (over all T*B rows) for a value read across loops."""
    return f"pwork:{level}.{node}"


def prologue_grad(level: int, kind: str, key) -> str:
    """A prologue backward's gradient of an input or hoisted product, before it is added
    to the one the time loop computed."""
    return f"pgrad:{level}.{kind}.{key}"


SEQUENCE_WORK = ("derived", "dderived", "pwork", "pgrad")  # kinds of (T, B, n) scratch


def parse(name: str) -> tuple[str, str]:
    """(kind, key): "saved:12" -> ("saved", "12"); "x" -> ("x", "")."""
    kind, _, key = name.partition(":")
    return kind, key


def is_saved(name: str) -> bool:
    return name.startswith("saved:")
