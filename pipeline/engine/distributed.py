"""torchrun DDP support: one process per GPU, each training on its own slice of every batch.

Under ``torchrun --nproc_per_node=G stages/pretrain.py`` the environment carries RANK, WORLD_SIZE and
LOCAL_RANK; without them everything here is a no-op and training runs in one process.
NT-Xent needs negatives from the whole global batch, so the embeddings are all-gathered with gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


class _BothOutputs(nn.Module):
    """DDP hooks the module's forward: this one returns (h, z) so one call feeds loss and regulariser."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_both(x)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        ctx = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not torch_dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(ctx.local_rank)
            torch_dist.init_process_group(backend)
        return ctx

    def wrap(self, encoder: nn.Module) -> nn.Module:
        model = _BothOutputs(encoder)
        if not self.enabled:
            return model
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if torch.cuda.is_available() else model
        ids = [self.local_rank] if torch.cuda.is_available() else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if not ctx.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))
