"""Moving batches to the backbone's device and features back, without stalling either side.

On CUDA a copy from ordinary (pageable) host memory blocks the host, and reading features back
right after the forward pass waits for the whole batch. So the parent process:

- fills one of two reusable host buffers with the next batch (page-locked on CUDA, so the copy
  to the device runs asynchronously; the other buffer may still be in flight);
- starts copying each batch's features back into page-locked memory asynchronously, and reads
  them only after the next batch has been launched (``FeaturesInFlight``).

On the CPU the same code runs with plain buffers and no events: it saves the allocation and
concatenation of every batch, and the features are simply read one batch later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Owners = list[tuple[str, int]]  # (video id, frames) of a batch, in batch order


class BatchStaging:
    """Two reusable (batch, S, S, 3) float32 host buffers, page-locked when feeding CUDA."""

    def __init__(self, batch_size: int, input_size: int, device: torch.device) -> None:
        self.device = device
        shape = (batch_size, input_size, input_size, 3)
        pin = device.type == "cuda"
        self.buffers = [torch.empty(shape, dtype=torch.float32, pin_memory=pin) for _ in range(2)]
        self.copied: list[Any] = [None, None]  # a CUDA event per buffer: its last copy is done
        self.turn = 0

    def fill(self, parts: list[np.ndarray]) -> torch.Tensor:
        """The frames of ``parts`` one after another, in the next free buffer (a view of it)."""
        index, self.turn = self.turn, 1 - self.turn
        if self.copied[index] is not None:
            self.copied[index].synchronize()  # its previous batch has reached the device
            self.copied[index] = None
        buffer = self.buffers[index]
        n = sum(len(p) for p in parts)
        if n > len(buffer):
            raise ValueError(f"{n} frames do not fit a staging buffer of {len(buffer)}")
        host = buffer.numpy()
        start = 0
        for part in parts:
            host[start : start + len(part)] = part
            start += len(part)
        return buffer[:n]

    def launched(self) -> None:
        """Call after the batch just filled was handed to the device: its buffer is reused only
        once the work queued so far (the copy included) has run."""
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self.copied[1 - self.turn] = event


@dataclass
class FeaturesInFlight:
    """One batch's features on their way to the host, and whose frames they are."""

    features: torch.Tensor  # on the host (page-locked on CUDA), valid once ``ready`` has run
    owners: Owners
    event: Any = None

    @classmethod
    def start(cls, features: torch.Tensor, owners: Owners) -> FeaturesInFlight:
        """Begin copying ``features`` (on the backbone's device) to the host."""
        if features.device.type != "cuda":
            return cls(features.float(), owners)
        host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(features, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, owners, event)

    def ready(self) -> np.ndarray:
        """The features as (N, D) float32, waiting for the copy if it is still running."""
        if self.event is not None:
            self.event.synchronize()
        return self.features.numpy()
