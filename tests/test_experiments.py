"""The experiment workflow of the README on a fresh clone, with the real dvc.yaml on tiny params: the user's own
baseline (`make run`, `make baseline`), an experiment compared against it, a failed one and `make restore`;
two queued experiments run by `dvc queue start -j 2` whose runs, studies and versions land in the project's
stores; and the committed dvc.lock, which must match the code and params it describes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
# What a clone needs to run the pipeline, taken from this working tree (uncommitted changes included).
TREE = ("pipeline", "stages", "tools", "dvc.yaml", "dvc.lock", "params.yaml", "Makefile", "README.md",
        ".gitignore", ".dvcignore", ".dvc/config", ".dvc/plots.html", ".dvc/.gitignore")
TINY = {
    "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                 "batch_size": 256, "epochs": 1, "device": "cpu", "num_threads": 1, "optim": {"warmup_epochs": 0}},
    "evaluate": {"batch_size": 512, "knn_k": [20], "probe": {"epochs": 2, "batch_size": 512, "weight_decays": [0.0]}},
    "tune": {"n_trials": 1, "epochs": 1, "eval_every": 1, "seeds": [0], "pruner_warmup_steps": 0},
    "final": {"seeds": [0]},
}


def readme_block(name: str) -> str:
    """The fenced block after ``<!-- test:<name> -->`` in the README: what the user is told to type."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- test:{name} -->\s*```\w*\n(.*?)```", text, flags=re.S)
    assert match, f"README.md has no block marked test:{name}"
    return match.group(1)


def commands(block: str) -> list[str]:
    """The shell commands of a README block, comments dropped, `.venv/bin/` as this test's venv."""
    out = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line.replace(".venv/bin/", f"{BIN}/"))
    return out


def env() -> dict[str, str]:
    e = subprocess_env()
    e.pop("PYTHONPATH", None)  # each stage imports the code of the folder DVC runs it in
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        e.pop(var, None)
    e.update(PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}", OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1",
             GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return e


def sh(cwd: Path, cmd: str, ok: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    # make never re-installs here: `make baseline`, `restore` and `exps` have no set-up prerequisite.
    cmd = re.sub(r"^((?:\w+=\S+ )*)make (\S+)", rf"\1make \2 VENV={BIN.parent}", cmd)
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh clone after `make run` (dvc repro on tiny params) and the README's baseline step."""
    work = tmp_path_factory.mktemp("experiments") / "sparsehead"
    sh(REPO, f"git clone -q {REPO} {work}")
    for name in TREE:
        src, dst = REPO / name, work / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, dst)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(work, "git add -A && git commit -qm 'this tree, tiny params'")
    sh(work, "dvc repro", timeout=900)  # = make run, without the set-up
    for cmd in commands(readme_block("baseline")):
        sh(work, cmd)
    yield work
    subprocess.run([DVC, "queue", "stop", "--kill"], cwd=work, env=env(), capture_output=True, timeout=120)


