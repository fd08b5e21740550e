"""bf16 autocast against fp32, and an fp32 step on CUDA against the same step on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.engine.distributed import DistContext
from pipeline.engine.trainer import build_encoder, train
from pipeline.methods import METHODS, build_method
from tests.cuda.common import CUDA, DEVICE, images, recipe_cfg

pytestmark = CUDA

# bf16 keeps 8 bits of mantissa: the backbone's and head's outputs carry about 0.4% relative error; the
# methods compute their losses in fp32 (methods.base.full_precision), so the averaged loss moves far less.
# 2% of the loss (+ 0.01 for losses near zero) passes that and fails a loss computed in bf16 or a dtype
# mix-up that changes what is computed.
BF16_RTOL, BF16_ATOL = 2e-2, 1e-2


def _views(n: int, side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g), torch.rand(n, 3, side, side, generator=g)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_autocast_loss_is_within_tolerance_of_fp32(method):
    cfg = recipe_cfg(ssl={"method": method})
    data = images(64)
    torch.manual_seed(0)
    encoder = build_encoder(cfg, data).to(DEVICE)
    m = build_method(cfg.ssl, encoder).to(DEVICE)
    online = DistContext().wrap(encoder)  # what the loop hands a method: x -> (h, z)
    v1, v2 = (v.to(DEVICE) for v in _views(64, data.shape[1], 1))
    start = copy.deepcopy(encoder.state_dict()), copy.deepcopy(m.state_dict())
    fp32 = m(online, v1, v2, DistContext()).loss
    encoder.load_state_dict(start[0])  # batch-norm statistics moved in train mode
    m.load_state_dict(start[1])
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = m(online, v1, v2, DistContext())
    assert out.loss.dtype == torch.float32, "the loss must leave autocast in fp32"
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - fp32.item()) <= BF16_RTOL * abs(fp32.item()) + BF16_ATOL


@pytest.mark.parametrize("form", ["l1", "group", "activation"])  # activation: the penalty reads z (bf16)
def test_a_bf16_epoch_is_within_tolerance_of_fp32(form):
    data = images(128)
    runs = [train(recipe_cfg(precision=p, epochs=1, sparsehead={"form": form, "lambda": 1e-3}), data, seed=0,
                  progress=False).history for p in ("fp32", "bf16")]
    for a, b in zip(*runs, strict=True):
        for key in ("loss_total", "loss_ssl", "sparse_reg"):
            assert abs(b[key] - a[key]) <= BF16_RTOL * abs(a[key]) + BF16_ATOL, (key, a[key], b[key])


def test_an_fp32_step_on_cuda_matches_the_same_step_on_the_cpu(exact_fp32):
    cfg = recipe_cfg(ssl={"method": "simclr"})
    data = images(32)
    torch.manual_seed(0)
    cpu_encoder = build_encoder(cfg, data)
    cpu_method = build_method(cfg.ssl, cpu_encoder)
    dev_encoder = copy.deepcopy(cpu_encoder).to(DEVICE)
    dev_method = build_method(cfg.ssl, dev_encoder).to(DEVICE)
    dev_method.load_state_dict(cpu_method.state_dict())
    v1, v2 = _views(32, data.shape[1], 2)
    losses, grads = [], []
    for enc, m in ((cpu_encoder, cpu_method), (dev_encoder, dev_method)):
        loss = m(DistContext().wrap(enc), v1.to(DEVICE if enc is dev_encoder else "cpu"),
                 v2.to(DEVICE if enc is dev_encoder else "cpu"), DistContext()).loss
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.detach().cpu() for p in enc.parameters()])
    # fp32 on both sides: only the order of float additions differs. Gradients that are sums with heavy
    # cancellation (a batch-norm bias) carry that to about 1e-3 of their own size, so each tensor is held
    # to 1e-2 of its norm, and all of them together to 1e-4.
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(*grads, strict=True):
        assert float((b - a).norm()) <= 1e-2 * float(a.norm()) + 1e-12
    ga, gb = torch.cat([g.reshape(-1) for g in grads[0]]), torch.cat([g.reshape(-1) for g in grads[1]])
    assert float((gb - ga).norm()) <= 1e-4 * float(ga.norm())
