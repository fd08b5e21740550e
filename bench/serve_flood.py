"""Abuse benchmark: what each attack shape costs a small good client of the embedding service.

Registers a digits-shaped 8x8 grey encoder (bench/serve.py's tiny_store) in a throwaway sqlite MLflow store.
Then, for each shape (issue 20's, and issue 10's PNG floods), it starts ``python -m service`` afresh on a
free loopback port with the repository's settings, warms it up, and for ``--seconds`` drives the shape from
a separate process while one client posts a good one-image request (an 8x8 PNG) on a fresh connection
every 20 ms. Per shape it prints the good client's p50 / p99 / max latency and its non-200 answers, the
shape's answers (HTTP statuses; ``closed``: closed without an answer; ``reset``; ``held``: no answer when
the shape ended; ``no connection``), and the server's RSS: idle after warm-up, and its peak (VmHWM, reset
when the shape starts) with the ratio.

The socket checks of issue 10 (a 50 MB header; a client sending 10 of 100 body bytes; half a header) run
first on a server of their own, as before. Everything is bounded in time and stays on 127.0.0.1.

    python bench/serve_flood.py                                   # every shape, 10 s each
    python bench/serve_flood.py --shapes trailers tiny-chunks --seconds 5
    python bench/serve_flood.py --service-root /tmp/main          # another checkout's service ("before")
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench import serve_hostile as hostile  # noqa: E402

READY_TIMEOUT_S = 180
HOST = "127.0.0.1"
GOOD_TIMEOUT_S = 30.0
MB = 1 << 20


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
def server(tracking_uri: str, model_uri: str, logdir: Path, root: Path = REPO,
           fd_limit: int | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """``python -m service`` from ``root`` on a free port, once ready; ``fd_limit``: its open-file limit
    (soft and hard)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SERVE_MODEL_URI": model_uri,
           "SERVE_HOST": HOST, "SERVE_PORT": str(port), "SERVE_ACCESS_LOG": "false",
           "SERVE_LOG_LEVEL": "warning", "SERVE_TORCH_THREADS": "1", "PYTHONPATH": str(root),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

    def limit_files() -> None:
        if fd_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    log = logdir / "service.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit_files)
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
    """The process's resident memory (VmRSS) or its peak since the last reset (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux: ``5`` in /proc/PID/clear_refs)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ------------------------------------------------------------------------------- issue 10's sockets

def huge_header(port: int, megabytes: int, limit_s: float) -> tuple[float, str]:
    """Send a request whose one header is ``megabytes`` MB -> (seconds until the server answered or
    closed, what it did)."""
    chunk = b"a" * MB
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
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except TimeoutError:
            return time.perf_counter() - started, f"still open after {limit_s:g} s (the bench gave up)"
        except ConnectionResetError:
            pass
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


# ------------------------------------------------------------------------------------- the shapes

def png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def json_post(body: bytes) -> bytes:
    return hostile.request_head("POST", "/v1/embeddings", {"Content-Type": "application/json",
                                                           "Content-Length": str(len(body))}) + body


def images_post(images: list[bytes]) -> bytes:
    return json_post(json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode())


CHUNKED_HEAD = hostile.request_head("POST", "/v1/embeddings", {"Content-Type": "application/json",
                                                               "Transfer-Encoding": "chunked"})
Send = Callable[[asyncio.StreamWriter], Awaitable[None]]
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


async def attempt(port: int, deadline: float, send: Send, out: Counter, every_answer: bool = False) -> None:
    """One connection: ``send`` writes while the first answer (or, with ``every_answer``, all of them until
    the server closes) is awaited until ``deadline``; what happened is counted in ``out``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port),
                                                max(0.05, deadline - time.monotonic()))
    except (OSError, TimeoutError):
        out["no connection"] += 1
        await asyncio.sleep(0.05)
        return

    async def sender() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await send(writer)

    task = asyncio.create_task(sender())
    try:
        async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
            if every_answer:
                data = await reader.read()  # until the server closes
                statuses = _STATUS.findall(data)
                out.update(s.decode() for s in statuses)
                if not statuses:
                    out["closed"] += 1
            else:
                line = await reader.readline()
                m = _STATUS.match(line)
                out[m.group(1).decode() if m else "closed"] += 1
    except TimeoutError:
        out["held"] += 1
    except (ConnectionError, OSError):
        out["reset"] += 1
    finally:
        task.cancel()
        writer.transport.abort()


