"""`heads train` and `heads finetune` options: built from the config dataclasses and the head
registry, grouped into the Data, Model, Optimisation and Run sections of ``--help``.

The options are built on first use (``vidfeat_cli.options.deferred``): reading the registry
imports torch, which ``heads --help`` must not pay for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vidfeat.errors import ConfigError
from vidfeat_cli.config_file import config_fields, flatten_config
from vidfeat_cli.options import DEVICE, SectionOption, check_device

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from heads.config import TrainConfig

# (field, section, click settings, help). Defaults shown come from the config dataclasses;
# "choices" names a tuple in heads.config.
_TRAIN_OPTIONS: list[tuple[str, str, dict[str, Any], str]] = [
    ("max_frames", "Data", {"type": int}, "Frames per video."),
    (
        "skip_first",
        "Data",
        {"type": int},
        "Drop this many leading frames (a shorter video keeps its last frame).",
    ),
    (
        "sampling",
        "Data",
        {"choices": "SAMPLINGS"},
        "head: first N; uniform: N evenly spaced; random-crop: a random window (centred at eval).",
    ),
    ("batch_size", "Data", {"type": int}, "Videos per batch."),
    ("bucket", "Data", {"flag": True}, "Batch videos of similar length (less padding)."),
    ("bucket_batches", "Data", {"type": int}, "Batches per length bucket."),
    (
        "sampler",
        "Data",
        {"choices": "SAMPLERS"},
        "balanced: class-balanced draws with replacement.",
    ),
    (
        "classes",
        "Data",
        {},
        "Comma-separated label subset to train on; a JSON list for labels that hold commas "
        """('["black, cat", "dog"]').""",
    ),
    (
        "streams",
        "Data",
        {},
        "Comma-separated store streams to read, e.g. rgb,audio (default: every stream, "
        "concatenated per frame; --fusion says how they combine).",
    ),
    ("test_fraction", "Data", {"type": float}, "Test share when the store has no split."),
    ("val_fraction", "Data", {"type": float}, "Validation share of the non-test videos."),
    ("epochs", "Optimisation", {"type": int}, "Maximum epochs (also with --max-steps)."),
    ("optimizer", "Optimisation", {"choices": "OPTIMIZERS"}, "SGD uses momentum 0.9."),
    (
        "lr",
        "Optimisation",
        {"type": float},
        "Learning rate (default: 1e-3 for adam/rmsprop, 0.01 for sgd).",
    ),
    ("weight_decay", "Optimisation", {"type": float}, "L2 penalty."),
    (
        "lr_step",
        "Optimisation",
        {"type": int},
        "Multiply lr by --lr-gamma every N epochs (0: never).",
    ),
    ("lr_gamma", "Optimisation", {"type": float}, "Step-decay factor."),
    (
        "lr_decay_examples",
        "Optimisation",
        {"type": int},
        "Multiply lr by --lr-gamma every N training videos seen (0: never).",
    ),
    ("rmsprop_decay", "Optimisation", {"type": float}, "RMSProp moving-average decay."),
    (
        "grad_clip",
        "Optimisation",
        {"type": float, "alias": "--clip-grad-norm"},
        "Max global gradient norm (0: off).",
    ),
    (
        "max_steps",
        "Optimisation",
        {"type": int},
        "Stop after N optimizer steps or at --epochs, whichever comes first (0: --epochs only).",
    ),
    (
        "eval_every",
        "Optimisation",
        {"type": int},
        "Validate, checkpoint and count patience every N steps (0: every epoch).",
    ),
    (
        "patience",
        "Optimisation",
        {"type": int},
        "Evaluations without improvement before stopping (0: never).",
    ),
    ("monitor", "Optimisation", {"choices": "MONITORS"}, "Early-stopping value (metrics on val)."),
    (
        "loss",
        "Optimisation",
        {"choices": "LOSSES"},
        "single: softmax CE; multi: sigmoid BCE; auto: by data.",
    ),
    (
        "class_weights",
        "Optimisation",
        {"flag": True},
        "Inverse-frequency class weights in the loss.",
    ),
    (
        "pos_weight",
        "Optimisation",
        {"choices": "POS_WEIGHTS"},
        "inverse-frequency: false negatives of rare classes cost more (positive terms only).",
    ),
    ("seed", "Run", {"type": int}, "Seed for initialisation, splits, batches and crops."),
    ("device", "Run", {"type": DEVICE}, "Where to train (auto: cuda when available)."),
    ("num_workers", "Run", {"type": int}, "DataLoader worker processes."),
    (
        "cache_mb",
        "Run",
        {"type": int},
        "MiB of decoded store chunks each reading process keeps (default 256; 0: none). "
        "Videos that fit are read from the store once; train logs the size when they would.",
    ),
]

# Help for every HeadConfig field (tests check that none is missing).
HEAD_HELP: dict[str, str] = {
    "hidden_size": "Recurrent units per direction.",
    "num_layers": "Stacked recurrent layers (1-3).",
    "dropout": "Dropout between recurrent layers and inside the FC blocks.",
    "residual": "Add each recurrent layer's input to its output.",
    "reduction": "Recurrent heads: how per-step states become one video vector.",
    "attention_size": "Width of the additive attention scorer (--reduction attention).",
    "pooling": "bof: order-blind pooling over the valid frames.",
    "fc_size": "Width of the FC blocks (bof) and of the top block (recurrent heads).",
    "num_experts": "moe: experts per class, plus one dummy expert.",
    "input_norm": "Per frame: LayerNorm of the input features, l2 (unit length, as "
    "YouTube-8M's starter code), or none.",
    "classifier": "linear, or moe: the YouTube-8M mixture of experts (--num-experts).",
    "moe_experts": "lstm_moe: experts of the sparse MoE layer.",
    "moe_top_k": "lstm_moe: experts each time step is sent to.",
    "expert_size": "lstm_moe: hidden units of each expert's two FC layers.",
    "moe_importance_weight": "lstm_moe: weight of the importance loss w*CV^2.",
    "moe_load_weight": "lstm_moe: weight of the load loss w*CV^2.",
    "frame_distance": "late_fusion: frames between the two fused frames.",
    "fusion": "How the streams of a frame combine: concat; shared (one learned space); "
    "projection (one space per stream, pulled together). See docs/fusion.md.",
    "fusion_dim": "shared/projection: width each stream is mapped to.",
    "fusion_weight": "projection: weight of the term pulling a frame's projections together.",
}


def _dataclass_default(name: str) -> Any:
    from heads.config import DataConfig, TrainConfig
    from heads.models import HeadConfig

    for cls in (TrainConfig, DataConfig, HeadConfig):
        for field in dataclasses.fields(cls):
            if field.name == name and field.default is not dataclasses.MISSING:
                return field.default
    return None


def _make_option(
    name: str, section: str, kind: Any, text: str, *, flag: bool = False, alias: str = ""
) -> SectionOption:
    """An option whose default None means "the config's default" (shown from the dataclass)."""
    dash = name.replace("_", "-")
    default = _dataclass_default(name)
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    if shown is not None:
        text = f"{text}  [default: {shown}]"
    decls = [f"--{dash}/--no-{dash}", name] if flag else [f"--{dash}", *filter(None, [alias]), name]
    # default=None for every option, flags too (click would pass False for an on/off flag not
    # given), so that only what was typed overrides --config or the parent run.
    kind = None if flag else kind
    return SectionOption(decls, section=section, type=kind, default=None, help=text)


def train_options() -> list[click.Parameter]:
    """The options that build a TrainConfig's training and data settings."""
    from heads import config

    params = []
    for name, section, settings, text in _TRAIN_OPTIONS:
        if "choices" in settings:
            kind: Any = click.Choice(getattr(config, settings["choices"]))
        else:
            kind = settings.get("type", str)
        flag, alias = bool(settings.get("flag")), settings.get("alias", "")
        params.append(_make_option(name, section, kind, text, flag=flag, alias=alias))
    return params


