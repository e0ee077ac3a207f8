"""Scale-out through PyTorch's own machinery: torchrun sets the environment, FSDP2 (`fully_shard`) shards
parameters, gradients and optimizer state, and torch.distributed.checkpoint saves and restores them.

Expert parallelism (placing whole experts on different ranks and exchanging tokens all-to-all, as DeepSeek-V3
trains) is future work: with FSDP2 every rank holds a shard of every expert.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from nanoseek.runtime import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPUs); a plain process gets a 1-rank Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=resolve_device(device))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":  # under torchrun each rank takes its own GPU, whatever index was named
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: each decoder block (MTP modules included) is a unit; the root holds embedding, final norm and head."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place. NCCL reduces CUDA tensors only, so CPU bookkeeping (the step's loss sums,
    validation totals) makes a round trip through this rank's GPU."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(staged)
        tensor.copy_(staged)
    else:
        dist.all_reduce(tensor)
    return tensor


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
