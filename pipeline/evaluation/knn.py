"""Weighted kNN classifier on frozen features, as in InstDisc (Wu et al. 2018) and solo-learn.

Cosine similarity to every training feature; the k most similar vote for their class with weight
exp(sim / t). Queries are processed in chunks so that the (chunk, N_train) similarity matrix stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Floats in one (chunk, N_train) similarity block: 2**25 is 128 MiB in float32.
_BLOCK_ELEMENTS = 2**25


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, ks: list[int],
                temperature: float, num_classes: int, chunk_size: int | None = None) -> dict[int, torch.Tensor]:
    """The weighted kNN prediction of every query, for each k.

    Args:
        train_x: (N_train, d) memory features.
        train_y: (N_train,) their labels.
        query_x: (N_query, d) query features.
        ks: the neighbour counts (each clipped to N_train).
        temperature: t in the vote weight exp(cosine / t).
        num_classes: the label range.
        chunk_size: queries per similarity block (default: a 128 MiB block).

    Returns:
        {k: (N_query,) int64 predicted classes}.

    Raises:
        ValueError: an empty memory, a k below 1 or a temperature <= 0.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"knn k values must be >= 1, got {ks}")
    if temperature <= 0:
        raise ValueError(f"knn temperature must be > 0, got {temperature}")
    n_train = len(train_x)
    if n_train == 0:
        raise ValueError("kNN needs at least one training feature")
    device = train_x.device
    train_n = F.normalize(train_x.float(), dim=1)
    train_y = train_y.to(device)
    query_n = F.normalize(query_x.float().to(device), dim=1)
    k_max = min(max(ks), n_train)
    chunk = chunk_size or max(1, _BLOCK_ELEMENTS // n_train)
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(query_n), chunk):
        sim = query_n[start:start + chunk] @ train_n.T
        # One top-k at the largest k serves every smaller k: topk returns its values sorted.
        top_sim, top_idx = sim.topk(k_max, dim=1)
        weights = (top_sim / temperature).exp()
        onehot = F.one_hot(train_y[top_idx], num_classes).to(weights.dtype)  # (chunk, k_max, C)
        for k in ks:
            kk = min(k, n_train)
            votes = (onehot[:, :kk] * weights[:, :kk, None]).sum(dim=1)
            preds[k].append(votes.argmax(dim=1))
    empty = torch.empty(0, dtype=torch.long, device=device)
    return {k: torch.cat(p) if p else empty for k, p in preds.items()}


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor,
                 ks: list[int], temperature: float, num_classes: int,
                 chunk_size: int | None = None) -> dict[int, float]:
    """Top-1 accuracy of the weighted kNN classifier for each k.

    Args:
        train_x, train_y, query_x, ks, temperature, num_classes, chunk_size: as for :func:`knn_predict`.
        query_y: (N_query,) the queries' labels.

    Returns:
        {k: the share of queries predicted right} (NaN for no queries).
    """
    preds = knn_predict(train_x, train_y, query_x, ks, temperature, num_classes, chunk_size)
    query_y = query_y.to(train_x.device)
    if len(query_y) == 0:
        return {k: float("nan") for k in ks}
    return {k: float((p == query_y).float().mean()) for k, p in preds.items()}