def head_options() -> list[click.Parameter]:
    """One option per HeadConfig field, so a new head hyper-parameter needs one help line.

    A string field whose values are listed in ``heads.config`` as ``<FIELD>S``
    (``reduction`` -> ``REDUCTIONS``) becomes a choice."""
    from heads import config
    from heads.config import HeadConfig

    params = []
    for field in dataclasses.fields(HeadConfig):
        default = field.default
        kind: Any = type(default)
        values = getattr(config, f"{field.name.upper()}S", None)
        if isinstance(default, str) and isinstance(values, tuple):
            kind = click.Choice(values)
        text = HEAD_HELP.get(field.name, f"See heads.models.HeadConfig.{field.name}.")
        params.append(_make_option(field.name, "Model", kind, text, flag=isinstance(default, bool)))
    return params


def model_option() -> list[click.Parameter]:
    from heads.models import HEADS

    return [
        SectionOption(
            ["--model", "-m", "model"],
            section="Model",
            type=click.Choice(HEADS.names()),
            default=None,
            help="Head to train (required unless --config names one).",
        )
    ]


def _name_list(option: str, text: str) -> tuple[str, ...]:
    """Comma-separated names, or a JSON list of them for names that hold commas (labels may)."""
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--{option}: not a JSON list of names ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"--{option}: a JSON list must hold names (strings)")
        return tuple(n.strip() for n in names if n.strip())
    return tuple(c.strip() for c in text.split(",") if c.strip())


