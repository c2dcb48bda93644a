"""lstmc_runtime: loads and runs cells compiled by lstmc. Needs only NumPy (and CuPy for
CUDA artifacts); no compiler, lark or llvmlite on the machine that deploys."""
from .cellbase import CellBase, Tape
from .errors import ArtifactError, BackendError, LstmcError, ShapeError, UsageError


def load(directory):
    """Load a compiled artifact (a directory written by `lstmc compile -o DIR`). The
    result has the same init_params / forward / Tape.backward API as lstmc.compile."""
    import os

    from .artifact import load_cell, read_manifest
    from .stack import load_stack

    try:
        directory = os.fsdecode(directory)  # a str, bytes or path-like path
    except TypeError:
        raise UsageError(f"load takes a directory path (str, bytes or os.PathLike), got "
                         f"{type(directory).__name__}") from None
    manifest = read_manifest(directory)
    if "layers" in manifest:
        return load_stack(directory, manifest)
    return load_cell(directory, manifest)


def release_memory() -> int:
    """Free the memory kept for reuse between calls (the CPU buffer pool, also emptied
    by itself after LSTMC_POOL_IDLE_S idle seconds); returns the bytes given back."""
    from .native import release_memory as release

    return release()


__all__ = ["ArtifactError", "BackendError", "CellBase", "LstmcError", "ShapeError", "Tape",
           "UsageError", "load", "release_memory"]
