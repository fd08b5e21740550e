"""The Optuna study of lambda: trials in the storage, nested MLflow runs, baseline, pruning, reruns,
several worker processes on the default storage, the exact budget, failures, and the report files."""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.cli import StageError, stage_main
from pipeline.config import Params, load_params
from pipeline.stages.tune import run as tune_body
from pipeline.tracking.trials import PARENT_ATTR, PARENT_RUN_TAG, RUN_ATTR, STATE_TAG
from pipeline.tuning.objective import SEED_VALUES_ATTR, VALUE_SD_ATTR, Objective, TuneData
from pipeline.tuning.recovery import RetryStaleTrial
from pipeline.tuning.report import write_report
from pipeline.tuning.selection import objective_resolution
from pipeline.tuning.space import BASELINE_ATTR, LAMBDA_ATTR, METHOD_ATTR, study_name
from pipeline.tuning.storage import ENV_VAR, open_storage, redact, storage_url
from pipeline.tuning.study import WORKER_ATTR
from pipeline.tuning.table import TRIAL_COLUMNS
from pipeline.tuning.worker import run_tuning
from tests.budget_worker import gated_worker
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 3
EPOCHS = 2
SEEDS = [0, 1]


def _params_dict(tmp_path: Path, **tune: object) -> dict:
    return {
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tune-test",
                     "artifact_root": str(tmp_path / "mlartifacts")},
        "prepare": {"out_dir": "data/prepared"},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": EPOCHS, "device": "cpu", "num_threads": 1,
                     "optim": {"warmup_epochs": 0}},
        "evaluate": {"val_fraction": 0.25, "batch_size": 64, "knn_k": [3],
                     "probe": {"epochs": 3, "batch_size": 32, "weight_decays": [0.0]}},
        "tune": {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "n_trials": N_TRIALS, "epochs": EPOCHS,
                 "eval_every": 1, "pruner": "none", "lambda_low": 1e-4, "lambda_high": 1e-1, "seeds": SEEDS,
                 **tune},
    }


def write_params(tmp_path: Path, **tune: object) -> Params:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params_dict(tmp_path, **tune)))
    return load_params(tmp_path / "params.yaml")


@pytest.fixture
def workdir(prepared_dir: Path) -> Path:
    return prepared_dir


def _sha() -> str:
    return json.loads(Path("data/prepared/manifest.json").read_text())["dataset_sha256"]


def _load_study(params: Params) -> optuna.Study:
    sha = _sha()
    return optuna.load_study(study_name=study_name(params, sha), storage=open_storage(params.tune.storage))


def _child_runs(params: Params, parent_id: str) -> list:
    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    return client.search_runs([exp.experiment_id], f"tags.{PARENT_RUN_TAG} = '{parent_id}'")


