"""Data larger than memory: shards on disk, memory-mapped reads, the streaming feeder and its exact order."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.config import DataFeedConfig, PretrainConfig
from pipeline.data.folder import read_folder, scan_folder, shard_folder
from pipeline.data.format import Dataset, Split, load_dataset, load_split, save_dataset
from pipeline.data.preprocess import channel_stats
from pipeline.data.shards import ShardedImages
from pipeline.data.splits import train_val_split
from pipeline.engine.checkpoint import CHECKPOINT, read_checkpoint_meta
from pipeline.engine.feeding import (
    InMemoryFeeder,
    StreamingFeeder,
    chunk_plan,
    epoch_generator,
    make_feeder,
    wants_streaming,
)
from pipeline.engine.trainer import train
from tests.conftest import Crash, crash_after

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x = load_digits().images[:320]
    return np.rint(x * 255 / 16).astype(np.uint8)[..., None]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def tiny_cfg(data: dict | None = None, **over) -> PretrainConfig:
    base = dict(backbone={"name": "small", "width": 8}, head={"hidden_dims": [32], "out_dim": 16},
                epochs=2, batch_size=64, optim={"lr": 0.5, "warmup_epochs": 0},
                sparsehead={"form": "l1", "lambda": 1e-3}, data=data or {})
    base.update(over)
    return PretrainConfig.model_validate(base)


def numbered(n: int) -> np.ndarray:
    """Images whose pixels spell their own index, so a batch says which images it holds."""
    x = np.zeros((n, 2, 2, 1), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    return x


def ids(batch: torch.Tensor) -> list[int]:
    b = batch.long()
    return (b[:, 0, 0, 0] + 256 * b[:, 0, 1, 0]).tolist()


def epoch_ids(feeder, epoch: int, seed: int, steps: int, batch: int, world: int = 1, rank: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return [ids(b) for b in feeder.epoch(epoch, g, steps, batch, world, rank)]


def test_chunk_plan_covers_every_image_once_in_bounded_sorted_chunks():
    plan = chunk_plan(1000, 128, seed=3, epoch=1)
    positions = [p for chunk in plan for lo, hi in chunk for p in range(lo, hi)]
    assert sorted(positions) == list(range(1000))
    assert all(sum(hi - lo for lo, hi in c) <= 128 for c in plan)
    assert all(c == sorted(c) for c in plan)
    assert plan == chunk_plan(1000, 128, seed=3, epoch=1)  # seeded by (seed, epoch) alone
    assert plan != chunk_plan(1000, 128, seed=3, epoch=2)
    assert len(chunk_plan(1000, 4096, seed=3, epoch=1)) == 1


def test_one_chunk_streams_the_in_memory_batches():
    x = numbered(300)
    mem = epoch_ids(InMemoryFeeder(x, CPU), 0, 1, steps=4, batch=64)
    streamed = epoch_ids(StreamingFeeder(x, CPU, chunk_images=512, seed=1), 0, 1, steps=4, batch=64)
    assert streamed == mem


@pytest.mark.parametrize("chunk", [7, 50, 64, 100])
def test_small_chunks_see_every_image_at_most_once_and_ranks_split_global_batches(chunk):
    x = numbered(300)
    steps, batch = 300 // (32 * 2), 32
    feeder = StreamingFeeder(x, CPU, chunk_images=chunk, seed=5)
    r0 = epoch_ids(feeder, 2, 5, steps, batch, world=2, rank=0)
    r1 = epoch_ids(feeder, 2, 5, steps, batch, world=2, rank=1)
    assert [len(b) for b in r0 + r1] == [batch] * (2 * steps)
    seen = [i for b in r0 + r1 for i in b]
    assert len(set(seen)) == len(seen) == 2 * steps * batch
    # One process with the global batch sees rank 0's then rank 1's slice of each step.
    whole = epoch_ids(feeder, 2, 5, steps, 2 * batch)
    assert whole == [a + b for a, b in zip(r0, r1, strict=True)]
    # Chunks really mix: an epoch is not the identity order, and another epoch differs.
    assert seen != sorted(seen)
    assert epoch_ids(feeder, 3, 5, steps, 2 * batch) != whole


@pytest.mark.parametrize("chunk", [50, 100, 512])
def test_each_rank_reads_only_the_images_of_its_own_batches(chunk):
    x = numbered(300)
    steps, batch = 300 // (32 * 2), 32  # 4 global batches of 64: 256 of the 300 images are used
    shares = []
    for rank in (0, 1):
        feeder = StreamingFeeder(x, CPU, chunk_images=chunk, seed=5, epochs=1)
        shares.append([i for b in epoch_ids(feeder, 0, 5, steps, batch, world=2, rank=rank) for i in b])
        feeder.wait()
        # Read = used: 128 images, half of the 256 the epoch uses (every rank once read all 300).
        assert feeder.images_read == len(shares[-1]) == steps * batch
    assert not set(shares[0]) & set(shares[1])


def test_the_next_epochs_first_chunk_is_read_while_this_one_ends():
    x = numbered(300)
    steps, batch = 300 // 32, 32

    def run(feeder, epoch, g):
        return [ids(b) for b in feeder.epoch(epoch, g, steps, batch)]

    feeder = StreamingFeeder(x, CPU, chunk_images=100, seed=5, epochs=2)
    first = run(feeder, 0, epoch_generator(CPU, 5, 0))
    feeder.wait()
    ahead = feeder.images_read - steps * batch
    assert 0 < ahead <= 100  # epoch 1's first chunk, read before epoch 1 was asked for
    second = run(feeder, 1, epoch_generator(CPU, 5, 1))
    feeder.wait()
    assert feeder.images_read == 2 * steps * batch  # nothing read twice; no read-ahead past the last epoch
    fresh = StreamingFeeder(x, CPU, chunk_images=100, seed=5)
    assert first == run(fresh, 0, epoch_generator(CPU, 5, 0))
    fresh = StreamingFeeder(x, CPU, chunk_images=100, seed=5)
    assert second == run(fresh, 1, epoch_generator(CPU, 5, 1))
    # A generator other than the one foreseen: the read-ahead is dropped and the chunk read again.
    feeder = StreamingFeeder(x, CPU, chunk_images=100, seed=5)
    run(feeder, 0, epoch_generator(CPU, 5, 0))
    other = torch.Generator().manual_seed(99)
    fresh = StreamingFeeder(x, CPU, chunk_images=100, seed=5)
    assert run(feeder, 1, other) == run(fresh, 1, torch.Generator().manual_seed(99))


def test_a_stream_stopped_mid_epoch_leaves_the_next_epoch_exact():
    x = numbered(300)
    feeder = StreamingFeeder(x, CPU, chunk_images=64, seed=2)
    batches = feeder.epoch(0, epoch_generator(CPU, 2, 0), 9, 32)
    next(batches)
    batches.close()  # a pruned trial, an exception in the step
    fresh = StreamingFeeder(x, CPU, chunk_images=64, seed=2)
    assert epoch_ids(feeder, 1, 2, 9, 32) == epoch_ids(fresh, 1, 2, 9, 32)


def test_streaming_from_shards_equals_streaming_from_the_array(tmp_path):
    x = numbered(300)
    save_dataset(Dataset(Split(x, np.arange(300) % 3), Split(x[:10], np.zeros(10)), ["a", "b", "c"], "t"),
                 tmp_path / "prep", shard_images=64)
    sharded = load_split(tmp_path / "prep", "train").images
    assert isinstance(sharded, ShardedImages) and len(sharded.shards) == 5
    a = epoch_ids(StreamingFeeder(x, CPU, 40, seed=0), 0, 0, 9, 32)
    b = epoch_ids(StreamingFeeder(sharded, CPU, 40, seed=0), 0, 0, 9, 32)
    assert a == b


def test_shards_round_trip_slices_subsets_hashes_and_stats(tmp_path, digits):
    labels = np.arange(len(digits)) % 10
    manifest = save_dataset(Dataset(Split(digits, labels), Split(digits[:40], labels[:40]), list("0123456789"),
                                    "digits"), tmp_path / "prep", shard_images=100)
    entry = manifest["shards"]["train"]
    assert [f["count"] for f in entry["files"]] == [100, 100, 100, 20]
    assert (tmp_path / "prep" / "train" / "shard-00003.npy").exists()
    ds = load_dataset(tmp_path / "prep")
    x = ds.train.images
    assert x.shape == digits.shape and len(x) == 320 and x.dtype == np.uint8
    np.testing.assert_array_equal(x[0:320], digits)
    np.testing.assert_array_equal(x[95:205], digits[95:205])
    np.testing.assert_array_equal(np.asarray(x), digits)
    fit, val = train_val_split(ds.train, 0.25, seed=0)
    ref_fit, ref_val = train_val_split(Split(digits, labels), 0.25, seed=0)
    assert isinstance(fit.images, ShardedImages)  # a lazy subset: nothing read yet
    np.testing.assert_array_equal(fit.images[0:len(fit)], ref_fit.images)
    np.testing.assert_array_equal(val.images[3:50], ref_val.images[3:50])
    np.testing.assert_array_equal(fit.labels, ref_fit.labels)
    assert channel_stats(x) == channel_stats(digits)
    # The same data hashes the same; the hash names the split without reading it.
    again = save_dataset(Dataset(Split(digits, labels), Split(digits[:40], labels[:40]), list("0123456789"),
                                 "digits"), tmp_path / "again", shard_images=100)
    assert again["sha256"] == manifest["sha256"]
    assert fit.images.digest and fit.images.digest != x.digest


def test_channel_stats_streams_to_the_float64_answer():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 5, 5, 3), dtype=np.uint8)
    f = x.reshape(-1, 3).astype(np.float64) / 255
    mean, std = channel_stats(x, chunk=7)
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(0), rtol=1e-12)


def test_streaming_with_one_chunk_gives_the_in_memory_losses(digits):
    mem = train(tiny_cfg({"streaming": "off"}), digits, seed=0, progress=False)
    streamed = train(tiny_cfg({"streaming": "on", "chunk_images": 320}), digits, seed=0, progress=False)
    assert [h["loss_total"] for h in streamed.history] == [h["loss_total"] for h in mem.history]
    for a, b in zip(mem.encoder.state_dict().values(), streamed.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_budget_forced_small_streams_digits_and_still_learns(digits):
    cfg = tiny_cfg({"memory_budget_gb": 1e-5, "chunk_images": 96}, epochs=3)  # 10 kB: digits are 20 kB
    assert wants_streaming(digits, cfg.data)
    assert not wants_streaming(digits, DataFeedConfig())
    assert isinstance(make_feeder(digits, cfg.data, CPU, 0), StreamingFeeder)
    result = train(cfg, digits, seed=0, progress=False)
    losses = [h["loss_total"] for h in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    in_memory = train(tiny_cfg({"chunk_images": 96}, epochs=3), digits, seed=0, progress=False)
    assert losses != [h["loss_total"] for h in in_memory.history]  # small chunks: another (seeded) order


def test_streaming_resume_is_bit_identical(digits, tmp_path):
    cfg = tiny_cfg({"streaming": "on", "chunk_images": 100}, epochs=3)
    full = train(cfg, digits, seed=3, out_dir=tmp_path / "full", progress=False)

    with pytest.raises(Crash):
        train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False, callbacks=[crash_after(2)])
    assert read_checkpoint_meta(tmp_path / "resumed" / CHECKPOINT)["epoch"] == 2
    resumed = train(cfg, digits, seed=3, out_dir=tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    assert [h["loss_total"] for h in resumed.history] == [h["loss_total"] for h in full.history]
    for a, b in zip(full.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pretraining_on_shards_matches_the_array(digits, tmp_path):
    labels = np.arange(len(digits)) % 10
    save_dataset(Dataset(Split(digits, labels), Split(digits[:40], labels[:40]), list("0123456789"), "digits"),
                 tmp_path / "prep", shard_images=64)
    sharded = load_split(tmp_path / "prep", "train").images
    cfg = tiny_cfg({"streaming": "on", "chunk_images": 100})
    a = train(cfg, digits, seed=1, progress=False)
    b = train(cfg, sharded, seed=1, progress=False)
    assert [h["loss_total"] for h in a.history] == [h["loss_total"] for h in b.history]


def test_a_folder_is_decoded_in_parallel_straight_into_shards(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(9):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    scan = scan_folder(tmp_path / "imgs", None, 0.25, seed=0)
    assert scan.nbytes == 18 * 6 * 6 * 3
    in_memory = read_folder(scan, workers=1)
    manifest = shard_folder(scan, tmp_path / "prep", shard_images=5, workers=2)
    assert manifest["counts"] == {"train": len(in_memory.train), "test": len(in_memory.test)}
    ds = load_dataset(tmp_path / "prep")
    for name in ("train", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(ds, name).images), getattr(in_memory, name).images)
        np.testing.assert_array_equal(getattr(ds, name).labels, getattr(in_memory, name).labels)


def test_prepare_stage_shards_on_request_and_stages_open_them(tmp_path, monkeypatch, capsys):
    from pipeline.config import Params
    from pipeline.stages import prepare

    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({"prepare": {"format": "shards", "shard_images": 500}})
    prepare.run(params)
    assert "4 shards" in capsys.readouterr().out  # 1438 train images: 500 + 500 + 438; 359 test in one
    ds = load_dataset("data/prepared")
    assert isinstance(ds.train.images, ShardedImages) and ds.image_shape == (8, 8, 1)
    assert prepare.shard_images_for(params.prepare.model_copy(update={"format": "auto"}), 2**30) is None
    assert prepare.shard_images_for(params.prepare.model_copy(update={"format": "auto"}), 3 * 2**30) == 500
    # A shard that went missing is one readable line naming it.
    (tmp_path / "data" / "prepared" / "train" / "shard-00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.npy: shard listed in"):
        load_dataset("data/prepared")
