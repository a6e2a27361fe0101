"""Where training scalars go besides ``metrics.jsonl``: ``--logger csv`` or ``tensorboard``.

``metrics.jsonl`` is the trainer's own record (resume and ``heads report`` read it) and is always
written. A logger receives every record the trainer appends (one per evaluation) and mirrors
it where users look: ``metrics.csv`` for spreadsheets and pandas, or TensorBoard event files
under ``tensorboard/``. A new sink is one class registered in ``LOGGERS``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Protocol

from heads import checkpoint as ck
from vidfeat import atomic
from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

DEFAULT_LOGGER = "csv"
# Record keys that are bookkeeping, not curves.
_NOT_SCALARS = ("epoch", "step", "improved")


class TrainLogger(Protocol):
    def log(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``record`` was just appended to ``history`` (all records so far, resumed ones too)."""

    def close(self) -> None: ...


LOGGERS: Registry[TrainLogger] = Registry("logger")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k not in _NOT_SCALARS
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def _step(record: dict[str, Any]) -> int:
    return int(record.get("step", record["epoch"]))


@LOGGERS.register("csv")
class CSVLogger:
    """``metrics.csv``: one row per record, one column per key (rewritten whole, so a resumed
    run's file never repeats or misses a row)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ck.METRICS_CSV

    def log(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for rec in history:
            columns += [k for k in rec if k not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic.write_text(self.path, text.getvalue(), durable=False)  # regenerated every epoch

    def close(self) -> None:
        pass


@LOGGERS.register("tensorboard")
class TensorBoardLogger:
    """Event files in ``tensorboard/``: ``train/loss``, ``val/hit_at_1``, ``lr``, ... against
    the epoch (or the step, when records carry one)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "--logger tensorboard needs the tensorboard package "
                "(pip install 'vidfeat[tensorboard]')"
            ) from exc
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / ck.TENSORBOARD
        self.writer: Any = None

    def log(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        step = _step(record)
        if self.writer is None:
            # A resumed run purges what a killed run wrote after its last checkpoint.
            self.writer = self._writer_class(str(self.log_dir), purge_step=step)
        for key, value in _scalars(record).items():
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "val") else key
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_loggers(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """The logger names (one, or several), each known; refused before a run writes anything."""
    # Each once: the same logger twice would write every event twice into one place.
    names = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
    for name in names:
        LOGGERS.get(name)
    return names


def create_loggers(names: str | tuple[str, ...], run_dir: Path) -> list[TrainLogger]:
    """The loggers named (one name, or several) for ``run_dir``."""
    return [LOGGERS.create(name, run_dir=Path(run_dir)) for name in check_loggers(names)]
