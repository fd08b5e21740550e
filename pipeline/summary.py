"""``python -m pipeline.summary``: the pipeline's key figures from its metrics files, in a few lines.

``dvc metrics show`` lists every key of every stage (a table hundreds of columns wide); this is what a
person wants after ``make run``. Missing files (a stage not run yet) are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import ConfigError, Params, load_params
from pipeline.evaluation.report import fmt as _f
from pipeline.evaluation.report import ssl_gain_warning
from pipeline.io import read_json


def _read(path: str | Path) -> dict:
    path = Path(path)
    return read_json(path) if path.exists() else {}


def _model_line(name: str, m: dict, knn_k: int) -> str:
    split = "test" if "test_linear_top1" in m else "val"
    lin, knn = f"{split}_linear_top1", f"{split}_knn{knn_k}_top1"
    return (f"{name:9s} {split} linear {_f(m, lin)} (random init {_f(m, 'random_' + lin)}), kNN@{knn_k} "
            f"{_f(m, knn)} (random {_f(m, 'random_' + knn)}); RankMe h {_f(m, 'rankme', '.1f')} "
            f"z {_f(m, 'rankme_z', '.1f')}; head sparsity {_f(m, 'head_sparsity')}")


def _warning(m: dict) -> list[str]:
    w = ssl_gain_warning(m)
    return [f"          {w}"] if w else []


def summarise(params: Params) -> list[str]:
    """The summary's lines, one per stage that has run (and a warning line under a model that SSL did not
    improve on a random encoder)."""
    k = min(params.evaluate.knn_k)
    lines = []
    pre, ev = _read("metrics/pretrain.json"), _read(params.evaluate.out_metrics)
    sh = params.pretrain.sparsehead
    if pre:
        lines.append(f"pretrain  {params.pretrain.ssl.method}, lambda {sh.lam:g} ({sh.form}, {sh.update}): loss "
                     f"{_f(pre, 'loss_total', '.4f')}, head exact zeros {_f(pre, 'head_exact_zero_frac')}")
    if ev:
        lines.append(_model_line("evaluate", ev, k))
        lines.extend(_warning(ev))
    tune, best = _read(params.tune.out_metrics), _read(params.tune.best_params)
    if tune and best:
        who = (f"{best.get('method', '')} baseline (lambda 0)" if best.get("baseline")
               else f"{best.get('method', '')} lambda {best['lambda']:.3g} ({best['form']}, {best.get('update', '')})")
        gap = (f"gap {_f(tune, 'gap_mean', '+.4f')} [{_f(tune, 'gap_ci95_low', '+.4f')}, "
               f"{_f(tune, 'gap_ci95_high', '+.4f')}], p {_f(tune, 'gap_p_value', '.2g')}")
        lines.append(f"tune      chose {who}: val {best['objective']} best {_f(tune, 'best_mean', '.4f')} +- "
                     f"{_f(tune, 'best_sd', '.4f')} vs baseline {_f(tune, 'baseline_mean', '.4f')} +- "
                     f"{_f(tune, 'baseline_sd', '.4f')} over {_f(tune, 'seeds', '.0f')} seeds, {gap}; "
                     f"{_f(tune, 'trials_complete', '.0f')} complete, {_f(tune, 'trials_pruned', '.0f')} pruned, "
                     f"{_f(tune, 'trials_failed', '.0f')} failed")
    final = _read(params.final.out_metrics)
    if final:
        lines.append(_model_line("final", final, k))
        lines.extend(_warning(final))
        if final.get("final_seeds", 1) > 1:
            lines.append(f"          over {_f(final, 'final_seeds', '.0f')} seeds: test linear "
                         f"{_f(final, 'test_linear_top1_mean')} +- {_f(final, 'test_linear_top1_sd')}, kNN@{k} "
                         f"{_f(final, f'test_knn{k}_top1_mean')} +- {_f(final, f'test_knn{k}_top1_sd')}")
    reg = _read(params.registry.out_info)
    if reg and not reg.get("registered", 1):
        lines.append(f"register  not registered ({reg.get('reason', '')}); model in run {reg.get('run_id')}")
    elif reg:
        state = f"@{reg['alias']}" if reg.get("promoted") else f"not promoted (@{reg['alias']} kept)"
        lines.append(f"register  {reg['model_name']} version {reg['version']}, {reg['metric']} "
                     f"{_f(reg, 'value', '.4f')}: {state}")
    return lines


def main(argv: list[str] | None = None) -> int:
    path = (argv if argv is not None else sys.argv[1:]) or ["params.yaml"]
    try:
        params = load_params(path[0])
    except ConfigError as exc:
        print(f"summary: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summarise(params)) or "summary: no metrics yet (run `make run`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
