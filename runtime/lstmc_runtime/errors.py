"""Errors the runtime raises; lstmc re-exports them, so one `except` catches both."""


class LstmcError(Exception):
    """Base class of every error lstmc raises on purpose."""


class ShapeError(LstmcError, ValueError):
    """An array given to a cell has the wrong shape, dtype or layout."""


class BackendError(LstmcError):
    """A backend cannot run here (missing library, driver, device), or an artifact is
    damaged."""


class ArtifactError(BackendError):
    """An artifact on disk is damaged, edited, incomplete, or of another schema: it is
    refused before any of its code runs."""


class UsageError(LstmcError, TypeError):
    """An object used against its contract: an immutable one changed, a tape given to a
    cell it does not belong to, an argument of the wrong kind."""
