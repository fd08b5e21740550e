"""What a run came from: the git commit, the DVC experiment and its baseline, and a name that says what ran.

DVC gives every stage of an experiment (``dvc exp run``, queued, ``--temp``) its name in ``DVC_EXP_NAME``
and the commit it started from in ``DVC_EXP_BASELINE_REV``; ``dvc repro`` gives neither. Runs carry them
as tags (:data:`EXP_NAME_TAG`, :data:`BASELINE_TAG`), so MLflow finds every run of one experiment.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

EXP_NAME_ENV, BASELINE_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"
EXP_NAME_TAG, BASELINE_TAG = "dvc.exp_name", "dvc.baseline_rev"


def experiment_name(env: Mapping[str, str] | None = None) -> str | None:
    """The DVC experiment this process runs in, or None outside one (``dvc repro``, a stage by hand)."""
    return (os.environ if env is None else env).get(EXP_NAME_ENV) or None


def lineage_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The MLflow tags of a run started in this process: the DVC experiment's name and baseline commit.

    Args:
        env: The environment DVC ran the stage with (default: ``os.environ``).

    Returns:
        ``{"dvc.exp_name": ..., "dvc.baseline_rev": ...}`` inside an experiment, else ``{}``.
    """
    env = os.environ if env is None else env
    tags = {EXP_NAME_TAG: env.get(EXP_NAME_ENV, ""), BASELINE_TAG: env.get(BASELINE_ENV, "")}
    return {k: v for k, v in tags.items() if v}


def run_name(what: str, *, method: str, lam: float, seed: int | str, form: str = "l1",
             update: str = "gradient") -> str:
    """A run's name that says what ran, e.g. ``pretrain simclr lambda 0.001 seed 0``.

    The form and the update rule are named only when they are not the defaults (``l1``, ``gradient``).

    Args:
        what: The stage or role (``pretrain``, ``final``, ``sweep``...).
        method: The SSL method.
        lam: SparseHead's lambda (0: the plain method).
        seed: The training seed, or a description of several (``0,1,2``).
        form: SparseHead's form.
        update: SparseHead's update rule.

    Returns:
        The name.
    """
    what = what.removesuffix(f" seed {seed}")  # "final seed 1": the seed is said once, at the end
    extra = "" if lam == 0 else "".join(f" {x}" for x, d in ((form, "l1"), (update, "gradient")) if x != d)
    return f"{what} {method} lambda {lam:g}{extra} seed {seed}"


def dvc_outputs(root: str | Path = ".") -> list[str]:
    """What ``dvc repro`` itself writes, relative to ``root``: dvc.lock and every stage's outs, metrics
    and plots in ``root/dvc.yaml`` (templated paths, ``${...}``, are skipped)."""
    try:
        doc = yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    paths = ["dvc.lock"]
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for stage in (stages or {}).values():
        if not isinstance(stage, dict):
            continue
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                path = next(iter(entry), None) if isinstance(entry, dict) else entry
                if isinstance(path, str) and "${" not in path:
                    paths.append(path)
    return paths


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's sha, with ``-dirty`` when tracked files differ from it.

    DVC deletes a stage's git-tracked outputs before running it and rewrites dvc.lock after, so those
    changes are DVC's own, not the code's: they do not count. Inside a DVC experiment HEAD is its baseline
    and the experiment's own params make the tree dirty.

    Args:
        cwd: A folder in the git working tree.

    Returns:
        The sha (``-dirty`` appended), or ``unknown`` outside a git repository.
    """
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        commit = out.stdout.strip()
        ignored = [f":(exclude){p}" for p in dvc_outputs(cwd)]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *ignored],
                               cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
