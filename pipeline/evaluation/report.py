"""What a person reads of the evaluation metrics: a short summary, and the warning when SSL did not help."""

from __future__ import annotations

from collections.abc import Mapping

# The SSL encoder must beat a randomly initialised one of the same architecture by more than this
# (linear top-1, a share): below it, training bought nothing that a random network does not give.
SSL_GAIN_MIN = 0.01
SSL_WARNING_TAG = "ssl_warning"


def fmt(metrics: Mapping[str, object], key: str, spec: str = ".3f") -> str:
    """``metrics[key]`` formatted with ``spec``, or ``n/a`` when it is missing."""
    v = metrics.get(key)
    return "n/a" if v is None else format(v, spec)


def ssl_gain_warning(metrics: Mapping[str, float]) -> str | None:
    """The one warning line when the SSL encoder is not better than the random one, else None.

    Args:
        metrics: evaluation metrics with ``ssl_gain_linear`` (``evaluate.random_baseline``); without it
            there is nothing to compare, and no warning.

    Returns:
        ``warning: ...`` naming both accuracies and the gain, when ``ssl_gain_linear <= 0.01``.
    """
    gain = metrics.get("ssl_gain_linear")
    if gain is None or gain > SSL_GAIN_MIN:
        return None
    lin = "test_linear_top1" if "test_linear_top1" in metrics else "val_linear_top1"
    return (f"warning: the SSL encoder is not better than a random one: {lin.split('_')[0]} linear top-1 "
            f"{fmt(metrics, lin)} vs random init {fmt(metrics, 'random_' + lin)} (gain {gain:+.3f} <= "
            f"{SSL_GAIN_MIN}); see the README's SSL methods section for each method's recipe")


def summary(metrics: Mapping[str, float], knn_k: int) -> str:
    """Linear/kNN top-1 for trained and random, RankMe of h and z, head sparsity and time, in a few lines,
    and :func:`ssl_gain_warning`'s line when it applies."""
    split = "test" if "test_linear_top1" in metrics else "val"
    lin, knn = f"{split}_linear_top1", f"{split}_knn{knn_k}_top1"
    lines = [
        f"{split} linear top-1 {fmt(metrics, lin)} (z {fmt(metrics, lin + '_z')}), "
        f"kNN@{knn_k} {fmt(metrics, knn)} (z {fmt(metrics, knn + '_z')})",
    ]
    if "random_" + lin in metrics:
        lines.append(f"random init: linear {fmt(metrics, 'random_' + lin)}, kNN@{knn_k} "
                     f"{fmt(metrics, 'random_' + knn)}; SSL gain linear {fmt(metrics, 'ssl_gain_linear', '+.3f')}, "
                     f"kNN {fmt(metrics, 'ssl_gain_knn', '+.3f')}")
    lines.append(f"RankMe h {fmt(metrics, 'rankme', '.1f')} z {fmt(metrics, 'rankme_z', '.1f')}, "
                 f"dims99 h {fmt(metrics, 'dims99', '.0f')} z {fmt(metrics, 'dims99_z', '.0f')}; "
                 f"head sparsity {fmt(metrics, 'head_sparsity')}, features used "
                 f"{fmt(metrics, 'head_features_used', '.0f')}; {fmt(metrics, 'eval_seconds', '.1f')} s")
    warning = ssl_gain_warning(metrics)
    if warning:
        lines.append(warning)
    return "\n".join(lines)
