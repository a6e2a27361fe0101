"""Data-parallel training under ``torchrun``: one process per rank, gradients averaged by DDP.

``torchrun --nproc-per-node N heads train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`session` turns that environment into a process
group (NCCL when training on CUDA, gloo on the CPU) and a plain run, without those variables,
into a world of one where every helper here is a no-op. The rest of the code asks
:func:`world` who it is.

What makes N ranks with per-rank batch B equal a single process with batch N·B:

* :class:`DistributedBucketBatchSampler` draws exactly the batches of size N·B that one process
  would draw (same seed, same length buckets) and gives rank r the r-th of N slices of each, so
  every rank reads only its share and steps as often as the others.
* DDP averages the N slice gradients; with each rank's loss scaled by its share of the batch
  (:func:`loss_scale`) that is the gradient of the mean loss over the batch.
* Validation runs on each rank's share; the predictions are gathered on rank 0, which computes
  the metrics on the whole validation set and broadcasts the evaluation record, so early
  stopping decides the same on every rank.

Only rank 0 writes files. The process group has a timeout, so a rank left waiting for a dead one
fails instead of hanging; on one node torchrun already stops the others when a rank dies.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from heads.batching import BucketBatchSampler
from heads.data import SampleKey

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long a collective waits for the other ranks before the job fails. It must outlast what
# rank 0 does alone while the others wait (metrics on the whole validation set, checkpoints).
TIMEOUT_ENV = "HEADS_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()
_OBJECT_GROUP: Any = None  # gloo group for pickled objects (NCCL only moves CUDA tensors)


def world() -> World:
    """The world of the running job (one process unless :func:`session` set up more)."""
    return _WORLD


def launched_world() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


@contextlib.contextmanager
def session(device: str) -> Iterator[World]:
    """Join the process group torchrun set up for this process (if any) for the block.

    ``device`` is the run's device option: CUDA -> NCCL on ``cuda:LOCAL_RANK``, else gloo.
    Ranks other than 0 log warnings and errors only.
    """
    global _WORLD, _OBJECT_GROUP
    launched = launched_world()
    if not launched.distributed or dist.is_initialized():
        yield _WORLD
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(launched.local_rank)  # "cuda" now means this rank's GPU
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timeout())
    _OBJECT_GROUP = dist.new_group(backend="gloo", timeout=timeout()) if cuda else None
    _WORLD = World(dist.get_rank(), dist.get_world_size(), launched.local_rank)
    if not _WORLD.is_main:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    log.info("rank %d of %d (%s)", _WORLD.rank, _WORLD.size, backend)
    try:
        yield _WORLD
    finally:
        _WORLD, _OBJECT_GROUP = World(), None
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ collectives


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not _WORLD.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_OBJECT_GROUP)
    return box[0]


def gather(obj: T) -> list[T] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if not _WORLD.distributed:
        return [obj]
    out: list[Any] | None = [None] * _WORLD.size if _WORLD.is_main else None
    dist.gather_object(obj, out, dst=0, group=_OBJECT_GROUP)
    return out


def barrier() -> None:
    if _WORLD.distributed:
        dist.barrier(group=_OBJECT_GROUP)


def all_sum(values: Tensor) -> Tensor:
    """Element-wise sum of ``values`` over the ranks (in place; returned)."""
    if _WORLD.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def on_every_rank(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on every rank; when it raises on any, it raises on every rank: its own error
    where it failed, :class:`heads.errors.RankLost` naming the failed rank elsewhere. For
    steps whose errors are each rank's own (its view of the store): the others would
    otherwise wait at the next collective until the timeout, then fail as if by a bug."""
    if not _WORLD.distributed:
        return fn(*args, **kwargs)
    from heads.errors import RankLost

    result, error = None, None
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # re-raised below, after every rank has heard of it
        error = exc
    said = gather(None if error is None else (str(error) or type(error).__name__))
    first = None
    if said is not None:
        first = next(((rank, text) for rank, text in enumerate(said) if text is not None), None)
    first = broadcast(first)
    if error is not None:
        raise error
    if first is not None:
        raise RankLost(f"rank {first[0]} of this torchrun job stopped: {first[1]}")
    return result  # type: ignore[return-value]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises its error.

    For checks that create or inspect files rank 0 is about to write: another rank looking at
    the same directory could see rank 0's new files and take a different decision.
    """
    if not _WORLD.distributed:
        return fn(*args, **kwargs)
    result, error = None, None
    if _WORLD.is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # re-raised on every rank below, rank 0 included
            error = exc
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


# ------------------------------------------------------------------------------ training step


class TrainStep(nn.Module):
    """``head.training_losses`` as ``forward``: DDP syncs gradients of what its forward ran."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        x: Tensor,
        lengths: Tensor,
        labels: Tensor,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return self.head.training_losses(x, lengths, labels, loss_fn)


def skips_parameters(head: nn.Module) -> bool:
    """Whether a layer of ``head`` may leave trainable parameters out of a training step."""
    return any(getattr(module, "skips_parameters", False) for module in head.modules())


def training_step(head: nn.Module, device: torch.device) -> Callable[..., Any]:
    """What the loop calls for (logits, loss terms): the head itself, or a DDP wrapper of it."""
    if not _WORLD.distributed:
        return head.training_losses
    ids = [device.index if device.index is not None else _WORLD.local_rank]
    return nn.parallel.DistributedDataParallel(
        TrainStep(head),
        device_ids=ids if device.type == "cuda" else None,
        # Only a head with a layer that may leave parameters out of a step's graph (routed
        # experts: an expert no step reached) needs DDP's search for them: it walks the
        # autograd graph every step, and warns when it finds nothing.
        find_unused_parameters=skips_parameters(head),
    )