def once(payload: bytes) -> Send:
    async def send(writer: asyncio.StreamWriter) -> None:
        view = memoryview(payload)
        for at in range(0, len(view), MB):  # a MB at a time: the transport never copies the whole
            writer.write(view[at:at + MB])
            await writer.drain()
    return send


def then_forever(first: bytes, unit: bytes) -> Send:
    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(first)
        while True:
            writer.write(unit)
            await writer.drain()
    return send


def then_hold(first: bytes) -> Send:
    async def send(writer: asyncio.StreamWriter) -> None:
        await once(first)(writer)
        await asyncio.Event().wait()  # and send nothing more
    return send


@dataclass
class Shape:
    """An attack: ``clients`` connections in a loop, each sending what ``build`` makes."""

    what: str
    clients: int
    build: Callable[[argparse.Namespace], Send]
    every_answer: bool = False  # count every answer on a connection (pipelining)
    fd_limit: int | None = None  # the server's open-file limit for this shape


def _trailers(_: argparse.Namespace) -> Send:
    body = json.dumps({"images": [png_b64(np.full((8, 8), 9, np.uint8))]}).encode()
    return then_forever(CHUNKED_HEAD + hostile.chunked(body) + b"0\r\n", b"a:b\r\n" * 13_107)


def _tiny_chunks(_: argparse.Namespace) -> Send:
    return then_forever(CHUNKED_HEAD + hostile.chunked(b'{"images": ["'), b"1\r\nA\r\n" * 10_922)


def _held_bodies(a: argparse.Namespace) -> Send:
    head = hostile.request_head("POST", "/v1/embeddings", {"Content-Type": "application/json",
                                                           "Content-Length": str(a.request_bytes)})
    return then_hold(head + b'{"images": ["' + b"A" * (a.request_bytes - 14))


def _long_boundary(_: argparse.Namespace) -> Send:
    boundary = "b" * 300
    body = f"--{boundary}--\r\n".encode()
    return once(hostile.request_head("POST", "/v1/embeddings", {
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}) + body)


def _almost_boundaries(_: argparse.Namespace) -> Send:
    body = hostile.almost_boundaries_multipart(b"flood", 60_000_000)
    return once(hostile.request_head("POST", "/v1/embeddings", {
        "Content-Type": "multipart/form-data; boundary=flood", "Content-Length": str(len(body))}) + body)


def _huge_ints(_: argparse.Namespace) -> Send:
    digits = "9" * 2200
    return once(json_post(f'{{"images": [{{"data": "AAAA", "shape": [{digits}, {digits}]}}]}}'.encode()))


def _pngs(side: tuple[int, int]) -> Callable[[argparse.Namespace], Send]:
    def build(_: argparse.Namespace) -> Send:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGBA", side).save(buf, "PNG")
        return once(images_post([buf.getvalue()] * 8))
    return build


SHAPES: dict[str, Shape] = {
    "trailers": Shape("a chunked body, then trailer lines a:b without end", 1, _trailers),
    "json-lists": Shape("a 63 MB JSON body of 21 million []", 1,
                        lambda _: once(json_post(hostile.empty_lists_json(21_000_000)))),
    "progressive-jpeg": Shape("a 4000x4000 progressive JPEG of 5,000 scans (186 kB)", 2,
                              lambda _: once(images_post([hostile.many_scan_jpeg(4000, 4000, 5000)]))),
    "tiff-tiles": Shape("a 1000x1000 TIFF of a million 1x1 tiles (6 MB)", 2,
                        lambda _: once(images_post([hostile.tiled_tiff(1000, 1000, 1)]))),
    "multipart-boundaries": Shape("a 60 MB multipart part of almost-boundaries", 1, _almost_boundaries),
    "held-bodies": Shape("32 connections each sending 64 MiB - 1 of a 64 MiB body, then waiting", 32,
                         _held_bodies),
    "idle-sockets": Shape("1,100 idle connections, the server under an open-file limit of 1,024", 1100,
                          lambda _: then_hold(b""), fd_limit=1024),
    "tiny-chunks": Shape("4 connections streaming a body in 1-byte chunks", 4, _tiny_chunks),
    "huge-ints": Shape("a raw array's shape of two 2,200-digit integers", 1, _huge_ints),
    "long-boundary": Shape("a multipart boundary of 300 characters", 1, _long_boundary),
    "pipelined": Shape("20,001 pipelined GETs in one write", 1,
                       lambda _: once(hostile.request_head("GET", "/healthz", {}) * 20_001), every_answer=True),
    "header-one-read": Shape("an 80 KiB header block in one write", 1,
                             lambda _: once(hostile.padded_header_block(80 * 1024))),
    "png-16mp": Shape("4 clients x 8 zero-filled 3999x4000 RGBA PNGs (issue 10)", 4, _pngs((3999, 4000))),
    "png-2048": Shape("4 clients x 8 zero-filled 2048x2048 RGBA PNGs (within the per-image budget)", 4,
                      _pngs((2048, 2048))),
}


