"""A checkpoint written on CUDA, resumed on CUDA: bit-identical with deterministic kernels; with cuDNN's
defaults, no further from an uninterrupted run than a second uninterrupted run is (its backward kernels
accumulate with atomics, in an order that changes from run to run)."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.checkpoint import CHECKPOINT, read_checkpoint_meta
from pipeline.engine.trainer import train
from tests.conftest import Crash, crash_after
from tests.cuda.common import CUDA, images, small_cfg

pytestmark = CUDA


def _interrupted_and_whole(tmp_path, cfg, data):
    whole = train(cfg, data, seed=2, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(Crash):
        train(cfg, data, seed=2, out_dir=tmp_path / "resumed", progress=False, callbacks=[crash_after(2)])
    assert read_checkpoint_meta(tmp_path / "resumed" / CHECKPOINT)["epoch"] == 2
    resumed = train(cfg, data, seed=2, out_dir=tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    return whole, resumed


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_resume_on_cuda_is_bit_identical_with_deterministic_kernels(tmp_path, deterministic, streaming):
    cfg = small_cfg(epochs=3, data={"streaming": streaming, "chunk_images": 100})
    whole, resumed = _interrupted_and_whole(tmp_path, cfg, images(256, side=16))
    assert [h["loss_total"] for h in resumed.history] == [h["loss_total"] for h in whole.history]
    for a, b in zip(whole.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_on_cuda_with_default_kernels_differs_no_more_than_two_whole_runs(tmp_path):
    # The default (what `pretrain` runs): atomics in cuDNN's backward make the last bits vary from run to
    # run, and SGD carries them along. The tolerance is measured, not guessed: a resumed run may differ
    # from an uninterrupted one by what a second uninterrupted run differs (x10, + 1e-6), no more.
    cfg, data = small_cfg(epochs=3), images(256, side=16)
    whole, resumed = _interrupted_and_whole(tmp_path, cfg, data)
    again = train(cfg, data, seed=2, out_dir=tmp_path / "again", progress=False)

    def gap(x, y) -> float:
        return max(abs(b["loss_total"] - a["loss_total"]) / abs(a["loss_total"])
                   for a, b in zip(x.history, y.history, strict=True))

    assert gap(whole, resumed) <= 10 * gap(whole, again) + 1e-6
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]
