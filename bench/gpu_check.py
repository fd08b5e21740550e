"""``make gpu-check``: the GPU run prepared to the minute; one table last, raw figures in one JSON.

    python bench/gpu_check.py --out gpu-check        # on a GPU: about 6 minutes on one H200, 8 at most
    python bench/gpu_check.py --out /tmp/dry --dry   # every step at tiny sizes on the CPU (the suite runs it)

Every step runs in a child process of its own under a time limit, inside one overall budget; a step that
fails, hangs or finds the budget spent is a row of the table, never an abort. The children are forked from
a server that imported torch and the pipeline once (and never touched CUDA), so a step starts in a moment.
The README's "The GPU check" says what each row measures and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project and its bench scripts, installed or not

CIFAR10_TRAIN = 50_000  # images in a CIFAR-10 epoch: seconds per epoch are quoted for it
GOAL_IMG_S = 25_000  # issue 19: SimCLR on an H200, 2 s an epoch
GOAL_RATIO = 5.0  # issue 19: against the DataLoader reference
MIN_START_S = 15.0  # a step is not started with less of the budget left
BAD = ("FAIL", "ERROR", "TIMEOUT")  # statuses that make the command exit 1


@dataclass(frozen=True)
class Profile:
    """The sizes of one run: the GPU's, or the dry run's (tiny, on the CPU)."""

    dry: bool
    device: str
    images: int  # throughput images (an epoch)
    side: int
    batch: int
    epochs: int  # per throughput run; the first is warm-up
    net: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's network
    reference_images: int = 0
    reference_epochs: int = 0
    workers: int = 0
    matmul_sides: tuple[int, ...] = ()
    matmul_seconds: float = 1.0  # of matmuls per side
    proxy_side: int = 32
    proxy_images: int | None = None  # digits' train split cut to this many (None: all)
    proxy_epochs: int = 0
    probe_epochs: int = 0
    test_timeout_s: int = 0


FULL = Profile(dry=False, device="cuda", images=CIFAR10_TRAIN, side=32, batch=512, epochs=3,
               reference_images=12_800, reference_epochs=3, workers=16, matmul_sides=(4096, 8192, 16384),
               proxy_side=32, proxy_epochs=100, probe_epochs=100, test_timeout_s=150)
# bf16 autocast on a CPU without bf16 kernels costs about 100x fp32: the dry run keeps its steps few.
DRY = Profile(dry=True, device="cpu", images=32, side=8, batch=8, epochs=2,
              net={"backbone": {"name": "small", "width": 8}, "head": {"hidden_dims": [32], "out_dim": 16}},
              reference_images=32, reference_epochs=2, workers=2, matmul_sides=(128, 256), matmul_seconds=0.1,
              proxy_side=8, proxy_images=64, proxy_epochs=2, probe_epochs=3, test_timeout_s=60)
# What the step server imports once for every step.
PRELOAD = ["numpy", "torch", "yaml", "pipeline.engine.trainer", "pipeline.evaluation", "pipeline.data.digits",
           "pretrain_throughput"]

Row = tuple[str, str, str]  # check, status, figure
PYTEST_LOG = "cuda-tests.pytest.log"
Result = tuple[list[Row], dict[str, Any]]


# --------------------------------------------------------------------------- shared by the steps


def recipe_overrides(method: str = "simclr") -> dict[str, Any]:
    """``method``'s CIFAR-10 recipe's ``pretrain.*`` settings by dotted key, from ``recipes/cifar10/`` (the one
    place ``make cifar10 METHOD=<method>`` takes them from)."""
    from pipeline.recipes import dotted, load_recipe

    return dotted(load_recipe("cifar10", method).get("pretrain", {}))


def recipe_cfg(p: Profile, method: str, **over: Any) -> Any:
    """params.yaml's pretraining with the CIFAR-10 recipe on top, for ``method``, at the profile's sizes,
    with the GPU defaults spelled out (bf16 autocast, channels_last) so the dry run takes their paths."""
    from pretrain_throughput import with_

    from pipeline.config import load_params

    cfg = load_params(ROOT / "params.yaml").pretrain
    # Every method keeps its own section (pretrain.ssl.<method>.*): switching the method leaves the
    # recipe's other settings as they are, as `-S pretrain.ssl.method=byol` on `make cifar10` would.
    settings = {**recipe_overrides(method), "ssl.method": method, "batch_size": p.batch, "device": p.device,
                "precision": "bf16", "channels_last": True, "epochs": p.epochs, **p.net, **over}
    return with_(cfg, **settings)


def synthetic(p: Profile, n: int | None = None) -> Any:
    """Random uint8 (n, side, side, 3) images: the CIFAR-10 shape; the loop puts them on the device."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (n or p.images, p.side, p.side, 3), dtype=np.uint8)


