"""The SSL training loop: SimCLR + SparseHead, on the GPU when there is one, on the CPU otherwise.

The whole training set lives on the training device as uint8 and is augmented there, so no loader
workers sit between the data and the model. Each epoch draws its shuffling and augmentation from a
generator seeded by (seed, epoch): resuming from the checkpoint of epoch k replays epochs k+1.. exactly
as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.augment import SimCLRAugment
from pipeline.config import PretrainConfig
from pipeline.data.preprocess import InputSpec, channel_stats, to_model_input
from pipeline.device import autocast_dtype, resolve_device
from pipeline.distributed import DistContext, gather_with_grad
from pipeline.io import atomic_path
from pipeline.losses import build_ssl_loss
from pipeline.models.encoder import Encoder, EncoderSpec
from pipeline.optim import build_optimizer, warmup_cosine
from pipeline.sparsehead import SparseHeadRegularizer, head_stats

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
# Called after every epoch with (epoch 1-based, that epoch's metrics, the encoder). A callback may
# raise (optuna.TrialPruned, say) to stop training; the checkpoint of that epoch is already on disk.
EpochCallback = Callable[[int, dict[str, float], Encoder], None]


@dataclass
class TrainResult:
    encoder: Encoder
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0  # epochs already done when this call started

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def build_encoder(cfg: PretrainConfig, images: np.ndarray) -> Encoder:
    """The encoder for this config and data: input side, channels and normalisation from the images."""
    _, h, w, c = images.shape
    if h != w and cfg.image_size is None:
        raise ValueError(f"images are {h}x{w}: non-square data needs pretrain.image_size")
    mean, std = channel_stats(images)
    spec = EncoderSpec(
        backbone=cfg.backbone.name,
        input=InputSpec(cfg.image_size or h, c, mean, std),
        width=cfg.backbone.width,
        head_hidden=list(cfg.head.hidden_dims),
        head_out=cfg.head.out_dim,
        head_bn=cfg.head.batch_norm,
    )
    return Encoder(spec)


def fingerprint(cfg: PretrainConfig, images: np.ndarray, seed: int, epochs: int | None = None) -> str:
    """What a checkpoint must match to be resumed: everything that changes the result."""
    d = cfg.model_dump(by_alias=True, exclude={"out_dir", "device", "num_threads"})
    d["epochs"] = epochs or cfg.epochs
    data = hashlib.sha256(memoryview(np.ascontiguousarray(images)).cast("B")).hexdigest()
    return hashlib.sha256(json.dumps([d, seed, data], sort_keys=True, default=str).encode()).hexdigest()


def read_checkpoint_meta(path: str | Path) -> dict | None:
    """The fingerprint, epochs done and caller metadata of a checkpoint, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {"fingerprint": state.get("fingerprint"), "epoch": state.get("epoch", 0), "meta": state.get("meta", {})}


def _epoch_generator(device: torch.device, seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch + rank * 7_919_993)
    return g


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train(cfg: PretrainConfig, images: np.ndarray, *, seed: int = 0, out_dir: str | Path | None = None,
          callbacks: Sequence[EpochCallback] = (), epochs: int | None = None, resume: bool = True,
          progress: bool = True, dist: DistContext | None = None, meta: dict | None = None) -> TrainResult:
    """Pretrain an encoder on uint8 (N, H, W, C) images; checkpoint to ``out_dir`` after every epoch.

    ``meta`` (the MLflow run id, say) is stored in each checkpoint for :func:`read_checkpoint_meta`.
    """
    dist = dist or DistContext.from_env()
    epochs = epochs or cfg.epochs
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    n = images.shape[0]
    batch_size = min(cfg.batch_size, n // dist.world_size)
    if batch_size < 2:
        raise ValueError(f"{n} training images are too few for contrastive batches")
    steps_per_epoch = n // (batch_size * dist.world_size)

    torch.manual_seed(seed)
    encoder = build_encoder(cfg, images).to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    model = dist.wrap(encoder)
    optimizer = build_optimizer(encoder, cfg.optim, batch_size * dist.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(epochs * steps_per_epoch, cfg.optim.warmup_epochs * steps_per_epoch))
    ssl_loss = build_ssl_loss(cfg.ssl.method, cfg.ssl.temperature)
    reg = SparseHeadRegularizer(cfg.sparsehead.form, cfg.sparsehead.lam)
    augment = SimCLRAugment(cfg.augment, encoder.spec.input.image_size)
    amp = autocast_dtype(device, cfg.precision)

    fp = fingerprint(cfg, images, seed, epochs)
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("fingerprint") == fp:
            encoder.load_state_dict(state["encoder"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = state["history"], state["epoch"]
            log.info("resuming from %s at epoch %d", ckpt_path, start_epoch)
        else:
            log.warning("%s was written for other params or data; starting afresh", ckpt_path)

    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    bar = tqdm(range(start_epoch, epochs), desc="pretrain", unit="epoch", disable=not progress or not dist.is_main,
               initial=start_epoch, total=epochs)
    for epoch in bar:
        encoder.train()
        g = _epoch_generator(device, seed, epoch)
        perm = torch.randperm(n, generator=g, device=device)  # the same on every rank: each takes its slice
        # Augmentations differ between ranks; on rank 0 (and in one process) they continue g's stream.
        g_aug = g if dist.rank == 0 else _epoch_generator(device, seed, epoch, dist.rank)
        sums = torch.zeros(3, device=device)  # loss_total, loss_ssl, sparse_reg, summed without syncs
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            lo = (step * dist.world_size + dist.rank) * batch_size
            x = to_model_input(data[perm[lo:lo + batch_size]])
            v1, v2 = augment(x, g_aug), augment(x, g_aug)
            if channels_last:
                v1 = v1.contiguous(memory_format=torch.channels_last)
                v2 = v2.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
                _, z = model(torch.cat([v1, v2]))
            z1, z2 = z.float().chunk(2)
            loss_ssl = ssl_loss(gather_with_grad(z1, dist), gather_with_grad(z2, dist))
            r = reg(encoder.head, z)
            loss = loss_ssl + reg.lam * r
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach(), loss_ssl.detach(), r.detach().float()])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        means = (sums / steps_per_epoch).tolist()
        metrics = {
            "loss_total": means[0], "loss_ssl": means[1], "sparse_reg": means[2],
            "lr": scheduler.get_last_lr()[0],
            "img_per_s": steps_per_epoch * batch_size * dist.world_size / seconds,
            "epoch_seconds": seconds,
            **head_stats(encoder.head),
        }
        history.append(metrics)
        if ckpt_path is not None and dist.is_main:
            _save_checkpoint(ckpt_path, {
                "fingerprint": fp, "epoch": epoch + 1, "encoder": encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                "meta": meta or {},
            })
        bar.set_postfix(loss=f"{metrics['loss_total']:.3f}", sparsity=f"{metrics['head_sparsity']:.2f}",
                        img_s=f"{metrics['img_per_s']:.0f}")
        if dist.is_main:
            for cb in callbacks:
                cb(epoch + 1, metrics, encoder)
    encoder.eval()
    return TrainResult(encoder=encoder.to(memory_format=torch.contiguous_format), history=history,
                       resumed_from=start_epoch)
