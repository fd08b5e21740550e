"""Pretraining throughput: the project's loop against the pipeline most users write, in one run.

    python bench/pretrain_throughput.py                       # digits default (params.yaml's pretrain), 2 loader workers
    python bench/pretrain_throughput.py --streaming           # + the streaming path (small chunks) against in-memory
    python bench/pretrain_throughput.py --synthetic 10240,32,3 --backbone resnet18 --batch 512 --settings   # GPU recipe
    python bench/pretrain_throughput.py --quick               # seconds, on the CPU (the test runs this)

Measured on the same model, batch and data:

- ``project``: :func:`pipeline.engine.trainer.train` (uint8 set on the device, batched per-image
  augmentation there), img/s of each epoch after the first (warm-up: allocator, cuDNN autotuning);
- ``reference``: a ``torch.utils.data.DataLoader`` with ``--workers`` worker processes applying
  ``torchvision.transforms.v2`` to each image (the same crop, flip, jitter, grayscale and blur
  settings), two views, then the same model step (method loss + SparseHead + optimiser, with the
  loop's precision and memory layout), so the ratio is the feeding's alone;
- ``augment_share``: the project's two views of a batch, timed alone, as a share of its step;
- ``--streaming``: the project's loop with ``pretrain.data.streaming: on`` and ``--chunk-images``
  against the in-memory loop;
- ``--settings`` (meant for a GPU): each of bf16 autocast, channels_last, fused SGD and torch.compile
  switched off/on against the defaults;
- on CUDA, model FLOP utilisation: FLOPs of one step (``torch.utils.flop_counter``) x steps/s over the
  device's dense bf16 peak (known devices only; ``bench/gpu_check.py`` measures the peak instead).

Every figure is the median over ``--repeats`` runs, with the spread (min-max). Prints JSON; never
pass/fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pipeline.config import AugmentConfig, PretrainConfig, load_params
from pipeline.data.preprocess import to_model_input
from pipeline.device import autocast_dtype, resolve_device, use_channels_last
from pipeline.engine.augment import ViewAugmentation, blur_kernel_size
from pipeline.engine.distributed import DistContext
from pipeline.engine.optim import build_optimizer
from pipeline.engine.trainer import build_encoder, train
from pipeline.methods import build_method
from pipeline.sparsehead import SparseHead

# Dense bf16 tensor-core peaks (FLOP/s) of the GPUs this project is lent, from the vendors' data sheets.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the project's loop


class _OutOfTime(Exception):
    pass


def project_run(cfg: PretrainConfig, images: np.ndarray, seed: int = 0, budget_s: float | None = None
                ) -> dict[str, float]:
    """One run of the real loop (:func:`pipeline.engine.trainer.train`) and its figures.

    Args:
        cfg: The pretraining config (its ``epochs``: the first is warm-up).
        images: uint8 (N, H, W, C).
        seed: The run's seed.
        budget_s: Stop after the epoch that passes this many seconds (at least one epoch runs).

    Returns:
        ``img_s`` and ``epoch_s`` (medians of the warm epochs; of the first when it is the only one),
        ``first_epoch_s`` (warm-up: allocation, kernels loading, compiling), ``epochs`` run, and on CUDA
        ``peak_gib`` (the most memory torch allocated).
    """
    device = resolve_device(cfg.device)
    history: list[dict[str, float]] = []
    start = time.perf_counter()

    def record(epoch: int, metrics: dict[str, float], encoder: object) -> None:
        history.append(metrics)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            raise _OutOfTime

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with suppress(_OutOfTime):
        train(cfg, images, seed=seed, progress=False, callbacks=[record])
    warm = history[1:] or history
    out = {"img_s": statistics.median(h["img_per_s"] for h in warm),
           "epoch_s": statistics.median(h["epoch_seconds"] for h in warm),
           "first_epoch_s": history[0]["epoch_seconds"], "epochs": float(len(history))}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def project_img_s(cfg: PretrainConfig, images: np.ndarray, repeats: int) -> list[float]:
    """Median img/s of the warm epochs of each run of the real loop, one figure per run."""
    return [project_run(cfg, images, seed=r)["img_s"] for r in range(repeats)]


def augment_img_s(cfg: PretrainConfig, images: np.ndarray, device: torch.device, steps: int) -> float:
    """The project's two views of a batch, alone (uint8 -> float on the device, then both views)."""
    data = torch.from_numpy(images).to(device)
    size = cfg.image_size or images.shape[1]
    view = ViewAugmentation(cfg.augment, size)
    g = torch.Generator(device=device).manual_seed(0)
    b = min(cfg.batch_size, len(images))
    for _ in range(2):  # warm-up
        x = to_model_input(data[:b])
        view(x, g), view(x, g)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        lo = (i * b) % max(1, len(images) - b + 1)
        x = to_model_input(data[lo:lo + b])
        view(x, g), view(x, g)
    sync(device)
    return steps * b / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- the reference pipeline


