"""Issue 10, the stages' half: every bad file a stage reads gets one line naming the file, the problem and
the way out, and exit code 2; a corrupt checkpoint is set aside; outputs get the ordinary mode; a run
left RUNNING by a killed process is closed by the next run of its stage; params a source ignores and
input sides a backbone cannot take are refused.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.cli import stage_main
from pipeline.config import MIN_INPUT_SIDE, ConfigError, TrackingConfig, load_params
from pipeline.data.format import load_split
from pipeline.engine.checkpoint import CHECKPOINT, read_checkpoint_meta
from pipeline.io import write_json
from pipeline.models.backbones import build_backbone
from pipeline.models.encoder import ENCODER_FILE, load_encoder, save_encoder
from pipeline.stages.evaluate import run as evaluate_body
from pipeline.stages.prepare import run as prepare_body
from pipeline.stages.pretrain import run as pretrain_body
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"
if not PY.exists():
    PY = Path(sys.executable)


def _params(root: Path, **over: dict) -> dict:
    p = {
        "seed": 0,
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "hardening",
                     "artifact_root": str(root / "mlartifacts")},
        "pretrain": {"backbone": {"name": "small", "width": 4}, "head": {"hidden_dims": [16], "out_dim": 8},
                     "batch_size": 32, "epochs": 2, "device": "cpu", "num_threads": 1,
                     "optim": {"warmup_epochs": 0}},
    }
    for section, values in over.items():
        p[section] = {**p.get(section, {}), **values}
    return p


@pytest.fixture
def work(prepared_dir: Path) -> Path:
    (prepared_dir / "params.yaml").write_text(yaml.safe_dump(_params(prepared_dir)))
    return prepared_dir


def _set_params(root: Path, **over: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(_params(root, **over)))


def _fails(capsys: pytest.CaptureFixture, stage: str, body, *must: str, argv: list[str] | None = None) -> str:
    """Run ``stage``; it must exit 2 with one line on stderr holding each of ``must``."""
    capsys.readouterr()
    assert stage_main(stage, body, argv=argv or []) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{stage}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in must:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# --- the prepared data -------------------------------------------------------------------------------

def test_truncated_npz_is_one_line_naming_the_file_and_prepare(work, capsys):
    path = work / "data/prepared/train.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _fails(capsys, "pretrain", pretrain_body, "data/prepared/train.npz", "not a readable npz archive",
           "rerun the prepare stage")


def test_npz_without_the_arrays_and_changed_arrays_are_refused(work, capsys):
    path = work / "data/prepared/train.npz"
    split = load_split(work / "data/prepared", "train")
    np.savez(path, pictures=split.images, labels=split.labels)
    _fails(capsys, "pretrain", pretrain_body, "data/prepared/train.npz", "no 'images' array", "prepare")

    # A readable npz whose arrays are not those prepare hashed: one pixel changed.
    images = split.images.copy()
    images[0, 0, 0, 0] ^= 1
    np.savez(path, images=images, labels=split.labels)
    (work / "models/pretrain").mkdir(parents=True)
    (work / "models/pretrain/run_id").write_text("0" * 32 + "\n")  # evaluate checks it first
    _fails(capsys, "evaluate", evaluate_body, "data/prepared/train.npz", "do not match the sha256",
           "manifest.json", "rerun the prepare stage")


def test_garbage_manifest_is_refused(work, capsys):
    (work / "data/prepared/manifest.json").write_text("{not json")
    _fails(capsys, "pretrain", pretrain_body, "data/prepared/manifest.json", "not valid JSON", "prepare")
    (work / "data/prepared/manifest.json").write_text(json.dumps({"source": "x"}))
    _fails(capsys, "pretrain", pretrain_body, "manifest.json", "missing classes")


# --- model files -------------------------------------------------------------------------------------

def test_garbage_encoder_is_one_line_naming_the_file_and_the_stage(work, capsys):
    model_dir = work / "models/pretrain"
    model_dir.mkdir(parents=True)
    (model_dir / "run_id").write_text("0" * 32 + "\n")
    (model_dir / ENCODER_FILE).write_bytes(b"\x80\x04garbage" * 100)
    _fails(capsys, "evaluate", evaluate_body, f"models/pretrain/{ENCODER_FILE}", "not a readable encoder file",
           "dvc repro -f pretrain")
    # A well-formed torch file that is not an encoder.
    torch.save({"weights": torch.zeros(3)}, model_dir / ENCODER_FILE)
    with pytest.raises(ValueError, match="not an encoder saved by this pipeline"):
        load_encoder(model_dir / ENCODER_FILE)


def _checkpoint_state(root: Path) -> dict | None:
    return read_checkpoint_meta(root / "models/pretrain" / CHECKPOINT)


def test_corrupt_checkpoints_are_set_aside_and_training_starts_afresh(work, capsys, caplog):
    ckpt = work / "models/pretrain" / CHECKPOINT
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(random.Random(4096).randbytes(4096))  # seeded: tests/test_torch_files.py replays more
    assert stage_main("pretrain", pretrain_body, argv=[]) == 0
    aside = ckpt.with_name(CHECKPOINT + ".corrupt")
    assert aside.exists() and len(aside.read_bytes()) == 4096
    assert any("unreadable checkpoint" in r.getMessage() and "training starts afresh" in r.getMessage()
               for r in caplog.records)
    meta = _checkpoint_state(work)
    assert meta is not None and meta["epoch"] == 2  # the fresh run's own checkpoint

    # Half-written: the first half of a real checkpoint. read_checkpoint_meta must not raise.
    aside.unlink()
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert _checkpoint_state(work) is None
    assert not ckpt.exists() and aside.read_bytes() == data[: len(data) // 2]
    assert stage_main("pretrain", pretrain_body, argv=[]) == 0
    assert _checkpoint_state(work)["epoch"] == 2


# --- the tracking store ------------------------------------------------------------------------------

def _stage(root: Path, stage: str, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([str(PY), "-m", f"stages.{stage}", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_garbage_mlflow_db_is_one_line_naming_the_store_end_to_end(work):
    # register reads the final model first, then the store: give it a real (untrained) encoder.
    from pipeline.engine.trainer import build_encoder

    params = load_params(work / "params.yaml")
    images = load_split(work / "data/prepared", "train").images
    final = work / "models/final"
    save_encoder(build_encoder(params.pretrain, images), final / ENCODER_FILE)
    (final / "run_id").write_text("0" * 32 + "\n")
    write_json(work / "metrics/final.json", {"val_linear_top1": 0.5})
    (work / "mlflow.db").write_bytes(random.Random(8192).randbytes(8192))

    done = _stage(work, "register")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("register: error: MLflow tracking store sqlite:///") and "mlflow.db" in lines[0]
    assert "mv " in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]


def test_garbage_optuna_db_names_the_optuna_storage_not_mlflow(work, capsys):
    from pipeline.stages.tune import run as tune_body

    _set_params(work, tune={"storage": f"sqlite:///{work / 'optuna.db'}"})
    (work / "optuna.db").write_bytes(random.Random(8193).randbytes(8192))
    _fails(capsys, "tune", tune_body, f"Optuna storage sqlite:///{work / 'optuna.db'}: cannot be used",
           "file is not a database", "mv ", "OPTUNA_STORAGE")


# --- outputs -----------------------------------------------------------------------------------------

def test_an_output_folder_that_cannot_be_written_is_one_line(work, capsys):
    before = (work / "data/prepared/train.npz").read_bytes()
    (work / "blocker").write_text("a file where a folder should be\n")
    _set_params(work, prepare={"out_dir": "blocker/sub/prepared"})
    _fails(capsys, "prepare", prepare_body, "blocker", "Not a directory", "params.yaml")

    # A folder even root may not create in (sysfs refuses mkdir to everyone): a real PermissionError.
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    _set_params(work, prepare={"out_dir": "/sys/sparsehead-test/prepared"})
    _fails(capsys, "prepare", prepare_body, "/sys/sparsehead-test", "not permitted", "writable")
    assert (work / "data/prepared/train.npz").read_bytes() == before  # nothing was lost


def test_a_missing_params_file_is_an_error(work, capsys):
    _fails(capsys, "prepare", prepare_body, "params.yml: params file not found", argv=["--params", "params.yml"])
    (work / "params.yaml").unlink()
    _fails(capsys, "prepare", prepare_body, "params.yaml: params file not found")
    assert load_params(work / "nope.yaml").seed == 0  # the library default (the service) keeps defaults


def test_outputs_get_the_ordinary_mode(work):
    old = os.umask(0o022)
    try:
        write_json(work / "out/a.json", {"a": 1})
        assert (work / "out/a.json").stat().st_mode & 0o777 == 0o644
        _set_params(work, prepare={"out_dir": "data/digits"})
        assert stage_main("prepare", prepare_body, argv=[]) == 0
        assert (work / "data/digits").stat().st_mode & 0o777 == 0o755
        for f in (work / "data/digits").iterdir():
            assert f.stat().st_mode & 0o777 == 0o644, f
        os.umask(0o027)
        write_json(work / "out/b.json", {"b": 1})
        assert (work / "out/b.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# --- runs left RUNNING ---------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_run_left_running_by_a_killed_process_is_closed_by_the_next_run(work):
    cfg = TrackingConfig(**_params(work)["tracking"])
    exp_id = tracking.setup(cfg)
    client = MlflowClient()
    host = socket.gethostname()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        def left_running(pid: int, on: str = host, stage: str = "pretrain") -> str:
            return client.create_run(exp_id, tags={"stage": stage, "host": on, "pid": str(pid)}).info.run_id

        killed = left_running(_dead_pid())
        alive = left_running(sleeper.pid)
        elsewhere = left_running(_dead_pid(), on=host + "-other")
        other_stage = left_running(_dead_pid(), stage="final")
        _set_params(work, pretrain={"epochs": 1})  # a rerun with other params
        assert stage_main("pretrain", pretrain_body, argv=[]) == 0
        status = {r: client.get_run(r).info.status for r in (killed, alive, elsewhere, other_stage)}
        assert status == {killed: "KILLED", alive: "RUNNING", elsewhere: "RUNNING", other_stage: "RUNNING"}
        new = (work / "models/pretrain/run_id").read_text().strip()
        run = client.get_run(new)
        assert run.info.status == "FINISHED"
        assert run.data.tags["host"] == host and run.data.tags["pid"] == str(os.getpid())

        # The run a checkpoint resumes is never closed: killed after its last epoch, it is resumed.
        client.set_tag(new, "pid", str(_dead_pid()))
        client.update_run(new, "RUNNING")
        assert stage_main("pretrain", pretrain_body, argv=[]) == 0
        assert (work / "models/pretrain/run_id").read_text().strip() == new
        resumed = client.get_run(new)
        assert resumed.info.status == "FINISHED" and resumed.data.tags["pid"] == str(os.getpid())
    finally:
        sleeper.kill()
        sleeper.wait()


# --- params a source ignores, sides a backbone cannot take ---------------------------------------------

@pytest.mark.parametrize(("section", "values", "must"), [
    ("prepare", {"source": "digits", "image_size": 16}, "prepare.image_size: the digits source ignores it"),
    ("prepare", {"source": "cifar10", "image_size": 16}, "prepare.image_size: the cifar10 source ignores it"),
    ("prepare", {"source": "digits", "download": True}, "prepare.download: the digits source ignores it"),
    ("prepare", {"source": "digits", "path": "x"}, "prepare.path: the digits source ignores it"),
    ("pretrain", {"image_size": 3}, "pretrain.image_size: 3 is below the smallest side the small backbone can "
                                    "take (5)"),
    ("pretrain", {"image_size": 8, "backbone": {"name": "resnet18"}}, "pretrain.image_size: 8 is below"),
])
def test_params_a_source_ignores_and_sides_too_small_are_refused(work, capsys, section, values, must):
    _set_params(work, **{section: values})
    with pytest.raises(ConfigError, match="params.yaml: " + must.replace("(", r"\(").replace(")", r"\)")):
        load_params(work / "params.yaml")
    _fails(capsys, "prepare", prepare_body, must)


def test_prepared_images_smaller_than_the_backbone_takes_are_refused_at_pretrain(work, capsys):
    _set_params(work, pretrain={"backbone": {"name": "resnet18"}})  # the prepared images are 8x8
    _fails(capsys, "pretrain", pretrain_body, "prepared images are 8x8", "resnet18", "(9)",
           "pretrain.image_size to 9 or more")
    assert not (work / "mlflow.db").exists()  # refused before any MLflow run was started


def _dead_taps(name: str, side: int) -> tuple[int, bool]:
    """(3x3 convs with a kernel tap that only ever sees zero padding, every 3x3 conv's input wide enough)."""
    torch.manual_seed(0)
    net, _ = build_backbone(name, 3, 4)
    net.train()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    wide = []
    hooks = [m.register_forward_pre_hook(
        lambda m, i: wide.append(i[0].shape[-1] >= (3 if m.stride[0] == 2 else 2))) for m in convs]
    net(torch.rand(4, 3, side, side)).pow(2).sum().backward()
    for h in hooks:
        h.remove()
    # A tap whose gradient is zero over every channel pair saw nothing but padding.
    dead = sum(int((m.weight.grad.abs().sum(dim=(0, 1)) == 0).any()) for m in convs)
    return dead, all(wide)


@pytest.mark.parametrize("name", sorted(MIN_INPUT_SIDE))
def test_min_input_side_is_the_real_minimum_of_each_backbone(name):
    torch.set_num_threads(1)
    low = MIN_INPUT_SIDE[name]
    dead, wide = _dead_taps(name, low)
    assert dead == 0 and wide
    dead, wide = _dead_taps(name, low - 1)
    assert dead > 0 and not wide
