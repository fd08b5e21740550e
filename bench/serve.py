"""Load test: the embedding service against `mlflow models serve` of the same registered model.

Starts both servers on free loopback ports (or targets running ones with --url / --mlflow-url), checks
that they compute the same backbone features for the same images, then drives each with 1, 8 and 32
concurrent clients for a bounded time and prints images/s and p50/p99 latency, and the ratio of the
two servers' throughputs, in two modes:

- ``png``: small random PNGs at the model's side. The service gets the files in base64 (it decodes and
  pre-processes them itself); mlflow the already pre-processed float32 (N, C, S, S) arrays in [0, 1] its
  signature asks for, as {"inputs": [...]} on /invocations, made ahead of time.
- ``photo``: scikit-learn's two sample photos (427x640 JPEGs). The service gets the JPEG files; for mlflow
  the client decodes and pre-processes each photo per request (the same decoder and resize), and that
  time is part of mlflow's latency, as it is of a real client's.

With ``--repeats N`` every figure is the median of N runs, with its range.

    python bench/serve.py                                   # models:/sparsehead-encoder@champion
    python bench/serve.py --tiny --seconds 5 --repeats 3    # a digits-shaped model in a throwaway store
    python bench/serve.py --seconds 5 --images-per-request 8 --tracking-uri sqlite:////tmp/store/mlflow.db
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from pipeline.config import load_params  # noqa: E402
from pipeline.data.preprocess import InputSpec  # noqa: E402
from pipeline.tracking.registry import LoadedModel  # noqa: E402

READY_TIMEOUT_S = 300
MODES = ("png", "photo")


@dataclass
class Target:
    name: str
    url: str  # the full endpoint
    make_body: Callable[[int], bytes]  # the j-th request's body; its time counts in the request's latency
    count: int  # distinct bodies
    metrics_url: str | None = None  # the service's /metrics, for the batch sizes it formed
    pgid: int | None = None  # the server's process group, for its CPU time
    client_cpu_s: float = 0.0  # CPU time the client spent making bodies (pre-processing)

    def body(self, j: int) -> bytes:
        t0 = time.thread_time()
        try:
            return self.make_body(j % self.count)
        finally:
            self.client_cpu_s += time.thread_time() - t0


def cpu_seconds(pgid: int | None) -> float:
    """User + system CPU seconds of every process in a process group (a server and its children), from
    /proc: per-request CPU cost does not depend on what else loads the machine, unlike latency."""
    if pgid is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields[2]: the process group (the 5th field of stat)
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


@dataclass
class Result:
    requests: int
    images: int
    errors: int
    elapsed_s: float
    latencies_s: np.ndarray

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if len(self.latencies_s) else float("nan")


def fail(message: str) -> None:
    sys.exit("error: " + " ".join(message.split()))  # one line, whatever the exception text held


def tiny_store(root: Path, side: int = 8, channels: int = 1, width: int = 16) -> tuple[str, str]:
    """A digits-shaped encoder (the small ConvNet at ``width``, head 256 -> 64) registered as champion in a
    fresh sqlite store under ``root`` -> (tracking URI, model URI). Also what bench/serve_flood.py serves."""
    import mlflow
    import torch

    from pipeline import tracking
    from pipeline.config import RegisterConfig, TrackingConfig
    from pipeline.models import Encoder, EncoderSpec
    from pipeline.tracking.registry import log_encoder_model, register_encoder

    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = TrackingConfig(experiment="bench-serve", tracking_uri=uri, artifact_root=str(root / "mlartifacts"))
    tracking.setup(cfg)
    torch.manual_seed(0)
    spec = InputSpec(side, channels, (0.3,) * channels, (0.4,) * channels)
    enc = Encoder(EncoderSpec("small", spec, width=width, head_hidden=[256], head_out=64))
    with tracking.start_run(cfg, run_name="bench-encoder"):
        logged = log_encoder_model(enc.eval(), metadata={"lambda": 0.001, "form": "l1"}).model_uri
    register_encoder(logged, RegisterConfig(model_name="bench-encoder"), {"val_linear_top1": 0.5}, {})
    mlflow.set_tracking_uri(None)
    return uri, "models:/bench-encoder@champion"


def load_model(uri: str, tracking_uri: str) -> LoadedModel:
    import mlflow

    from pipeline.tracking.registry import load_registered

    if tracking_uri.startswith("sqlite:///"):  # MLflow would create an empty database there
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():
            fail(f"no MLflow database at {path} (tracking URI {tracking_uri}); run `make run` first "
                 "(or pass --tracking-uri, or --tiny)")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        return load_registered(uri)
    except Exception as exc:  # no such model, no registry, no database: all say the same thing
        fail(f"no model {uri} in the registry at {tracking_uri} ({type(exc).__name__}: {exc}); "
             "run `make run` first (or pass --model-uri / --tracking-uri, or --tiny)")
        raise  # unreachable; for type checkers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(name: str, cmd: list[str], env: dict[str, str], ready_url: str, logdir: Path) -> Iterator[int]:
    """Run ``cmd`` in its own process group until ``ready_url`` answers 200 -> the group's id; stop the
    whole group after."""
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                fail(f"{name} exited with status {proc.returncode} before it was ready; see {log}")
            if time.monotonic() > deadline:
                fail(f"{name} not ready after {READY_TIMEOUT_S} s; see {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield proc.pid  # start_new_session: the group's id is the leader's pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow serve runs uvicorn in a child process
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def png_file(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, "PNG")
    return buf.getvalue()


def photo_files() -> list[bytes]:
    """scikit-learn's two sample photos (china.jpg, flower.jpg: 427x640 JPEGs), as files."""
    from sklearn.datasets import load_sample_images

    return [Path(f).read_bytes() for f in load_sample_images().filenames]