def _metrics_diff_rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[0].startswith("metrics/"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_an_experiment_compares_with_the_users_baseline_and_a_failed_one_is_undone(project):
    head = sh(project, "git rev-parse HEAD").stdout.strip()
    assert sh(project, "git log -1 --format=%s").stdout.startswith("Baseline")  # make baseline committed it
    assert "up to date" in sh(project, "dvc status").stdout
    prepared = {p.name: p.read_bytes() for p in (project / "data/prepared").iterdir()}

    run, compare = commands(readme_block("experiment"))[:2]
    assert run == f"{BIN}/dvc exp run -S pretrain.sparsehead.lambda=0.01 -S pretrain.epochs=5"
    sh(project, run, timeout=900)
    rows = _metrics_diff_rows(sh(project, compare).stdout)
    old, new = rows[("metrics/eval.json", "test_linear_top1")][:2]
    assert re.fullmatch(r"[\d.]+", old) and re.fullmatch(r"[\d.]+", new)  # both sides: the baseline's too
    assert rows[("metrics/pretrain.json", "mlflow_run_id")][0] != rows[("metrics/pretrain.json", "mlflow_run_id")][1]
    shown = json.loads(sh(project, "dvc exp show --json").stdout)
    baseline = next(r for r in shown if r["rev"] == head)
    metrics = baseline["data"]["metrics"]["metrics/eval.json"]["data"]
    assert "test_linear_top1" in metrics and not baseline.get("error")  # no "!" in the baseline row
    table = sh(project, "COLUMNS=160 " + commands(readme_block("experiment"))[2]).stdout  # make exps
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    assert header == ["Experiment", "Created", "metrics/eval.json:head_sparsity",
                      "metrics/eval.json:test_linear_top1", "pretrain.sparsehead.lambda"], table  # none cut
    assert max(map(len, table.splitlines())) <= 160

    # A failed experiment (CIFAR-10 offline: prepare fails after DVC deleted its outputs) ...
    failed = sh(project, f"{DVC} exp run -S prepare.source=cifar10", ok=False)
    assert failed.returncode != 0 and not (project / "data/prepared").exists()
    assert "cifar10" in (project / "params.yaml").read_text()
    # ... and the one documented command puts the baseline back.
    [restore] = commands(readme_block("restore"))
    sh(project, restore)
    assert sh(project, "git status --porcelain --untracked-files=no").stdout.strip() == ""
    assert {p.name: p.read_bytes() for p in (project / "data/prepared").iterdir()} == prepared
    assert "up to date" in sh(project, "dvc status").stdout
    assert not _metrics_diff_rows(sh(project, f"{DVC} metrics diff").stdout)


def test_two_queued_experiments_keep_their_runs_studies_and_versions(project):
    store = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    versions_before = len(client.search_model_versions("name='sparsehead-encoder'"))
    # Different lambdas, and search ranges, so that each experiment runs a study of its own.
    sh(project, f"{DVC} exp run --queue -S pretrain.sparsehead.lambda=0.002 -S tune.lambda_high=0.05 -n lam-a")
    sh(project, f"{DVC} exp run --queue -S pretrain.sparsehead.lambda=0.005 -S tune.lambda_high=0.02 "
                "-S register.policy=experiments -n lam-b")
    # The queue's workers outlive `queue start` and inherit its output: sent to a file, not to our pipes,
    # or subprocess.run waits for the last worker to exit (one may linger after the queue is done).
    sh(project, f"{DVC} queue start -j 2 > {project.parent / 'queue-start.log'} 2>&1")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(project, f"{DVC} queue status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    assert re.search(r"lam-a\s.*Success", status) and re.search(r"lam-b\s.*Success", status), status

    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids)
    assert len(runs) > before
    for name, lam in (("lam-a", "0.002"), ("lam-b", "0.005")):
        mine = client.search_runs(exp_ids, f"tags.`dvc.exp_name` = '{name}'")
        stages = {r.data.tags.get("stage") for r in mine}
        assert {"pretrain", "tune", "final"} <= stages, (name, stages)
        assert all(len(r.data.tags["dvc.baseline_rev"]) == 40 for r in mine)
        [pretrain] = [r for r in mine if r.data.tags.get("stage") == "pretrain"]
        assert pretrain.data.tags["sparsehead.lambda"] == lam
        assert pretrain.info.run_name == f"pretrain simclr lambda {float(lam):g} seed 0"
        # The artifacts are in the project's folder, not in the deleted copy.
        assert pretrain.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
        [parent] = [r for r in mine if r.data.tags.get("stage") == "tune"]
        study = optuna.load_study(study_name=parent.data.tags["optuna.study"],
                                  storage=f"sqlite:///{project / 'optuna.db'}")
        assert len(study.get_trials()) == 1
    # lam-b may register (register.policy=experiments) but not move the alias: its tree differs from HEAD.
    [version] = [v for v in client.search_model_versions("name='sparsehead-encoder'")
                 if v.tags.get("dvc.exp_name") == "lam-b"]
    assert version.tags["registry.outcome"] in ("held", "lost")
    assert len(client.search_model_versions("name='sparsehead-encoder'")) == versions_before + 1
    assert str(client.get_model_version_by_alias("sparsehead-encoder", "champion").version) == "1"
    assert not list((project / ".dvc/tmp/exps").glob("tmp*"))  # the copies are gone; the records stayed
    with sqlite3.connect(project / "optuna.db") as db:
        assert db.execute("select count(*) from studies").fetchone()[0] == 3  # the baseline's and two


def test_the_committed_dvc_lock_matches_the_code_and_params_of_every_stage(tmp_path):
    """Fails when a stage's code dependency or params changed without dvc.lock (regenerate it with a clean
    `make run`: README, "Two commands"). Outputs and data are not checked: a clone has none."""
    work = tmp_path / "tree"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    proc = subprocess.run([DVC, "status", "--json"], cwd=work, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tracked = {f for f in files if f}
    stale = []
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):  # "changed checksum", "changed command"
                stale.append(f"{stage}: {change}")
                continue
            for path, what in change.get("changed deps", {}).items():
                in_git = path in tracked or any(f.startswith(path.rstrip("/") + "/") for f in tracked)
                if in_git:
                    stale.append(f"{stage}: {path} {what}")
    assert not stale, ("dvc.lock no longer matches the code or params of: " + "; ".join(stale)
                       + ". Regenerate it with a clean `make run` (dvc repro) and commit dvc.lock.")


def test_the_readme_loads_the_champion_from_any_folder(project, tmp_path):
    """The README's model-loading snippet, as written, in another folder given the project's tracking URI
    (artifact locations are absolute: MLflow resolves a relative one against the working folder)."""
    snippet = readme_block("load-model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_env = {**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "PYTHONPATH": str(project)}
    check = snippet + "\nprint(tuple(features.shape), type(encoder).__name__)\n"
    proc = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=run_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(4, 16) Encoder"
