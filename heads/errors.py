"""Typed errors of the ``heads`` library, in one place.

They extend the ``vidfeat.errors`` hierarchy, so the CLI turns every one of them into a one-line
message and the "could not run" exit code, and callers can catch a builtin (``ValueError``,
``OSError``) or the precise class.
"""

from __future__ import annotations

from vidfeat.errors import ConfigError, StoreMismatchError, VidfeatError


class CheckpointError(VidfeatError, OSError):
    """A run directory or checkpoint is missing, corrupt or from an unknown format."""


class IncompatibleStoreError(StoreMismatchError):
    """A trained model was pointed at a store whose features mean something else."""


class MissingStreamError(IncompatibleStoreError):
    """A store lacks a stream that a run reads."""


class RunDataMismatchError(StoreMismatchError):
    """A run is continued or scored on data other than the data it was trained on."""


class RunExistsError(ConfigError):
    """A command would overwrite a run (or a finished run's results) without ``force``."""


class TrainingDataError(ConfigError):
    """The training set cannot teach a classifier anything (one class, one video, none)."""


class RankLost(VidfeatError, RuntimeError):
    """Under torchrun, another rank died or stopped answering mid-collective."""


class TrainingDiverged(ConfigError):
    """The loss or the scores became NaN or infinite: the step size is too large for the data."""


class TransferError(ConfigError):
    """A run cannot be fine-tuned as asked (mode, class set, classifier layout)."""


class ReportError(VidfeatError, ValueError):
    """A run directory is missing or holds a file that cannot be read."""


class HeadInputError(VidfeatError, ValueError):
    """The tensors given to a head do not match its contract (shape, dtype, lengths)."""
