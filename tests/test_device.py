"""--device on the commands that load a model: a named device is used, a missing GPU is refused up front with what
to do (this CPU machine has none; the GPU path itself is exercised where a GPU is lent)."""

from __future__ import annotations

import pytest
import torch

from nanoseek.runtime import resolve_device
from nanoseek.train.grpo import GRPOTrainer, RLConfig
from nanoseek.train.trainer import TrainConfig, Trainer

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


def test_default_and_named_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a device; use cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@needs_no_gpu
def test_a_missing_gpu_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"no CUDA device.*use --device cpu"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="use --device cpu"):
        Trainer(TrainConfig(out=str(tmp_path / "t"), data=[str(tmp_path / "missing.txt")], device="cuda"))
    with pytest.raises(ValueError, match="use --device cpu"):
        GRPOTrainer(RLConfig(out=str(tmp_path / "r"), init_from=str(tmp_path / "missing"), device="cuda"))
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()
