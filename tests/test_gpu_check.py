"""`make gpu-check DRY=1`: every step of the GPU check at tiny sizes on the CPU, so the command is ready
(and keeps working) for the day a GPU is lent. Figures are the machine's and are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "cuda-tests", "peak", "throughput-simclr", "reference", "throughput-byol", "proxy", "setting-fp32",
         "setting-contiguous", "setting-fused", "setting-compile"]


def test_make_gpu_check_dry_runs_every_step_and_prints_the_table_last(tmp_path):
    out = tmp_path / "out"
    # BIN: this interpreter's environment, so make runs no set-up.
    done = subprocess.run(["make", "-s", "gpu-check", "DRY=1", f"OUT={out}", f"BIN={Path(sys.executable).parent}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry"] and list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step["rows"])
    # The CUDA tests: collected (one for each GPU path) and skipped on the CPU.
    tests = report["steps"]["cuda-tests"]["rows"]
    assert len(tests) >= 20 and {status for _, status, _ in tests} == {"SKIP"}
    for path in ("bf16_autocast_loss", "bf16_epoch", "fp32_step_on_cuda", "channels_last", "fused_sgd",
                 "compiled_step", "cuda_views", "pinned_chunks", "resume_on_cuda", "service_on_cuda", "nccl"):
        assert any(path in name for name, _, _ in tests), path
    figures = {name: step["figures"] for name, step in report["steps"].items()}
    for name in ("throughput-simclr", "throughput-byol"):
        assert figures[name]["img_s"] > 0 and figures[name]["gflop_per_image"] > 0 and figures[name]["mfu"] > 0
    assert figures["reference"]["img_s"] > 0 and figures["reference"]["project_ratio"] > 0
    assert figures["peak"]["tflop_s"] > 0
    for name in STEPS[-4:]:
        assert figures[name]["vs_defaults"] > 0
    assert 0 <= figures["proxy"]["random_test_linear"] <= 1 and 0 <= figures["proxy"]["test_linear"] <= 1
    # The table comes last on stdout: a header, one row per check, a count.
    lines = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("GPU check: DRY RUN"))
    rows = lines[header + 3:-2]
    assert len(rows) == sum(len(step["rows"]) for step in report["steps"].values())
    assert {row.split()[0] for row in rows} == set(STEPS)
    assert lines[-1] == f"{len(tests)} SKIP"


def test_the_recipe_is_read_from_the_recipes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from gpu_check import DRY, FULL, recipe_cfg, recipe_overrides

    recipe = recipe_overrides("simclr")
    # What `make cifar10` trains (recipes/cifar10/simclr.yaml over common.yaml): ResNet-18, batch 256, LARS.
    assert recipe["backbone.name"] == "resnet18" and recipe["batch_size"] == 256 and recipe["optim.name"] == "lars"
    cfg = recipe_cfg(FULL, "simclr")  # the profile's batch (512) over the recipe's
    assert (cfg.backbone.name, cfg.batch_size, cfg.optim.name, cfg.head.hidden_dims) == ("resnet18", 512, "lars", [2048])
    assert recipe_cfg(FULL, "byol").head.hidden_dims == [4096]  # each method's own recipe
    assert cfg.precision == "bf16" and cfg.channels_last and cfg.device == "cuda"
    byol = recipe_cfg(DRY, "byol")
    assert byol.ssl.method == "byol" and byol.backbone.name == "small" and byol.device == "cpu"