def earlier(out: Path, step: str) -> dict[str, Any]:
    """The figures an earlier step wrote ({} when it failed or did not run)."""
    path = out / "steps" / f"{step}.json"
    return json.loads(path.read_text())["figures"] if path.exists() else {}


def describe(cfg: Any, n: int, side: int) -> str:
    return (f"{cfg.backbone.name}, batch {cfg.batch_size}, {n:,} x {side}x{side}x3, "
            f"{'bf16' if cfg.precision == 'bf16' else cfg.precision}")


def goal(p: Profile, met: bool) -> str:
    return "INFO" if p.dry else ("MET" if met else "BELOW")


# --------------------------------------------------------------------------- the steps


def step_env(p: Profile, out: Path, limit_s: float) -> Result:
    """The machine, and a kernel that runs."""
    import platform

    import torch

    fig: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
                           "python": platform.python_version(), "cudnn": torch.backends.cudnn.version()}
    if p.dry:
        return [("device", "INFO", f"cpu (dry run, tiny sizes); {fig['cpus']} CPUs; torch {fig['torch']}")], fig
    if not torch.cuda.is_available():
        return [("CUDA available", "FAIL", f"torch {torch.__version__} sees no GPU")], fig
    props = torch.cuda.get_device_properties(0)
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    fig.update(device=props.name, capability=f"sm_{props.major}{props.minor}", memory_gib=props.total_memory / 2**30,
               gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported(),
               nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
    ok = float(x.sum()) == float((1 << 20) * ((1 << 20) - 1) // 2)
    return [("device", "INFO", f"{props.name}, {fig['memory_gib']:.0f} GiB, {fig['capability']}, {fig['gpus']} GPU(s), "
                               f"{fig['cpus']} CPUs; torch {fig['torch']}, CUDA {fig['cuda']}, NCCL {fig['nccl']}"),
            ("a CUDA kernel runs and sums right", "PASS" if ok else "FAIL", ""),
            ("bf16 supported", "PASS" if fig["bf16"] else "FAIL", "")], fig


def step_cuda_tests(p: Profile, out: Path, limit_s: float) -> Result:
    """``pytest -m cuda``: one row per test (collected and skipped on the dry run's CPU)."""
    junit = out / "cuda-tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/cuda", "-v", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={p.test_timeout_s}")  # a hung test fails alone; the others still report
    log = out / "logs" / PYTEST_LOG
    with log.open("w") as f:  # line by line, so that a step killed on time still shows what finished
        rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT).returncode
    if not junit.exists():
        return [("pytest -m cuda", "ERROR", last_line(log))], {"exit": rc}
    rows: list[Row] = []
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0, "ERROR": 0}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        status, figure = "PASS", f"{float(case.get('time', 0)):.1f} s"
        for tag, verdict in (("failure", "FAIL"), ("error", "ERROR"), ("skipped", "SKIP")):
            node = case.find(tag)
            if node is not None:
                status = verdict
                figure = " ".join((node.get("message") or node.text or "").split())[:90]
                break
        counts[status] += 1
        rows.append((name, status, figure))
    if not rows:
        rows.append(("pytest -m cuda", "FAIL", "no test collected"))
    return rows, {"exit": rc, **{k.lower(): v for k, v in counts.items()}}


def step_peak(p: Profile, out: Path, limit_s: float) -> Result:
    """The bf16 matrix peak of this device, measured: the best of a few large square matmuls."""
    import torch
    from pretrain_throughput import PEAK_BF16, sync

    device = torch.device(p.device)
    best, by_side = 0.0, {}
    for n in p.matmul_sides:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device)
        iters, t0 = 0, time.perf_counter()
        while iters < 10 or time.perf_counter() - t0 < p.matmul_seconds:
            a @ b
            iters += 1
            if iters % 10 == 0:
                sync(device)
        sync(device)
        by_side[n] = 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12
        best = max(best, by_side[n])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sheet = next((v / 1e12 for k, v in PEAK_BF16.items() if k in name), None)
    fig = {"tflop_s": best, "by_side": by_side, "datasheet_tflop_s": sheet}
    return [(f"bf16 matmul peak (sides {', '.join(map(str, p.matmul_sides))})", "INFO",
             f"{best:,.1f} TFLOP/s measured" + (f"; datasheet dense {sheet:,.0f}" if sheet else ""))], fig


