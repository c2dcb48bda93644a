"""lstmc: a compiler for recurrent cells (LSTM variants, GRUs and their relatives)."""
from lstmc_runtime import load, release_memory
from lstmc_runtime.stack import Stack

from .api import Cell, Tape, compile
from .driver import check_spec
from .errors import BackendError, CompileError, LstmcError, ShapeError, SpecError, SpecSyntaxError
from .interop.torch import params_from_torch, params_to_torch

__version__ = "0.1.0"

__all__ = [
    "compile", "load", "release_memory", "Cell", "Stack", "Tape", "check_spec", "params_from_torch", "params_to_torch",
    "LstmcError", "SpecError", "SpecSyntaxError", "ShapeError", "CompileError", "BackendError",
]
