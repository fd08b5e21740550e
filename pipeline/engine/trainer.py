"""The SSL training loop: any method of :mod:`pipeline.methods` + SparseHead, on the GPU when there is one.

:class:`Trainer` sets one run up (model, method, DDP, compile, optimiser, schedule, resume) and advances
it an epoch at a time; :func:`train_one_epoch` is one pass over the data; :func:`train` runs to the end.
Each epoch draws its order and augmentations from a generator seeded by (seed, epoch), so a run resumed
from the checkpoint of epoch k is bit-identical to an uninterrupted one (at the same CPU thread count).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pipeline.config import MIN_INPUT_SIDE, AugmentConfig, PretrainConfig
from pipeline.data.preprocess import InputSpec, channel_stats, to_model_input
from pipeline.data.shards import ImageArray
from pipeline.device import autocast_dtype, resolve_device
from pipeline.engine.augment import ViewAugmentation
from pipeline.engine.checkpoint import CHECKPOINT, fingerprint, load_checkpoint, save_checkpoint
from pipeline.engine.distributed import DistContext
from pipeline.engine.feeding import Feeder, epoch_generator, make_feeder
from pipeline.engine.monitor import Monitor
from pipeline.engine.optim import build_optimizer, warmup_cosine
from pipeline.errors import UserError
from pipeline.methods import Method, build_method
from pipeline.methods.base import OnlineForward
from pipeline.models.encoder import Encoder, EncoderSpec
from pipeline.sparsehead import SparseHead

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT", "EpochCallback", "TrainResult", "TrainSetup", "Trainer", "build_encoder", "check_input",
           "train", "train_one_epoch"]

# Called after every epoch with (epoch 1-based, that epoch's metrics, the encoder). A callback may
# raise (optuna.TrialPruned, say) to stop training; the checkpoint of that epoch is already on disk.
EpochCallback = Callable[[int, dict[str, float], Encoder], None]


@dataclass
class TrainResult:
    """What a finished run hands back.

    Attributes:
        encoder: the trained encoder, in eval mode and contiguous memory format.
        history: each epoch's metrics, the resumed ones included.
        resumed_from: the epochs already done (in the checkpoint) when this run started.
        method: the SSL method with its own modules (predictor, target network, queue).
    """

    encoder: Encoder
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    method: Method | None = None

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics (empty when no epoch ran)."""
        return self.history[-1] if self.history else {}


def check_input(cfg: PretrainConfig, shape: tuple[int, ...]) -> None:
    """Refuse images the model cannot take as they are; callers check before any run starts.

    Args:
        cfg: the pretraining params.
        shape: the images' shape, (N, H, W, C).

    Raises:
        ValueError: non-square images without ``pretrain.image_size``, or a side below what the backbone takes.
    """
    _, h, w, _ = shape
    if h != w and cfg.image_size is None:
        raise UserError(f"images are {h}x{w}: non-square data needs pretrain.image_size")
    low = MIN_INPUT_SIDE[cfg.backbone.name]  # pretrain.image_size itself is checked when params load
    if cfg.image_size is None and h < low:
        raise UserError(f"the prepared images are {h}x{w}, below the smallest side the {cfg.backbone.name} "
                         f"backbone can take ({low}); set pretrain.image_size to {low} or more to resize them")


def build_encoder(cfg: PretrainConfig, images: ImageArray) -> Encoder:
    """The encoder for this config and data.

    Args:
        cfg: the pretraining params (backbone, head, input side).
        images: uint8 (N, H, W, C) training images: they give the input side, the channels and the
            normalisation statistics.

    Returns:
        A freshly initialised encoder (from the global RNG), on the CPU.
    """
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


