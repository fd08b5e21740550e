"""Abuse benchmark: how the embedding service holds up against costly images, huge headers and slow clients.

Registers a digits-shaped 8x8 grey encoder (64 input pixels; bench/serve.py's tiny_store) in a throwaway
sqlite MLflow store, starts ``python -m service`` on a free loopback port with the repository's settings, and measures:

1. sockets: how long a 50 MB request header takes to be refused and /healthz's latency meanwhile; how
   long a client that sends 10 of its announced 100 body bytes (or half a header) holds its connection;
2. flood: ``--flood-clients`` connections posting requests of ``--flood-images`` zero-filled RGBA PNGs of
   ``--flood-size`` back to back for ``--seconds``, while one client posts a good one-image request in a
   loop: the good request's p50/p99/max latency, the flood's answers, and the server's peak memory (RSS).

Everything is bounded in time (requests time out, waits have limits) and stays on 127.0.0.1.

    python bench/serve_flood.py                      # the figures in the README's service section
    python bench/serve_flood.py --seconds 10 --flood-size 2048x2048
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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from serve import tiny_store  # noqa: E402 - bench/serve.py, beside this file

READY_TIMEOUT_S = 120
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5.0) -> int:
    """A bare GET; the status code (0 when the server did not answer in time)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    except OSError:
        return 0


@contextlib.contextmanager
def server(tracking_uri: str, model_uri: str, logdir: Path, root: Path = REPO) -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SERVE_MODEL_URI": model_uri,
           "SERVE_HOST": HOST, "SERVE_PORT": str(port), "SERVE_ACCESS_LOG": "false",
           "SERVE_LOG_LEVEL": "warning", "SERVE_TORCH_THREADS": "1",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    log = logdir / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while http_get(port, "/readyz", timeout=2) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: the service did not become ready; see {log}")
            time.sleep(0.2)
        yield port, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS) or its peak so far (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------- sockets

def huge_header(port: int, megabytes: int, limit_s: float) -> tuple[float, str]:
    """Send a request whose one header is ``megabytes`` MB -> (seconds until the server answered or
    closed, what it did)."""
    chunk = b"a" * (1 << 20)
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=limit_s) as s:
        try:
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode())
            for _ in range(megabytes):
                s.sendall(chunk)
            s.sendall(b"\r\n\r\n")
            head = s.recv(128)
        except (BrokenPipeError, ConnectionResetError):
            return time.perf_counter() - started, "closed while sending"
        except TimeoutError:
            return time.perf_counter() - started, f"no answer within {limit_s:g} s"
    what = head.split(b"\r\n", 1)[0].decode("latin-1") if head else "closed"
    return time.perf_counter() - started, what


