"""The augmentation on CUDA against the CPU's, for the same random draws."""

from __future__ import annotations

import torch

import pipeline.engine.augment as augment_module
from pipeline.config import AugmentConfig
from tests.cuda.common import CUDA, DEVICE, Augment

pytestmark = CUDA

# Every op on, two channel counts: crop + flip (grid_sample), the four colour ops in random orders, grey,
# blur, solarisation.
CFG = AugmentConfig(crop_scale=(0.08, 1.0), hflip_prob=0.5, blur_prob=0.5, solarize_prob=0.2)


def test_the_cuda_views_equal_the_cpu_views_for_the_same_draws(monkeypatch):
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for channels in (3, 1):
        batch = x[:, :channels]
        want = Augment(CFG, 24)(batch, torch.Generator().manual_seed(7))
        # CUDA and CPU generators are different streams: the CUDA run takes the CPU stream's numbers.
        # Every draw of the augmentation module goes through its one sampling function, _rand.
        cpu_stream = torch.Generator().manual_seed(7)

        def rand(shape, generator, device, stream=cpu_stream):  # noqa: ANN001, ANN202
            return torch.rand(shape, generator=stream, dtype=torch.float32).to(device)

        monkeypatch.setattr(augment_module, "_rand", rand)
        got = Augment(CFG, 24)(batch.to(DEVICE), torch.Generator(device=DEVICE).manual_seed(7))
        monkeypatch.undo()
        assert got.device.type == DEVICE.type and got.shape == want.shape
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-4)


def test_the_cuda_views_are_a_function_of_the_generator_state():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    aug = Augment(CFG, 24)
    a = aug(x, torch.Generator(device=DEVICE).manual_seed(3))
    b = aug(x, torch.Generator(device=DEVICE).manual_seed(3))
    c = aug(x, torch.Generator(device=DEVICE).manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
