"""Where a training run stands in its data, and what follows from that alone.

A run is a sequence of optimizer steps over seeded epochs. ``Position`` (step, epoch, batch
within the epoch, videos seen) is saved in every checkpoint; the batches still to come, the
learning rate and the end of the run are pure functions of it and the config, so a run resumed
from any evaluation continues exactly as if it had never stopped, mid-epoch included.

Evaluation windows: per epoch (``eval_every=0``), or every ``eval_every`` steps across epoch
boundaries. Training ends after ``epochs`` epochs or ``max_steps`` steps, whichever is first;
the last window may be shorter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from torch.utils.data import DataLoader

from heads import distributed as dd
from heads.config import TrainConfig
from heads.data import Batch


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 1  # epoch in progress, 1-based
    batch: int = 0  # batches of that epoch done
    examples: int = 0  # training videos seen

    @property
    def last_epoch(self) -> int:
        """The epoch the last step belonged to."""
        return self.epoch if self.batch > 0 else self.epoch - 1

    def advance(self, videos: int, batches_per_epoch: int) -> None:
        self.step += 1
        self.batch += 1
        self.examples += videos
        if self.batch == batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_checkpoint(
        cls, state: dict[str, Any], batches_per_epoch: int, videos_per_epoch: int
    ) -> Position:
        """The position saved in ``state``; checkpoints written per epoch before positions
        were saved hold only the finished epoch."""
        if "position" in state:
            return cls(**{k: int(v) for k, v in state["position"].items()})
        done = int(state["epoch"])
        return cls(done * batches_per_epoch, done + 1, 0, done * videos_per_epoch)


def finished(pos: Position, cfg: TrainConfig) -> bool:
    return pos.epoch > cfg.epochs or (cfg.max_steps > 0 and pos.step >= cfg.max_steps)


def lr_factor(pos: Position, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``pos``: step decay per lr_step epochs or per
    lr_decay_examples videos seen, else 1."""
    if cfg.lr_decay_examples:
        return cfg.lr_gamma ** (pos.examples // cfg.lr_decay_examples)
    if cfg.lr_step:
        return cfg.lr_gamma ** ((pos.epoch - 1) // cfg.lr_step)
    return 1.0


def window_batches(loader: DataLoader, pos: Position, cfg: TrainConfig) -> Iterator[Batch]:
    """The training batches of the next evaluation window, from ``pos`` on.

    ``pos`` advances after the consumer has used each batch (when it asks for the next one or
    the window ends), so it always names the first batch not yet trained on.
    """
    sampler = loader.batch_sampler
    per_epoch = len(sampler)
    taken = 0
    while not finished(pos, cfg):
        sampler.set_epoch(pos.epoch)
        sampler.set_start(pos.batch)
        for batch in loader:
            yield batch
            taken += 1
            videos = dd.videos_in_step(sampler, pos.epoch, pos.batch, int(batch.x.shape[0]))
            pos.advance(videos, per_epoch)
            if finished(pos, cfg) or taken == cfg.eval_every:
                return
            if pos.batch == 0:
                break  # the epoch is done
        if not cfg.eval_every:
            return  # per-epoch windows end with their epoch
