"""Exception hierarchy: every error ETA1 raises on purpose derives from SidecarError."""

from __future__ import annotations


class SidecarError(Exception):
    """Base class for ETA1's own errors; the CLI prints these as one line."""


class LocatedError(SidecarError):
    """An error in a file, carrying the path and, where known, the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class ConfigError(LocatedError):
    """Invalid or missing configuration key."""


class RulesError(LocatedError):
    """Invalid rules file."""


class ModelError(LocatedError):
    """Model file that cannot be loaded or does not fit its input."""


class SchemaError(SidecarError):
    """Flow columns that cannot be mapped onto the model's features."""


class ClusterError(SidecarError):
    """Elasticsearch unreachable, or returning an error ETA1 cannot handle."""


class CursorConflictError(ClusterError):
    """Another daemon moved the checkpoint this daemon was about to write."""


class ParityError(SidecarError):
    """ONNX export whose probabilities differ from the XGBoost model's."""
