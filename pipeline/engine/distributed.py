"""torchrun DDP support: one process per GPU, each training on its own slice of every batch.

Under torchrun the environment carries RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR: a process group is
started (NCCL on GPUs, gloo on CPUs), even for one rank, so one GPU runs the code path of eight. Without
them everything here is a no-op. The README ("Several GPUs: torchrun") says what is synchronised.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from pipeline.errors import UserError
from pipeline.models.encoder import Encoder


class _BothOutputs(nn.Module):
    """DDP hooks the module's forward: this one returns (h, z) so one call feeds loss and regulariser."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.forward_both(x)


@dataclass
class DistContext:
    """Where this process stands in a torchrun job.

    Attributes:
        rank: This process's rank.
        world_size: Processes in the job.
        local_rank: Its rank on this machine (its GPU's index).
        launched: Started by torchrun: a process group exists, whatever the world size.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def enabled(self) -> bool:
        """Whether collectives run: under torchrun, or any context of more than one rank."""
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that records."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This rank's device: its local GPU, or the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @classmethod
    def from_env(cls) -> DistContext:
        """The context torchrun's environment describes; the process group is started on first use.

        Returns:
            A launched context (NCCL on GPUs, gloo otherwise) under torchrun, else the one-process no-op.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        launched = "RANK" in os.environ and "MASTER_ADDR" in os.environ
        if world <= 1 and not launched:
            return cls()
        ctx = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), launched=True)
        # torchrun starts each worker in a session of its own, so killing torchrun's process group would
        # leave the workers training (and writing the checkpoint a rerun resumes from).
        _die_with_parent()
        if not torch_dist.is_initialized():
            if torch.cuda.is_available():
                # NCCL binds a communicator to the current device: set it before the group exists, or
                # every rank's first collective lands on GPU 0.
                torch.cuda.set_device(ctx.local_rank)
                torch_dist.init_process_group("nccl", device_id=torch.device("cuda", ctx.local_rank))
            else:
                torch_dist.init_process_group("gloo")
        return ctx

    def sync_batchnorm(self, wanted: bool | None) -> bool:
        """Whether to convert batch norm to SyncBatchNorm.

        By default on GPU ranks only: torch's SyncBatchNorm has no CPU kernel, so CPU (gloo) ranks
        normalise with their own slice of the batch, and asking for it there is refused.

        Args:
            wanted: ``pretrain.sync_batchnorm``; None: on GPU ranks.

        Returns:
            True to convert.

        Raises:
            ValueError: True asked for on CPU ranks.
        """
        on_gpu = self.device.type == "cuda"
        if wanted and self.enabled and not on_gpu:
            raise UserError("pretrain.sync_batchnorm: true needs GPU ranks (torch's SyncBatchNorm has no CPU "
                             "kernel); set it to false or null for CPU (gloo) ranks")
        return self.enabled and (on_gpu if wanted is None else wanted)

    def prepare_method(self, method: nn.Module, sync_batchnorm: bool | None = None) -> nn.Module:
        """A method's own modules (predictor, target network, queue) live outside DDP: synchronise their
        batch norms as the encoder's, and start every rank from rank 0's state.

        Args:
            method: The SSL method module.
            sync_batchnorm: ``pretrain.sync_batchnorm``.

        Returns:
            The method, converted to SyncBatchNorm when :meth:`sync_batchnorm` says so.
        """
        if not self.enabled:
            return method
        if self.sync_batchnorm(sync_batchnorm):
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        for t in [*method.parameters(), *method.buffers()]:
            torch_dist.broadcast(t.data, src=0)
        return method

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """All-reduce (mean) the gradients DDP does not see: those of a method's predictor.

        Args:
            params: The method's trainable parameters (their ``grad`` is replaced by the ranks' mean).
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not self.enabled or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch_dist.all_reduce(flat)
        flat.div_(self.world_size)
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def wrap(self, encoder: Encoder, sync_batchnorm: bool | None = None) -> nn.Module:
        """The module the loop calls: images -> (h, z), under DDP when distributed.

        Args:
            encoder: The encoder (its state stays the one checkpoints save).
            sync_batchnorm: ``pretrain.sync_batchnorm``.

        Returns:
            The encoder's two outputs as one module, DDP-wrapped when :attr:`enabled`.
        """
        model = _BothOutputs(encoder)
        if not self.enabled:
            return model
        if self.sync_batchnorm(sync_batchnorm):
            # Converted in place: the SyncBatchNorm modules replace the encoder's own, so the weights,
            # the checkpoint and the saved encoder keep the ordinary BatchNorm state-dict keys.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (torchrun's agent) dies; Linux only, elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, gradients flowing back to each rank's own part.

    NT-Xent needs negatives from the whole global batch.

    Args:
        x: (n, ...) on this rank.
        ctx: The distributed context.

    Returns:
        (world_size * n, ...); ``x`` itself in one process.
    """
    if not ctx.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


@torch.no_grad()
def gather(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient (MoCo's keys for its queue).

    Args:
        x: (n, ...) on this rank.
        ctx: The distributed context.

    Returns:
        (world_size * n, ...); ``x`` itself in one process.
    """
    if not ctx.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
