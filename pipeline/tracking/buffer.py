"""Per-epoch metrics that survive a tracking server going away for a while.

Training must not stop because the tracking server restarts: :class:`EpochMetricLogger` is the epoch
callback of a training run. Each epoch's metrics get their step and timestamp when the epoch ends; what
cannot be sent (the server is down: MLflow's bounded HTTP retries gave up) stays queued, in order, and
goes out with the next epoch's, or at :meth:`EpochMetricLogger.flush` when training ends, which waits for
the server up to a bound before it gives up. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import time

import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import finite_metrics

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit of metrics per log_batch
UNREACHABLE = (MlflowException, requests.exceptions.RequestException, OSError)


class EpochMetricLogger:
    """``callback(epoch, metrics, encoder)`` for the trainer; logs into run ``run_id``."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.pending: list[Metric] = []

    def __call__(self, epoch: int, metrics: dict[str, float], encoder: object = None) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, v, now, epoch) for k, v in finite_metrics(metrics).items())
        self.send()

    def send(self) -> bool:
        """Send what is queued, oldest first; True when nothing is left. A failure keeps the rest queued."""
        while self.pending:
            batch = self.pending[:BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except UNREACHABLE as exc:
                steps = sorted({m.step for m in self.pending})
                log.warning("tracking server unreachable (%s); %d metric(s) of epoch(s) %s queued for later",
                            type(exc).__name__, len(self.pending), steps)
                return False
            del self.pending[:len(batch)]
        return True

    def flush(self, wait_s: float = 300.0, pause_s: float = 5.0) -> None:
        """Send everything queued, trying for up to ``wait_s`` seconds; raises if the server stays away."""
        deadline = time.monotonic() + wait_s
        while not self.send():
            if time.monotonic() + pause_s > deadline:
                raise RuntimeError(f"MLflow run {self.run_id}: {len(self.pending)} metric(s) could not be "
                                   f"sent in {wait_s:.0f} s (the tracking server is down); the checkpoint "
                                   "is kept: rerun the stage once the server is back")
            time.sleep(pause_s)
