"""The throughput benchmark runs end to end in its --quick mode (figures are not checked: they are machine's)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_throughput_quick_mode_reports_every_figure(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "pretrain_throughput.py"), "--quick", "--threads", "1",
                          "--streaming", "--params", str(tmp_path / "none.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report["device"] == "cpu" and report["torch_threads"] == 1
    for key in ("project_img_s", "reference_img_s"):
        assert 0 < report[key]["min"] <= report[key]["median"] <= report[key]["max"]
    assert report["speedup_vs_reference"] > 0 and report["augment_share"] > 0
    assert report["streaming"]["img_s"]["median"] > 0 and report["streaming"]["chunk_images"] == 64
    assert report["gflop_per_image"] > 0 and "mfu" not in report  # no peak to compare with on the CPU
