"""lstmc_runtime: loads and runs cells compiled by lstmc. Needs only NumPy (and CuPy for
CUDA artifacts); no compiler, lark or llvmlite on the machine that deploys."""
from .cellbase import CellBase, Tape
from .errors import BackendError, LstmcError, ShapeError

__all__ = ["CellBase", "Tape", "LstmcError", "ShapeError", "BackendError"]
