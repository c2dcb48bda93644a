"""The names of a GPU cell's device buffers and packed weights: the one place they are made.

The kernel generator declares each buffer as a kernel parameter by one of these names, the
launch plan refers to it by the same name, and the executor allocates and fills it by it,
so the three cannot drift apart. The names are C identifiers (they appear in the kernel
source), hence no separator like the CPU buffers' `kind:key`."""
from __future__ import annotations

# Every input packed into one sequence; the output sequence; their gradients.
X, Y, DX, DY = "x", "y", "dx", "dy"


def state(name: str) -> str:
    """State `name` at each step (a ring of 2 in inference, all T + 1 in training)."""
    return f"st_{name}"


def carry(name: str) -> str:
    """The gradient of state `name` carried from step t + 1 back to step t."""
    return f"cr_{name}"


def param(name: str) -> str:
    """A vector parameter (a bias, a peephole) as given."""
    return f"p_{name}"


def node(node_id: int) -> str:
    """Value %node_id of the step, materialized in memory."""
    return f"nd{node_id}"


def hoisted(index: int) -> str:
    """The input projection of hoisted product `index`, over all steps."""
    return f"hx{index}"


def dhoisted(index: int) -> str:
    return f"dh{index}"


def dproduct(node_id: int) -> str:
    """The gradient of recurrent product %node_id's result, over all steps."""
    return f"dp{node_id}"


def param_acc(name: str) -> str:
    """Vector parameter `name`'s gradient summed over steps, per batch row."""
    return f"acc_{name}"


def packed(index: int) -> str:
    """Packed weight matrix `index` (matrices stacked by rows as a product reads them)."""
    return f"w{index}"


def derived(name: str) -> str:
    """Derived value `name` ($k) over all steps, made before the loop by a prologue."""
    return f"dv{name.lstrip('$')}"


def dderived(name: str) -> str:
    return f"ddv{name.lstrip('$')}"


def prologue_node(level: int, node_id: int) -> str:
    """Value %node_id of prologue `level` (over all T*B rows), materialized."""
    return f"pl{level}_nd{node_id}"


def prologue_acc(level: int, name: str) -> str:
    """Vector parameter `name`'s gradient from prologue `level`, per row of all T*B."""
    return f"pacc{level}_{name}"
