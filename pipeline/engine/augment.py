"""The views SSL methods train on: SimCLR's augmentation recipe (plus BYOL's solarisation) as batched tensor
ops with an independent random draw per image, and no host-device sync (README, "SSL methods").

Each op has a ``sample_*`` function that draws per-image parameters and a deterministic one that applies
them, so tests can feed the same parameters to torchvision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import AugmentConfig
from pipeline.errors import UserError

LUMA = (0.299, 0.587, 0.114)

# Colour-op ids used in JitterParams.order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device``: the one source of randomness for :class:`ViewAugmentation`.

    Args:
        seed: the seed.
        device: where the images to augment live (the generator must live on the same device type).

    Returns:
        The generator.
    """
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"{name}: expected a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor in [0, 1], got {x.dtype}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if generator.device.type != device.type:
        raise ValueError(f"generator lives on {generator.device} but the images on {device}; "
                         f"make it with make_generator(seed, {str(device)!r})")


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator,
             device: torch.device) -> Tensor:
    return lo + (hi - lo) * _rand(shape, generator, device)


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return _rand((n,), generator, device) < p


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    """(N,) parameter -> (N, 1, 1, 1) in x's dtype, to broadcast over an image batch."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- random resized crop + flip


@dataclass(frozen=True)
class CropParams:
    """Per-image crop boxes and horizontal flips.

    Attributes:
        boxes: (N, 4) float32 boxes (x0, y0, w, h) in input pixels, continuous.
        flip: (N,) bool, true where the image is mirrored.
    """

    boxes: Tensor
    flip: Tensor


def sample_crop_params(n: int, height: int, width: int, scale: tuple[float, float],
                       ratio: tuple[float, float], hflip_prob: float, generator: torch.Generator,
                       device: torch.device | str = "cpu", attempts: int = 10) -> CropParams:
    """torchvision's ``RandomResizedCrop.get_params`` for N images at once, plus the flips.

    Like torchvision, up to ``attempts`` (area, log-ratio) pairs are tried per image and the first that
    fits is kept, else a centre crop of the whole image with the ratio clamped to ``ratio``; unlike
    torchvision, sizes and positions are continuous (grid_sample needs no integer box).

    Args:
        n: the number of images.
        height: their height in pixels.
        width: their width in pixels.
        scale: the range of the crop's share of the image's area.
        ratio: the range of the crop's width / height.
        hflip_prob: the probability of a horizontal flip.
        generator: the source of randomness, on ``device``.
        device: where to draw.
        attempts: draws per image before the centre-crop fallback.

    Returns:
        The crops and flips of the N images.
    """
    device = torch.device(device)
    area = float(height * width)
    s = _uniform((n, attempts), scale[0], scale[1], generator, device)
    log_r = _uniform((n, attempts), math.log(ratio[0]), math.log(ratio[1]), generator, device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * s * r)
    h = torch.sqrt(area * s / r)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.int64).argmax(dim=1, keepdim=True)  # index of the first fit (0 when none)
    any_fit = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = float(width), width / min(ratio)
    elif in_ratio > max(ratio):
        fw, fh = height * max(ratio), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_fit, w, fw)
    h = torch.where(any_fit, h, fh)
    ux, uy = _rand((2, n), generator, device)
    x0 = torch.where(any_fit, ux * (width - w), (width - w) / 2)
    y0 = torch.where(any_fit, uy * (height - h), (height - h) / 2)
    flip = _bernoulli(n, hflip_prob, generator, device)
    return CropParams(torch.stack([x0, y0, w, h], dim=1), flip)


def crop_theta(params: CropParams, height: int, width: int) -> Tensor:
    """The affine matrices of ``F.affine_grid`` for crops of a (height, width) image.

    Returns:
        (N, 2, 3) matrices mapping output to input normalised coordinates (align_corners=False).
    """
    x0, y0, w, h = params.boxes.unbind(1)
    sx = w / width
    sy = h / height
    cx = (2 * x0 + w) / width - 1
    cy = (2 * y0 + h) / height - 1
    sx = torch.where(params.flip, -sx, sx)  # mirroring the sampling grid flips the output
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)


def apply_crop(x: Tensor, params: CropParams, out_size: int) -> Tensor:
    """Crop every image to its box, flip it if asked, and resize it (bilinear).

    Args:
        x: (N, C, H, W) images in [0, 1].
        params: their crops and flips.
        out_size: the output side S.

    Returns:
        (N, C, S, S) crops.
    """
    _check_images(x)
    n, c, height, width = x.shape
    theta = crop_theta(params, height, width).to(x.dtype)
    grid = F.affine_grid(theta, [n, c, out_size, out_size], align_corners=False)
    # Border padding: a sample within half a pixel of the image edge must repeat the edge pixel, as a
    # resize does, rather than fade towards zero. No antialiasing: crops are rarely much larger than
    # the output in this pipeline.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: Tensor, out_size: int, scale: tuple[float, float], ratio: tuple[float, float],
                        hflip_prob: float, generator: torch.Generator) -> Tensor:
    """:func:`sample_crop_params` then :func:`apply_crop`: (N, C, H, W) -> (N, C, out_size, out_size)."""
    _check_images(x)
    params = sample_crop_params(x.shape[0], x.shape[2], x.shape[3], scale, ratio, hflip_prob,
                                generator, x.device)
    return apply_crop(x, params, out_size)


# --------------------------------------------------------------------------- colour


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma: (N, 3, H, W) -> (N, 1, H, W); a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    # Scalar weights, not a weight tensor: building one from Python data on a CUDA device is a
    # blocking host-to-device copy on every call.
    grey = torch.add(x[:, 0:1] * LUMA[0], x[:, 1:2], alpha=LUMA[1])
    return grey.add_(x[:, 2:3], alpha=LUMA[2])


def _select(keep: Tensor, new: Tensor, x: Tensor) -> Tensor:
    """Per-image ``torch.where(keep, new, x)`` as a lerp with 0/1 weights: exact at both ends (torch.lerp
    evaluates from the nearer end) and several times faster than a broadcast ``where`` on the CPU."""
    return torch.lerp(x, new, _per_image(keep, x))


def _blend(x: Tensor, ref: Tensor, factor: Tensor) -> Tensor:
    # torchvision's _blend, f x + (1 - f) ref, as one lerp; a factor of 1 returns x exactly.
    return torch.lerp(ref, x, _per_image(factor, x)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``torchvision.transforms.functional.adjust_brightness``.

    Args:
        x: (N, C, H, W) images in [0, 1].
        factor: (N,) multipliers.

    Returns:
        The adjusted images, clamped to [0, 1].
    """
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_contrast``: ``f x + (1 - f) mean grey`` of (N, C, H, W) ``x``, factor (N,)."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Per-image ``adjust_saturation``: ``f x + (1 - f) grey`` of (N, C, H, W) ``x``, factor (N,); a no-op
    on one channel."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


