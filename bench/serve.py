"""Load test: the embedding service against `mlflow models serve` of the same registered model.

Starts both servers on free loopback ports (or targets running ones with --url / --mlflow-url), checks
that they compute the same backbone features for the same images, then drives each with 1, 8 and 32
concurrent clients for a bounded time and prints images/s and p50/p99 latency, and the ratio of the
two servers' throughputs.

Each server gets its own input format for the same images: the service PNG files in base64 (it decodes
and pre-processes them itself); mlflow the already pre-processed float32 (N, C, S, S) arrays in [0, 1]
its signature asks for, as {"inputs": [...]} on /invocations.

    python bench/serve.py                                   # models:/sparsehead-encoder@champion
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from pipeline.config import load_params  # noqa: E402
from pipeline.tracking.registry import LoadedModel  # noqa: E402

READY_TIMEOUT_S = 300


@dataclass
class Target:
    name: str
    url: str  # the full endpoint
    payloads: list[bytes]
    metrics_url: str | None = None  # the service's /metrics, for the batch sizes it formed


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


def load_model(uri: str, tracking_uri: str) -> LoadedModel:
    import mlflow

    from pipeline.tracking.registry import load_registered

    if tracking_uri.startswith("sqlite:///"):  # MLflow would create an empty database there
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():
            fail(f"no MLflow database at {path} (tracking URI {tracking_uri}); run `make run` first "
                 "(or pass --tracking-uri)")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        return load_registered(uri)
    except Exception as exc:  # no such model, no registry, no database: all say the same thing
        fail(f"no model {uri} in the registry at {tracking_uri} ({type(exc).__name__}: {exc}); "
             "run `make run` first (or pass --model-uri / --tracking-uri)")
        raise  # unreachable; for type checkers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(name: str, cmd: list[str], env: dict[str, str], ready_url: str, logdir: Path) -> Iterator[None]:
    """Run ``cmd`` in its own process group until ``ready_url`` answers 200; stop the whole group after."""
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
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow serve runs uvicorn in a child process
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def payloads(images: np.ndarray, per_request: int) -> tuple[list[bytes], list[bytes]]:
    """The same groups of images, for the service (PNG base64) and for mlflow (pre-processed arrays)."""
    from pipeline.data.preprocess import to_model_input

    ours, theirs = [], []
    for start in range(0, len(images) - per_request + 1, per_request):
        group = images[start:start + per_request]
        ours.append(json.dumps({"images": [png_b64(im) for im in group]}).encode())
        x = to_model_input(group).numpy()  # float32 (N, C, S, S) in [0, 1]: the model's signature
        theirs.append(json.dumps({"inputs": x.tolist()}).encode())
    return ours, theirs


def check_agreement(service: Target, mlflow_target: Target) -> float:
    ours = httpx.post(service.url, content=service.payloads[0], headers={"content-type": "application/json"},
                      timeout=60)
    theirs = httpx.post(mlflow_target.url, content=mlflow_target.payloads[0],
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
    """``clients`` closed-loop clients, each on its own connection, posting back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    conns = [Connection(target.url) for _ in range(clients)]
    try:
        for i, conn in enumerate(conns):  # connect and warm both sides up, unmeasured
            await conn.post(target.payloads[i % len(target.payloads)])
        started_at = time.perf_counter()
        deadline = started_at + seconds

        async def worker(i: int) -> None:
            nonlocal errors
            j = i
            while time.perf_counter() < deadline:
                body = target.payloads[j % len(target.payloads)]
                j += clients
                t0 = time.perf_counter()
                status, _ = await conns[i].post(body)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    params = load_params(REPO / "params.yaml")
    default_tracking = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default=params.serve.model_uri, help="default: %(default)s")
    p.add_argument("--tracking-uri", default=default_tracking, help="default: %(default)s")
    p.add_argument("--url", help="a running service's base URL (default: start one)")
    p.add_argument("--mlflow-url", help="a running `mlflow models serve` base URL (default: start one)")
    p.add_argument("--no-mlflow", action="store_true", help="benchmark the service alone")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="per server and concurrency level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args(argv)
    if args.images_per_request < 1 or args.seconds <= 0 or min(args.clients) < 1:
        p.error("--images-per-request, --seconds and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # here and in both servers
    model = load_model(args.model_uri, args.tracking_uri)
    spec = model.encoder.spec.input
    k = args.images_per_request
    images = np.random.default_rng(0).integers(0, 256, (max(64, 8 * k), spec.image_size, spec.image_size,
                                                        spec.channels), dtype=np.uint8)
    ours, theirs = payloads(images, k)
    logdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    # mlflow serve execs `uvicorn` through the shell: this interpreter's bin directory must be on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": args.tracking_uri,
           "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            service_env = {**env, "SERVE_MODEL_URI": args.model_uri, "SERVE_HOST": "127.0.0.1",
                           "SERVE_PORT": str(port), "SERVE_ACCESS_LOG": "false", "SERVE_LOG_LEVEL": "warning",
                           "SERVE_MAX_IMAGES_PER_REQUEST": str(max(k, 64)),
                           "SERVE_MAX_QUEUE_IMAGES": str(max(1024, 64 * k))}
            stack.enter_context(started("service", [sys.executable, "-m", "service"], service_env,
                                        url + "/readyz", logdir))
        targets = [Target("service", url.rstrip("/") + "/v1/embeddings", ours, url.rstrip("/") + "/metrics")]
        if not args.no_mlflow:
            mlflow_url = args.mlflow_url
            if mlflow_url is None:
                port = free_port()
                mlflow_url = f"http://127.0.0.1:{port}"
                cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model_uri,
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
                stack.enter_context(started("mlflow", cmd, env, mlflow_url + "/ping", logdir))
            targets.append(Target("mlflow", mlflow_url.rstrip("/") + "/invocations", theirs))

        print(f"model {args.model_uri} (version {model.version}, input {spec.image_size}x{spec.image_size}x"
              f"{spec.channels}, {model.encoder.feature_dim}-d backbone); {k} image(s) per request, "
              f"{args.seconds:g} s per level; logs in {logdir}")
        if len(targets) == 2:
            diff = check_agreement(targets[0], targets[1])
            print(f"same images, same features: max |service - mlflow| = {diff:.2e}")

        results: dict[tuple[str, int], Result] = {}
        print(f"\n{'server':<8} {'clients':>7} {'requests':>9} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'mean batch':>10}")
        for target in targets:
            for c in args.clients:
                before = batch_totals(target)
                r = run_loop(drive(target, c, args.seconds, k))
                after = batch_totals(target)
                results[target.name, c] = r
                batch = f"{(after[0] - before[0]) / max(after[1] - before[1], 1):.1f}" if target.metrics_url else "-"
                print(f"{target.name:<8} {c:>7} {r.requests:>9} {r.images_per_s:>10.1f} {r.pct_ms(50):>8.2f} "
                      f"{r.pct_ms(99):>8.2f} {r.errors:>6} {batch:>10}", flush=True)
        if len(targets) == 2:
            ratios = ", ".join(f"{c} client{'s' if c > 1 else ''} {results['service', c].images_per_s / max(results['mlflow', c].images_per_s, 1e-9):.2f}x"
                               for c in args.clients)
            print(f"\nthroughput ratio service/mlflow: {ratios}")


if __name__ == "__main__":
    main()
