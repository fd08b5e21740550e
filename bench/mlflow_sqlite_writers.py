"""Several processes logging to one embedded MLflow store (``sqlite:///mlflow.db``) at once: what fails.

What two queued DVC experiments (``dvc queue start -j N``) do to the project's store, exaggerated: each
writer opens a run, logs its params and tags, logs ``--epochs`` batches of per-epoch metrics with no pause
(a real epoch takes seconds), logs an artifact, ends the run and registers a version of one model name,
moving an alias. Prints per writer count: runs and versions complete, calls that failed and why, and the
wall time, for ``--mode mlflow`` (MLflow's own engine settings) and ``--mode project`` (through
``pipeline.tracking.setup``, as the stages do).

    python bench/mlflow_sqlite_writers.py --writers 2 4 8 --epochs 200 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def writer(folder: str, mode: str, index: int, epochs: int, start: float, out: mp.Queue) -> None:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    errors: list[str] = []
    done = versions = 0
    while time.time() < start:  # every writer starts at the same moment, on a fresh store
        time.sleep(0.001)
    try:
        if mode == "project":
            from pipeline import tracking
            from pipeline.config import TrackingConfig

            cfg = TrackingConfig(tracking_uri=uri, artifact_root=f"{folder}/mlartifacts", experiment="bench")
            exp_id = tracking.setup(cfg)
        else:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            exp = mlflow.set_experiment("bench")
            exp_id = exp.experiment_id
        client = MlflowClient()
        run = client.create_run(exp_id, run_name=f"writer {index}", tags={"writer": str(index)})
        rid = run.info.run_id
        client.log_batch(rid, params=[mlflow.entities.Param(f"p{i}", str(i)) for i in range(60)])
        for epoch in range(1, epochs + 1):
            now = int(time.time() * 1000)
            client.log_batch(rid, metrics=[Metric(f"m{i}", float(epoch * i), now, epoch) for i in range(20)])
        art = Path(folder) / f"note{index}.txt"
        art.write_text(str(index))
        client.log_artifact(rid, str(art))
        client.set_terminated(rid)
        done = 1
        try:
            client.create_registered_model("bench-model")
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version("bench-model", f"{run.info.artifact_uri}/note{index}.txt", rid)
        client.set_registered_model_alias("bench-model", "champion", mv.version)
        versions = 1
    except Exception as exc:  # a failed call is what is measured
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        if "-v" in sys.argv:
            traceback.print_exc()
    out.put((done, versions, errors))


def trial(mode: str, n: int, epochs: int) -> tuple[int, int, Counter, float]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="mlflow-writers-") as folder:
        start = time.time() + 8.0  # time for every child to import MLflow
        procs = [ctx.Process(target=writer, args=(folder, mode, i, epochs, start, out)) for i in range(n)]
        for p in procs:
            p.start()
        results = [out.get(timeout=900) for _ in procs]
        wall = time.time() - start
        for p in procs:
            p.join()
    runs = sum(r[0] for r in results)
    versions = sum(r[1] for r in results)
    errors = Counter(e for r in results for e in r[2])
    return runs, versions, errors, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", nargs="+", default=["mlflow", "project"], choices=["mlflow", "project"])
    ap.add_argument("-v", action="store_true", help="print each failure's traceback")
    args = ap.parse_args(argv)
    print("| mode | writers | runs complete | versions registered | failures | wall s (median, min-max) |")
    print("|---|---|---|---|---|---|")
    for mode in args.mode:
        for n in args.writers:
            runs = versions = 0
            errors: Counter = Counter()
            walls = []
            for _ in range(args.repeats):
                r, v, e, w = trial(mode, n, args.epochs)
                runs, versions, walls = runs + r, versions + v, [*walls, w]
                errors.update(e)
            total = n * args.repeats
            why = "; ".join(f"{c} x {e}" for e, c in errors.most_common(3)) or "none"
            print(f"| {mode} | {n} | {runs}/{total} | {versions}/{total} | {why} | "
                  f"{statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
