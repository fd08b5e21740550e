"""One torchrun rank of the NCCL test: trains the small config through the distributed path (a process
group, DDP, SyncBatchNorm on GPUs, the gathers) and saves what the test compares."""

from __future__ import annotations

import sys

import torch
import torch.distributed as torch_dist

from pipeline.engine.distributed import DistContext
from pipeline.engine.trainer import train
from tests.cuda.common import images, small_cfg


def main(out: str) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)  # as tests/cuda/conftest.py's fixture
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ctx = DistContext.from_env()
    result = train(small_cfg(), images(256, side=16), seed=0, progress=False, dist=ctx)
    x = torch.arange(4.0, device=ctx.device)
    torch_dist.all_reduce(x)
    torch.save({"backend": torch_dist.get_backend(), "world": torch_dist.get_world_size(), "all_reduce": x.cpu(),
                "launched": ctx.launched, "losses": [h["loss_total"] for h in result.history],
                "encoder": {k: v.cpu() for k, v in result.encoder.state_dict().items()}}, out)
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