def step_throughput(method: str) -> Callable[[Profile, Path, float], Result]:
    def run(p: Profile, out: Path, limit_s: float) -> Result:
        """The project's loop on the recipe's shape: img/s, s/epoch, peak memory, model FLOP utilisation."""
        import torch
        from pretrain_throughput import project_run, step_flops

        cfg = recipe_cfg(p, method)
        images = synthetic(p)
        fig = project_run(cfg, images, budget_s=0.6 * limit_s)
        flops = step_flops(cfg, images, torch.device(p.device))
        fig["gflop_per_image"] = flops / cfg.batch_size / 1e9
        fig["cifar10_epoch_s"] = CIFAR10_TRAIN / fig["img_s"]
        peak = earlier(out, "peak").get("tflop_s")
        if peak:
            fig["mfu"] = fig["gflop_per_image"] * 1e9 * fig["img_s"] / (peak * 1e12)
        mfu = f"MFU {fig['mfu']:.1%}" if "mfu" in fig else "MFU n/a (no peak measured)"
        text = (f"{fig['img_s']:,.0f} img/s; {fig['cifar10_epoch_s']:.2f} s per 50,000; "
                f"{fig.get('peak_gib', 0.0):.1f} GiB; {fig['gflop_per_image']:.2f} GFLOP/img; {mfu}")
        rows: list[Row] = [(f"{method}: {describe(cfg, len(images), p.side)}", "INFO", text)]
        if method == "simclr":
            rows.append((f"goal >= {GOAL_IMG_S:,} img/s (2 s a CIFAR-10 epoch)", goal(p, fig["img_s"] >= GOAL_IMG_S),
                         f"{fig['img_s']:,.0f}"))
        return rows, fig

    return run


def step_reference(p: Profile, out: Path, limit_s: float) -> Result:
    """The same model step fed by a DataLoader of torchvision v2 views: the reference ratio."""
    import torch
    from pretrain_throughput import reference_img_s

    cfg = recipe_cfg(p, "simclr")
    images = synthetic(p, p.reference_images)
    ref = reference_img_s(cfg, images, torch.device(p.device), p.workers, p.reference_epochs, repeats=1)[0]
    fig: dict[str, Any] = {"img_s": ref, "workers": p.workers, "images": len(images)}
    rows: list[Row] = [(f"DataLoader, {p.workers} workers, torchvision v2 views, the same step", "INFO",
                        f"{ref:,.0f} img/s")]
    project = earlier(out, "throughput-simclr").get("img_s")
    if project:
        fig["project_ratio"] = project / ref
        rows.append((f"project / DataLoader (goal >= {GOAL_RATIO:.0f}x)", goal(p, fig["project_ratio"] >= GOAL_RATIO),
                     f"{fig['project_ratio']:.1f}x"))
    return rows, fig


def step_setting(label: str, key: str, value: Any) -> Callable[[Profile, Path, float], Result]:
    def run(p: Profile, out: Path, limit_s: float) -> Result:
        """SimCLR on the recipe's shape with one GPU setting switched from its default."""
        import torch
        from pretrain_throughput import project_run

        if key == "compile" and p.dry:
            # Inductor's C++ build takes minutes on 2 cores: the dry run traces and differentiates the
            # graph (dynamo + AOT autograd) and leaves code generation to the GPU run.
            torch.compile = functools.partial(torch.compile, backend="aot_eager")
        cfg = recipe_cfg(p, "simclr", **{key: value})
        fig = project_run(cfg, synthetic(p), budget_s=0.7 * limit_s)
        default = earlier(out, "throughput-simclr").get("img_s")
        text = f"{fig['img_s']:,.0f} img/s"
        if default:
            fig["vs_defaults"] = fig["img_s"] / default
            text += f" = {fig['vs_defaults']:.2f}x the defaults"
        if key == "compile":
            text += f" (epoch 1 with compiling: {fig['first_epoch_s']:.0f} s)"
        if fig["epochs"] < 2:
            text += "; one epoch in the time limit: warm-up included"
        return [(label, "INFO", text)], fig

    return run


