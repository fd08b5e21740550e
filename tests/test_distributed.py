"""torchrun-style DDP on the CPU (gloo): two ranks share each global batch and end with identical weights,
stream only their own share of the data, and one rank under torchrun takes the distributed path."""


import numpy as np
import torch
import torch.multiprocessing as mp

from pipeline.config import PretrainConfig
from pipeline.data.format import Dataset, Split, load_manifest, save_dataset
from pipeline.data.shards import ShardedImages
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


class CountingShards(ShardedImages):
    """Memory-mapped shards that log every position anything reads from them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[np.ndarray] = []

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        self.reads.append(np.arange(lo, hi))
        super().read_into(lo, hi, out)

    def take_into(self, positions: np.ndarray, out: np.ndarray) -> None:
        self.reads.append(np.array(positions))
        super().take_into(positions, out)


STREAMED = {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
            "epochs": 2, "batch_size": 16, "device": "cpu", "data": {"streaming": "on", "chunk_images": 100}}


def _streaming_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    as_gloo_rank(rank, world, port)
    images = CountingShards.open(data, load_manifest(data)["shards"]["train"])
    result = train(PretrainConfig.model_validate(STREAMED), images, seed=0, progress=False,
                   dist=DistContext.from_env())
    np.save(f"{out}/reads{rank}.npy", np.concatenate(images.reads))
    torch.save(result.encoder.state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_streaming_ranks_each_read_half_of_the_data(tmp_path):
    # 320 images, 2 ranks x 16 per batch: 10 steps use all 320 images in each of 2 epochs.
    images = np.random.default_rng(0).integers(0, 256, size=(320, 8, 8, 1), dtype=np.uint8)
    save_dataset(Dataset(Split(images, np.arange(320) % 4), Split(images[:8], np.zeros(8)), list("abcd"), "t"),
                 tmp_path / "data", shard_images=64)
    mp.spawn(_streaming_worker, args=(2, free_port(), str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    reads = [np.load(tmp_path / f"reads{r}.npy") for r in (0, 1)]
    # Everything either rank read from the data (normalisation statistics come from the manifest):
    # 160 images an epoch each, 1/2 of the set, and together every image once an epoch.
    assert [len(r) for r in reads] == [2 * 160, 2 * 160]
    assert np.array_equal(np.bincount(np.concatenate(reads), minlength=320), np.full(320, 2))
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in a:
        if "running_" not in k and not k.endswith("num_batches_tracked"):
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def _one_rank_worker(rank: int, world: int, port: int, out: str) -> None:
    as_gloo_rank(rank, world, port)
    ctx = DistContext.from_env()
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    cfg = PretrainConfig.model_validate({**STREAMED, "data": {}})
    result = train(cfg, images, seed=0, progress=False, dist=ctx)
    torch.save({"enabled": ctx.enabled, "group": torch.distributed.get_world_size(),
                "losses": [h["loss_total"] for h in result.history]}, f"{out}/one.pt")
    torch.distributed.destroy_process_group()


def test_torchrun_with_one_rank_runs_the_distributed_path_to_the_same_result(tmp_path, monkeypatch):
    # One GPU under torchrun takes the path of eight (a process group, DDP, the gathers): on the CPU with
    # one gloo rank it must give the losses of a plain process.
    mp.spawn(_one_rank_worker, args=(1, free_port(), str(tmp_path)), nprocs=1, join=True)
    one = torch.load(tmp_path / "one.pt")
    assert one["enabled"] and one["group"] == 1
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.set_num_threads(1)
    images = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    plain = train(PretrainConfig.model_validate({**STREAMED, "data": {}}), images, seed=0, progress=False)
    assert one["losses"] == [h["loss_total"] for h in plain.history]