class TwoViews:
    """A method's two augmentations of a batch, in the memory format the model takes.

    Args:
        configs: the augmentation of each view (:meth:`Method.view_configs`).
        size: the model's input side.
        channels_last: return the views in channels-last memory format.
    """

    def __init__(self, configs: tuple[AugmentConfig, AugmentConfig], size: int, channels_last: bool) -> None:
        self.augments = [ViewAugmentation(a, size) for a in configs]
        self.channels_last = channels_last

    def __call__(self, x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Both views of float (N, C, H, W) images ``x``, drawn from ``g`` (first view first)."""
        v1, v2 = (augment(x, g) for augment in self.augments)
        if self.channels_last:
            return v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
        return v1, v2


@dataclass
class TrainSetup:
    """Everything one epoch of training needs, built once per run by :class:`Trainer`."""

    encoder: Encoder  # the weights; what the registry stores
    online: OnlineForward  # the encoder as the method calls it: DDP-wrapped, compiled
    method: Method
    reg: SparseHead
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    views: TwoViews
    feeder: Feeder
    dist: DistContext
    device: torch.device
    amp: torch.dtype | None  # autocast precision; None: full precision
    seed: int
    batch_size: int  # per rank
    steps_per_epoch: int
    total_steps: int
    method_params: list[nn.Parameter]  # a predictor's, say: stepped, and averaged over ranks by hand

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's autocast context (a no-op in full precision)."""
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(s: TrainSetup, epoch: int) -> dict[str, float]:
    """One pass over the training data.

    Args:
        s: the run's set-up.
        epoch: the 0-based epoch; it seeds the epoch's order and augmentations.

    Returns:
        The epoch's mean ``loss_total`` (SSL loss + lambda R) and ``loss_ssl``, the ``lr`` after it,
        ``img_per_s`` and ``epoch_seconds``, and SparseHead's epoch metrics (mean R, head statistics).
    """
    s.encoder.train()
    s.method.train()
    g = epoch_generator(s.device, s.seed, epoch)
    # Augmentations differ between ranks; on rank 0 (and in one process) they continue g's stream.
    g_aug = g if s.dist.rank == 0 else epoch_generator(s.device, s.seed, epoch, s.dist.rank)
    sums = torch.zeros(2, device=s.device)  # loss_total, loss_ssl: summed on the device, without syncs
    _sync(s.device)
    t0 = time.perf_counter()
    # The feeder draws the epoch's order from g first (the same on every rank: each takes its slice).
    batches = s.feeder.epoch(epoch, g, s.steps_per_epoch, s.batch_size, s.dist.world_size, s.dist.rank)
    for step, batch in enumerate(batches):
        v1, v2 = s.views(to_model_input(batch), g_aug)
        with s.autocast():
            out = s.method(s.online, v1, v2, s.dist)
        loss_ssl = out.loss.float()
        loss = loss_ssl + s.reg(s.encoder.head, out.z)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.dist.average_gradients(s.method_params)  # DDP averages the encoder's gradients, not these
        s.optimizer.step()
        s.reg.after_step(s.encoder.head, s.optimizer)  # the proximal rule, at the rate this step applied
        s.scheduler.step()
        s.method.after_step(s.encoder, epoch * s.steps_per_epoch + step + 1, s.total_steps)
        sums += torch.stack([loss.detach(), loss_ssl.detach()])
    _sync(s.device)
    seconds = time.perf_counter() - t0
    loss_total, loss_ssl_mean = (sums / s.steps_per_epoch).tolist()
    images = s.steps_per_epoch * s.batch_size * s.dist.world_size
    return {"loss_total": loss_total, "loss_ssl": loss_ssl_mean, "lr": s.scheduler.get_last_lr()[0],
            "img_per_s": images / seconds, "epoch_seconds": seconds, **s.reg.epoch_metrics(s.encoder.head)}


def _set_up(cfg: PretrainConfig, images: ImageArray, seed: int, epochs: int, dist: DistContext) -> TrainSetup:
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    n = images.shape[0]
    batch_size = min(cfg.batch_size, n // dist.world_size)
    if batch_size < 2:
        raise UserError(f"{n} training images are too few for SSL batches")
    steps_per_epoch = n // (batch_size * dist.world_size)

    torch.manual_seed(seed)  # the only use of the global RNG: the initial weights
    encoder = build_encoder(cfg, images).to(device)
    method = build_method(cfg.ssl, encoder).to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        method = method.to(memory_format=torch.channels_last)  # a target network too
    online: nn.Module = dist.wrap(encoder, cfg.sync_batchnorm)
    method = cast(Method, dist.prepare_method(method, cfg.sync_batchnorm))
    if cfg.compile:
        online = cast(nn.Module, torch.compile(online))  # the state stays in `encoder`: checkpoints keep their keys
    method_params = list(method.trainable_parameters())
    optimizer = build_optimizer(encoder, cfg.optim, batch_size * dist.world_size, default_lr=method.default_lr,
                                extra=method_params, extra_lr_scale=method.lr_scale)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(epochs * steps_per_epoch, cfg.optim.warmup_epochs * steps_per_epoch))
    sh = cfg.sparsehead
    return TrainSetup(
        encoder=encoder, online=online, method=method,
        reg=SparseHead(sh, method.penalised_modules(sh.include_predictor)),
        optimizer=optimizer, scheduler=scheduler,
        views=TwoViews(method.view_configs(cfg.augment), encoder.spec.input.image_size, channels_last),
        feeder=make_feeder(images, cfg.data, device, seed, epochs), dist=dist, device=device,
        amp=autocast_dtype(device, cfg.precision), seed=seed, batch_size=batch_size,
        steps_per_epoch=steps_per_epoch, total_steps=epochs * steps_per_epoch, method_params=method_params)


def _resume(state: dict[str, Any] | None, fp: str, path: Path, modules: dict[str, Any]) -> list[dict[str, float]]:
    """Load a checkpoint of this very run into ``modules``; returns its history (one entry per epoch done)."""
    if state is None:
        return []
    if state.get("fingerprint") != fp:
        log.warning("%s was written for other params or data; starting afresh", path)
        return []
    for key, module in modules.items():
        module.load_state_dict(state[key])
    threads = state.get("num_threads")
    if threads is not None and threads != torch.get_num_threads():
        log.warning("%s was written with %d CPU threads, this run has %d: the resumed result will not be "
                    "bit-identical to an uninterrupted run (set pretrain.num_threads to pin it)", path, threads,
                    torch.get_num_threads())
    log.info("resuming from %s at epoch %d", path, state["epoch"])
    return list(state["history"])


class Trainer:
    """One pretraining run, set up at construction and advanced one epoch at a time.

    Construction builds the model and method (the global RNG seeded by ``seed`` is used there only), wraps
    them for DDP and torch.compile, builds the optimiser and schedule, and resumes from ``out_dir``'s
    checkpoint when it was written by this very run. Several trainers can advance in lockstep (a trial's
    seeds): each is what it would be alone.

    Args:
        cfg: the pretraining params.
        images: uint8 (N, H, W, C) training images (an array, or memory-mapped shards that act as one).
        seed: the training seed (initial weights, order, augmentations).
        out_dir: where the checkpoint is written after every epoch; None: no checkpoint.
        epochs: the epoch budget (default ``cfg.epochs``).
        resume: continue from a matching checkpoint in ``out_dir``.
        progress: show a progress bar (on the main rank).
        dist: the torchrun context (default: from the environment).
        meta: stored in each checkpoint (the MLflow run id, say) for ``read_checkpoint_meta``.
        data_digest: stands for the images in the checkpoint's fingerprint (a manifest's sha256), so that
            they are not hashed again.
        monitor: quality curves measured after each epoch on the main rank (:mod:`pipeline.engine.monitor`);
            their metrics join the epoch's.

    Raises:
        ValueError: images the model cannot take, or too few for a batch.
    """

    def __init__(self, cfg: PretrainConfig, images: ImageArray, *, seed: int = 0, out_dir: str | Path | None = None,
                 epochs: int | None = None, resume: bool = True, progress: bool = True,
                 dist: DistContext | None = None, meta: dict[str, Any] | None = None,
                 data_digest: str | None = None, monitor: Monitor | None = None) -> None:
        self.dist = dist or DistContext.from_env()
        self.epochs = epochs or cfg.epochs
        self.monitor = monitor
        self.meta = meta or {}
        self.setup = _set_up(cfg, images, seed, self.epochs, self.dist)
        s = self.setup
        # Sharded images carry their manifest hash: never read a set larger than memory just to name it; and
        # without a checkpoint (tuning trials) nothing needs naming.
        digest = data_digest or getattr(images, "digest", None) or (images if out_dir is not None else "-")
        self.fingerprint = fingerprint(cfg, digest, seed, self.epochs, self.dist.world_size)
        self.checkpoint = Path(out_dir) / CHECKPOINT if out_dir is not None else None
        self._state_of: dict[str, Any] = {"encoder": s.encoder, "method": s.method, "optimizer": s.optimizer,
                          "scheduler": s.scheduler}
        self.history: list[dict[str, float]] = []
        if resume and self.checkpoint is not None:
            self.history = _resume(load_checkpoint(self.checkpoint, s.device), self.fingerprint,
                                      self.checkpoint, self._state_of)
        self.resumed_from = len(self.history)
        self._bar = tqdm(desc=f"pretrain {s.method.name}", unit="epoch", initial=self.resumed_from,
                         total=self.epochs, disable=not progress or not self.dist.is_main)

    @property
    def encoder(self) -> Encoder:
        """The encoder being trained (in train mode between epochs)."""
        return self.setup.encoder

    @property
    def epochs_done(self) -> int:
        """Epochs trained so far, the resumed ones included."""
        return len(self.history)

    @property
    def finished(self) -> bool:
        """Whether the epoch budget is spent."""
        return self.epochs_done >= self.epochs

    def train_epoch(self) -> dict[str, float]:
        """Train the next epoch, measure the monitor's curves, and write the checkpoint.

        Returns:
            The epoch's metrics (:func:`train_one_epoch`'s and the monitor's).

        Raises:
            ValueError: the loss is not finite (the run diverged).
            RuntimeError: the budget is already spent.
        """
        if self.finished:
            raise RuntimeError(f"all {self.epochs} epochs are trained")
        epoch = self.epochs_done + 1
        metrics = train_one_epoch(self.setup, epoch - 1)
        if not math.isfinite(metrics["loss_total"]):  # a diverged run must not reach evaluation or the registry
            raise UserError(f"the loss is {metrics['loss_total']} at epoch {epoch}: training diverged; "
                             f"lower pretrain.optim.lr (vicreg with SGD on digits: 0.05)")
        if self.monitor is not None and self.dist.is_main:
            metrics.update(self.monitor(epoch, self.encoder))
        self.history.append(metrics)
        if self.checkpoint is not None and self.dist.is_main:
            save_checkpoint(self.checkpoint, {
                "fingerprint": self.fingerprint, "epoch": epoch, "history": self.history, "meta": self.meta,
                "num_threads": torch.get_num_threads(),
                **{key: module.state_dict() for key, module in self._state_of.items()},
            })
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{metrics['loss_total']:.3f}", sparsity=f"{metrics['head_sparsity']:.2f}",
                              img_s=f"{metrics['img_per_s']:.0f}")
        return metrics

    def fit(self, callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
        """Train the remaining epochs, handing each to ``callbacks`` (on the main rank only).

        Returns:
            :meth:`result`.
        """
        while not self.finished:
            metrics = self.train_epoch()
            if self.dist.is_main:
                for cb in callbacks:
                    cb(self.epochs_done, metrics, self.encoder)
        return self.result()

    def result(self) -> TrainResult:
        """The finished run: the encoder in eval mode and contiguous format, the history, the method.

        Raises:
            RuntimeError: epochs remain.
        """
        if not self.finished:
            raise RuntimeError(f"{self.epochs - self.epochs_done} of {self.epochs} epochs remain")
        self._bar.close()
        s = self.setup
        s.encoder.eval()
        s.method.eval()
        return TrainResult(encoder=s.encoder.to(memory_format=torch.contiguous_format),
                           history=self.history, resumed_from=self.resumed_from, method=s.method)


def train(cfg: PretrainConfig, images: ImageArray, *, callbacks: Sequence[EpochCallback] = (), seed: int = 0,
          out_dir: str | Path | None = None, epochs: int | None = None, resume: bool = True,
          progress: bool = True, dist: DistContext | None = None, meta: dict[str, Any] | None = None,
          data_digest: str | None = None, monitor: Monitor | None = None) -> TrainResult:
    """Pretrain an encoder to the end: ``Trainer(...).fit(callbacks)``.

    Args:
        cfg: the pretraining params.
        images: uint8 (N, H, W, C) training images.
        callbacks: called after every epoch on the main rank with (epoch, metrics, encoder).
        seed, out_dir, epochs, resume, progress, dist, meta, data_digest, monitor: as for :class:`Trainer`.

    Returns:
        The finished run.
    """
    trainer = Trainer(cfg, images, seed=seed, out_dir=out_dir, epochs=epochs, resume=resume, progress=progress,
                      dist=dist, meta=meta, data_digest=data_digest, monitor=monitor)
    return trainer.fit(callbacks)
