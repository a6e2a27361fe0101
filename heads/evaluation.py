"""A head run over a loader: its logits a batch at a time, and the validation loss and metrics.

Batches may come bucketed by length, and under torchrun each rank sees only its share: each
batch carries its videos' dataset rows, and validation scores each video by its row."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from heads import distributed as dd
from heads.metrics import MetricStream, NonFiniteScores
from heads.objective import Loss


def logit_batches(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray]]:
    """(dataset rows, (n, C) float32 logits on the CPU, (n, C) labels) a loader batch at a
    time, in the loader's order (which may be bucketed by length)."""
    model.eval()
    for batch in loader:
        with torch.no_grad():
            logits = model(batch.x.to(device), batch.lengths.to(device)).float().cpu()
        yield batch.index.numpy(), logits, batch.labels.numpy()


@torch.no_grad()
def validate(
    model: nn.Module, loader: DataLoader, loss_fn: Loss, device: torch.device
) -> dict[str, float]:
    """Loss and all metrics of ``model`` on ``loader``, a batch at a time: per video only its 20
    best classes stay (``MetricStream``), not (N, C) logits and labels, which at YouTube-8M's
    validation size are 17 GB each. Under torchrun each rank scores its share and rank 0 joins
    them (the other ranks get {})."""
    model.eval()
    n, classes = loader.dataset.targets.shape
    stream = MetricStream(classes)
    loss_sum, failure = 0.0, None
    for batch in loader:
        logits = model(batch.x.to(device), batch.lengths.to(device)).float()
        # The loss is a mean over videos (and classes, a constant): a batch's mean times its
        # videos, summed over batches, is the whole set's mean times N.
        loss_sum += float(loss_fn(logits, batch.labels.to(device))) * len(logits)
        scores = loss_fn.ranking_scores(logits).cpu().numpy()
        try:
            stream.add(batch.index.numpy(), scores, batch.labels.numpy())
        except NonFiniteScores as exc:
            # Handed to rank 0 with this rank's share, not raised here: the other ranks are
            # on their way to the gather below, and rank 0 shares its verdict with them all.
            failure = exc
            break
    shares = dd.gather((loss_sum, stream.state(), failure))
    if shares is None:
        return {}
    for _, _, failure in shares:
        if failure is not None:
            raise failure
    metrics = MetricStream.merged([state for _, state, _ in shares], n).result()
    loss = sum(share_loss for share_loss, _, _ in shares) / metrics["n"]
    return {"loss": loss, **{k: float(v) for k, v in metrics.items() if k != "n"}}
