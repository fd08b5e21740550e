"""MoCo v2: InfoNCE by hand and against a numpy reference, the FIFO queue, the momentum encoder."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine.distributed import DistContext
from pipeline.methods import InfoNCELoss
from pipeline.methods.mocov2 import KeyQueue
from tests.methods.helpers import tiny_method


def reference_infonce(q: np.ndarray, k: np.ndarray, neg: np.ndarray, t: float) -> float:
    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    q, k, neg = unit(q), unit(k), unit(neg)
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(q[i] @ k[i] / t)
        total += -math.log(pos / (pos + sum(math.exp(q[i] @ n / t) for n in neg)))
    return total / len(q)


def test_loss_by_hand_and_against_the_reference():
    # q = k = e1, negatives e2 and -e1, t = 0.5: logits (2, 0, -2).
    q, k = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [-2.0, 0.0]])
    want = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert InfoNCELoss(0.5)(q, k, neg).item() == pytest.approx(want, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    q, k, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    assert InfoNCELoss(0.2)(q, k, neg).item() == pytest.approx(reference_infonce(q.numpy(), k.numpy(),
                                                                                 neg.numpy(), 0.2), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)


def test_queue_is_first_in_first_out():
    queue = KeyQueue(5, 2)
    keys = torch.arange(16.0).view(8, 2)  # keys 0..7, each row distinct
    queue.push(keys[:3])
    assert torch.equal(queue.keys[:3], keys[:3]) and int(queue.ptr) == 3
    queue.push(keys[3:6])  # wraps: 3, 4 fill the end, 5 overwrites the oldest (0)
    assert torch.equal(queue.keys, keys[[5, 1, 2, 3, 4]]) and int(queue.ptr) == 1
    queue.push(keys[6:8])  # then 1 and 2 go, the next oldest
    assert torch.equal(queue.keys, keys[[5, 6, 7, 3, 4]]) and int(queue.ptr) == 3
    with pytest.raises(ValueError, match="queue_size"):
        queue.push(torch.zeros(6, 2))
    assert set(queue.state_dict()) == {"keys", "ptr"}  # both in the checkpoint


def test_step_is_symmetric_infonce_against_the_queue_then_queues_the_keys_and_follows_with_momentum():
    encoder, method = tiny_method("mocov2", queue_size=16, momentum=0.9)
    method.train()
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.rand(3, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    queue0 = method.queue.keys.clone()
    out = method(encoder.forward_both, v1, v2, DistContext())
    with torch.no_grad():
        k = F.normalize(method.target.forward_both(torch.cat([v1, v2]))[1], dim=1)
    q1, q2 = out.z.chunk(2)
    loss = InfoNCELoss(0.2)
    want = (loss(q1, k[3:], queue0) + loss(q2, k[:3], queue0)) / 2
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in method.target.parameters())  # keys take no gradient

    t0 = [p.detach().clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    method.after_step(encoder, 1, 10)
    # The queue holds this step's keys (both views), the rest untouched; the target moved by momentum 0.9.
    torch.testing.assert_close(method.queue.keys[:6], k, rtol=0, atol=1e-6)
    assert torch.equal(method.queue.keys[6:], queue0[6:]) and int(method.queue.ptr) == 6
    for t, before, o in zip(method.target.parameters(), t0, encoder.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * o, rtol=0, atol=1e-6)
    assert list(method.trainable_parameters()) == []
