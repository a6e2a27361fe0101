"""``--device`` as every command resolves it (vidfeat.device)."""

from __future__ import annotations

import pytest
import torch

from heads.config import TrainConfig
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError


def test_auto_picks_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:", "cuda:x", "CPU", "", "cuda:0:1"])
def test_other_spellings_are_refused_by_name(name):
    with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name, label="--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused(name):
    with pytest.raises(ConfigError, match=f"^device {name}: CUDA is not available here"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a machine with CUDA")
def test_cuda_index_past_the_last_device_is_refused():
    count = torch.cuda.device_count()
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ConfigError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_train_config_takes_only_what_resolve_device_reads():
    assert TrainConfig(model="bof", device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(model="bof", device="gpu")