def service_body(files: list[bytes]) -> bytes:
    return json.dumps({"images": [base64.b64encode(f).decode() for f in files]}).encode()


def mlflow_body(files: list[bytes], spec: InputSpec) -> bytes:
    """What a client of `mlflow models serve` must send for these files: decoded by the same decoder,
    resized by the same function, as float32 (N, C, S, S) in [0, 1] (the model's signature)."""
    from pipeline.data.decode import decode_image
    from pipeline.data.preprocess import fit_image, to_model_input

    images = np.stack([fit_image(decode_image(f, spec.image_size), spec) for f in files])
    return json.dumps({"inputs": to_model_input(images).numpy().tolist()}).encode()


def groups(files: list[bytes], k: int, n: int) -> list[list[bytes]]:
    """``n`` requests of ``k`` files each, cycling through ``files``."""
    return [[files[(i * k + j) % len(files)] for j in range(k)] for i in range(n)]


def check_agreement(service: Target, mlflow_target: Target) -> float:
    ours = httpx.post(service.url, content=service.body(0), headers={"content-type": "application/json"},
                      timeout=60)
    theirs = httpx.post(mlflow_target.url, content=mlflow_target.body(0),
                        headers={"content-type": "application/json"}, timeout=60)
    for name, r in (("service", ours), ("mlflow", theirs)):
        if r.status_code != 200:
            fail(f"{name} answered {r.status_code}: {r.text[:300]}")
    a = np.array([d["embedding"] for d in ours.json()["data"]], dtype=np.float32)
    b = np.asarray(theirs.json()["predictions"], dtype=np.float32)
    if a.shape != b.shape:
        fail(f"the service returned {a.shape} and mlflow {b.shape} for the same images")
    return float(np.abs(a - b).max())


class Connection:
    """A bare HTTP/1.1 keep-alive client connection: the load generator shares the machine with the
    servers, and a full client library (httpx) costs more CPU per request than a small server does."""

    def __init__(self, url: str) -> None:
        u = httpx.URL(url)
        self.host, self.port, self.path = u.host, u.port or 80, u.raw_path.decode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:] if h))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
            data = b"".join(chunks)
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


async def drive(target: Target, clients: int, seconds: float, per_request: int) -> Result:
    """``clients`` closed-loop clients, each on its own connection, posting back to back for ``seconds``;
    a request's latency includes making its body (a client's pre-processing, for mlflow's photos)."""
    latencies: list[float] = []
    errors = 0
    conns = [Connection(target.url) for _ in range(clients)]
    try:
        for i, conn in enumerate(conns):  # connect and warm both sides up, unmeasured
            await conn.post(target.body(i))
        started_at = time.perf_counter()
        deadline = started_at + seconds

        async def worker(i: int) -> None:
            nonlocal errors
            j = i
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, _ = await conns[i].post(target.body(j))
                j += clients
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started_at
    finally:
        for conn in conns:
            await conn.close()
    return Result(len(latencies), len(latencies) * per_request, errors, elapsed, np.asarray(latencies))


