"""``python -m service`` (or ``make serve``): run the embedding service under uvicorn.

Settings come from params.yaml's ``serve`` section, ``SERVE_*`` and ``MLFLOW_TRACKING_URI``
(see :mod:`service.settings`); ``--host`` / ``--port`` override those two.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
import uvicorn

from pipeline.config import ConfigError
from service.app import create_app
from service.server import raise_fd_limit, uvicorn_options
from service.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the settings and serve until SIGTERM / SIGINT.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m service", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", help="bind address (default: serve.host / SERVE_HOST)")
    parser.add_argument("--port", type=int, help="port (default: serve.port / SERVE_PORT)")
    args = parser.parse_args(argv)
    # A model download's progress bars are noise in a server's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if settings.torch_threads:
        # Per forward pass; with several workers, workers x threads should not exceed the cores.
        torch.set_num_threads(settings.torch_threads)
    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. a CUDA device asked for on a machine without one
        sys.exit(f"error: {exc}")
    # log_config=None: uvicorn's own dictConfig would drop the root handler set up above, and with it the
    # service's messages; this way every logger shares one format.
    # The graceful shutdown outlasts a reload's deadline (reload_timeout_s < 30), so a reload in flight at
    # shutdown still gets its answer.
    # Open files first: each connection is one, and past the limit the kernel resets new clients.
    options = uvicorn_options(settings, raise_fd_limit())
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                log_config=None, access_log=settings.access_log, timeout_graceful_shutdown=30, **options)


if __name__ == "__main__":
    main()
