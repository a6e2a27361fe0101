"""Training on a real CUDA device: ``heads train --device cuda`` learns what the CPU learns from
the same store, and its checkpoint evaluates on the CPU. Skipped where there is no CUDA device
(CI has none); ``benchmarks/gpu.sh`` runs it on a GPU node."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from heads import checkpoint as ck
from tests.heads.stores import make_cluster_store
from vidfeat_cli.heads import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _train(store, out, device: str, model: str) -> None:
    # No dropout: its masks come from the device's own generator, so a CUDA run and a CPU run
    # with one seed would train on different draws. Initial weights and batches come from the
    # CPU's generator on both.
    args = ["train", store, "--model", model, "--out", out, "--device", device, "--dropout", 0]
    args += ["--epochs", 4, "--patience", 0, "--seed", 1, "--batch-size", 8, "--num-workers", 1]
    result = CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("model", ["bof", "lstm"])
def test_train_on_cuda_learns_what_the_cpu_learns(tmp_path, model):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=80, signal=0.6)
    for device in ("cpu", "cuda"):
        _train(store, tmp_path / device, device, model)
    # The first epoch's losses: the same computation, summed in another order on the GPU
    # (cuDNN's recurrent kernels, reductions), so equal to rounding.
    first = [
        json.loads((tmp_path / d / ck.METRICS).read_text().splitlines()[0]) for d in ("cpu", "cuda")
    ]
    for key in ("train_loss", "val_loss"):
        assert first[1][key] == pytest.approx(first[0][key], rel=1e-3), key
    # After four epochs rounding may have moved a near tie: at most one test video apart.
    cpu, gpu = (json.loads((tmp_path / d / ck.TEST_METRICS).read_text()) for d in ("cpu", "cuda"))
    assert gpu["n_test"] == cpu["n_test"] > 0
    assert abs(gpu["hit_at_1"] - cpu["hit_at_1"]) <= 1 / cpu["n_test"] + 1e-9
    # The checkpoint written on the GPU loads and evaluates on a machine without one.
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "cuda"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