def test_study_leaves_trials_nested_runs_baseline_and_report(workdir):
    params = write_params(workdir)
    outcome = run_tuning(params, progress=False)
    best, metrics = write_report(outcome, params)

    study = _load_study(params)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(N_TRIALS))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    base = trials[0]  # enqueued first
    assert base.user_attrs[BASELINE_ATTR] is True and base.user_attrs[LAMBDA_ATTR] == 0.0 and base.params == {}
    for t in trials[1:]:
        assert 1e-4 <= t.params["lambda"] <= 1e-1 and t.user_attrs[LAMBDA_ATTR] == t.params["lambda"]
        assert sorted(t.intermediate_values) == [1, 2]  # eval_every 1: a kNN report per epoch
    for t in trials:  # objective knn: the value is the last epoch's mean report, over the same seeds
        assert t.value == pytest.approx(t.intermediate_values[EPOCHS])
        per_seed = t.user_attrs[SEED_VALUES_ATTR]
        assert sorted(per_seed) == ["0", "1"]
        assert t.value == pytest.approx(statistics.fmean(per_seed.values()))
        assert t.user_attrs[VALUE_SD_ATTR] == pytest.approx(statistics.stdev(per_seed.values()))
    assert study.user_attrs[PARENT_ATTR] == outcome.parent_run_id

    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["stage"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_mean"] == pytest.approx(study.best_value)
    children = {r.info.run_id: r for r in _child_runs(params, outcome.parent_run_id)}
    assert set(children) == {t.user_attrs[RUN_ATTR] for t in trials}
    for t in trials:
        run = children[t.user_attrs[RUN_ATTR]]
        assert run.info.status == "FINISHED" and run.data.tags[STATE_TAG] == "COMPLETE"
        assert float(run.data.params["lambda"]) == t.user_attrs[LAMBDA_ATTR]
        assert run.data.metrics["objective_value"] == pytest.approx(t.value)
        assert run.data.metrics["objective_sd"] == pytest.approx(t.user_attrs[VALUE_SD_ATTR])
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs  # the data set it trained on
        assert [i.dataset.digest for i in inputs] == [_sha()[:36]]
        for seed, value in t.user_attrs[SEED_VALUES_ATTR].items():
            assert run.data.metrics[f"objective_value.seed{seed}"] == pytest.approx(value)
            history = client.get_metric_history(run.info.run_id, f"seed{seed}.loss_total")
            assert [m.step for m in history] == [1, 2]
    artifacts = {Path(a.path).name for a in client.list_artifacts(outcome.parent_run_id, "tune")}
    assert {"trials.csv", "history.png", "lambda.png", "best_params.json", "tune.json"} <= artifacts

    # best_params.json is study.best_trial, in the terms the final stage reads, unless the best trial is the
    # baseline or ties with it (within one validation image over the seeds): then the baseline.
    on_disk = json.loads(Path("best_params.json").read_text())
    assert on_disk == best
    tie = abs(study.best_value - base.value) < objective_resolution(len(SEEDS), len(TuneData.load(params).val)) / 2
    chosen = base if study.best_trial.number == 0 or tie else study.best_trial
    assert on_disk["best_trial"] == study.best_trial.number and on_disk["best_value"] == study.best_value
    assert on_disk["trial"] == chosen.number and on_disk["value"] == chosen.value
    assert on_disk["choice"] == ("baseline" if chosen.number == 0 else "best")
    assert on_disk["lambda"] == chosen.user_attrs[LAMBDA_ATTR]
    assert on_disk["baseline"] == (chosen.number == 0) and on_disk["study"] == study.study_name
    tune = json.loads(Path("metrics/tune.json").read_text())
    assert tune == metrics and tune["mlflow_parent_run_id"] == outcome.parent_run_id
    assert tune["baseline_mean"] == base.value and tune["seeds"] == len(SEEDS)
    assert tune["gap_mean"] == pytest.approx(study.best_value - base.value)
    assert tune["gap_ci95_low"] <= tune["gap_mean"] <= tune["gap_ci95_high"]
    assert (tune["trials"], tune["trials_complete"], tune["trials_pruned"], tune["trials_failed"]) == (3, 3, 0, 0)
    rows = Path("plots/tune/trials.csv").read_text().splitlines()
    assert rows[0].split(",") == list(TRIAL_COLUMNS) and len(rows) == 1 + N_TRIALS
    for png in ("history.png", "lambda.png"):
        assert Path("plots/tune", png).read_bytes()[:4] == b"\x89PNG"


def test_rerun_continues_the_study_and_a_new_space_is_a_new_study(workdir):
    params = write_params(workdir, n_trials=2)
    first = run_tuning(params, progress=False)
    assert first.ran == 2
    again = run_tuning(params, progress=False)  # budget used up: nothing to do
    assert again.ran == 0 and again.parent_run_id == first.parent_run_id

    more = write_params(workdir, n_trials=4)
    outcome = run_tuning(more, progress=False)
    assert outcome.ran == 2 and outcome.study.study_name == first.study.study_name
    assert outcome.parent_run_id == first.parent_run_id
    trials = _load_study(more).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert sum(bool(t.user_attrs.get(BASELINE_ATTR)) for t in trials) == 1
    assert len(_child_runs(more, first.parent_run_id)) == 4

    other = write_params(workdir, n_trials=1, lambda_high=0.5)
    assert study_name(other, "x") != study_name(more, "x")
    assert study_name(write_params(workdir, n_trials=9), "x") == study_name(more, "x")


def test_reproducible_given_seed_and_storage(workdir, tmp_path_factory):
    a = run_tuning(write_params(workdir), progress=False)
    lambdas_a = [t.params.get("lambda") for t in a.study.get_trials()]
    other = tmp_path_factory.mktemp("other")
    params_b = Params.model_validate({**_params_dict(workdir), "tune": {
        **_params_dict(workdir)["tune"], "storage": f"sqlite:///{other / 'optuna.db'}"}})
    b = run_tuning(params_b, progress=False)
    assert [t.params.get("lambda") for t in b.study.get_trials()] == lambdas_a
    assert [t.value for t in b.study.get_trials()] == [t.value for t in a.study.get_trials()]


def test_an_aggressive_pruner_prunes_every_trial_but_the_baseline(workdir):
    params = write_params(workdir)
    # Every report below 2.0 (every accuracy) is "bad": each non-baseline trial stops at its first report.
    outcome = run_tuning(params, progress=False, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trials = outcome.study.get_trials()
    assert trials[0].state == TrialState.COMPLETE  # the baseline is never pruned
    assert [t.state for t in trials[1:]] == [TrialState.PRUNED] * (N_TRIALS - 1)
    assert all(sorted(t.intermediate_values) == [1] for t in trials[1:])
    by_id = {r.info.run_id: r for r in _child_runs(params, outcome.parent_run_id)}
    for t in trials[1:]:
        run = by_id[t.user_attrs[RUN_ATTR]]
        assert run.info.status == "KILLED" and run.data.tags[STATE_TAG] == "PRUNED"
    _, metrics = write_report(outcome, params)
    assert (metrics["trials_complete"], metrics["trials_pruned"]) == (1, N_TRIALS - 1)
    assert metrics["gap_mean"] == 0.0  # only the baseline completed: it is the best
    assert metrics["chose_baseline"] == 1.0


def test_failed_trials_are_recorded_stop_the_worker_and_are_redone(workdir, monkeypatch):
    params = write_params(workdir, max_failed_trials=2)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated out-of-memory")

    monkeypatch.setattr("pipeline.tuning.objective.Trainer", broken)
    with pytest.raises(StageError, match="2 trials failed in a row"):
        run_tuning(params, progress=False)
    study = _load_study(params)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    for t in study.get_trials():
        run = client.get_run(t.user_attrs[RUN_ATTR])
        assert run.info.status == "FAILED" and "simulated out-of-memory" in run.data.tags["error"]

    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    outcome = run_tuning(params, progress=False)  # failed trials do not use the budget; the baseline is redone
    counts = outcome.counts
    assert (counts.complete, counts.failed) == (N_TRIALS, 2)
    assert sum(bool(t.user_attrs.get(BASELINE_ATTR)) and t.state == TrialState.COMPLETE
               for t in outcome.study.get_trials()) == 1


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_trial_whose_worker_died_is_failed_and_redone(workdir, storage):
    url = f"sqlite:///{workdir / 'optuna.db'}" if storage == "sqlite" else f"journal:{workdir / 'optuna.journal'}"
    params = write_params(workdir, n_trials=2, storage=url)
    sha = json.loads(Path("data/prepared/manifest.json").read_text())["dataset_sha256"]
    study = optuna.create_study(study_name=study_name(params, sha), storage=open_storage(params.tune.storage),
                                direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = study.ask()
    orphan.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{int(dead.stdout)}")
    outcome = run_tuning(params, progress=False)
    trials = outcome.study.get_trials()
    states = {t.number: t.state for t in trials}
    assert states[orphan.number] == TrialState.FAIL
    assert outcome.counts.complete == 2 and outcome.counts.running == 0
    # Queued again as Optuna's stale-trial retry does it, then redone: the budget stays exact.
    assert [t.system_attrs.get("failed_trial") for t in trials].count(orphan.number) == 1


@pytest.mark.parametrize("when", ["mid-training", "after-training"])
def test_a_live_worker_whose_trial_was_failed_as_stale_goes_on(workdir, monkeypatch, caplog, when):
    # Another worker's heartbeat check fails this worker's trial (its heartbeat stalled past the grace on a
    # starved machine) and queues it again, as RetryStaleTrial does; mid-training the trial's next write then
    # fails, after training only Optuna's tell does.
    params = write_params(workdir, n_trials=2, seeds=[0])
    train = Objective._run
    lost: list[int] = []

    def fail_from_outside(trial: optuna.Trial) -> None:
        study = trial.study
        study.tell(trial.number, state=TrialState.FAIL)
        RetryStaleTrial(max_retry=3)(study, study.get_trials(deepcopy=False)[trial.number])
        lost.append(trial.number)

    def stalled(self, trial, choice):
        if not lost and when == "mid-training":
            fail_from_outside(trial)
        value = train(self, trial, choice)
        if not lost:
            fail_from_outside(trial)
        return value

    monkeypatch.setattr(Objective, "_run", stalled)
    caplog.set_level("WARNING")
    outcome = run_tuning(params, progress=False)
    trials = outcome.study.get_trials()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == lost == [0]
    assert outcome.counts.complete == 2 and outcome.counts.running == 0  # the budget, exact
    redo = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE and redo[0].params == trials[0].params
    assert "another worker failed this trial as stale" in caplog.text
    client = MlflowClient(tracking_uri=params.tracking.tracking_uri)
    run = client.get_run(trials[0].user_attrs[RUN_ATTR])
    assert run.info.status == "FAILED" and run.data.tags[STATE_TAG] == "FAIL"
    for t in trials[1:]:
        assert client.get_run(t.user_attrs[RUN_ATTR]).info.status == "FINISHED"


def test_stage_writes_outputs_and_rejects_a_bad_range(workdir, capsys):
    write_params(workdir, n_trials=2)
    assert stage_main("tune", tune_body, argv=["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "chose" in out and "baseline" in out and "over 2 seeds" in out
    assert Path("best_params.json").exists() and Path("metrics/tune.json").exists()
    before = Path("best_params.json").read_text()

    write_params(workdir, lambda_low=0.5, lambda_high=0.1)
    assert stage_main("tune", tune_body, argv=["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tune: error: tune.lambda_low (0.5) must be below tune.lambda_high (0.1)"]
    assert Path("best_params.json").read_text() == before


def test_two_workers_at_once_on_the_default_sqlite_storage(workdir):
    # Two workers as `dvc queue start -j 2` runs them: the default storage (relative sqlite:///optuna.db,
    # made absolute under the project), two stage processes at once.
    n = 4
    params = write_params(workdir, n_trials=n, storage="sqlite:///optuna.db")
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO)
    procs = [subprocess.Popen([sys.executable, "-m", "stages.tune", "--params", "params.yaml"], cwd=workdir,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]

    study = _load_study(params)
    every = study.get_trials()
    # A trial that failed (say, a tracking store locked past its timeout on a loaded machine) does not use
    # the budget and is redone: the budget is exact over the others, and the failure is recorded.
    failed = [t for t in every if t.state == TrialState.FAIL]
    trials = [t for t in every if t.state != TrialState.FAIL]
    assert len(trials) == n, [(t.number, t.state.name) for t in every]  # no trial lost, none extra
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(bool(t.user_attrs.get(BASELINE_ATTR)) for t in trials) == 1
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) in (1, 2)
    children = {r.info.run_id: r for r in _child_runs(params, study.user_attrs[PARENT_ATTR])}
    assert {t.user_attrs[RUN_ATTR] for t in trials} <= set(children)
    assert all(children[t.user_attrs[RUN_ATTR]].info.status == "FINISHED" for t in trials)
    assert all(children[t.user_attrs[RUN_ATTR]].info.status == "FAILED" for t in failed if RUN_ATTR in t.user_attrs)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_the_budget_is_exact_when_workers_ask_at_once(tmp_path, storage):
    # Optuna's MaxTrialsCallback ends such a study with up to one extra trial a worker, and a rerun of a
    # finished study with one more a worker (bench/tune_storage.py budget): the gate must give exactly n.
    url = f"sqlite:///{tmp_path / 'o.db'}" if storage == "sqlite" else f"journal:{tmp_path / 'o.journal'}"
    optuna.create_study(study_name="budget", storage=open_storage(url))
    workers, n = 3, 2
    barrier = multiprocessing.get_context("spawn").Barrier(workers + 1, timeout=300)
    procs = [multiprocessing.get_context("spawn").Process(target=gated_worker, args=(url, "budget", n, barrier, 2))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in range(2):  # the run, then a rerun of the finished study
        barrier.wait()  # every worker is ready: they ask together
        barrier.wait()  # every worker is done
        trials = optuna.load_study(study_name="budget", storage=open_storage(url)).trials
        assert len(trials) == n and all(t.state == TrialState.COMPLETE for t in trials)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0


def test_relative_storage_paths_are_the_projects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    cfg = Params().tune
    assert storage_url(cfg) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    # A queued or --temp experiment runs in a copy DVC deletes afterwards: the study stays the project's.
    copy = tmp_path / ".dvc/tmp/exps/tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert storage_url(cfg) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    monkeypatch.setenv(ENV_VAR, "journal:studies/optuna.journal")
    assert storage_url(cfg) == f"journal:{tmp_path.resolve() / 'studies/optuna.journal'}"
    monkeypatch.setenv(ENV_VAR, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert storage_url(cfg) == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    pg = "postgresql+psycopg2://u:secret@db-host/optuna"
    monkeypatch.setenv(ENV_VAR, pg)
    assert storage_url(cfg) == pg and redact(pg) == "postgresql+psycopg2://u:***@db-host/optuna"


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_configured_pruners_run_the_whole_budget(workdir, pruner):
    params = write_params(workdir, pruner=pruner, pruner_warmup_steps=0, pruner_startup_trials=1)
    outcome = run_tuning(params, progress=False)
    trials = outcome.study.get_trials()
    assert len(trials) == N_TRIALS and trials[0].state == TrialState.COMPLETE
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert outcome.counts.finished == N_TRIALS


def test_several_methods_each_get_a_baseline_and_the_gap_pairs_within_a_method(workdir):
    params = write_params(workdir, n_trials=4, methods=["simclr", "vicreg"])
    outcome = run_tuning(params, progress=False)
    trials = outcome.study.get_trials()
    baselines = {t.user_attrs[METHOD_ATTR]: t for t in trials if t.user_attrs.get(BASELINE_ATTR)}
    assert sorted(baselines) == ["simclr", "vicreg"] and all(b.number < 2 for b in baselines.values())
    for t in trials:
        if not t.user_attrs.get(BASELINE_ATTR):
            assert t.params["method"] == t.user_attrs[METHOD_ATTR] in ("simclr", "vicreg")
    best, metrics = write_report(outcome, params)
    best_trial = outcome.study.best_trial
    assert best["method"] == best_trial.user_attrs[METHOD_ATTR]
    # The gap pairs the best trial with the baseline of its own method, seed by seed.
    own = baselines[best["method"]]
    assert metrics["baseline_mean"] == pytest.approx(own.value)
    if best_trial.number != own.number:
        expected = statistics.fmean(best_trial.user_attrs[SEED_VALUES_ATTR][s] - own.user_attrs[SEED_VALUES_ATTR][s]
                                    for s in ("0", "1"))
        assert metrics["gap_mean"] == pytest.approx(expected)
    methods = {row.split(",")[2] for row in Path("plots/tune/trials.csv").read_text().splitlines()[1:]}
    assert methods == {"simclr", "vicreg"}


def test_the_study_is_the_same_whatever_the_run_budget_place_or_watching(tmp_path):
    from pipeline.tuning.space import study_identity

    base = Params()
    same = study_identity(base, "sha")

    def changed(**pretrain) -> dict:
        return study_identity(base.model_copy(update={"pretrain": base.pretrain.model_copy(update=pretrain)}), "sha")

    # How long the full run is, where it runs and how often it is watched leave every trial's value alone.
    for update in ({"monitor_every": 3}, {"epochs": 7}, {"device": "cuda"}, {"num_threads": 1}):
        assert changed(**update) == same, update
    # What shapes the training does not.
    assert changed(batch_size=base.pretrain.batch_size * 2) != same
    assert study_identity(base, "other") != same