def step_proxy(p: Profile, out: Path, limit_s: float) -> Result:
    """Digits at the CIFAR shape, trained with the CIFAR-10 recipe: the linear probe must beat the random
    encoder of the same architecture."""
    import numpy as np
    import torch

    from pipeline.config import EvaluateConfig, ProbeConfig
    from pipeline.data.digits import load_digits_dataset
    from pipeline.data.format import Split
    from pipeline.data.preprocess import InputSpec, fit_image
    from pipeline.data.splits import train_val_split
    from pipeline.engine.trainer import train
    from pipeline.evaluation import evaluate_encoder

    ds = load_digits_dataset(0.2, 0)
    spec = InputSpec(p.proxy_side, 3, (0.0,) * 3, (1.0,) * 3)  # only the side and channels are read

    def upscale(split: Split, n: int | None = None) -> Split:
        keep = split.subset(np.arange(min(n or len(split), len(split))))
        return Split(np.stack([fit_image(np.asarray(im), spec) for im in keep.images]), keep.labels)

    train_split, test = upscale(ds.train, p.proxy_images), upscale(ds.test)
    cfg = recipe_cfg(p, "simclr", epochs=p.proxy_epochs)
    encoder = train(cfg, train_split.images, seed=0, progress=False).encoder
    fit, val = train_val_split(train_split, 0.1, 0)
    ev = EvaluateConfig(probe=ProbeConfig(epochs=p.probe_epochs), random_baseline=True)
    m = evaluate_encoder(encoder, fit, val, test, len(ds.classes), ev, torch.device(p.device), 0).metrics
    k = min(ev.knn_k)
    fig = {"test_linear": m["test_linear_top1"], "random_test_linear": m["test_linear_top1"] - m["ssl_gain_linear"],
           f"test_knn{k}": m[f"test_knn{k}_top1"], f"random_test_knn{k}": m[f"test_knn{k}_top1"] - m["ssl_gain_knn"],
           "epochs": p.proxy_epochs, "images": len(train_split), "steps": p.proxy_epochs * (len(train_split) // cfg.batch_size)}
    status = "INFO" if p.dry else ("PASS" if m["ssl_gain_linear"] > 0 else "FAIL")
    return [(f"digits at {p.proxy_side}x{p.proxy_side}x3, CIFAR-10 recipe, {p.proxy_epochs} epochs "
             f"({fig['steps']} steps): linear probe above the random encoder", status,
             f"test {fig['test_linear']:.3f} vs {fig['random_test_linear']:.3f}; kNN@{k} {fig[f'test_knn{k}']:.3f} "
             f"vs {fig[f'random_test_knn{k}']:.3f}")], fig


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: float  # on the GPU; the dry run's steps take seconds
    run: Callable[[Profile, Path, float], Result]


# In order of what the GPU's minutes must answer first; the compile step (minutes of compiling) last.
STEPS = [
    Step("env", 30, step_env),
    Step("cuda-tests", 210, step_cuda_tests),
    Step("peak", 30, step_peak),
    Step("throughput-simclr", 90, step_throughput("simclr")),
    Step("reference", 90, step_reference),
    Step("throughput-byol", 90, step_throughput("byol")),
    Step("proxy", 90, step_proxy),
    Step("setting-fp32", 60, step_setting("bf16 autocast off (fp32)", "precision", "fp32")),
    Step("setting-contiguous", 60, step_setting("channels_last off (NCHW)", "channels_last", False)),
    Step("setting-fused", 60, step_setting("fused SGD on", "optim.fused", True)),
    Step("setting-compile", 150, step_setting("torch.compile on", "compile", True)),
]


# --------------------------------------------------------------------------- running them


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one machine: NCCL's bootstrap stays on loopback
    return env


def run_child(name: str, dry: bool, out: Path, limit_s: float, log: Path) -> None:
    """One step, in a forked child: its own session (a timeout kills all it started), output to ``log``."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # A child of the forkserver inherits its start method; what the step starts (DataLoader workers) takes
    # Linux's usual fork, as in any run (the server's would re-import everything in each worker).
    multiprocessing.set_start_method("fork", force=True)
    p = DRY if dry else FULL
    step = next(s for s in STEPS if s.name == name)
    t0 = time.perf_counter()
    rows, figures = step.run(p, out, limit_s)
    cpu = sum(getattr(resource.getrusage(who), k) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for k in ("ru_utime", "ru_stime"))
    (out / "steps" / f"{name}.json").write_text(json.dumps(
        {"rows": rows, "figures": figures, "seconds": time.perf_counter() - t0, "cpu_s": cpu}, indent=2,
        default=str))


def pytest_rows(log: Path) -> list[Row]:
    """The tests a killed ``pytest -v`` finished, from its log lines (``path::test PASSED [ 4%]``)."""
    rows: list[Row] = []
    if not log.exists():
        return rows
    verdicts = {"PASSED": "PASS", "FAILED": "FAIL", "SKIPPED": "SKIP", "ERROR": "ERROR"}
    for line in log.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and "::" in words[0] and words[1] in verdicts:
            path, _, test = words[0].partition("::")
            rows.append((f"{Path(path).stem}::{test}", verdicts[words[1]], "(from the log of the killed run)"))
    return rows


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:110] if lines else "no output"


def run_all(p: Profile, out: Path, budget_s: float, only: set[str] | None) -> int:
    os.environ.update(child_env())
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for old in (out / "steps").glob("*.json"):
        old.unlink()
    start = time.monotonic()
    report: dict[str, Any] = {"dry": p.dry, "profile": asdict(p), "budget_s": budget_s,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": {}}
    for step in STEPS:
        if only and step.name not in only:
            continue
        left = budget_s - (time.monotonic() - start)
        entry: dict[str, Any] = {"limit_s": step.limit_s}
        if left < MIN_START_S:
            entry.update(status="skipped", seconds=0.0, rows=[(step.name, "SKIP", "the time budget is spent")])
            report["steps"][step.name] = entry
            continue
        limit = step.limit_s if p.dry else min(step.limit_s, left)
        log = out / "logs" / f"{step.name}.log"
        t0 = time.monotonic()
        proc = ctx.Process(target=run_child, args=(step.name, p.dry, out, limit, log), name=step.name)
        proc.start()
        proc.join(limit)
        rc = proc.exitcode
        if rc is None:  # still running: kill its session, with its pytest, torchrun and loader workers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.join()
        seconds = time.monotonic() - t0
        result = out / "steps" / f"{step.name}.json"
        if rc is None:
            done_rows = pytest_rows(out / "logs" / PYTEST_LOG) if step.name == "cuda-tests" else []
            entry.update(status="timeout", rows=done_rows + [(step.name, "TIMEOUT", f"killed after {limit:.0f} s")])
        elif rc != 0 or not result.exists():
            entry.update(status="error", rows=[(step.name, "ERROR", last_line(log))])
        else:
            entry.update(status="ok", **json.loads(result.read_text()))
        entry.update(seconds=seconds, log=str(log))
        report["steps"][step.name] = entry
        print(f"[gpu-check] {step.name}: {entry['status']} in {seconds:.0f} s", file=sys.stderr, flush=True)
    report["seconds"] = time.monotonic() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(table(report, out))
    bad = [r for s in report["steps"].values() for r in s["rows"] if r[1] in BAD]
    return 1 if bad else 0


def table(report: dict[str, Any], out: Path) -> str:
    env = report["steps"].get("env", {}).get("figures", {})
    where = "DRY RUN: tiny sizes on the CPU (figures exercise the code, they measure nothing)" if report["dry"] \
        else env.get("device", "no GPU")
    head = (f"GPU check: {where}; {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget; "
            f"raw figures in {out / 'gpu_check.json'}")
    lines = [head, f"{'step':<19} {'check':<72} {'status':<7} figure", "-" * 140]
    for name, entry in report["steps"].items():
        for check, status, figure in entry["rows"]:
            lines.append(f"{name:<19} {check[:72]:<72} {status:<7} {figure}")
    counts = {s: sum(1 for e in report["steps"].values() for r in e["rows"] if r[1] == s)
              for s in ("PASS", "FAIL", "ERROR", "TIMEOUT", "SKIP", "MET", "BELOW")}
    lines.append("-" * 140)
    lines.append("; ".join(f"{v} {k}" for k, v in counts.items() if v))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, logs/ and steps/")
    ap.add_argument("--dry", action="store_true", help="every step at tiny sizes on the CPU")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all steps (GPU run)")
    ap.add_argument("--only", help="comma-separated steps (default: all)")
    args = ap.parse_args()
    p = DRY if args.dry else FULL
    out = args.out.resolve()
    unknown = set(args.only.split(",")) - {s.name for s in STEPS} if args.only else set()
    if unknown:
        ap.error(f"--only: unknown steps {sorted(unknown)}; choose from {[s.name for s in STEPS]}")
    sys.exit(run_all(p, out, args.budget, set(args.only.split(",")) if args.only else None))


if __name__ == "__main__":
    main()
