"""Real servers for the tests: a throwaway PostgreSQL cluster and an MLflow tracking server on it.

Both are started once per test session on free loopback ports and stopped at its end. The cluster lives in
a temporary folder (``initdb`` + ``pg_ctl``, its unix socket in the same folder); PostgreSQL refuses to
run as root, so under root it runs as an unprivileged user (``nobody``, or one created when that is
missing). Tests get their own database (:meth:`Postgres.create_database`) and their own MLflow
experiment, so they share the servers without seeing each other's records.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "postgres"
FALLBACK_USER = "sparsehead-pg"


def free_port() -> int:
    """A loopback port free right now, for a server or a gloo rendezvous a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_gloo_rank(rank: int, world: int, port: int) -> None:
    """In a process spawned by a test: the environment torchrun would give rank ``rank`` of ``world`` on
    one host (rendezvous on loopback ``port``), and one torch thread so that the ranks share 2 cores."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)


def pg_bin(name: str) -> str:
    """A PostgreSQL program from PATH, else from the Debian package's folder (not on PATH there)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (make postgres, or apt-get install postgresql)")
    return found


def _server_user() -> str | None:
    """Whom the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", FALLBACK_USER], check=True)
    return FALLBACK_USER


class Postgres:
    """A PostgreSQL cluster of its own in ``root``, trust authentication on 127.0.0.1:``port``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = _server_user()
        self.log = root / "postgres.log"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self.user:
            shutil.chown(self.root, self.user)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def start(self) -> None:
        # fsync off: a throwaway cluster; a clean stop (restart) still writes everything out.
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """A fast shutdown (open connections are cut), ``down_s`` seconds down, then up again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def url(self, database: str = "postgres") -> str:
        # The driver named: MLflow's server would otherwise pick psycopg 3, which the project does not use.
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if a previous run left it); its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


class MlflowServer:
    """``mlflow server`` with its backend store on PostgreSQL and proxied artifacts in ``artifacts``."""

    def __init__(self, backend_uri: str, root: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts = root / "artifacts"
        self.port = free_port()
        self.log = root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}  # no stale pooled connections
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--backend-store-uri", self.backend_uri, "--artifacts-destination",
                 str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, 15)  # its own session: the uvicorn workers go with it
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="sparsehead-pg-"))
    pg = Postgres(root)
    try:
        pg.init()
        yield pg
    finally:
        # CalledProcessError: already down (a test stopped it and failed before starting it again)
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres) -> Iterator[MlflowServer]:
    root = Path(tempfile.mkdtemp(prefix="sparsehead-mlflow-"))
    server = MlflowServer(postgres.create_database("mlflow"), root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def service_process(tracking_uri: str, model_uri: str, log: Path, extra_env: dict[str, str] | None = None,
                    files: tuple[int, int] | None = None, start_s: float = 180) -> Iterator[tuple[int, subprocess.Popen]]:
    """``python -m service`` on a free loopback port, serving ``model_uri``, until it is ready.

    Args:
        tracking_uri: the MLflow store holding the model.
        model_uri: what it serves (``models:/name@alias``).
        log: where its stdout and stderr go.
        extra_env: ``SERVE_*`` settings on top of the test defaults (one torch thread, no access log).
        files: its (soft, hard) limit on open files; None leaves the test process's.
        start_s: how long it may take to answer ``/readyz`` 200.

    Yields:
        (port, process); on exit the process gets SIGTERM (killed after 30 s) unless it has ended.
    """
    import httpx

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "SERVE_MODEL_URI": model_uri,
           "SERVE_PARAMS": "/nonexistent/params.yaml", "SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port),
           "SERVE_TORCH_THREADS": "1", "SERVE_LOG_LEVEL": "info", "SERVE_ACCESS_LOG": "false", **(extra_env or {})}

    def limit_files() -> None:
        if files is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, files)

    repo = Path(__file__).resolve().parents[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=limit_files if files is not None else None)
    try:
        deadline = time.monotonic() + start_s
        while True:
            assert proc.poll() is None, f"the service exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the service never became ready: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
