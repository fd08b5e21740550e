"""Checkpoints of a training run: what they hold, when they may be resumed, and writing them safely.

A checkpoint is resumed only when its fingerprint (everything that changes the result: the pretraining
params, the seed, the epoch budget and the data) matches the run's; any other checkpoint is ignored. A
checkpoint that cannot be read (truncated, garbage) is set aside as ``<name>.corrupt`` with a warning,
and training starts afresh: it is a persistent DVC output, and must never block the stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.config import PretrainConfig
from pipeline.data.shards import ImageArray
from pipeline.io import atomic_path
from pipeline.torch_files import UnreadableTorchFile, load_torch_file

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def fingerprint(cfg: PretrainConfig, images: ImageArray | str, seed: int, epochs: int | None = None,
                world_size: int = 1) -> str:
    """What a checkpoint must match to be resumed: everything that changes the result.

    Args:
        cfg: the pretraining params (where it runs, the thread count and the monitor do not count).
        images: the training array, or a digest that stands for it (a manifest's sha256).
        seed: the training seed.
        epochs: the epoch budget (default ``cfg.epochs``): it shapes the schedule.
        world_size: torchrun ranks: they set the global batch, the steps per epoch and so the schedule.

    Returns:
        A sha256 hex digest.
    """
    # Where and how it runs, and what is measured alongside (the monitor), do not change the result.
    d = cfg.model_dump(by_alias=True, exclude={"out_dir", "device", "num_threads", "monitor_every"})
    d["epochs"] = epochs or cfg.epochs
    if world_size > 1:  # one process keeps the fingerprints it always had
        d["world_size"] = world_size
    if isinstance(images, str):
        data = images
    else:
        data = hashlib.sha256(np.ascontiguousarray(images).data.cast("B")).hexdigest()
    return hashlib.sha256(json.dumps([d, seed, data], sort_keys=True, default=str).encode()).hexdigest()


def set_aside(path: Path, why: str) -> Path:
    """Rename an unreadable checkpoint out of the way (never delete what a person may want to inspect)."""
    dest = path.with_name(path.name + ".corrupt")
    os.replace(path, dest)
    log.warning("%s: unreadable checkpoint (%s); moved to %s, training starts afresh", path, why, dest.name)
    return dest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The checkpoint's state, or None when there is none or it was unreadable (then it is set aside).

    Args:
        path: the checkpoint file.
        map_location: where its tensors are loaded.

    Returns:
        The state :class:`pipeline.engine.trainer.Trainer` saved: ``fingerprint``, ``epoch``, ``history``,
        ``meta``, ``num_threads`` and the state dicts of the encoder, method, optimiser and scheduler.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = load_torch_file(path, map_location=map_location, weights_only=False)
    except UnreadableTorchFile as exc:
        set_aside(path, str(exc))
        return None
    if not isinstance(state, dict) or "fingerprint" not in state:
        set_aside(path, "not a checkpoint of this pipeline")
        return None
    return state


def read_checkpoint_meta(path: str | Path) -> dict | None:
    """A checkpoint's ``fingerprint``, ``epoch`` (done), ``history`` (their metrics), ``meta`` (the
    caller's) and ``num_threads``, without its weights; None when there is none."""
    state = load_checkpoint(path)
    if state is None:
        return None
    return {"fingerprint": state.get("fingerprint"), "epoch": state.get("epoch", 0), "meta": state.get("meta", {}),
            "num_threads": state.get("num_threads"), "history": state.get("history", [])}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a crash mid-write leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