def attack(name: str, port: int, args: argparse.Namespace, ready: Any, results: Any) -> None:
    """The attacking process: build the shape's payload, signal ``ready``, drive it for ``args.seconds``,
    put the answers' counts on ``results``."""
    shape = SHAPES[name]
    send = shape.build(args)
    out: Counter = Counter()

    async def client(deadline: float) -> None:
        while time.monotonic() < deadline:
            await attempt(port, deadline, send, out, shape.every_answer)

    async def main() -> None:
        ready.set()
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(*(client(deadline) for _ in range(shape.clients)))

    asyncio.run(main())
    results.put(dict(out))


# ------------------------------------------------------------------------------------- the good client

async def good_post(port: int, body: bytes) -> tuple[int, float]:
    """One good request on a fresh connection -> (status, seconds); 0: timed out, -1: reset or closed."""
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(GOOD_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(hostile.request_head("POST", "/v1/embeddings", {
                "Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}) + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n")
            await reader.read()
            return int(head.split(b" ", 2)[1]), time.perf_counter() - t0
    except TimeoutError:
        return 0, time.perf_counter() - t0
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return -1, time.perf_counter() - t0
    finally:
        if writer is not None:
            writer.transport.abort()


async def good_client(port: int, pid: int, seconds: float) -> tuple[list[tuple[int, float]], float]:
    """Good requests every 20 ms for ``seconds`` -> their (status, seconds), and the RSS sampled at peak."""
    body = json.dumps({"images": [png_b64(np.full((8, 8), 9, np.uint8))]}).encode()
    deadline = time.monotonic() + seconds
    good: list[tuple[int, float]] = []
    peak = [0.0]

    async def sampler() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.05)

    sample = asyncio.create_task(sampler())
    while time.monotonic() < deadline:
        good.append(await good_post(port, body))
        await asyncio.sleep(0.02)
    sample.cancel()
    return good, peak[0]


# ------------------------------------------------------------------------------------- decode costs

def decode_costs(repeats: int) -> None:
    """What each format's hidden work costs to decode in this process (median of ``repeats``), beside a
    2048x2048 PNG, the unit of pipeline.data.decode's pixel-equivalents: the figures behind its
    JPEG_SCANS_PER_PASS and TIFF_UNIT_COST."""
    from PIL import Image

    def timed(data: bytes, target: int | None = 8) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            image = Image.open(io.BytesIO(data))
            if target is not None and image.format in ("JPEG", "MPO"):
                image.draft(None, (target, target))
            image.load()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    buf = io.BytesIO()
    Image.fromarray(np.dstack([hostile.gradient(2048, 2048), np.full((2048, 2048), 255, np.uint8)])).save(buf, "PNG")
    png = timed(buf.getvalue())
    print(f"decode costs (median of {repeats}; a 2048x2048 RGBA gradient PNG: {png * 1000:.1f} ms, "
          f"{png / 2048**2 * 1e9:.1f} ns a pixel)")
    rows = [("4000x4000 baseline JPEG, full size", hostile.jpeg(4000, 4000), None),
            ("4000x4000 baseline JPEG at 1/8", hostile.jpeg(4000, 4000), 8),
            ("4000x4000 progressive JPEG (10 scans) at 1/8", hostile.jpeg(4000, 4000, True), 8),
            ("... 100 scans at 1/8", hostile.many_scan_jpeg(4000, 4000, 100), 8),
            ("... 1,000 scans at 1/8", hostile.many_scan_jpeg(4000, 4000, 1000), 8),
            ("1000x1000 TIFF in 16x16 tiles (3,969)", hostile.tiled_tiff(1000, 1000, 16), None),
            ("1000x1000 TIFF in 4x4 tiles (62,500)", hostile.tiled_tiff(1000, 1000, 4), None),
            ("1000x1000 TIFF in one tile", hostile.tiled_tiff(1000, 1000, 1000), None)]
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    for progressive in (False, True):  # the most entropy-coded bytes a JPEG of this size can have
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "JPEG", quality=95, progressive=progressive)
        rows.append((f"2000x2000 noise {'progressive' if progressive else 'baseline'} JPEG "
                     f"({len(buf.getvalue()) / 1e6:.1f} MB) at 1/8", buf.getvalue(), 8))
    for what, data, target in rows:
        t = timed(data, target)
        per_byte = f", {t / len(data) * 1e9:.0f} ns a byte" if "noise" in what else ""
        print(f"  {what}: {t * 1000:.1f} ms = {t / png * 2048**2 / 1e6:.2f} M PNG pixels{per_byte}")


# ------------------------------------------------------------------------------------- one shape

def run_shape(name: str, args: argparse.Namespace, tracking_uri: str, model_uri: str, logdir: Path) -> str:
    shape = SHAPES[name]
    with server(tracking_uri, model_uri, logdir, args.service_root, shape.fd_limit) as (port, proc):
        body = json.dumps({"images": [png_b64(np.full((8, 8), 9, np.uint8))]}).encode()
        for _ in range(20):  # warm up the good path
            asyncio.run(good_post(port, body))
        time.sleep(1)
        idle = rss_mb(proc.pid)
        ctx = multiprocessing.get_context("fork")
        ready, results = ctx.Event(), ctx.Queue()
        attacker = ctx.Process(target=attack, args=(name, port, args, ready, results), daemon=True)
        attacker.start()
        if not ready.wait(120):
            attacker.kill()
            sys.exit(f"error: the {name} payload was not built in 120 s")
        reset_peak(proc.pid)
        good, sampled = asyncio.run(good_client(port, proc.pid, args.seconds))
        hwm = rss_mb(proc.pid, "VmHWM")
        try:
            answers = results.get(timeout=args.seconds + 60)
        except Exception:  # the attacker died or hung: its answers are unknown
            answers = {"unknown": 1}
        attacker.join(10)
        if attacker.is_alive():
            attacker.kill()
    ok = np.array([t for s, t in good if s == 200]) * 1000
    other = Counter({0: "timeout", -1: "reset"}.get(s, str(s)) for s, _ in good if s != 200)
    lat = (f"{np.percentile(ok, 50):.0f} / {np.percentile(ok, 99):.0f} / {ok.max():.0f}" if len(ok) else "-")
    peak = max(hwm, sampled)
    fmt = ", ".join(f"{k} x {v}" for k, v in sorted(answers.items(), key=lambda kv: -kv[1]))
    others = ", ".join(f"{k} x {v}" for k, v in other.items()) or "none"
    return (f"| {name} | {len(ok)} | {lat} | {others} | {fmt} | {idle:.0f} -> {peak:.0f} "
            f"({peak / idle:.2f}x) |")


def store_in_child(root: Path) -> tuple[str, str]:
    """bench/serve.py's tiny_store, made in a child process so this one never imports torch (it forks the
    attackers)."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def make() -> None:
        sys.path.insert(0, str(Path(__file__).parent))
        from serve import tiny_store  # bench/serve.py

        q.put(tiny_store(root))

    p = ctx.Process(target=make)
    p.start()
    uris = q.get(timeout=600)
    p.join()
    return uris


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="how long each shape runs")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--request-bytes", type=int, default=64 * MB,
                   help="the held bodies' declared length (the service's max_request_bytes)")
    p.add_argument("--header-mb", type=int, default=50)
    p.add_argument("--slow-limit", type=float, default=30.0, help="how long to wait on a slow connection")
    p.add_argument("--service-root", type=Path, default=REPO,
                   help="where `python -m service` runs: another checkout's code, to compare (default: this one)")
    p.add_argument("--skip-sockets", action="store_true")
    p.add_argument("--skip-shapes", action="store_true")
    p.add_argument("--decode-costs", action="store_true",
                   help="only print what each format's hidden work costs to decode here, and exit")
    args = p.parse_args(argv)
    if args.decode_costs:
        decode_costs(repeats=5)
        return
    root = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    tracking_uri, model_uri = store_in_child(root)
    if not args.skip_sockets:
        with server(tracking_uri, model_uri, root, args.service_root) as (port, _):
            socket_phase(port, args)
    if not args.skip_shapes:
        load = os.getloadavg()
        print(f"\nshapes, {args.seconds:g} s each, a fresh server each (load average {load[0]:.1f} at the start); "
              "good: one 8x8 PNG request on a fresh connection every 20 ms\n")
        print("| shape | good 200s | good p50 / p99 / max ms | good others | shape's answers | RSS idle -> peak MB |")
        print("|---|---|---|---|---|---|")
        for name in args.shapes:
            print(run_shape(name, args, tracking_uri, model_uri, root), flush=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    print(f"logs in {root}")


if __name__ == "__main__":
    main()
