"""Two gloo ranks: BYOL's target and predictor and MoCo v2's queue end identical on both, the queue holding
the keys of both ranks."""


import numpy as np
import torch
import torch.multiprocessing as mp

from pipeline.engine.distributed import DistContext
from pipeline.engine.trainer import train
from tests.methods.helpers import tiny_cfg
from tests.servers import as_gloo_rank, free_port

QUEUE = 100  # 2 steps x 64 keys (2 views x 16 images x 2 ranks) = 128: the pointer wraps to 28


def _worker(rank: int, world: int, port: int, out: str) -> None:
    as_gloo_rank(rank, world, port)
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    ctx = DistContext.from_env()
    for method in ("byol", "mocov2"):
        cfg = tiny_cfg(method, epochs=1, batch_size=16, backbone={"name": "small", "width": 4},
                       head={"hidden_dims": [16], "out_dim": 8}, device="cpu", ssl={"mocov2": {"queue_size": QUEUE}})
        result = train(cfg, images, seed=0, progress=False, dist=ctx)
        torch.save(result.method.state_dict(), f"{out}/{method}{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_ranks_share_the_target_predictor_and_queue(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for method in ("byol", "mocov2"):
        a, b = (torch.load(tmp_path / f"{method}{r}.pt") for r in (0, 1))
        compared = 0
        for k in a:
            # Batch-norm statistics are per rank on the CPU (no SyncBatchNorm without CUDA).
            if "running_" in k or k.endswith("num_batches_tracked"):
                continue
            assert torch.allclose(a[k], b[k], atol=1e-6), (method, k)
            compared += 1
        assert compared > 10
    mocov2 = torch.load(tmp_path / "mocov20.pt")
    assert int(mocov2["queue.ptr"]) == 128 % QUEUE  # 64 keys a step: both ranks' keys went in
    # Every queued key is a real, unit-length key: slots 0..27 were written twice, 28..99 once.
    torch.testing.assert_close(mocov2["queue.keys"].norm(dim=1), torch.ones(QUEUE))
