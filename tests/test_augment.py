"""Batched SimCLR augmentations against torchvision's single-image functions and hand-computed references."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from pipeline.config import AugmentConfig
from pipeline.engine.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    LUMA,
    SATURATION,
    CropParams,
    JitterParams,
    ViewAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    apply_crop,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    gaussian_kernels,
    hue6_max_delta,
    make_generator,
    random_gaussian_blur,
    random_grayscale,
    random_resized_crop,
    random_solarize,
    rgb_from_hue6,
    sample_crop_params,
    sample_jitter_params,
    solarize_where,
)

torch.set_num_threads(1)

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0, jitter_prob=0.0,
                         grayscale_prob=0.0, blur_prob=0.0)
FULL = AugmentConfig(hflip_prob=0.5, blur_prob=0.5)


def images(n: int = 6, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def factors(n: int, lo: float, hi: float, seed: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the whole pipeline


@pytest.mark.parametrize("c", [1, 3])
def test_shape_dtype_range(c: int) -> None:
    x = images(5, c, 20, 20)
    y = ViewAugmentation(FULL, 12)(x, make_generator(0))
    assert y.shape == (5, c, 12, 12)
    assert y.dtype == torch.float32 and y.device == x.device
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert ViewAugmentation(FULL, 12)(x[:0], make_generator(0)).shape == (0, c, 12, 12)


def test_same_seed_same_views_other_seed_other_views() -> None:
    x = images(4)
    aug = ViewAugmentation(FULL, 16)
    a = aug(x, make_generator(7))
    b = aug(x, make_generator(7))
    c = aug(x, make_generator(8))
    assert torch.equal(a, b)
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changes with the seed


def test_two_calls_on_one_generator_give_two_views() -> None:
    x = images(4)
    aug = ViewAugmentation(FULL, 16)
    g = make_generator(0)
    v1, v2 = aug(x, g), aug(x, g)
    assert (v1 - v2).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_every_image_gets_its_own_draw() -> None:
    x = images(1).expand(8, -1, -1, -1).contiguous()
    y = ViewAugmentation(FULL, 16)(x, make_generator(0))
    flat = y.flatten(1)
    dist = torch.cdist(flat, flat)
    off_diag = dist[~torch.eye(8, dtype=torch.bool)]
    assert off_diag.min() > 1e-2


def test_crop_params_differ_per_image_and_respect_bounds() -> None:
    n, h, w = 256, 20, 30
    p = sample_crop_params(n, h, w, (0.2, 0.9), (0.5, 2.0), 0.5, make_generator(3))
    x0, y0, bw, bh = p.boxes.unbind(1)
    assert torch.unique(p.boxes, dim=0).shape[0] == n
    assert 0 < p.flip.sum() < n
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + bw <= w + 1e-4).all() and (y0 + bh <= h + 1e-4).all()
    area = bw * bh / (h * w)
    assert (area >= 0.2 - 1e-5).all() and (area <= 0.9 + 1e-5).all()
    aspect = bw / bh
    assert (aspect >= 0.5 - 1e-5).all() and (aspect <= 2.0 + 1e-5).all()


def test_crop_falls_back_to_a_centre_crop_when_nothing_fits() -> None:
    # An aspect ratio of 4 cannot fit a full-area crop of a square image: torchvision's fallback is a
    # centred crop of the whole width at the clamped ratio.
    p = sample_crop_params(3, 16, 16, (1.0, 1.0), (4.0, 4.0), 0.0, make_generator(0))
    expected = torch.tensor([0.0, 6.0, 16.0, 4.0]).expand(3, 4)
    torch.testing.assert_close(p.boxes, expected)


@pytest.mark.parametrize("c", [1, 3])
def test_identity_config_returns_the_input(c: int) -> None:
    x = images(4, c, 16, 16)
    y = ViewAugmentation(IDENTITY, 16)(x, make_generator(0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_hflip_with_probability_one_is_torch_flip() -> None:
    x = images(4)
    cfg = IDENTITY.model_copy(update={"hflip_prob": 1.0})
    y = ViewAugmentation(cfg, 16)(x, make_generator(0))
    torch.testing.assert_close(y, torch.flip(x, dims=[3]), atol=1e-5, rtol=0)


def test_integer_box_at_output_size_is_a_slice() -> None:
    x = images(2, 3, 32, 32)
    boxes = torch.tensor([[4.0, 6.0, 16.0, 16.0], [10.0, 0.0, 16.0, 16.0]])
    y = apply_crop(x, CropParams(boxes, torch.tensor([False, True])), 16)
    torch.testing.assert_close(y[0], x[0, :, 6:22, 4:20], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1], x[1, :, 0:16, 10:26].flip(-1), atol=1e-5, rtol=0)


def test_box_twice_the_output_averages_two_by_two_blocks() -> None:
    # Output pixel centres fall midway between input centres, so bilinear sampling = 2x2 mean.
    x = images(2, 3, 40, 40)
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 32.0, 32.0]])
    y = apply_crop(x, CropParams(boxes, torch.tensor([False, False])), 16)
    torch.testing.assert_close(y[0], F.avg_pool2d(x[0:1, :, :32, :32], 2)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1], F.avg_pool2d(x[1:2, :, 4:36, 8:40], 2)[0], atol=1e-5, rtol=0)


def test_random_resized_crop_resizes_non_square_input() -> None:
    x = images(3, 3, 12, 20)
    y = random_resized_crop(x, 10, (0.3, 1.0), (0.75, 4 / 3), 0.5, make_generator(0))
    assert y.shape == (3, 3, 10, 10) and y.min() >= 0 and y.max() <= 1


# --------------------------------------------------------------------------- colour ops vs torchvision


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("ours,theirs", [(adjust_brightness, TF.adjust_brightness),
                                         (adjust_contrast, TF.adjust_contrast),
                                         (adjust_saturation, TF.adjust_saturation)])
def test_blend_ops_match_torchvision(c: int, ours, theirs) -> None:
    x = images(6, c)
    f = factors(6, 0.2, 1.8)
    y = ours(x, f)
    for i in range(6):
        torch.testing.assert_close(y[i], theirs(x[i], float(f[i])), atol=1e-4, rtol=0)


@pytest.mark.parametrize("levels", [None, 4])
def test_hue_matches_torchvision(levels: int | None) -> None:
    x = images(6)
    if levels is not None:  # few grey levels: many ties between channels, grey pixels, 0 and 1
        x = (x * levels).floor().clamp(max=levels - 1) / (levels - 1)
    shift = factors(6, -0.5, 0.5)
    y = adjust_hue(x, shift)
    for i in range(6):
        torch.testing.assert_close(y[i], TF.adjust_hue(x[i], float(shift[i])), atol=1e-3, rtol=0)


def test_zero_hue_shift_and_one_channel_hue_are_exact_no_ops() -> None:
    x = images(3)
    assert torch.equal(adjust_hue(x, torch.zeros(3)), x)
    g = images(3, 1)
    assert torch.equal(adjust_hue(g, torch.full((3,), 0.3)), g)
    assert torch.equal(adjust_saturation(g, torch.full((3,), 0.3)), g)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with h in [0, 1) (torchvision's convention), from the hue helpers."""
    h6, v, delta = hue6_max_delta(x)
    h = ((h6 + 6.0) / 6.0).frac()
    s = delta / torch.where(v > 0, v, 1.0)
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV (h in turns) -> RGB, from the hue helpers."""
    h, s, v = hsv.unbind(1)
    return rgb_from_hue6(6.0 * h, v, v * s)


def test_hue_helpers_round_trip_and_match_colorsys() -> None:
    x = images(4, 3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = rgb_to_hsv(x)
    for r, g, b, h, s, v in zip(*x[0].flatten(1)[:, :20].tolist(), *hsv[0].flatten(1)[:, :20].tolist(),
                                strict=True):
        assert (h, s, v) == pytest.approx(colorsys.rgb_to_hsv(r, g, b), abs=1e-5)
    # Primaries and a grey pixel: h in turns, grey has hue and saturation 0.
    prim = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]).T
    got = rgb_to_hsv(prim.view(1, 3, 1, 4))[0, :, 0].T
    want = torch.tensor([[0.0, 1.0, 1.0], [1 / 3, 1.0, 1.0], [2 / 3, 1.0, 1.0], [0.0, 0.0, 0.5]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _torchvision_jitter(img: torch.Tensor, p: JitterParams, i: int) -> torch.Tensor:
    ops = {BRIGHTNESS: lambda t: TF.adjust_brightness(t, float(p.brightness[i])),
           CONTRAST: lambda t: TF.adjust_contrast(t, float(p.contrast[i])),
           SATURATION: lambda t: TF.adjust_saturation(t, float(p.saturation[i])),
           HUE: lambda t: TF.adjust_hue(t, float(p.hue[i]))}
    for op in p.order[i].tolist():
        img = ops[op](img)
    return img


@pytest.mark.parametrize("c", [1, 3])
def test_color_jitter_applies_each_images_own_order(c: int) -> None:
    n = 24  # enough images for many of the 24 orders
    x = images(n, c)
    p = sample_jitter_params(n, 0.8, 0.8, 0.8, 0.3, 1.0, make_generator(5))
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    assert torch.unique(p.order, dim=0).shape[0] > 8
    y = apply_color_jitter(x, p)
    for i in range(n):
        torch.testing.assert_close(y[i], _torchvision_jitter(x[i], p, i), atol=1e-3, rtol=0)
    assert y.min() >= 0 and y.max() <= 1


def test_fixed_order_is_brightness_contrast_saturation_hue() -> None:
    n = 8
    x = images(n)
    p = sample_jitter_params(n, 0.8, 0.8, 0.8, 0.3, 1.0, make_generator(5), random_order=False)
    assert p.order is None
    y = apply_color_jitter(x, p)
    fixed = JitterParams(p.brightness, p.contrast, p.saturation, p.hue,
                         torch.tensor([BRIGHTNESS, CONTRAST, SATURATION, HUE]).expand(n, 4))
    torch.testing.assert_close(apply_color_jitter(x, fixed), y, atol=1e-5, rtol=0)
    for i in range(n):
        torch.testing.assert_close(y[i], _torchvision_jitter(x[i], fixed, i), atol=1e-3, rtol=0)


def test_jitter_factor_ranges_and_probability() -> None:
    n = 2000
    p = sample_jitter_params(n, 0.4, 0.3, 1.5, 0.1, 0.5, make_generator(0), random_order=False)
    active = p.hue != 0
    assert 0.45 < active.float().mean() < 0.55
    assert p.order is None
    for f, lo, hi in [(p.brightness, 0.6, 1.4), (p.contrast, 0.7, 1.3), (p.saturation, 0.0, 2.5)]:
        assert (f[~active] == 1).all()
        assert f[active].min() >= lo and f[active].max() <= hi
        assert f[active].min() < lo + 0.05 and f[active].max() > hi - 0.05  # fills the range
    assert p.hue.abs().max() <= 0.1


def test_jitter_probability_zero_is_identity() -> None:
    x = images(4)
    y = color_jitter(x, 0.4, 0.4, 0.4, 0.1, 0.0, make_generator(0))
    assert torch.equal(y, x)


def test_grayscale_is_the_luma_formula() -> None:
    x = images(4)
    y = random_grayscale(x, 1.0, make_generator(0))
    luma = LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]
    for ch in range(3):
        torch.testing.assert_close(y[:, ch], luma, atol=1e-6, rtol=0)
    assert torch.equal(random_grayscale(x, 0.0, make_generator(0)), x)
    g = images(4, 1)
    assert torch.equal(random_grayscale(g, 1.0, make_generator(0)), g)


def test_grayscale_is_drawn_per_image() -> None:
    x = images(200, 3, 4, 4)
    y = random_grayscale(x, 0.3, make_generator(0))
    grey = (y[:, 0] == y[:, 1]).all(dim=(1, 2)) & (y[:, 1] == y[:, 2]).all(dim=(1, 2))
    unchanged = (y == x).flatten(1).all(dim=1)
    assert torch.equal(grey, ~unchanged)
    assert 0.2 < grey.float().mean() < 0.4


# --------------------------------------------------------------------------- blur


def test_blur_kernel_size() -> None:
    assert [blur_kernel_size(s) for s in (8, 32, 96, 224)] == [3, 3, 11, 23]


def test_blur_tiny_sigma_is_identity_and_constant_is_kept() -> None:
    x = images(3)
    torch.testing.assert_close(gaussian_blur(x, torch.full((3,), 1e-3), 5), x, atol=1e-6, rtol=0)
    const = torch.full((3, 3, 16, 16), 0.37)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 1.0, 2.0]), 5), const,
                               atol=1e-6, rtol=0)


def test_blur_matches_torchvision_per_image_sigma() -> None:
    x = images(4, 3, 16, 16)
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    y = gaussian_blur(x, sigma, 5)
    for i in range(4):
        ref = TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2)
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_kernels(sigma, 5).sum(1), torch.ones(4))


def test_random_blur_picks_images() -> None:
    x = images(64, 1, 8, 8)
    y = random_gaussian_blur(x, 0.5, (1.0, 2.0), 3, make_generator(0))
    unchanged = (y == x).flatten(1).all(dim=1)
    assert 0 < unchanged.sum() < 64
    assert torch.equal(random_gaussian_blur(x, 0.0, (1.0, 2.0), 3, make_generator(0)), x)


# --------------------------------------------------------------------------- solarisation


@pytest.mark.parametrize("c", [1, 3])
def test_solarize_matches_torchvision_on_the_picked_images(c: int) -> None:
    import torchvision.transforms.v2.functional as F2

    x = images(4, c, 8, 8)
    x[0, 0, 0, 0] = 0.5  # at the threshold: inverted, as torchvision's ``>=``
    mask = torch.tensor([True, False, True, False])
    y = solarize_where(x, mask)
    for i in range(4):
        ref = F2.solarize(x[i], threshold=0.5) if mask[i] else x[i]
        assert torch.equal(y[i], ref), i
    assert y[0, 0, 0, 0] == 0.5


def test_random_solarize_picks_images_and_runs_last_in_the_pipeline() -> None:
    x = images(64, 1, 8, 8)
    y = random_solarize(x, 0.5, make_generator(0))
    unchanged = (y == x).flatten(1).all(dim=1)
    assert 0 < unchanged.sum() < 64
    assert torch.equal(random_solarize(x, 0.0, make_generator(0)), x)
    on = IDENTITY.model_copy(update={"solarize_prob": 1.0})
    torch.testing.assert_close(ViewAugmentation(on, 8)(x, make_generator(0)), solarize_where(x, torch.ones(64, dtype=bool)),
                               atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- one channel, errors, device


def test_one_channel_colour_ops_that_do_not_apply_are_no_ops() -> None:
    g = images(4, 1, 16, 16)
    cfg = IDENTITY.model_copy(update={"jitter_prob": 1.0, "brightness": 0.0, "contrast": 0.0,
                                      "saturation": 0.9, "hue": 0.4, "grayscale_prob": 1.0})
    torch.testing.assert_close(ViewAugmentation(cfg, 16)(g, make_generator(0)), g, atol=1e-5, rtol=0)
    cfg = cfg.model_copy(update={"brightness": 0.5})
    assert not torch.allclose(ViewAugmentation(cfg, 16)(g, make_generator(0)), g, atol=1e-3)


def test_bad_inputs_name_the_problem() -> None:
    aug = ViewAugmentation(FULL, 8)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.rand(2, 2, 8, 8), make_generator(0))
    with pytest.raises(ValueError, match="floating"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), make_generator(0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        aug(torch.rand(3, 8, 8), make_generator(0))
    with pytest.raises(ValueError, match="pretrain.augment.crop_scale"):
        ViewAugmentation(AugmentConfig(crop_scale=(0.9, 0.2)), 8)
    with pytest.raises(ValueError, match="pretrain.augment.crop_ratio"):
        ViewAugmentation(AugmentConfig(crop_ratio=(0.0, 1.0)), 8)
    with pytest.raises(ValueError, match="out_size"):
        ViewAugmentation(FULL, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda() -> None:
    dev = torch.device("cuda")
    x = images(16, 3, 32, 32).to(dev)
    aug = ViewAugmentation(FULL, 24)
    a = aug(x, make_generator(0, dev))
    b = aug(x, make_generator(0, dev))
    assert a.device.type == "cuda" and a.shape == (16, 3, 24, 24)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="generator"):
        aug(x, make_generator(0, "cpu"))
    # No host-device synchronisation once warm: the training step must not stall on the augmentation.
    g = make_generator(1, dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        aug(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # Given the same parameters, the device computes what the CPU computes.
    p = sample_jitter_params(16, 0.8, 0.8, 0.8, 0.3, 1.0, make_generator(1))
    p_dev = JitterParams(*(t.to(dev) for t in (p.brightness, p.contrast, p.saturation, p.hue, p.order)))
    torch.testing.assert_close(apply_color_jitter(x, p_dev).cpu(), apply_color_jitter(x.cpu(), p),
                               atol=1e-4, rtol=0)
    c = sample_crop_params(16, 32, 32, (0.3, 1.0), (0.75, 4 / 3), 0.5, make_generator(1))
    c_dev = CropParams(c.boxes.to(dev), c.flip.to(dev))
    torch.testing.assert_close(apply_crop(x, c_dev, 24).cpu(), apply_crop(x.cpu(), c, 24), atol=1e-4, rtol=0)
    s = torch.linspace(0.5, 2.0, 16)
    torch.testing.assert_close(gaussian_blur(x, s.to(dev), 5).cpu(), gaussian_blur(x.cpu(), s, 5),
                               atol=1e-5, rtol=0)