def torchvision_views(aug: AugmentConfig, size: int) -> v2.Compose:
    """The same recipe as ``pipeline.engine.augment.ViewAugmentation``, as torchvision v2 per image."""
    ops: list = [v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True)]
    if aug.hflip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip_prob))
    if aug.jitter_prob > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                                  p=aug.jitter_prob))
    if aug.grayscale_prob > 0:
        ops.append(v2.RandomGrayscale(aug.grayscale_prob))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if aug.blur_prob > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), aug.blur_sigma)], p=aug.blur_prob))
    return v2.Compose(ops)


class TwoViews(Dataset):
    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 CHW views, as a decoded image
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return self.transform(x), self.transform(x)


class ModelStep:
    """The model part of a step, as the loop does it: method loss + lambda * R, backward, optimiser, in
    the loop's precision (autocast) and memory layout."""

    def __init__(self, cfg: PretrainConfig, images: np.ndarray, device: torch.device) -> None:
        torch.manual_seed(0)
        self.encoder = build_encoder(cfg, images).to(device)
        self.method = build_method(cfg.ssl, self.encoder).to(device)
        self.amp = autocast_dtype(device, cfg.precision)
        self.channels_last = use_channels_last(device, cfg.channels_last)
        if self.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
            self.method = self.method.to(memory_format=torch.channels_last)
        self.device = device
        self.dist = DistContext.from_env()
        self.online = self.dist.wrap(self.encoder)  # what the loop hands a method: x -> (h, z)
        self.opt = build_optimizer(self.encoder, cfg.optim, cfg.batch_size, default_lr=self.method.default_lr,
                                   extra=list(self.method.trainable_parameters()))
        sh = cfg.sparsehead
        self.reg = SparseHead(sh, self.method.penalised_modules(sh.include_predictor))
        self.step_no = 0

    def __call__(self, v1: torch.Tensor, v2_: torch.Tensor) -> None:
        self.encoder.train()
        self.method.train()
        if self.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2_ = v2_.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext():
            out = self.method(self.online, v1, v2_, self.dist)
        loss = out.loss.float() + self.reg(self.encoder.head, out.z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.reg.after_step(self.encoder.head, self.opt)
        self.step_no += 1
        self.method.after_step(self.encoder, self.step_no, 10**9)


def reference_img_s(cfg: PretrainConfig, images: np.ndarray, device: torch.device, workers: int, epochs: int,
                    repeats: int) -> list[float]:
    """img/s of the model step fed by a DataLoader of torchvision v2 views, per repeat.

    Args:
        cfg: The pretraining config (the step's model, batch and augmentation).
        images: uint8 (N, H, W, C).
        device: Where the step runs.
        workers: DataLoader worker processes.
        epochs: Passes over ``images`` per repeat (the first is warm-up: workers start).
        repeats: Repeats.

    Returns:
        The median img/s of the warm passes of each repeat.
    """
    size = cfg.image_size or images.shape[1]
    loader = DataLoader(TwoViews(images, torchvision_views(cfg.augment, size)), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda")
    out = []
    for _ in range(repeats):
        step = ModelStep(cfg, images, device)
        rates = []
        for _ in range(epochs):
            sync(device)
            t0, n = time.perf_counter(), 0
            for a, b in loader:
                step(a.to(device, non_blocking=True), b.to(device, non_blocking=True))
                n += len(a)
            sync(device)
            rates.append(n / (time.perf_counter() - t0))
        out.append(statistics.median(rates[1:] or rates))
    return out


# --------------------------------------------------------------------------- FLOP utilisation


def step_flops(cfg: PretrainConfig, images: np.ndarray, device: torch.device) -> float:
    """FLOPs of one model step (both views, forward and backward, a target network's forward) at the
    config's batch, counted by ``torch.utils.flop_counter`` (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = ModelStep(cfg, images, device)
    size = cfg.image_size or images.shape[1]
    x = torch.rand(cfg.batch_size, images.shape[-1], size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        step(x, x.clone())
    return float(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


# --------------------------------------------------------------------------- the run


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.synthetic:
        n, s, c = (int(v) for v in args.synthetic.split(","))
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, s, s, c), dtype=np.uint8), f"synthetic {n}x{s}x{s}x{c}"
    from pipeline.data.digits import load_digits_dataset

    ds = load_digits_dataset(0.2, 0)
    return ds.train.images, f"digits train {ds.train.images.shape}"


def make_cfg(args: argparse.Namespace, images: np.ndarray) -> PretrainConfig:
    base = load_params(args.params).pretrain.model_dump(by_alias=True)
    base.update(epochs=args.epochs, device=args.device, out_dir="unused")
    if args.backbone:
        base["backbone"]["name"] = args.backbone
        if args.backbone != "small":
            base["head"] = {"hidden_dims": [2048], "out_dim": 128, "batch_norm": True}
    if args.batch:
        base["batch_size"] = args.batch
    base["batch_size"] = min(base["batch_size"], len(images))
    return PretrainConfig.model_validate(base)


def with_(cfg: PretrainConfig, **over: object) -> PretrainConfig:
    """``cfg`` with dotted keys (``optim.fused``, ``data.streaming``) set, validated again."""
    d = cfg.model_dump(by_alias=True)
    for key, value in over.items():
        node = d
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return PretrainConfig.model_validate(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="pretrain settings (defaults when missing)")
    ap.add_argument("--synthetic", help="N,SIZE,CHANNELS random uint8 images instead of digits")
    ap.add_argument("--backbone", help="override pretrain.backbone.name (resnet18: 512-2048-128 head)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--streaming", action="store_true", help="also the streaming path against in-memory")
    ap.add_argument("--chunk-images", type=int, help="streaming chunk (default: a quarter of the set)")
    ap.add_argument("--settings", action="store_true", help="bf16 / channels_last / fused / compile, each on-off")
    ap.add_argument("--quick", action="store_true", help="a few seconds on the CPU: tiny set, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats, args.workers = 2, 1, 1
        args.synthetic = args.synthetic or "256,8,1"
        args.batch = args.batch or 64
    if args.threads:
        torch.set_num_threads(args.threads)

    images, data_name = load_images(args)
    cfg = make_cfg(args, images)
    device = resolve_device(cfg.device)
    steps_per_epoch = len(images) // cfg.batch_size
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "data": data_name, "backbone": cfg.backbone.name,
        "batch": cfg.batch_size, "epochs_per_run": args.epochs, "repeats": args.repeats,
        "precision": cfg.precision, "reference_workers": args.workers,
    }
    chunk = args.chunk_images or max(cfg.batch_size, len(images) // 4)
    streaming_cfg = with_(cfg, **{"data.streaming": "on", "data.chunk_images": chunk})
    project, streamed = [], []
    for _ in range(args.repeats):  # interleaved, so that a drifting machine load hits both alike
        project += project_img_s(cfg, images, 1)
        if args.streaming:
            streamed += project_img_s(streaming_cfg, images, 1)
    reference = reference_img_s(cfg, images, device, args.workers, args.epochs, args.repeats)
    aug = augment_img_s(cfg, images, device, steps=max(2, steps_per_epoch))
    report["project_img_s"] = summarise(project)
    report["reference_img_s"] = summarise(reference)
    report["speedup_vs_reference"] = round(statistics.median(project) / statistics.median(reference), 2)
    report["augment_img_s"] = round(aug, 1)
    # Seconds per image of augmentation over seconds per image of the whole step.
    report["augment_share"] = round(statistics.median(project) / aug, 3)

    if args.streaming:
        report["streaming"] = {"chunk_images": chunk, "img_s": summarise(streamed),
                               "vs_in_memory": round(statistics.median(streamed) / statistics.median(project), 3)}

    if args.settings:
        toggles = {"precision": ("fp32", "bf16"), "channels_last": (False, True), "optim.fused": (False, True),
                   "compile": (False, True)}
        report["settings"] = {
            key: {str(v): summarise(project_img_s(with_(cfg, **{key: v}), images, args.repeats)) for v in values}
            for key, values in toggles.items()}

    flops = step_flops(cfg, images, device)
    report["gflop_per_image"] = round(flops / cfg.batch_size / 1e9, 4)
    peak = peak_flops(device)
    if peak is not None:
        report["mfu"] = round(flops / cfg.batch_size * statistics.median(project) / peak, 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
