"""``dvc plots show`` writes a page that needs no network: the project's .dvc/config names .dvc/plots.html,
which inlines Vega, Vega-Lite and Vega-Embed (tools/offline_plots.py), and every plot of dvc.yaml renders
into it. The page is grepped for network addresses."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tools.offline_plots import LIBRARIES, page

REPO = Path(__file__).resolve().parents[1]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000" "1f15c4890000000d49444154789c6360000002000"
                    "1e221bc330000000049454e44ae426082")


def _columns(entry: dict) -> list[str]:
    cols = []
    for key in ("x", "y"):
        v = entry.get(key)
        if isinstance(v, str):
            cols.append(v)
        elif isinstance(v, dict):
            cols += [c for c in v.values() for c in (c if isinstance(c, list) else [c])]
        elif isinstance(v, list):
            cols += v
    return cols or ["step", "value"]


def _plot_files(dvc_yaml: dict) -> dict[str, list[str]]:
    """Every plot file dvc.yaml declares (stage plots and top-level plots), with the columns it needs."""
    files: dict[str, list[str]] = {}
    for stage in dvc_yaml.get("stages", {}).values():
        for entry in stage.get("plots", []):
            path, props = (next(iter(entry.items())) if isinstance(entry, dict) else (entry, {}))
            files.setdefault(path, []).extend(_columns(props or {}))
    for entry in dvc_yaml.get("plots", []) or []:
        name, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        props = props or {}
        for key in ("x", "y"):
            if isinstance(props.get(key), dict):
                for path, cols in props[key].items():
                    files.setdefault(path, []).extend(cols if isinstance(cols, list) else [cols])
        if not any(isinstance(props.get(k), dict) for k in ("x", "y")):
            files.setdefault(name, []).extend(_columns(props))
    return files


def test_dvc_plots_show_needs_no_network(tmp_path):
    work = tmp_path / "p"
    (work / ".dvc").mkdir(parents=True)
    for name in ("config", "plots.html"):
        shutil.copy(REPO / ".dvc" / name, work / ".dvc" / name)
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    files = _plot_files(yaml.safe_load((REPO / "dvc.yaml").read_text()))
    assert any(p.endswith(".csv") for p in files) and any(p.endswith(".png") for p in files)
    for rel, cols in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".png"):
            path.write_bytes(PNG)
            continue
        cols = list(dict.fromkeys(cols))
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows([[i % 3 + j for j in range(len(cols))] for i in range(6)])
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    dvc = str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.run([dvc, "plots", "show", "-o", "out"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (work / "out/index.html").read_text()

    # The libraries are in the page, exactly the pinned builds, and the page is the shipped template's.
    assert (REPO / ".dvc/plots.html").read_text() == page([(f"{n}@{v}", s) for n, v, s in _shipped()])
    for name, _version, source in _shipped():
        assert f"<script>{source}</script>" in html, name
        html = html.replace(source, "")
    # What remains is DVC's page: every plot of dvc.yaml, and no address to fetch anything from.
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage_csvs = {next(iter(e)) if isinstance(e, dict) else e for st in doc["stages"].values()
                  for e in st.get("plots", [])} - {p for p in files if not p.endswith(".csv")}
    assert html.count("vegaEmbed('#") == len(stage_csvs) + len(doc.get("plots") or [])
    assert not re.findall(r"<(?:script|link|iframe)[^>]*(?:src|href)=", html)
    assert all(not re.match(r"[a-z]+:|//", src) for src in re.findall(r'<img src="([^"]*)"', html))
    schemas = re.findall(r'"\$schema": "(https://vega\.github\.io/schema/[^"]+)"', html)  # names, not fetched
    rest = re.sub(r'"\$schema": "https://vega\.github\.io/schema/[^"]+"', "", html)
    assert schemas and not re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", rest, flags=re.I)


def _shipped() -> list[tuple[str, str, str]]:
    """(name, version, source) of each library as inlined in .dvc/plots.html, checked against the pins."""
    text = (REPO / ".dvc/plots.html").read_text()
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    out = []
    for (name, version, _, sha), source in zip(LIBRARIES, scripts, strict=False):
        assert hashlib.sha256(source.encode()).hexdigest() == sha, name
        out.append((name, version, source))
    return out