def build_config(options: dict[str, Any], base: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from CLI options (None = not given) over ``base`` (a config file or a run's
    config, flat or nested) or the defaults."""
    from heads.config import TrainConfig, keeps_base_lr

    merged = flatten_config(dict(base or {}), "the base config")
    given = {k: v for k, v in options.items() if v is not None}
    base_optimizer = merged.get("optimizer", TrainConfig.__dataclass_fields__["optimizer"].default)
    if not keeps_base_lr(base_optimizer, given) and (dropped := merged.pop("lr", None)):
        # Another optimiser: its own default lr, not the base's; said, since the file's lr
        # may have been a deliberate choice.
        log.warning(
            "--optimizer %s: the lr %s of the %s config is not kept (%s's default is used; "
            "pass --lr to choose)",
            given["optimizer"],
            dropped,
            base_optimizer,
            given["optimizer"],
        )
    merged.update(given)
    for key in ("classes", "streams"):  # comma-separated on the command line
        if isinstance(merged.get(key), str):
            merged[key] = _name_list(key, merged[key])
    if not merged.get("model"):
        raise ConfigError("choose a head with --model/-m (or 'model' in --config)")
    nested: dict[str, Any] = {"head": {}, "data": {}}
    owners = config_fields()
    for key, value in merged.items():
        if owners[key] == "train":
            nested[key] = value
        else:
            nested[owners[key]][key] = value
    return TrainConfig.from_dict(nested)


def check_training_target(device: str, out: Path) -> None:
    """What a command that trains into ``out`` checks before creating anything: the device,
    and that ``out`` is not a file."""
    check_device(device)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")


@contextlib.contextmanager
def training_session(device: str, out: Path, resume_step: str) -> Iterator[bool]:
    """Around a command that trains into ``out``: the process group when torchrun started this
    process (:mod:`heads.distributed`), and on rank 0, the only rank that writes,
    ``run_dir_lock(out)`` and ``removed_on_failure(out)``. Yields whether this process is rank
    0 (the one to print results). Interrupted (Ctrl-C, or SIGTERM: see ``interrupt_on_sigterm``)
    after a checkpoint, the message says ``resume_step``."""
    from heads.distributed import session
    from vidfeat_cli.core import Interrupted

    with session(device) as world:
        try:
            with contextlib.ExitStack() as stack:
                if world.is_main:  # the only rank that writes
                    existed = stack.enter_context(run_dir_lock(out))
                    stack.enter_context(removed_on_failure(out, existed=existed))
                yield world.is_main
        except KeyboardInterrupt as exc:
            raise Interrupted(_next_step(out, resume_step)) from exc
        except RuntimeError as exc:
            if not (world.distributed and _lost_peer(exc)):
                raise
            from heads.errors import RankLost

            # gloo's own words ("Connection reset by peer", "Timed out waiting") read as a
            # bug in this process; the cause is in another one.
            said = (str(exc).strip().splitlines() or [""])[0][:200]
            raise RankLost(
                "another rank of this torchrun job died or stopped answering "
                f"({said}); {_next_step(out, resume_step)}"
            ) from exc


def _next_step(out: Path, resume_step: str) -> str:
    kept = out.is_dir() and any(out.glob("*.pt"))
    return resume_step if kept else "nothing was kept; rerun the same command"


def _lost_peer(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective failing because a peer rank went away."""
    import torch.distributed as dist

    # gloo raises plain RuntimeErrors; these are its words for a peer gone or silent. Not any
    # DistError: a backend error may be this rank's own (CUDA, out of memory).
    words = ("Connection reset by peer", "Connection closed by peer", "Timed out waiting")
    return isinstance(exc, dist.DistNetworkError) or any(w in str(exc) for w in words)


@contextlib.contextmanager
def removed_on_failure(
    out: Path, keep: tuple[str, ...] = ("*.pt",), existed: bool | None = None
) -> Iterator[None]:
    """Remove ``out`` if this command created it (``existed`` False; None: look now) and then
    failed before writing anything worth keeping (files matching ``keep``: a checkpoint), so a
    failed run never blocks its rerun."""
    if existed is None:
        existed = out.exists() or out.is_symlink()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and not any(any(out.glob(p)) for p in keep):
            shutil.rmtree(out, ignore_errors=True)
        raise


@contextlib.contextmanager
def run_dir_lock(out: Path) -> Iterator[bool]:
    """One process at a time in a run directory: an flock on ``out`` itself (created if need
    be; the kernel releases it when the process dies). Two commands given the same --out both
    found it new and interleaved their files. Yields whether ``out`` existed before."""
    from heads.errors import RunExistsError
    from vidfeat.store.claim import lock_fd, unlock_fd

    existed = out.exists() or out.is_symlink()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            lock_fd(fd)  # not kept by DataLoader workers, which outlive a killed parent
        except BlockingIOError:
            raise RunExistsError(
                f"{out} is being written by another heads process (a train or finetune with "
                "the same --out); wait for it to end, or choose another --out"
            ) from None
        yield existed
    finally:
        unlock_fd(fd)
        os.close(fd)


def run_options() -> list[click.Parameter]:
    """``--force`` and ``--logger``, shared by ``train`` and ``finetune``."""
    from heads.loggers import DEFAULT_LOGGER, LOGGERS

    return [
        SectionOption(
            ["--force"],
            is_flag=True,
            section="Run",
            help="Replace a run already in --out, finished or not.",
        ),
        SectionOption(
            ["--logger"],
            type=click.Choice(LOGGERS.names()),
            multiple=True,
            default=(DEFAULT_LOGGER,),
            show_default=True,
            section="Run",
            help="Where scalars go besides metrics.jsonl (csv: metrics.csv; tensorboard: "
            "TensorBoard events); repeat for several: --logger csv --logger tensorboard.",
        ),
    ]


def run_out_option(required: bool = True) -> Any:
    """``--out/-o``: the run directory a command creates."""
    return click.option(
        "--out",
        "-o",
        "out",
        type=click.Path(path_type=Path),
        required=required,
        cls=SectionOption,
        section="Run",
        help="Run directory to create.",
    )


def metrics_line(metrics: dict[str, Any], name: str) -> str:
    """``test (120 videos): hit_at_1 0.8123, ...``: a run's metrics as commands print them."""
    n = metrics.get("n_test", metrics.get("n"))
    return f"{name} ({n} videos): {metrics_text(metrics)}"


def metrics_text(metrics: dict[str, Any]) -> str:
    """``hit_at_1 0.8123, top5 ...`` for the metrics a run reports (``heads.config.METRICS``)."""
    from heads.config import METRICS

    parts = [f"{k} {metrics[k]:.4f}" for k in METRICS if isinstance(metrics.get(k), float)]
    return ", ".join(parts) if parts else "no metrics"
