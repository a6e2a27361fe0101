"""Which streams of a store a run reads, and the checks that keep a run on the same streams.

A run reads a list of the store's named streams (``DataConfig.streams``; default every stream
in the store's order), concatenated per frame in that order; its head's fusion layer knows the
width of each. The run records the streams (in its config and, with their widths, in the store
provenance of every checkpoint), and ``evaluate``, ``predict`` and ``finetune`` read the same
ones: a store missing one is refused. A video-level store (one vector per video and stream)
feeds only the heads whose first step is the mean of the frames (``Head.video_level``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from heads.config import TrainConfig
from heads.data import resolve_streams
from heads.identity import recorded_streams
from heads.models import HEADS, HeadConfig, create_head
from vidfeat.errors import ConfigError


def stream_dims(reader: Any, names: Sequence[str]) -> dict[str, int]:
    """name -> width, in the order given."""
    return {name: int(reader.streams[name].dim) for name in names}


def with_streams(cfg: TrainConfig, reader: Any) -> TrainConfig:
    """``cfg`` with its streams resolved on ``reader``, after checking the head can read them
    (fusion settings, and a video-level store only with a video-level head). Creates nothing."""
    names = resolve_streams(reader, cfg.data.streams)
    check_head_input(cfg.model, cfg.head, stream_dims(reader, names), reader.level)
    return cfg.replace(data=dataclasses.replace(cfg.data, streams=names))


def check_head_input(name: str, cfg: HeadConfig, dims: dict[str, int], level: str) -> None:
    """Refuse a head that cannot read these streams at this level, without allocating it."""
    with torch.device("meta"):  # shapes only: a large head costs nothing to check
        model = create_head(
            name, input_dim=sum(dims.values()), num_classes=2, cfg=cfg, streams=dims
        )
    if level == "video" and not model.video_level:
        usable = [h for h in HEADS.names() if _is_video_level(h)]
        raise ConfigError(
            f"head {name} reads sequences of frames, but the store is video-level (one vector "
            f"per video): use {' or '.join(usable)}"
        )


def _is_video_level(name: str) -> bool:
    with torch.device("meta"):
        return create_head(name, input_dim=2, num_classes=2, cfg=HeadConfig()).video_level


def parent_streams(provenance: dict[str, Any], cfg: TrainConfig) -> TrainConfig:
    """``cfg`` reading the streams a trained model reads (recorded in ``provenance``); another
    explicit choice is refused: the model's input layer is made for those."""
    recorded = recorded_streams(provenance)
    if recorded is None:  # recorded before stores had streams: the store's only stream
        return cfg
    names = tuple(recorded)
    if cfg.data.streams is not None and tuple(cfg.data.streams) != names:
        raise ConfigError(
            f"the model reads streams {', '.join(names)}; "
            f"--streams {','.join(cfg.data.streams)} cannot change that"
        )
    return cfg.replace(data=dataclasses.replace(cfg.data, streams=names))
