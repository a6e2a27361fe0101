"""A head run over a loader: its logits in dataset order, and the validation loss and metrics.

Batches may come bucketed by length, and under torchrun each rank sees only its share; both
functions put the rows back where the dataset has them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from heads import distributed as dd
from heads.metrics import evaluate_all
from heads.objective import Loss


@torch.no_grad()
def _predict_rows(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) float32 logits and labels in dataset order, and (N,) which rows the loader gave
    (all, or this rank's share under torchrun)."""
    model.eval()
    n, classes = loader.dataset.targets.shape
    logits_out = np.zeros((n, classes), np.float32)
    labels_out = np.zeros((n, classes), np.float32)
    done = np.zeros(n, bool)
    for batch in loader:
        rows = batch.index.numpy()
        logits_out[rows] = model(batch.x.to(device), batch.lengths.to(device)).float().cpu().numpy()
        labels_out[rows], done[rows] = batch.labels.numpy(), True
    return logits_out, labels_out, done


def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 logits and (N, C) labels, in dataset order (batches may be bucketed)."""
    logits, labels, done = _predict_rows(model, loader, device)
    if not done.any():
        raise ValueError("cannot predict on an empty dataset")
    return logits, labels


def validate(
    model: nn.Module, loader: DataLoader, loss_fn: Loss, device: torch.device
) -> dict[str, float]:
    """Loss and all metrics of ``model`` on ``loader``. Under torchrun each rank predicts its
    share and rank 0 scores the whole set (the other ranks get {})."""
    gathered = dd.gather_rows(*_predict_rows(model, loader, device))
    if gathered is None:
        return {}
    logits, labels = gathered
    logits_t, labels_t = torch.from_numpy(logits), torch.from_numpy(labels)
    loss = float(loss_fn(logits_t, labels_t))
    metrics = evaluate_all(loss_fn.ranking_scores(logits_t).numpy(), labels)
    return {"loss": loss, **{k: float(v) for k, v in metrics.items() if k != "n"}}
