"""Data and models through a DVC remote: what one machine trained, a teammate's clone pulls and does not retrain.

A scratch project (this repository's dvc.yaml, params.yaml, pipeline/ and stages/ in a fresh git repository)
runs ``dvc repro pretrain`` with tiny params and pushes to a remote that is a local folder, as an S3, GCS
or SSH remote would be; a ``git clone`` of it pulls and is up to date: ``dvc repro`` runs nothing.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PULLED = ["data/prepared/manifest.json", "data/prepared/train.npz", "data/prepared/test.npz",
          "models/pretrain/encoder.pt", "models/pretrain/run_id"]


def _run(cwd: Path, *cmd: str) -> str:
    env = subprocess_env()
    # DVC runs each stage's `python -m stages.X` through the shell: the venv first on PATH, as `make run`.
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def _project(folder: Path) -> Path:
    folder.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, folder / name, ignore=skip)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pretrain"].update(backbone={"name": "small", "width": 4}, head={"hidden_dims": [16], "out_dim": 8},
                              epochs=1, batch_size=128, device="cpu")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    _run(folder, "git", "init", "-q")
    _run(folder, "dvc", "init", "-q")
    _run(folder, "dvc", "config", "core.analytics", "false")
    return folder


def test_push_then_a_clone_pulls_the_data_and_model_and_is_up_to_date(tmp_path):
    origin, remote = _project(tmp_path / "origin"), tmp_path / "remote"
    _run(origin, "dvc", "repro", "pretrain")  # prepare (digits) + pretrain
    # The README's commands: a default remote, committed so every clone knows it.
    _run(origin, "dvc", "remote", "add", "-d", "storage", str(remote))
    _run(origin, "git", "add", "-A")
    _run(origin, "git", "commit", "-qm", "trained")
    _run(origin, "dvc", "push")
    assert any(p.is_file() for p in (remote / "files/md5").rglob("*"))

    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "models").exists() and not (clone / "data").exists()  # git holds neither
    _run(clone, "dvc", "pull", "--with-deps", "pretrain")  # all of `dvc repro` ran: plain `dvc pull`
    for rel in PULLED:
        assert filecmp.cmp(origin / rel, clone / rel, shallow=False), rel
    assert "Data and pipelines are up to date" in _run(clone, "dvc", "status", "pretrain")
    out = _run(clone, "dvc", "repro", "pretrain")
    assert "Running stage" not in out and "didn't change" in out, out

    # A model deleted by hand comes back from the local cache, no remote and no training needed.
    (clone / "models/pretrain/encoder.pt").unlink()
    _run(clone, "dvc", "checkout", "models/pretrain/encoder.pt")
    assert filecmp.cmp(origin / "models/pretrain/encoder.pt", clone / "models/pretrain/encoder.pt", shallow=False)
