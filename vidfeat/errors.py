"""Typed errors. Each subclasses a builtin so callers can catch broadly or precisely.

The CLI maps any ``VidfeatError`` to a one-line message and exit code 2 ("could not run").
"""

from __future__ import annotations


class VidfeatError(Exception):
    """Base class for every error vidfeat raises on purpose."""


class ConfigError(VidfeatError, ValueError):
    """An option or configuration value is invalid."""


class ManifestError(VidfeatError, ValueError):
    """A manifest is missing, unreadable or invalid. ``problems`` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class DecodeError(VidfeatError, RuntimeError):
    """A video could not be decoded. ``status`` is a short machine-readable code."""

    def __init__(self, reason: str, status: str = "decode_error") -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class WeightsError(VidfeatError, RuntimeError):
    """Backbone weights could not be found or loaded."""


class StoreError(VidfeatError, OSError):
    """A feature store is missing, corrupt, locked or cannot be written."""


class StoreMismatchError(StoreError):
    """An existing store was written with a different configuration."""


class VideoNotFoundError(StoreError, KeyError):
    """The requested video id is not in the store (or did not succeed)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