def run_loop(coro):  # uvloop when there is one (uvicorn[standard] brings it): a cheaper client
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def batch_totals(target: Target) -> tuple[float, float]:
    """(images, forward passes) so far, from the service's batch-size histogram."""
    if target.metrics_url is None:
        return 0.0, 0.0
    from prometheus_client.parser import text_string_to_metric_families

    totals = {}
    for family in text_string_to_metric_families(httpx.get(target.metrics_url, timeout=30).text):
        for sample in family.samples:
            if sample.name in ("embedding_batch_size_sum", "embedding_batch_size_count"):
                totals[sample.name] = sample.value
    return totals.get("embedding_batch_size_sum", 0.0), totals.get("embedding_batch_size_count", 0.0)


def targets_for(mode: str, spec: InputSpec, k: int, url: str, mlflow_url: str | None,
                pgids: dict[str, int | None]) -> list[Target]:
    """The service's and mlflow's targets for one mode (see the module's docstring)."""
    if mode == "png":
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (max(64, 8 * k), spec.image_size, spec.image_size, spec.channels),
                              dtype=np.uint8)
        reqs = groups([png_file(im) for im in images], k, len(images) // k)
        ours = [service_body(g) for g in reqs]
        theirs = [mlflow_body(g, spec) for g in reqs]  # made ahead: not counted
        mlflow_make = theirs.__getitem__
    else:
        reqs = groups(photo_files(), k, 2)
        ours = [service_body(g) for g in reqs]
        mlflow_make = lambda j: mlflow_body(reqs[j], spec)  # noqa: E731 - per request, counted
    targets = [Target("service", url.rstrip("/") + "/v1/embeddings", ours.__getitem__, len(ours),
                      url.rstrip("/") + "/metrics", pgids.get("service"))]
    if mlflow_url is not None:
        targets.append(Target("mlflow", mlflow_url.rstrip("/") + "/invocations", mlflow_make, len(reqs),
                              pgid=pgids.get("mlflow")))
    return targets


def batch_embed_rate(files: list[bytes], model: LoadedModel, folder: Path, n: int) -> float:
    """Images/s of python -m pipeline.embed's loop (decode threads, frozen encoder) over ``n`` copies of
    ``files`` written to ``folder``: what the batch path costs per image, in this process."""
    from pipeline.embed import Embedder, embed_files

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.img"  # the decoder reads the content, whatever the name
        path.write_bytes(files[i % len(files)])
        paths.append(path)
    embedder = Embedder(model.encoder)
    started_at = time.perf_counter()
    done = sum(len(b.paths) for b in embed_files(paths, embedder))
    return done / (time.perf_counter() - started_at)


def spread(values: list[float], fmt: str) -> str:
    """The median of repeats, and their range when there are several."""
    med = float(np.median(values))
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    params = load_params(REPO / "params.yaml")
    default_tracking = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default=params.serve.model_uri, help="default: %(default)s")
    p.add_argument("--tracking-uri", default=default_tracking, help="default: %(default)s")
    p.add_argument("--tiny", action="store_true",
                   help="serve a digits-shaped 8x8 grey model from a throwaway store (no `make run` needed)")
    p.add_argument("--url", help="a running service's base URL (default: start one)")
    p.add_argument("--mlflow-url", help="a running `mlflow models serve` base URL (default: start one)")
    p.add_argument("--no-mlflow", action="store_true", help="benchmark the service alone")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="per server, mode, concurrency and repeat")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--embed-files", type=int, default=2000,
                   help="files for the batch-embedding figure per mode (0: skip it)")
    p.add_argument("--warmup-s", type=float, default=3.0,
                   help="unmeasured load on each server before each mode's figures (first-call costs)")
    p.add_argument("--service-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for the service (SERVE_TORCH_THREADS=1, ...)")
    args = p.parse_args(argv)
    if args.images_per_request < 1 or args.seconds <= 0 or min(args.clients) < 1 or args.repeats < 1:
        p.error("--images-per-request, --seconds, --clients and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # here and in both servers
    logdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.tiny:
        args.tracking_uri, args.model_uri = tiny_store(logdir)
    model = load_model(args.model_uri, args.tracking_uri)
    spec = model.encoder.spec.input
    k = args.images_per_request
    # mlflow serve execs `uvicorn` through the shell: this interpreter's bin directory must be on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": args.tracking_uri,
           "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}

    pgids: dict[str, int | None] = {}
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            service_env = {**env, "SERVE_MODEL_URI": args.model_uri, "SERVE_HOST": "127.0.0.1",
                           "SERVE_PORT": str(port), "SERVE_ACCESS_LOG": "false", "SERVE_LOG_LEVEL": "warning",
                           "SERVE_MAX_IMAGES_PER_REQUEST": str(max(k, 64)),
                           "SERVE_MAX_QUEUE_IMAGES": str(max(1024, 64 * k)),
                           **dict(kv.split("=", 1) for kv in args.service_env)}
            pgids["service"] = stack.enter_context(started("service", [sys.executable, "-m", "service"],
                                                           service_env, url + "/readyz", logdir))
        mlflow_url = None
        if not args.no_mlflow:
            mlflow_url = args.mlflow_url
            if mlflow_url is None:
                port = free_port()
                mlflow_url = f"http://127.0.0.1:{port}"
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model_uri,
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
                pgids["mlflow"] = stack.enter_context(started("mlflow", cmd, env, mlflow_url + "/ping", logdir))

        print(f"model {args.model_uri} (version {model.version}, input {spec.image_size}x{spec.image_size}x"
              f"{spec.channels}, {model.encoder.feature_dim}-d backbone); {k} image(s) per request, "
              f"{args.seconds:g} s per level, {args.repeats} repeat(s); logs in {logdir}")
        for mode in args.modes:
            targets = targets_for(mode, spec, k, url, mlflow_url, pgids)
            if len(targets) == 2:
                diff = check_agreement(targets[0], targets[1])
                print(f"\n[{mode}] same images, same features: max |service - mlflow| = {diff:.2e}")
            for target in targets:  # first calls (allocations, lazy initialisation) are not the steady state
                run_loop(drive(target, 8, args.warmup_s, k))
            results: dict[tuple[str, int], list[Result]] = {}
            batches: dict[tuple[str, int], list[float]] = {}
            cpu: dict[tuple[str, int], list[float]] = {}  # server + client pre-processing CPU ms per image
            for _ in range(args.repeats):
                for target in targets:
                    for c in args.clients:
                        before, cpu_before, client_before = batch_totals(target), cpu_seconds(target.pgid), \
                            target.client_cpu_s
                        r = run_loop(drive(target, c, args.seconds, k))
                        after = batch_totals(target)
                        results.setdefault((target.name, c), []).append(r)
                        batches.setdefault((target.name, c), []).append(
                            (after[0] - before[0]) / max(after[1] - before[1], 1))
                        spent = cpu_seconds(target.pgid) - cpu_before + target.client_cpu_s - client_before
                        cpu.setdefault((target.name, c), []).append(spent * 1000 / max(r.images, 1))
            print(f"[{mode}] {'server':<8} {'clients':>7} {'images/s':>22} {'p50 ms':>20} {'p99 ms':>22} "
                  f"{'errors':>6} {'mean batch':>10} {'CPU ms/img':>18}")
            for target in targets:
                for c in args.clients:
                    rs = results[target.name, c]
                    batch = spread(batches[target.name, c], ".1f") if target.metrics_url else "-"
                    print(f"[{mode}] {target.name:<8} {c:>7} {spread([r.images_per_s for r in rs], '.1f'):>22} "
                          f"{spread([r.pct_ms(50) for r in rs], '.2f'):>20} "
                          f"{spread([r.pct_ms(99) for r in rs], '.2f'):>22} {sum(r.errors for r in rs):>6} "
                          f"{batch:>10} {spread(cpu[target.name, c], '.2f'):>18}", flush=True)
            if len(targets) == 2:
                ratios = ", ".join(
                    f"{c} client{'s' if c > 1 else ''} "
                    f"{spread([a.images_per_s / max(b.images_per_s, 1e-9) for a, b in zip(results['service', c], results['mlflow', c], strict=True)], '.2f')}x"
                    for c in args.clients)
                print(f"[{mode}] throughput ratio service/mlflow (median of the repeats' ratios): {ratios}")
            if args.embed_files:
                files = [png_file(im) for im in np.random.default_rng(1).integers(
                    0, 256, (64, spec.image_size, spec.image_size, spec.channels), dtype=np.uint8)] \
                    if mode == "png" else photo_files()
                rates = [batch_embed_rate(files, model, logdir / f"embed-{mode}", args.embed_files)
                         for _ in range(args.repeats)]
                best = max(float(np.median([r.images_per_s for r in results["service", c]])) for c in args.clients)
                print(f"[{mode}] batch embedding (pipeline.embed, {args.embed_files} files): "
                      f"{spread(rates, '.1f')} images/s; the service at its best: {best:.1f} images/s")


if __name__ == "__main__":
    main()