# ------------------------------------------------------------------------------ sampling


class DistributedBucketBatchSampler(BucketBatchSampler):
    """Rank ``rank``'s share of the batches a single process with batch ``batch_size * size``
    draws (training), or of the length-sorted evaluation order.

    Training: each global batch (one length bucket's slice, already similar in length) is cut
    into ``size`` nearly equal slices and the rank takes its own, so all ranks step together and
    the union of the slices is the single-process batch. Slices differ by at most one video;
    :func:`loss_scale` weights them so that the averaged gradient is the batch mean's. Only a
    batch of fewer than ``size`` videos (the last of an epoch, at most once) gives the ranks left
    without a video a copy of its first one. Evaluation: per-rank batches of ``batch_size`` taken
    in turn from the length-sorted order; a rank may get one batch more than another (evaluation
    has no collective per batch), and every video is on exactly one rank.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, *, rank: int, size: int, **kw: Any
    ) -> None:
        self.rank, self.ranks = rank, size
        # Training batches are drawn at the global size; evaluation keeps per-rank batches.
        super().__init__(lengths, batch_size * size if kw.get("shuffle") else batch_size, **kw)
        self._drawn: tuple[int, list[np.ndarray]] = (-1, [])

    def _slices(self, batch: np.ndarray) -> list[np.ndarray]:
        return [part if len(part) else batch[:1] for part in np.array_split(batch, self.ranks)]

    def rank_batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            return self._batches()[self.rank :: self.ranks]
        return [self._slices(batch)[self.rank] for batch in self._batches()]

    def _global_batch(self, epoch: int, batch: int) -> np.ndarray:
        """Video indices over all ranks in batch ``batch`` (0-based) of ``epoch``, each once."""
        if self._drawn[0] != epoch:
            current, self.epoch = self.epoch, epoch
            self.epoch, self._drawn = current, (epoch, self._batches())
        return self._drawn[1][batch]

    def global_size(self, epoch: int, batch: int) -> int:
        """Videos over all ranks in batch ``batch`` (0-based) of ``epoch``, each once."""
        return len(self._global_batch(epoch, batch))

    def global_frames(self, epoch: int, batch: int) -> int:
        """Frames over all ranks in that batch, each video once."""
        return int(self.lengths[self._global_batch(epoch, batch)].sum())

    def is_filler(self, epoch: int, batch: int) -> bool:
        """Whether this rank's slice of that batch is a copy standing in for an empty one (a
        batch of fewer videos than ranks): it must not count, in the loss or the metrics."""
        return self.shuffle and self.rank >= self.global_size(epoch, batch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for batch in self.rank_batches()[self.start :]:
            yield [(int(i), self.epoch) for i in batch]

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, super().__len__(), self.ranks))
        return super().__len__()


def videos_in_step(sampler: Any, epoch: int, batch: int, local: int) -> int:
    """Videos trained on in batch ``batch`` of ``epoch`` over all ranks (``local`` on this one)."""
    if isinstance(sampler, DistributedBucketBatchSampler) and sampler.shuffle:
        return sampler.global_size(epoch, batch)
    return local


def videos_counted(sampler: Any, epoch: int, batch: int, local: int) -> int:
    """This rank's videos in that batch as the training metrics count them: none for a filler
    copy (:meth:`DistributedBucketBatchSampler.is_filler`), else ``local``."""
    if isinstance(sampler, DistributedBucketBatchSampler) and sampler.is_filler(epoch, batch):
        return 0
    return local


def loss_scale(
    sampler: Any, epoch: int, batch: int, local: int, frames: int | None = None
) -> float:
    """Factor on this rank's mean loss so that DDP's average of the ranks' gradients is the
    gradient of the mean loss over the whole batch, whatever the sizes of the slices: a filler
    copy gets 0, so that no video counts twice. ``frames``: this rank's frames, for a head whose
    loss is a mean over frames (``Head.loss_per_frame``); the slices are then weighted by them."""
    if isinstance(sampler, DistributedBucketBatchSampler) and sampler.shuffle:
        counted = videos_counted(sampler, epoch, batch, local)
        if frames is not None:
            return (frames if counted else 0) * sampler.ranks / sampler.global_frames(epoch, batch)
        return counted * sampler.ranks / sampler.global_size(epoch, batch)
    return 1.0


def rank_sampler(sampler: BucketBatchSampler) -> BucketBatchSampler:
    """``sampler`` as this rank's share of it (itself in a world of one)."""
    if not _WORLD.distributed:
        return sampler
    return DistributedBucketBatchSampler(
        sampler.lengths,
        sampler.batch_size,
        rank=_WORLD.rank,
        size=_WORLD.size,
        shuffle=sampler.shuffle,
        bucket=sampler.bucket,
        bucket_batches=sampler.pool // sampler.batch_size,
        seed=sampler.seed,
        weights=sampler.weights,
    )


# ------------------------------------------------------------------------------ predictions


def shard_loader(loader: DataLoader) -> DataLoader:
    """``loader`` reading only this rank's share (itself in a world of one)."""
    sampler = loader.batch_sampler
    if not _WORLD.distributed or not isinstance(sampler, BucketBatchSampler):
        return loader
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_sampler=rank_sampler(sampler),
        collate_fn=loader.collate_fn,
        num_workers=workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        multiprocessing_context=loader.multiprocessing_context if workers > 0 else None,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
    )
