"""``python -m pipeline.sweep``: the lambda table a paper would print, with its spread over seeds.

Trains every (method, update, lambda) on every seed at a fixed budget on the prepared data, evaluates each
encoder with the evaluate stage's code (validation and test, no random-init reference), and prints one
Markdown row per configuration: mean +- sd over seeds of validation kNN and linear top-1, test linear
top-1 and kNN@k, RankMe of z, head sparsity and the share of exact zeros, and the paired gap of test
linear top-1 against lambda = 0 of the same method on the same seeds (95% paired t interval, p-value).

This is analysis, not selection: the ``tune`` stage chooses lambda on validation only; this reads test to
describe what a choice is worth. Rows go to ``--out`` (CSV) as they finish.

    python -m pipeline.sweep --lambdas 0 0.0001 0.001 0.01 --updates gradient proximal --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

from pipeline.config import Params, load_params
from pipeline.data.format import load_dataset
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.engine.trainer import train
from pipeline.evaluation import evaluate_encoder
from pipeline.tuning.selection import paired_gap
from pipeline.tuning.space import TrialChoice, trial_pretrain_config

COLUMNS = ("val_knn", "val_linear", "test_linear", "test_knn", "rankme_z", "head_sparsity", "exact_zeros")


def run_one(params: Params, choice: TrialChoice, seed: int, epochs: int) -> dict[str, float]:
    cfg = trial_pretrain_config(params.pretrain, choice, epochs)
    ds = load_dataset(params.prepare.out_dir)
    fit, val = train_val_split(ds.train, params.evaluate.val_fraction, params.seed)
    encoder = train(cfg, fit.images, seed=seed, progress=False).encoder
    ev = params.evaluate.model_copy(update={"random_baseline": False})
    m = evaluate_encoder(encoder, fit, val, ds.test, len(ds.classes), ev, resolve_device(cfg.device), seed).metrics
    k = min(ev.knn_k)
    return {"val_knn": m[f"val_knn{k}_top1"], "val_linear": m["val_linear_top1"],
            "test_linear": m["test_linear_top1"], "test_knn": m[f"test_knn{k}_top1"], "rankme_z": m["rankme_z"],
            "head_sparsity": m["head_sparsity"], "exact_zeros": m["head_exact_zero_frac"]}


def _ms(values: list[float], spec: str = ".4f") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{spec}} ± {sd:{spec}}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--methods", nargs="+", default=None, help="default: pretrain.ssl.method")
    ap.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--updates", nargs="+", default=["gradient"])
    ap.add_argument("--form", default=None, help="default: pretrain.sparsehead.form")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: pretrain.epochs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="sweep.csv")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or params.pretrain.epochs
    form = args.form or params.pretrain.sparsehead.form
    methods = args.methods or [params.pretrain.ssl.method]
    configs = [(m, "-", 0.0) for m in methods if 0.0 in args.lambdas]
    configs += [(m, u, lam) for m in methods for u in args.updates for lam in args.lambdas if lam > 0]
    results: dict[tuple[str, str, float], dict[int, dict[str, float]]] = {}
    out = Path(args.out)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "update", "lambda", "seed", *COLUMNS])
        for method, update, lam in configs:
            for seed in args.seeds:
                choice = TrialChoice(lam, form, lam == 0, update if lam > 0 else "gradient", method)
                row = run_one(params, choice, seed, epochs)
                results.setdefault((method, update, lam), {})[seed] = row
                w.writerow([method, update, lam, seed, *(f"{row[c]:.6f}" for c in COLUMNS)])
                f.flush()
                print(f"{method} {update} lambda {lam:g} seed {seed}: test linear {row['test_linear']:.4f}",
                      file=sys.stderr)
    print(f"\n{len(args.seeds)} seeds, {epochs} epochs, form {form}, {torch.get_num_threads()} threads\n")
    print("| method | update | lambda | val kNN | val linear | test linear | test kNN | RankMe z | sparsity "
          "| exact zeros | test linear gap vs lambda 0 [95% CI], p |")
    print("|" + "---|" * 11)
    for (method, update, lam), per_seed in results.items():
        cells = [_ms([r[c] for r in per_seed.values()], ".2f" if c == "rankme_z" else ".4f") for c in COLUMNS]
        base = results.get((method, "-", 0.0))
        gap = "-"
        if lam > 0 and base:
            g = paired_gap({s: r["test_linear"] for s, r in per_seed.items()},
                           {s: r["test_linear"] for s, r in base.items()})
            ci = f"[{g.ci_low:+.4f}, {g.ci_high:+.4f}]" if g.ci_low is not None else "[n/a]"
            gap = f"{g.mean:+.4f} {ci}, p {g.p_value:.2g}" if g.p_value is not None else f"{g.mean:+.4f} {ci}"
        print(f"| {method} | {update} | {lam:g} | " + " | ".join(cells) + f" | {gap} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