def hue6_max_delta(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The HSV decomposition :func:`adjust_hue` rotates, without the divisions it does not need.

    Args:
        x: (N, 3, H, W) RGB in [0, 1].

    Returns:
        Six times the HSV hue (in [-1, 6): not wrapped), the max and max - min over the channels (the HSV
        value, and value x saturation), each (N, H, W).

    The hue sector is picked by gathering instead of per-pixel ``torch.where``s and ``max(dim)``, both
    slow on the CPU; ties go to red, then green, as in torchvision (the formulas agree at ties anyway).
    """
    r, g, _ = x.unbind(1)
    maxc = x.amax(dim=1)
    delta = maxc - x.amin(dim=1)
    not_r = r != maxc
    sector = not_r.to(torch.int64) + (not_r & (g != maxc)).to(torch.int64)  # 0 red max, 1 green, 2 blue
    # Within a sector, 6 h = 2 sector + (next - after next) / delta with channels taken cyclically:
    # (g - b), 2 + (b - r), 4 + (r - g). Grey pixels (delta 0) have a zero numerator, hence hue 0.
    cyc = torch.cat([x, x[:, :2]], dim=1)
    i = sector.unsqueeze(1)
    num = (cyc.gather(1, i + 1) - cyc.gather(1, i + 2)).squeeze(1)
    inv = delta.clamp_min(torch.finfo(x.dtype).tiny).reciprocal_()
    return torch.addcmul(2 * sector.to(x.dtype), num, inv), maxc, delta


def rgb_from_hue6(h6: Tensor, maxc: Tensor, delta: Tensor, shift: Tensor | None = None) -> Tensor:
    """The inverse of :func:`hue6_max_delta`, the hue first rotated.

    Args:
        h6: six times the hue, (N, H, W), any value >= -1.
        maxc: the max over the channels, (N, H, W).
        delta: max - min over the channels, (N, H, W).
        shift: (N,) hue rotations in turns; None: none.

    Returns:
        (N, 3, H, W) RGB.

    Closed form f(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B
    (v s = max - min): no six-way case split. The offset keeps the argument of frac positive.
    """
    n = torch.arange(5, 0, -2, dtype=h6.dtype, device=h6.device)  # a kernel, not a host-to-device copy
    off = ((n + 6.0) / 6.0).view(1, 3, 1, 1)
    if shift is not None:
        off = off + torch.remainder(shift.to(h6.dtype), 1.0).view(-1, 1, 1, 1)
    k = torch.add(h6.unsqueeze(1) * (1.0 / 6.0), off).frac_().mul_(6.0)
    w = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return torch.sub(maxc.unsqueeze(1), w.mul_(delta.unsqueeze(1)))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Per-image ``adjust_hue``: rotate the hue of (N, C, H, W) ``x`` by ``shift`` (N,) turns.

    A zero shift returns the image exactly; a no-op on one channel.
    """
    if x.shape[1] == 1:
        return x
    h6, maxc, delta = hue6_max_delta(x)
    return _select(shift != 0, rgb_from_hue6(h6, maxc, delta, shift), x)


@dataclass(frozen=True)
class JitterParams:
    """Per-image colour-jitter factors; images not jittered carry the neutral values (1, 1, 1, 0).

    Attributes:
        brightness: (N,) multipliers.
        contrast: (N,) blend factors towards the mean grey.
        saturation: (N,) blend factors towards the grey image.
        hue: (N,) shifts in turns.
        order: (N, 4) int64, each row a permutation of BRIGHTNESS, CONTRAST, SATURATION, HUE; None: that
            fixed order for every image, which needs half the blend passes.
    """

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor | None = None


def sample_jitter_params(n: int, brightness: float, contrast: float, saturation: float, hue: float,
                         prob: float, generator: torch.Generator, device: torch.device | str = "cpu",
                         random_order: bool = True) -> JitterParams:
    """Factors drawn as torchvision's ``ColorJitter`` draws them, independently per image.

    Args:
        n: the number of images.
        brightness: factors are drawn from [max(0, 1 - brightness), 1 + brightness].
        contrast: likewise.
        saturation: likewise.
        hue: shifts are drawn from [-hue, hue] turns.
        prob: the probability that an image is jittered at all.
        generator: the source of randomness, on ``device``.
        device: where to draw.
        random_order: a fresh order of the four ops per image (torchvision's); false: the fixed order.

    Returns:
        The N images' factors (and orders).
    """
    device = torch.device(device)
    active = _bernoulli(n, prob, generator, device)
    b = _uniform((n,), max(0.0, 1 - brightness), 1 + brightness, generator, device)
    c = _uniform((n,), max(0.0, 1 - contrast), 1 + contrast, generator, device)
    s = _uniform((n,), max(0.0, 1 - saturation), 1 + saturation, generator, device)
    h = _uniform((n,), -hue, hue, generator, device)
    order = _rand((n, 4), generator, device).argsort(dim=1) if random_order else None
    one = torch.ones((), device=device)
    return JitterParams(torch.where(active, b, one), torch.where(active, c, one),
                        torch.where(active, s, one), torch.where(active, h, 0.0), order)


def _blend_slot(x: Tensor, op: Tensor, p: JitterParams, on: Tensor) -> Tensor:
    """One position of the jitter sequence: each image gets the brightness, contrast or saturation blend
    named by ``op`` (N,), or nothing where ``op`` is HUE or ``on`` is False.

    All three are f x + (1 - f) ref with ref = 0, mean grey or grey, so one blend serves the batch.
    """
    factor = torch.where(op == BRIGHTNESS, p.brightness,
                         torch.where(op == CONTRAST, p.contrast,
                                     torch.where(op == SATURATION, p.saturation, 1.0)))
    factor = torch.where(on, factor, 1.0)
    grey = rgb_to_grayscale(x)
    is_c = _per_image(op == CONTRAST, x)
    is_s = _per_image(op == SATURATION, x)
    ref = is_c * grey.mean(dim=(1, 2, 3), keepdim=True) + is_s * grey
    return _blend(x, ref, factor)


def apply_color_jitter(x: Tensor, p: JitterParams) -> Tensor:
    """Apply every image's four colour ops in its own order to (N, C, H, W) ``x``, clamping to [0, 1] after
    each op.

    Hue, the one costly op, runs once: the three cheap ops before it fill positions 0..2 and those
    after it positions 1..3 (each blend slot is exact identity for images with nothing to do there).
    On one channel saturation and hue are no-ops, as in torchvision.
    """
    _check_images(x)
    if p.order is None:
        x = adjust_contrast(adjust_brightness(x, p.brightness), p.contrast)
        return adjust_hue(adjust_saturation(x, p.saturation), p.hue)
    order = p.order
    if x.shape[1] == 1:
        p = JitterParams(p.brightness, p.contrast, torch.ones_like(p.saturation), torch.zeros_like(p.hue), order)
    hue_pos = (order == HUE).to(torch.int64).argmax(dim=1)
    for k in range(3):
        x = _blend_slot(x, order[:, k], p, on=hue_pos > k)
    x = adjust_hue(x, p.hue)
    for k in range(1, 4):
        x = _blend_slot(x, order[:, k], p, on=hue_pos < k)
    return x


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 prob: float, generator: torch.Generator, random_order: bool = True) -> Tensor:
    """:func:`sample_jitter_params` then :func:`apply_color_jitter` on (N, C, H, W) ``x``."""
    _check_images(x)
    p = sample_jitter_params(x.shape[0], brightness, contrast, saturation, hue, prob, generator,
                             x.device, random_order)
    return apply_color_jitter(x, p)


def grayscale_where(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the (N, 3, H, W) images picked by ``mask`` (N,) with their luma, replicated to 3 channels."""
    if x.shape[1] == 1:
        return x
    return _select(mask, rgb_to_grayscale(x).expand_as(x), x)


def random_grayscale(x: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Turn each image of (N, C, H, W) ``x`` grey with probability ``prob``."""
    _check_images(x)
    return grayscale_where(x, _bernoulli(x.shape[0], prob, generator, x.device))


# --------------------------------------------------------------------------- blur


def blur_kernel_size(out_size: int) -> int:
    """The blur kernel's side for images of side ``out_size``: about 10% of it, odd, at least 3 (SimCLR's)."""
    k = int(round(0.1 * out_size))
    return max(3, k if k % 2 else k + 1)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (torchvision's discretisation).

    Args:
        sigma: (N,) standard deviations in pixels.
        size: the kernels' length.

    Returns:
        (N, size) kernels, each summing to 1.
    """
    t = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    k = torch.exp(-0.5 * (t / sigma.unsqueeze(1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur every image with its own sigma: a separable depthwise conv, one group per (image, channel).

    Args:
        x: (N, C, H, W) images.
        sigma: (N,) standard deviations in pixels.
        kernel_size: odd kernel side.

    Returns:
        The blurred images, (N, C, H, W).
    """
    _check_images(x)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: must be a positive odd number, got {kernel_size}")
    n, c, height, width = x.shape
    kernels = gaussian_kernels(sigma.float(), kernel_size).to(x.dtype)
    weight = kernels.unsqueeze(1).expand(n, c, kernel_size).reshape(n * c, kernel_size)  # same per channel
    pad = kernel_size // 2
    # Reflect padding needs pad < side; tiny images fall back to repeating the edge.
    mode = "reflect" if pad < min(height, width) else "replicate"
    y = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, weight.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


def random_gaussian_blur(x: Tensor, prob: float, sigma: tuple[float, float], kernel_size: int,
                         generator: torch.Generator) -> Tensor:
    """Blur each image of (N, C, H, W) ``x`` with probability ``prob``, sigma uniform in ``sigma``."""
    _check_images(x)
    n = x.shape[0]
    s = _uniform((n,), sigma[0], sigma[1], generator, x.device)
    mask = _bernoulli(n, prob, generator, x.device)
    return _select(mask, gaussian_blur(x, s, kernel_size), x)


# --------------------------------------------------------------------------- solarisation

SOLARIZE_THRESHOLD = 0.5  # BYOL's (128 of 255), torchvision's RandomSolarize on float images


def solarize_where(x: Tensor, mask: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert the pixels >= threshold (``1 - x``) of the (N, C, H, W) images picked by ``mask`` (N,), as
    torchvision's ``solarize``."""
    _check_images(x)
    return torch.where(mask.view(-1, 1, 1, 1) & (x >= threshold), 1.0 - x, x)


def random_solarize(x: Tensor, prob: float, generator: torch.Generator,
                    threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Solarise each image of (N, C, H, W) ``x`` with probability ``prob`` (Grill et al. 2020, table 6)."""
    _check_images(x)
    return solarize_where(x, _bernoulli(x.shape[0], prob, generator, x.device), threshold)


# --------------------------------------------------------------------------- the pipeline


def _check_range(name: str, lo_hi: tuple[float, float], low: float, high: float | None = None) -> None:
    lo, hi = lo_hi
    if not (low < lo <= hi and (high is None or hi <= high)):
        bound = f"{low} < low <= high" + (f" <= {high}" if high is not None else "")
        raise UserError(f"pretrain.augment.{name}: expected {bound}, got {tuple(lo_hi)}")


class ViewAugmentation:
    """One random view of every image in a batch, the same recipe for every SSL method.

    The order is SimCLR's (Chen et al. 2020, appendix A): random resized crop and horizontal flip, colour
    jitter, random grayscale, Gaussian blur; then BYOL's solarisation (Grill et al. 2020). A method's
    two views are two instances (:meth:`pipeline.methods.base.Method.view_configs`) called with the same
    generator. Ops whose probability or strength is zero in the config are skipped outright (a decision
    on the config, not on the data).

    Args:
        cfg: the ``pretrain.augment`` section (or a method's variant of it).
        out_size: the side S of the views.

    Raises:
        ValueError: a range of the config is empty or out of bounds, or ``out_size`` < 1.
    """

    def __init__(self, cfg: AugmentConfig, out_size: int) -> None:
        if out_size < 1:
            raise ValueError(f"out_size: must be positive, got {out_size}")
        _check_range("crop_scale", cfg.crop_scale, 0.0, 1.0)
        _check_range("crop_ratio", cfg.crop_ratio, 0.0)
        _check_range("blur_sigma", cfg.blur_sigma, 0.0)
        self.cfg = cfg
        self.out_size = int(out_size)
        self.kernel_size = blur_kernel_size(self.out_size)
        self._jitter = cfg.jitter_prob > 0 and (cfg.brightness > 0 or cfg.contrast > 0
                                                or cfg.saturation > 0 or cfg.hue > 0)

    def __repr__(self) -> str:
        return f"ViewAugmentation(out_size={self.out_size}, {self.cfg!r})"

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The views of (N, C, H, W) images in [0, 1]: (N, C, S, S) in [0, 1].

        Args:
            x: the images, C 1 or 3.
            generator: the source of randomness, on the images' device.
        """
        _check_images(x)
        _check_generator(generator, x.device)
        if x.shape[0] == 0:
            return x.new_empty((0, x.shape[1], self.out_size, self.out_size))
        cfg = self.cfg
        x = random_resized_crop(x, self.out_size, cfg.crop_scale, cfg.crop_ratio, cfg.hflip_prob, generator)
        if self._jitter:
            x = color_jitter(x, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.jitter_prob,
                             generator, cfg.jitter_random_order)
        if cfg.grayscale_prob > 0 and x.shape[1] == 3:
            x = random_grayscale(x, cfg.grayscale_prob, generator)
        if cfg.blur_prob > 0:
            x = random_gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma, self.kernel_size, generator)
        if cfg.solarize_prob > 0:
            x = random_solarize(x, cfg.solarize_prob, generator)
        return x
