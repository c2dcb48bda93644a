"""The registry of tasks: name -> class. `lstmc experiment tasks` lists it."""
from __future__ import annotations

from .charlm import CharLM
from .chorales import Chorales
from .digits import Digits
from .errors import ExperimentError
from .synthetic import Adding, Copy, TemporalOrder
from .task import Task

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    Adding, Copy, TemporalOrder, Digits, Chorales, CharLM)}


def get_task(name: str, **options) -> Task:
    """An instance of the task `name` with `options` (each checked)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ExperimentError(f"unknown task '{name}' (known: {', '.join(TASKS)})") from None
    return cls(**options)
