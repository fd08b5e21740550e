"""A short human-readable summary of the evaluation metrics, for the stage's console output."""

from __future__ import annotations


def _fmt(metrics: dict[str, float], key: str, spec: str = ".3f") -> str:
    v = metrics.get(key)
    return "n/a" if v is None else format(v, spec)


def summary(metrics: dict[str, float], knn_k: int) -> str:
    """Linear/kNN top-1 for trained and random, RankMe of h and z, head sparsity and time, in a few lines."""
    split = "test" if "test_linear_top1" in metrics else "val"
    lin, knn = f"{split}_linear_top1", f"{split}_knn{knn_k}_top1"
    lines = [
        f"{split} linear top-1 {_fmt(metrics, lin)} (z {_fmt(metrics, lin + '_z')}), "
        f"kNN@{knn_k} {_fmt(metrics, knn)} (z {_fmt(metrics, knn + '_z')})",
    ]
    if "random_" + lin in metrics:
        lines.append(f"random init: linear {_fmt(metrics, 'random_' + lin)}, kNN@{knn_k} "
                     f"{_fmt(metrics, 'random_' + knn)}; SSL gain linear {_fmt(metrics, 'ssl_gain_linear', '+.3f')}, "
                     f"kNN {_fmt(metrics, 'ssl_gain_knn', '+.3f')}")
    lines.append(f"RankMe h {_fmt(metrics, 'rankme', '.1f')} z {_fmt(metrics, 'rankme_z', '.1f')}, "
                 f"dims99 h {_fmt(metrics, 'dims99', '.0f')} z {_fmt(metrics, 'dims99_z', '.0f')}; "
                 f"head sparsity {_fmt(metrics, 'head_sparsity')}, features used "
                 f"{_fmt(metrics, 'head_features_used', '.0f')}; {_fmt(metrics, 'eval_seconds', '.1f')} s")
    return "\n".join(lines)
