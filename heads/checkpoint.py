"""Run-directory files: their names, self-describing checkpoints and JSON records, and what a
directory holds (a new, unfinished or finished run) before a run starts there.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), so it loads with
``torch.load(weights_only=True)``. It carries everything needed to rebuild its model and data
pipeline alone: model name, head and train config (as dicts), label map, and the identity of
the store it was trained on (:mod:`heads.identity`), which is checked before the model is used
on another store. Every file is replaced atomically (:mod:`vidfeat.atomic`).

torch is imported by the functions that need it, so the file names and JSON records can be used
(by ``heads report``, the loggers, ``--help``) without loading it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

from heads.errors import CheckpointError, RunExistsError
from vidfeat import atomic
from vidfeat.errors import ConfigError
from vidfeat.signals import signals_held

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
BEST, LAST = "best.pt", "last.pt"
CONFIG, LABEL_MAP, SPLIT, METRICS = "config.json", "label_map.json", "split.csv", "metrics.jsonl"
TEST_METRICS, TEST_PREDICTIONS = "test_metrics.json", "test_predictions"
METRICS_CSV, TENSORBOARD = "metrics.csv", "tensorboard"
# Every file a run directory may hold; --force removes exactly these before starting over.
RUN_FILES = (
    CONFIG,
    LABEL_MAP,
    SPLIT,
    METRICS,
    METRICS_CSV,
    BEST,
    LAST,
    TEST_METRICS,
    TEST_PREDICTIONS + ".npz",
    TEST_PREDICTIONS + ".csv",
    TENSORBOARD,
)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n"
    atomic.write_text(path, text)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: is this a heads run directory?") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    text = "".join(json.dumps(_json_safe(r)) + "\n" for r in records)
    atomic.write_text(path, text)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file such as ``metrics.jsonl``, in order ([] if there is no
    file). A torn last line (a run killed mid-write) is skipped with a warning; any other
    unreadable line is a ``CheckpointError`` naming it."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                log.warning("%s: ignoring unreadable last line", path)
                continue
            raise CheckpointError(f"{path}:{i + 1}: invalid JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}:{i + 1}: expected a JSON object")
        records.append(record)
    return records


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(_json_safe(record)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename), with Ctrl-C and SIGTERM held
    until it is written: raised inside torch.save's zip writer, the interrupt came out as its
    RuntimeError ("unexpected pos"), an internal error instead of "interrupted"."""
    import torch

    with signals_held(), atomic.atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def load_weights(model: Any, weights: dict[str, Any], name: str) -> None:
    """``model.load_state_dict(weights)``, with a mismatch as a ``CheckpointError`` naming the
    keys: after an edit of a head's code its saved runs no longer fit it, which is no bug of
    the run."""
    from vidfeat.state_dict import describe_mismatch

    problems = describe_mismatch(model, weights)
    if problems:
        raise CheckpointError(
            f"the saved weights do not fit the {name} head as its code now defines it "
            f"({problems}); was the head changed since this run was trained?"
        )
    model.load_state_dict(weights)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (no code runs from the file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            first = (str(exc).splitlines() or [""])[0]
            raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
        # torch's own message is several lines of advice to load with weights_only=False,
        # which would run the file's code: exactly what must not happen.
        raise CheckpointError(
            f"refused checkpoint {path}: it holds objects other than tensors and plain values "
            "(loading it could run code)"
        ) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a heads checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """Global torch RNG states as tensors (dropout draws from them)."""
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ run directory


def is_finished(run_dir: Path) -> bool:
    """A run is finished once its test metrics are written (the last file a run writes)."""
    return (run_dir / TEST_METRICS).is_file()


def check_run_dir(
    run_dir: Path, *, resume: bool = False, force: bool = False, resumable: bool = True
) -> str:
    """What ``run_dir`` holds: ``new``, ``unfinished`` or ``finished``; creates nothing.

    A run there is refused unless it is resumed or ``force`` replaces it."""
    for path in (run_dir, *run_dir.parents):  # the nearest existing one must be a directory
        if path.exists():
            if not path.is_dir():
                raise ConfigError(
                    f"{run_dir}: a file is in the way where a directory is expected ({path})"
                )
            break
    if resume and force:
        raise ConfigError("--resume continues a run and --force replaces it: choose one")
    if not (run_dir / CONFIG).exists():
        if (run_dir / TEST_METRICS).exists():  # test results without a run: an ensemble's
            # Its files share a run's names; --force would replace some and leave the rest.
            raise RunExistsError(
                f"{run_dir} holds an ensemble's results (heads ensemble), not a training run; "
                "choose another --out"
            )
        return "new"
    state = "finished" if is_finished(run_dir) else "unfinished"
    if not (resume or force):
        what = "a finished" if state == "finished" else "an unfinished"
        can_resume = resumable and state == "unfinished"
        hint = "--resume to continue it or --force" if can_resume else "--force"
        raise RunExistsError(f"{run_dir} already holds {what} run; add {hint} to replace it")
    return state


def sweep_run_temps(run_dir: Path) -> None:
    """Remove the temporary copies of run files that a process killed mid-write left (a
    checkpoint's is as large as the checkpoint). For the run directory's one writer."""
    for path in atomic.sweep_temps(run_dir, RUN_FILES):
        log.info("removed %s, left by a write that was cut short", path.name)


def clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's files (only those a run writes) before starting over."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
