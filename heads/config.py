"""Stage-2 configuration: frozen dataclasses validated on construction, with a JSON round trip.

This module imports no torch (nor anything that does), so tools can build and check configs
without paying for it; the heads' shared ``HeadConfig`` lives here for that reason.

``TrainConfig`` holds everything that determines a training run (model, head, data, optimiser,
schedule, stopping rule, seed); a full copy is saved in every checkpoint and in ``config.json``
so a run directory can rebuild its model and data pipeline alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from heads.validate import check_choice, check_float, check_int
from vidfeat.config import DEVICES_RE
from vidfeat.errors import ConfigError

REDUCTIONS = ("last", "mean", "weighted", "attention")
POOLINGS = ("max", "mean")
INPUT_NORMS = ("layer", "l2", "none")  # heads.models.base.input_norm_layer builds each
CLASSIFIER_NAMES = ("linear", "moe")  # the keys of CLASSIFIERS (moe registers on import)
FUSIONS = ("concat", "shared", "projection")  # the keys of FUSION_LAYERS (heads.models)
SAMPLINGS = ("head", "uniform", "random-crop")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
LOSSES = ("auto", "single", "multi")
POS_WEIGHTS = ("none", "inverse-frequency")
SAMPLERS = ("shuffle", "balanced")
METRICS = ("hit_at_1", "top5", "gap_at_20", "mean_ap", "perr")  # all "higher is better"
MONITORS = ("val_loss", *METRICS)
# Adam and RMSProp are scale-free, so 1e-3 works across heads; SGD needs a larger step.
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "rmsprop": 1e-3}
SGD_MOMENTUM = 0.9


def keeps_base_lr(base_optimizer: str, changes: dict[str, Any]) -> bool:
    """Whether a config built from a base and ``changes`` keeps the base's learning rate: yes
    unless the changes name another optimiser without an lr (that optimiser's default then).
    Naming the same optimiser again changes nothing."""
    return "lr" in changes or changes.get("optimizer", base_optimizer) == base_optimizer


def _from_dict(
    cls: type, data: object, nested: dict[str, Any] | None = None, what: str | None = None
) -> Any:
    """``cls(**data)``, refusing a non-mapping and unknown keys (``what`` names ``cls`` in the
    errors); ``nested`` builds the given fields from their dicts."""
    what = what or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")
    kwargs = dict(data)
    for key, build in (nested or {}).items():
        if key in kwargs:
            kwargs[key] = build(kwargs[key])
    return cls(**kwargs)


def _names(field_name: str, value: Any) -> tuple[str, ...] | None:
    """None, or a non-empty tuple of unique non-empty names."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{field_name} must be a list of names, got {value!r}")
    if not value or len(set(value)) != len(value):
        raise ConfigError(f"{field_name} must be non-empty and unique, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters shared by all head families; each family reads the fields it needs.

    The defaults assume Adam at lr 1e-3 and were picked on synthetic tasks where classes differ
    only in the order of events: a wide (256) recurrent state learns order from few videos
    far more reliably than a narrow one, and the last valid state ("last") beat the mean of
    states when frames are noisy.
    """

    hidden_size: int = 256  # recurrent units per direction
    num_layers: int = 1  # stacked recurrent layers, 1..3
    dropout: float = 0.2  # between recurrent layers and inside the FC blocks
    residual: bool = False  # add each recurrent layer's input to its output (projected if needed)
    reduction: str = "last"  # recurrent heads: how per-step states become one video vector
    attention_size: int = 128  # width of the additive attention scorer
    pooling: str = "max"  # bof: order-blind pooling over valid frames
    fc_size: int = 256  # width of the FC blocks (bof) and of the top block (recurrent heads)
    num_experts: int = 2  # moe: experts per class, plus one dummy expert (as YouTube-8M)
    input_norm: str = "layer"  # per frame: LayerNorm, "l2" (YouTube-8M's train.py) or "none"
    classifier: str = "linear"  # linear | moe: the YouTube-8M mixture of experts (num_experts)
    # lstm_moe: the sparse mixture-of-experts layer between its two LSTMs (Shazeer et al. 2017).
    moe_experts: int = 64  # experts in the layer
    moe_top_k: int = 4  # experts each time step is sent to
    expert_size: int = 1024  # hidden units of each expert's two FC layers
    moe_importance_weight: float = 0.1  # w of the importance loss w * CV(importance)^2
    moe_load_weight: float = 0.1  # w of the load loss w * CV(load)^2
    frame_distance: int = 15  # late_fusion: frames between the two fused frames (Karpathy: 15)
    # How the streams of a frame are combined (docs/fusion.md): concat | shared | projection.
    fusion: str = "concat"
    fusion_dim: int = 256  # shared / projection: width of the space each stream is mapped to
    fusion_weight: float = 0.1  # projection: weight of the term pulling a frame's streams together

    def __post_init__(self) -> None:
        names = ("hidden_size", "attention_size", "fc_size", "num_experts", "expert_size")
        for name in (*names, "frame_distance", "fusion_dim"):
            check_int(name, getattr(self, name), low=1)
        check_choice("fusion", self.fusion, FUSIONS)
        check_float(self, "fusion_weight", 0.0)
        check_int("moe_experts", self.moe_experts, low=2)
        # One expert must stay out of the top k: the load loss needs the (k+1)-th gate value.
        check_int("moe_top_k", self.moe_top_k, low=1)
        if self.moe_top_k >= self.moe_experts:
            raise ConfigError(
                f"moe_top_k ({self.moe_top_k}) must be below moe_experts ({self.moe_experts}): "
                "one expert stays out of each step's top k (lower --moe-top-k or raise "
                "--moe-experts)"
            )
        check_float(self, "moe_importance_weight", 0.0)
        check_float(self, "moe_load_weight", 0.0)
        check_choice("classifier", self.classifier, CLASSIFIER_NAMES)
        check_int("num_layers", self.num_layers, low=1, high=3)
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ConfigError(f"dropout must be a number, got {dropout!r}")
        if not (0.0 <= dropout < 1.0) or math.isnan(dropout):
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        # JSON may hand back 0 for 0.0; store a float so round trips compare equal.
        object.__setattr__(self, "dropout", float(dropout))
        if not isinstance(self.residual, bool):
            raise ConfigError(f"residual must be true or false, got {self.residual!r}")
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("input_norm", self.input_norm, INPUT_NORMS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        """Inverse of ``to_dict``; missing keys take defaults, unknown keys are refused."""
        return _from_dict(cls, data, what="head config")


@dataclass(frozen=True)
class DataConfig:
    """Which frames each video contributes, how batches are formed and how videos are split."""

    max_frames: int = 300  # frames per video after skip_first (YouTube-8M uses 300 at 1 fps)
    skip_first: int = 0  # drop this many leading frames (intros); at least one frame always stays
    sampling: str = "head"  # head: first N | uniform: N evenly spaced | random-crop: see data.py
    batch_size: int = 32
    num_workers: int = 0  # DataLoader worker processes; results do not depend on it
    # MiB of decoded store chunks each reading process keeps (None: the store's default, 256);
    # results do not depend on it
    cache_mb: int | None = None
    bucket: bool = True  # batch videos of similar length together (less padding)
    bucket_batches: int = 16  # batches per bucket: a pool of this many batches is length-sorted
    # shuffle: each training video once per epoch | balanced: as many draws, with replacement,
    # each video drawn with probability ∝ 1 / (videos of its rarest label)
    sampler: str = "shuffle"
    classes: tuple[str, ...] | None = None  # train on this label subset only
    # Store streams to read, concatenated per frame in this order; None: every stream of the
    # store (a run records the streams it resolved to).
    streams: tuple[str, ...] | None = None
    test_fraction: float = 0.2  # of all videos, when the store has no split
    val_fraction: float = 0.1  # of the non-test videos, held out for early stopping

    def __post_init__(self) -> None:
        check_int("max_frames", self.max_frames, low=1)
        check_int("skip_first", self.skip_first, low=0)
        check_choice("sampling", self.sampling, SAMPLINGS)
        check_int("batch_size", self.batch_size, low=1)
        check_int("num_workers", self.num_workers, low=0)
        if self.cache_mb is not None:
            check_int("cache_mb", self.cache_mb, low=0)
        if not isinstance(self.bucket, bool):
            raise ConfigError(f"bucket must be true or false, got {self.bucket!r}")
        check_int("bucket_batches", self.bucket_batches, low=1)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_float(self, "test_fraction", 0.0, 0.9)
        check_float(self, "val_fraction", 0.0, 0.9)
        if self.classes is not None:
            if isinstance(self.classes, str) or not all(
                isinstance(c, str) and c for c in self.classes
            ):
                raise ConfigError(f"classes must be a list of label names, got {self.classes!r}")
            if len(set(self.classes)) != len(self.classes) or not self.classes:
                raise ConfigError(f"classes must be non-empty and unique, got {self.classes!r}")
            object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "streams", _names("streams", self.streams))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = None if self.classes is None else list(self.classes)
        data["streams"] = None if self.streams is None else list(self.streams)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. ``lr=None`` resolves to the optimiser default."""

    model: str
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: str = "adam"  # sgd (momentum 0.9) | adam | rmsprop
    lr: float | None = None  # None -> DEFAULT_LR[optimizer]
    weight_decay: float = 0.0
    lr_step: int = 0  # multiply lr by lr_gamma every lr_step epochs; 0 keeps it constant
    lr_decay_examples: int = 0  # or every this many training videos seen (YouTube-8M: 4M)
    lr_gamma: float = 0.1
    rmsprop_decay: float = 0.99  # RMSProp's moving-average factor (TensorFlow's "decay")
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    epochs: int = 50  # training ends after this many epochs or max_steps, whichever is first
    max_steps: int = 0  # optimizer steps (batches); 0: no limit but epochs
    eval_every: int = 0  # validate, checkpoint and check patience every N steps; 0: per epoch
    patience: int = 10  # evaluations without improvement before stopping; 0 never stops early
    monitor: str = "val_loss"  # or a validation metric (higher is better)
    seed: int = 0
    loss: str = "auto"  # single: softmax CE | multi: sigmoid BCE | auto: multi iff any video has >1
    class_weights: bool = False  # inverse-frequency class weights in the loss
    # inverse-frequency: weight only the positive (false-negative) term of each class by
    # 1 / its training videos (mean 1), as the "_bal" runs of Akopyan & Khashba
    pos_weight: str = "none"
    device: str = "auto"  # auto: cuda if available, else cpu

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"model must be a head name, got {self.model!r}")
        if not isinstance(self.head, HeadConfig):
            raise ConfigError(f"head must be a HeadConfig, got {type(self.head).__name__}")
        if not isinstance(self.data, DataConfig):
            raise ConfigError(f"data must be a DataConfig, got {type(self.data).__name__}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        check_float(self, "lr", 0.0, open_low=True)
        check_float(self, "weight_decay", 0.0)
        check_int("lr_step", self.lr_step, low=0)
        check_int("lr_decay_examples", self.lr_decay_examples, low=0)
        if self.lr_step and self.lr_decay_examples:
            raise ConfigError("choose one decay: lr_step (epochs) or lr_decay_examples, not both")
        check_float(self, "lr_gamma", 0.0, 1.0, open_low=True)
        check_float(self, "rmsprop_decay", 0.0, 1.0, open_low=True)
        check_float(self, "grad_clip", 0.0)
        check_int("epochs", self.epochs, low=1)
        check_int("max_steps", self.max_steps, low=0)
        check_int("eval_every", self.eval_every, low=0)
        check_int("patience", self.patience, low=0)
        check_choice("monitor", self.monitor, MONITORS)
        check_int("seed", self.seed, low=0, high=2**63 - 1)
        check_choice("loss", self.loss, LOSSES)
        if not isinstance(self.class_weights, bool):
            raise ConfigError(f"class_weights must be true or false, got {self.class_weights!r}")
        check_choice("pos_weight", self.pos_weight, POS_WEIGHTS)
        if not isinstance(self.device, str) or not DEVICES_RE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (nested dicts for head and data)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["head"] = self.head.to_dict()
        data["data"] = self.data.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        nested = {"head": HeadConfig.from_dict, "data": DataConfig.from_dict}
        return _from_dict(cls, data, nested)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again). ``lr`` was resolved when this
        config was built, so changing ``optimizer`` alone keeps the old learning rate."""
        return dataclasses.replace(self, **changes)