def slow_client(port: int, request: bytes, limit_s: float) -> tuple[float, str]:
    """Send ``request`` (incomplete) and wait -> (seconds the server kept the connection, what it did)."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=limit_s) as s:
        s.sendall(request)
        try:
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except TimeoutError:
            return time.perf_counter() - started, f"still open after {limit_s:g} s (the bench gave up)"
        except ConnectionResetError:
            data = data or b""
    status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed without an answer"
    return time.perf_counter() - started, status


def watch_healthz(port: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        http_get(port, "/healthz", timeout=30)
        out.append(time.perf_counter() - t0)
        stop.wait(0.05)


def socket_phase(port: int, args: argparse.Namespace) -> None:
    stop, lat = threading.Event(), []
    watcher = threading.Thread(target=watch_healthz, args=(port, stop, lat), daemon=True)
    watcher.start()
    took, what = huge_header(port, args.header_mb, args.slow_limit)
    stop.set()
    watcher.join()
    print(f"{args.header_mb} MB header: refused after {took:.2f} s ({what}); /healthz meanwhile: "
          f"max {max(lat) * 1000:.0f} ms, p50 {np.percentile(lat, 50) * 1000:.1f} ms over {len(lat)} probes")
    body = (f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n\r\n").encode() + b'{"images":'
    took, what = slow_client(port, body, args.slow_limit)
    print(f"slow body (10 of 100 bytes): connection held {took:.2f} s -> {what}")
    took, what = slow_client(port, f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}\r\n".encode(), args.slow_limit)
    print(f"slow header (half a header): connection held {took:.2f} s -> {what}")


# ------------------------------------------------------------------------------------- the flood

def png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def post(port: int, body: bytes, timeout: float) -> tuple[int, float]:
    """One request on a fresh connection -> (status, seconds); status 0 when it timed out."""
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n")
            await reader.read()  # to the close
            return int(head.split(b" ", 2)[1]), time.perf_counter() - t0
    except TimeoutError:
        return 0, time.perf_counter() - t0
    except (ConnectionError, asyncio.IncompleteReadError):
        return -1, time.perf_counter() - t0
    finally:
        if writer is not None:
            writer.close()


async def flood_phase(port: int, pid: int, args: argparse.Namespace) -> None:
    w, h = (int(v) for v in args.flood_size.lower().split("x"))
    big = png_b64(np.zeros((h, w, 4), np.uint8))
    flood_body = json.dumps({"images": [big] * args.flood_images}).encode()
    good_body = json.dumps({"images": [png_b64(np.full((8, 8), 9, np.uint8))]}).encode()
    print(f"flood: {args.flood_clients} clients x {args.flood_images} zero-filled {w}x{h} RGBA PNGs "
          f"({len(flood_body) / 1e3:.0f} kB per request), {args.seconds:g} s; one good 8x8 request in a loop")
    for _ in range(5):  # warm up the good path
        await post(port, good_body, args.timeout)
    rss_before = rss_mb(pid)
    deadline = time.perf_counter() + args.seconds
    good: list[tuple[int, float]] = []
    flood: list[tuple[int, float]] = []
    peak = [rss_before]

    async def flooder() -> None:
        while time.perf_counter() < deadline:
            flood.append(await post(port, flood_body, min(args.timeout, deadline - time.perf_counter() + 1)))

    async def good_client() -> None:
        while time.perf_counter() < deadline:
            good.append(await post(port, good_body, args.timeout))
            await asyncio.sleep(0.02)

    async def sampler() -> None:
        while time.perf_counter() < deadline + args.timeout:
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.1)

    sample = asyncio.create_task(sampler())
    await asyncio.gather(good_client(), *(flooder() for _ in range(args.flood_clients)))
    sample.cancel()
    hwm = rss_mb(pid, "VmHWM")
    lat = np.array([t for s, t in good if s == 200]) * 1000
    bad = Counter(s for s, _ in good if s != 200)
    statuses = Counter(s for s, _ in flood)
    flood_lat = np.array([t for _, t in flood]) * 1000
    print(f"good requests: {len(lat)} ok, others {dict(bad) or 'none'} (0 = timed out after {args.timeout:g} s); "
          f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms"
          if len(lat) else f"good requests: none answered 200 ({dict(bad)})")
    print(f"flood requests: {dict(statuses)} (0 = timed out); latency p50 {np.percentile(flood_lat, 50):.0f} ms, "
          f"max {flood_lat.max():.0f} ms")
    print(f"server RSS: {rss_before:.0f} MB before, {max(peak):.0f} MB peak sampled, VmHWM {hwm:.0f} MB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="flood duration")
    p.add_argument("--timeout", type=float, default=60.0, help="per request")
    p.add_argument("--flood-clients", type=int, default=4)
    p.add_argument("--flood-images", type=int, default=8)
    p.add_argument("--flood-size", default="3999x4000", help="WxH of each flood PNG")
    p.add_argument("--header-mb", type=int, default=50)
    p.add_argument("--slow-limit", type=float, default=30.0, help="how long to wait on a slow connection")
    p.add_argument("--service-root", type=Path, default=REPO,
                   help="where `python -m service` runs: another checkout's code, to compare (default: this one)")
    p.add_argument("--skip-sockets", action="store_true")
    p.add_argument("--skip-flood", action="store_true")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    tracking_uri, model_uri = tiny_store(root)
    if not args.skip_sockets:
        with server(tracking_uri, model_uri, root, args.service_root) as (port, _):
            socket_phase(port, args)
    if not args.skip_flood:  # a fresh server: the socket phase's leftovers must not count here
        with server(tracking_uri, model_uri, root, args.service_root) as (port, proc):
            asyncio.run(flood_phase(port, proc.pid, args))
    print(f"logs in {root}")


if __name__ == "__main__":
    main()
