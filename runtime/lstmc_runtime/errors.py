"""Errors the runtime raises; lstmc re-exports them, so one `except` catches both."""


class LstmcError(Exception):
    """Base class of every error lstmc raises on purpose."""


class ShapeError(LstmcError, ValueError):
    """An array given to a cell has the wrong shape, dtype or layout."""


class BackendError(LstmcError):
    """A backend cannot run here (missing library, driver, device), or an artifact is
    damaged."""
