"""The lab's error type: a bad experiment definition, task option or storage, said plainly."""
from __future__ import annotations

from ..errors import LstmcError


class ExperimentError(LstmcError):
    """An experiment cannot be defined, run or reported as asked (unknown task, bad option,
    an empty or foreign study, a missing extra). The message says what and where."""


def require(module: str, extra: str = "lab"):
    """Import an optional dependency, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExperimentError(
            f"the variant lab needs '{module.split('.')[0]}', which is not installed: "
            f"pip install 'lstmc[{extra}]'") from exc
