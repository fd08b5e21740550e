"""``python -m pipeline.sweep``: the lambda table a paper would print, with its spread over seeds.

Trains every (method, update, lambda) on every seed at a fixed budget on the prepared data, evaluates each
encoder with the evaluate stage's code (validation and test, no random-init reference), and prints one
Markdown row per configuration: mean +- sd over seeds of validation kNN and linear top-1, test linear
top-1 and kNN@k, RankMe of z, head sparsity and the share of exact zeros, and the paired gap of test
linear top-1 against lambda = 0 of the same method on the same seeds (95% paired t interval, p-value).

This is analysis, not selection: the ``tune`` stage chooses lambda on validation only; this reads test to
describe what a choice is worth. Rows go to ``--out`` (CSV) as they finish. In MLflow, as the study: one
parent run (``sweep ...``: the arguments, the CSV and the table) and one nested run per configuration
(every seed's figures, their mean and sd, the paired gap).

    python -m pipeline.sweep --lambdas 0 0.0001 0.001 0.01 --updates gradient proximal --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import mlflow
import torch

from pipeline import tracking
from pipeline.config import Params, flat_params, load_params
from pipeline.data.format import load_dataset
from pipeline.data.splits import train_val_split
from pipeline.device import resolve_device
from pipeline.engine.trainer import train
from pipeline.evaluation import evaluate_encoder
from pipeline.stats import format_mean_sd, mean_sd
from pipeline.tuning.selection import paired_gap
from pipeline.tuning.space import TrialChoice, trial_pretrain_config

COLUMNS = ("val_knn", "val_linear", "test_linear", "test_knn", "rankme_z", "head_sparsity", "exact_zeros")


def run_one(params: Params, choice: TrialChoice, seed: int, epochs: int) -> dict[str, float]:
    """Train ``choice`` on ``seed`` for ``epochs`` and evaluate it: the figures of :data:`COLUMNS`."""
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


def _gap_metrics(per_seed: dict[int, dict[str, float]], base: dict[int, dict[str, float]]) -> dict[str, float]:
    """The paired gap of test linear top-1 against lambda 0 on the same seeds, as MLflow metrics."""
    g = paired_gap({s: r["test_linear"] for s, r in per_seed.items()},
                   {s: r["test_linear"] for s, r in base.items()})
    out = {"gap_test_linear": g.mean, "gap_ci95_low": g.ci_low, "gap_ci95_high": g.ci_high,
           "gap_p_value": g.p_value}
    return {k: float(v) for k, v in out.items() if v is not None}


def _log_configuration(method: str, update: str, lam: float, form: str, epochs: int,
                       per_seed: dict[int, dict[str, float]], base: dict[int, dict[str, float]] | None) -> None:
    """One nested run: the configuration, every seed's figures, their mean and sd, and the gap."""
    seeds = ",".join(str(s) for s in per_seed)
    name = tracking.run_name("sweep", method=method, lam=lam, seed=seeds, form=form,
                             update=update if lam > 0 else "gradient")
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("_log_configuration runs inside the sweep's parent run")
    with mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id,
                          tags={"stage": "sweep", **tracking.lineage_tags()}):
        mlflow.log_params({"method": method, "update": update, "lambda": lam, "form": form, "epochs": epochs,
                           "seeds": seeds})
        metrics: dict[str, float] = {}
        for c in COLUMNS:
            metrics[c], metrics[f"{c}_sd"] = mean_sd([r[c] for r in per_seed.values()])
            metrics.update({f"{c}.seed{s}": r[c] for s, r in per_seed.items()})
        if lam > 0 and base:
            metrics.update(_gap_metrics(per_seed, base))
        tracking.log_metrics(metrics)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.sweep``: train, evaluate, log and print every configuration (see the module)."""
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
    title = (f"sweep {' '.join(methods)} lambdas {' '.join(f'{x:g}' for x in args.lambdas)} "
             f"seeds {','.join(map(str, args.seeds))}")
    with tracking.start_run(params.tracking, run_name=title, tags={"stage": "sweep"}), \
            out.open("w", newline="") as f:
        mlflow.log_params({"sweep.methods": " ".join(methods), "sweep.lambdas": " ".join(map(str, args.lambdas)),
                           "sweep.updates": " ".join(args.updates), "sweep.form": form, "sweep.epochs": epochs,
                           "sweep.seeds": " ".join(map(str, args.seeds)), "seed": params.seed,
                           **flat_params(params.pretrain, "pretrain."), "torch_num_threads": torch.get_num_threads()})
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
            _log_configuration(method, update, lam, form, epochs, results[(method, update, lam)],
                               results.get((method, "-", 0.0)))
        table = _table(results, len(args.seeds), epochs, form)
        f.flush()
        mlflow.log_artifact(str(out))
        mlflow.log_text(table, "sweep.md")
    print(table)
    return 0


def _table(results: dict[tuple[str, str, float], dict[int, dict[str, float]]], seeds: int, epochs: int,
           form: str) -> str:
    """The Markdown table: mean ± sd of every column and the paired gap against lambda 0."""
    lines = [f"\n{seeds} seeds, {epochs} epochs, form {form}, {torch.get_num_threads()} threads\n",
             "| method | update | lambda | val kNN | val linear | test linear | test kNN | RankMe z | sparsity "
             "| exact zeros | test linear gap vs lambda 0 [95% CI], p |", "|" + "---|" * 11]
    for (method, update, lam), per_seed in results.items():
        cells = [format_mean_sd([r[c] for r in per_seed.values()], ".2f" if c == "rankme_z" else ".4f")
                 for c in COLUMNS]
        base = results.get((method, "-", 0.0))
        gap = "-"
        if lam > 0 and base:
            g = paired_gap({s: r["test_linear"] for s, r in per_seed.items()},
                           {s: r["test_linear"] for s, r in base.items()})
            ci = f"[{g.ci_low:+.4f}, {g.ci_high:+.4f}]" if g.ci_low is not None else "[n/a]"
            gap = f"{g.mean:+.4f} {ci}, p {g.p_value:.2g}" if g.p_value is not None else f"{g.mean:+.4f} {ci}"
        lines.append(f"| {method} | {update} | {lam:g} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
