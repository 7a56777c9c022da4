"""The errors `export` raises on purpose, each with the command-line exit code it maps to.

Every message is one line that names the argument or file at fault; the command line prints it
without a traceback.
"""

from __future__ import annotations


class FocalgraphError(Exception):
    """Base class; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UsageError(FocalgraphError, ValueError):
    """A bad option or argument value (exit 2); nothing was written."""

    exit_code = 2


class ArtifactError(FocalgraphError):
    """An artifact directory that is incomplete or does not match its manifest (exit 2)."""

    exit_code = 2


class OutputError(FocalgraphError):
    """An output could not be written (a full disk, an I/O error, another process writing the same
    place at the same time) (exit 1); nothing was left behind."""


class ConversionError(FocalgraphError):
    """tf2onnx produced a model that is not a faithful, runnable ONNX graph (exit 1)."""


class ProviderError(FocalgraphError):
    """The requested ONNX Runtime execution provider cannot be created here (exit 1)."""


class ValidationFailed(FocalgraphError):
    """ONNX Runtime and the reference disagree beyond tolerance (exit 1); ``report`` says where."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class MissingExtra(FocalgraphError, ImportError):
    """An optional dependency is not installed (exit 2); the message names the extra that brings it."""

    exit_code = 2
