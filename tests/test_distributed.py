"""torchrun-style DDP on the CPU (gloo): two ranks share each global batch and end with identical weights."""


import numpy as np
import torch
import torch.multiprocessing as mp

from pipeline.config import PretrainConfig
from pipeline.engine.distributed import DistContext, gather_with_grad
from pipeline.engine.trainer import CHECKPOINT, train
from tests.servers import as_gloo_rank, free_port


def _worker(rank: int, world: int, port: int, out: str) -> None:
    as_gloo_rank(rank, world, port)
    cfg = PretrainConfig.model_validate({"backbone": {"name": "small", "width": 4},
                                         "head": {"hidden_dims": [16], "out_dim": 8},
                                         "epochs": 1, "batch_size": 16, "device": "cpu"})
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    ctx = DistContext.from_env()
    result = train(cfg, images, seed=0, out_dir=out, progress=False, dist=ctx)
    torch.save(result.encoder.state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_rank_ddp_keeps_replicas_identical(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for k in a:
        if k.endswith("num_batches_tracked"):
            continue
        if "running_" in k:  # batch-norm statistics are per rank on the CPU (no SyncBatchNorm without CUDA)
            continue
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert (tmp_path / CHECKPOINT).exists()  # written by rank 0


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistContext.from_env()
    assert not ctx.enabled and ctx.is_main
    x = torch.randn(3, 2)
    assert gather_with_grad(x, ctx) is x
