"""The SSL training loop: any method of :mod:`pipeline.methods` + SparseHead, on the GPU when there is one.

The whole training set lives on the training device as uint8 and is augmented there, so no loader
workers sit between the data and the model; a set larger than ``pretrain.data.memory_budget_gb`` is
streamed to the device in chunks instead (:mod:`pipeline.engine.feeding`). Each epoch draws its shuffling and augmentation from a
generator seeded by (seed, epoch): resuming from the checkpoint of epoch k replays epochs k+1.. exactly
as an uninterrupted run would (with the same number of CPU threads: float reductions split differently
across threads, so a resume with another thread count warns that it will not be bit-identical).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import MIN_INPUT_SIDE, PretrainConfig
from pipeline.data.preprocess import InputSpec, channel_stats, to_model_input
from pipeline.device import autocast_dtype, resolve_device
from pipeline.engine.augment import SimCLRAugment
from pipeline.engine.checkpoint import CHECKPOINT, fingerprint, load_checkpoint, save_checkpoint
from pipeline.engine.distributed import DistContext
from pipeline.engine.feeding import make_feeder
from pipeline.engine.optim import build_optimizer, warmup_cosine
from pipeline.errors import UserError
from pipeline.methods import Method, build_method
from pipeline.models.encoder import Encoder, EncoderSpec
from pipeline.sparsehead import SparseHeadRegularizer, head_stats

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "EpochCallback", "EpochDone", "TrainResult", "build_encoder", "check_input", "train",
           "train_epochs"]

# Called after every epoch with (epoch 1-based, that epoch's metrics, the encoder). A callback may
# raise (optuna.TrialPruned, say) to stop training; the checkpoint of that epoch is already on disk.
EpochCallback = Callable[[int, dict[str, float], Encoder], None]


@dataclass
class TrainResult:
    encoder: Encoder
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0  # epochs already done when this call started
    method: Method | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def check_input(cfg: PretrainConfig, shape: tuple[int, ...]) -> None:
    """Refuse (N, H, W, C) images the model cannot take as they are; callers check before any run starts."""
    _, h, w, _ = shape
    if h != w and cfg.image_size is None:
        raise UserError(f"images are {h}x{w}: non-square data needs pretrain.image_size")
    low = MIN_INPUT_SIDE[cfg.backbone.name]  # pretrain.image_size itself is checked when params load
    if cfg.image_size is None and h < low:
        raise UserError(f"the prepared images are {h}x{w}, below the smallest side the {cfg.backbone.name} "
                         f"backbone can take ({low}); set pretrain.image_size to {low} or more to resize them")


def build_encoder(cfg: PretrainConfig, images: np.ndarray) -> Encoder:
    """The encoder for this config and data: input side, channels and normalisation from the images."""
    check_input(cfg, images.shape)
    _, h, _, c = images.shape
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


def _epoch_generator(device: torch.device, seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch + rank * 7_919_993)
    return g


def _resume(state: dict | None, fp: str, path: Path, modules: dict[str, object]) -> tuple[list, int]:
    if state is None:
        return [], 0
    if state.get("fingerprint") != fp:
        log.warning("%s was written for other params or data; starting afresh", path)
        return [], 0
    for key, module in modules.items():
        module.load_state_dict(state[key])  # type: ignore[attr-defined]
    threads = state.get("num_threads")
    if threads is not None and threads != torch.get_num_threads():
        log.warning("%s was written with %d CPU threads, this run has %d: the resumed result will not be "
                    "bit-identical to an uninterrupted run (set pretrain.num_threads to pin it)", path, threads,
                    torch.get_num_threads())
    log.info("resuming from %s at epoch %d", path, state["epoch"])
    return state["history"], state["epoch"]


def train(cfg: PretrainConfig, images: np.ndarray, *, callbacks: Sequence[EpochCallback] = (),
          **kwargs: object) -> TrainResult:
    """Pretrain an encoder on uint8 (N, H, W, C) images; checkpoint to ``out_dir`` after every epoch.

    Runs :func:`train_epochs` to the end, handing every epoch to ``callbacks`` (on the main rank only).
    """
    epochs = train_epochs(cfg, images, **kwargs)  # type: ignore[arg-type]
    while True:
        try:
            done = next(epochs)
        except StopIteration as stop:
            return stop.value
        if done.is_main:
            for cb in callbacks:
                cb(done.epoch, done.metrics, done.encoder)


@dataclass
class EpochDone:
    epoch: int  # 1-based
    metrics: dict[str, float]
    encoder: Encoder
    is_main: bool  # rank 0 (or the only process): the one that records


def train_epochs(cfg: PretrainConfig, images: np.ndarray, *, seed: int = 0, out_dir: str | Path | None = None,
                 epochs: int | None = None, resume: bool = True, progress: bool = True,
                 dist: DistContext | None = None, meta: dict | None = None,
                 data_digest: str | None = None) -> Generator[EpochDone, None, TrainResult]:
    """Pretraining as a generator: yields after every epoch (its checkpoint already on disk) and returns
    the :class:`TrainResult`. Several runs can advance in lockstep (a trial's seeds, say); each keeps its
    own state, and the global RNG is used only while a run builds its models, on its first ``next``.

    ``meta`` (the MLflow run id, say) is stored in each checkpoint for :func:`read_checkpoint_meta`;
    ``data_digest`` (the manifest's sha256) stands for the images in the checkpoint's fingerprint, so
    they need not be hashed again.
    """
    dist = dist or DistContext.from_env()
    epochs = epochs or cfg.epochs
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    n = images.shape[0]
    batch_size = min(cfg.batch_size, n // dist.world_size)
    if batch_size < 2:
        raise UserError(f"{n} training images are too few for SSL batches")
    steps_per_epoch = n // (batch_size * dist.world_size)
    total_steps = epochs * steps_per_epoch

    torch.manual_seed(seed)
    encoder = build_encoder(cfg, images).to(device)
    method = build_method(cfg.ssl, encoder).to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        method = method.to(memory_format=torch.channels_last)  # a target network is an encoder too
    online = dist.wrap(encoder, cfg.sync_batchnorm)
    method = dist.prepare_method(method, cfg.sync_batchnorm)
    method_params = list(method.trainable_parameters())
    if cfg.compile:
        online = torch.compile(online)  # the state stays in `encoder`: checkpoints keep their keys
    optimizer = build_optimizer(encoder, cfg.optim, batch_size * dist.world_size, default_lr=method.default_lr,
                                extra=method_params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, cfg.optim.warmup_epochs * steps_per_epoch))
    sh = cfg.sparsehead
    reg = SparseHeadRegularizer(sh.form, sh.lam, sh.update, method.penalised_modules(sh.include_predictor))
    view1, view2 = (SimCLRAugment(a, encoder.spec.input.image_size) for a in method.view_configs(cfg.augment))
    amp = autocast_dtype(device, cfg.precision)

    # Sharded images carry their manifest hash: never read a set larger than memory just to name it; and
    # without a checkpoint (tuning trials) nothing needs naming.
    digest = data_digest or getattr(images, "digest", None) or (images if out_dir is not None else "-")
    fp = fingerprint(cfg, digest, seed, epochs, dist.world_size)
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    state_of = {"encoder": encoder, "method": method, "optimizer": optimizer, "scheduler": scheduler}
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and ckpt_path is not None:
        history, start_epoch = _resume(load_checkpoint(ckpt_path, device), fp, ckpt_path, state_of)

    feeder = make_feeder(images, cfg.data, device, seed)
    bar = tqdm(range(start_epoch, epochs), desc=f"pretrain {method.name}", unit="epoch",
               disable=not progress or not dist.is_main, initial=start_epoch, total=epochs)
    for epoch in bar:
        encoder.train()
        method.train()
        g = _epoch_generator(device, seed, epoch)
        # Augmentations differ between ranks; on rank 0 (and in one process) they continue g's stream.
        g_aug = g if dist.rank == 0 else _epoch_generator(device, seed, epoch, dist.rank)
        sums = torch.zeros(3, device=device)  # loss_total, loss_ssl, sparse_reg, summed without syncs
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        # The feeder draws the epoch's order from g first (the same on every rank: each takes its slice).
        batches = feeder.epoch(epoch, g, steps_per_epoch, batch_size, dist.world_size, dist.rank)
        for step, batch in enumerate(batches):
            x = to_model_input(batch)
            v1, v2 = view1(x, g_aug), view2(x, g_aug)
            if channels_last:
                v1 = v1.contiguous(memory_format=torch.channels_last)
                v2 = v2.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
                out = method(online, v1, v2, dist)
            loss_ssl = out.loss.float()
            r = reg(encoder.head, out.z)
            loss = loss_ssl + reg.lam * r
            optimizer.zero_grad(set_to_none=True)
            (loss if reg.in_loss else loss_ssl).backward()
            dist.average_gradients(method_params)  # DDP averages the encoder's gradients, not a predictor's
            optimizer.step()
            # The rate this step used: the proximal threshold is that step's lr * lambda.
            reg.proximal_step(encoder.head, optimizer.param_groups[0]["lr"])
            scheduler.step()
            method.after_step(encoder, epoch * steps_per_epoch + step + 1, total_steps)
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
        if not math.isfinite(metrics["loss_total"]):  # a diverged run must not reach evaluation or the registry
            raise UserError(f"the loss is {metrics['loss_total']} at epoch {epoch + 1}: training diverged; "
                             f"lower pretrain.optim.lr (vicreg with SGD on digits: 0.05)")
        history.append(metrics)
        if ckpt_path is not None and dist.is_main:
            save_checkpoint(ckpt_path, {
                "fingerprint": fp, "epoch": epoch + 1, "history": history, "meta": meta or {},
                "num_threads": torch.get_num_threads(),
                **{key: module.state_dict() for key, module in state_of.items()},
            })
        bar.set_postfix(loss=f"{metrics['loss_total']:.3f}", sparsity=f"{metrics['head_sparsity']:.2f}",
                        img_s=f"{metrics['img_per_s']:.0f}")
        yield EpochDone(epoch + 1, metrics, encoder, dist.is_main)
    encoder.eval()
    method.eval()
    return TrainResult(encoder=encoder.to(memory_format=torch.contiguous_format), history=history,
                       resumed_from=start_epoch, method=method)
