"""Dimensional-collapse metrics of a feature matrix.

- Spectrum: the singular values of the covariance of the L2-normalised features, in descending order
  (Jing et al. 2022, "Understanding dimensional collapse in contrastive self-supervised learning").
  The covariance is symmetric positive semi-definite, so these are its eigenvalues, i.e. the variances
  along the principal axes.
- RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
  self-supervised representations by their rank"): exp of the entropy of p_k = sigma_k / sum(sigma) + eps,
  where sigma are the min(N, d) singular values of the raw (N, d) feature matrix, as the paper defines
  it; eps = 1e-7. Isotropic features give ~min(N, d), features on one line give ~1.
- ``rankme_l2``: the same on the L2-normalised rows, a variant that ignores the features' norms (it is
  not the published RankMe, and is reported under its own name).
- dims99: the fewest principal axes whose variance (the covariance spectrum above) adds up to 99%.

The d x d matrices are built and decomposed in float64: a collapsed spectrum spans many decades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RANKME_EPS = 1e-7
VARIANCE_SHARE = 0.99


@dataclass
class SpectrumStats:
    singular_values: np.ndarray  # (d,) float64, covariance spectrum, descending
    rankme: float  # of the raw feature matrix, as published
    dims99: int
    rankme_l2: float  # of the L2-normalised rows


def rankme(singular_values: np.ndarray, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values.

    Args:
        singular_values: the min(N, d) singular values of an (N, d) feature matrix
            (:func:`singular_values`).
        eps: added to each normalised value, as the paper does.

    Returns:
        The smooth rank, between ~1 (features on one line) and min(N, d); 0 for an all-zero matrix.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def dims_for_share(variances: np.ndarray, share: float = VARIANCE_SHARE) -> int:
    """The number of leading components (sorted descending) needed to reach ``share`` of the total."""
    v = np.sort(np.asarray(variances, dtype=np.float64))[::-1]
    total = v.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(v) / total
    # A tiny tolerance so that a spectrum reaching the share exactly is not pushed one component on.
    return int(np.searchsorted(cum, share - 1e-12) + 1)


def _descending_eigvals(m: torch.Tensor) -> np.ndarray:
    ev = np.linalg.eigvalsh(m.cpu().numpy())
    return np.clip(ev, 0.0, None)[::-1].copy()  # PSD: negatives are rounding noise


def singular_values(x: torch.Tensor) -> np.ndarray:
    """The min(N, d) singular values of an (N, d) matrix, descending, in float64.

    They are the square roots of the eigenvalues of the smaller Gram matrix (``X^T X`` or ``X X^T``): a
    min(N, d)-sided problem however large the other side is.
    """
    x = x.double()
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    return np.sqrt(_descending_eigvals(gram))


def spectrum_stats(features: torch.Tensor) -> SpectrumStats:
    """Covariance spectrum, RankMe (raw and L2-normalised rows) and dims99 of (N, d) features (any device)."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"spectrum needs (N >= 2, d) features, got shape {tuple(features.shape)}")
    raw = features.double()
    z = F.normalize(raw, dim=1)
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (len(z) - 1)
    cov_spectrum = _descending_eigvals(cov)
    return SpectrumStats(cov_spectrum, rankme(singular_values(raw)), dims_for_share(cov_spectrum),
                         rankme(singular_values(z)))


def log_spectrum(singular_values: np.ndarray, rel_floor: float = 1e-16) -> np.ndarray:
    """Natural log, floored at ``rel_floor`` times the largest value (float64 rounding level), so that an
    exactly rank-deficient spectrum (a dead feature) stays finite and on the scale of the rest."""
    s = np.asarray(singular_values, dtype=np.float64)
    floor = max(float(s.max(initial=0.0)) * rel_floor, np.finfo(np.float64).tiny)
    return np.log(np.maximum(s, floor))
